"""Config: pipeline TOML files, ``section.field=value`` overrides, coercion and errors."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from featx.core import config as config_module
from featx.core.config import (
    BackboneConfig,
    ClassifyConfig,
    Config,
    ConfigError,
    DatasetConfig,
    ExtractConfig,
)

REPO = Path(__file__).resolve().parents[1]

PIPELINE = """
name = "flowers"
cache_dir = "somewhere/cache"

[dataset]
root = "images/flowers"
val = 0.1
test = 0.2
seed = 7

[backbone]
name = "ResNet50"
weights = "none"
layer = "conv4_block6_out"
pooling = "max"
input_size = 160

[extract]
batch_size = 16
compression = "gzip"
strict = true

[classify]
classifiers = ["linear_svm"]
cv = 5
n_jobs = 2
"""


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)
            if dataclasses.is_dataclass(getattr(Config(), f.name))]


def test_load_pipeline_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE)
    c = Config.load(path)
    assert c.name == "flowers" and c.cache_dir == "somewhere/cache"
    assert c.dataset == DatasetConfig(root="images/flowers", val=0.1, test=0.2, seed=7)
    assert c.backbone == BackboneConfig(name="ResNet50", weights="none",
                                        layer="conv4_block6_out", pooling="max", input_size=160)
    assert c.extract == ExtractConfig(batch_size=16, compression="gzip", strict=True)
    assert c.classify == ClassifyConfig(classifiers=["linear_svm"], cv=5, n_jobs=2, seed=0)


def test_fields_missing_from_the_file_keep_their_defaults(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[dataset]\nroot = "x"\n')
    c = Config.load(path)
    assert c.dataset.root == "x"
    defaults = Config()
    assert c.backbone == defaults.backbone and c.classify == defaults.classify
    assert c.dataset.test == defaults.dataset.test


def test_no_file_gives_defaults():
    assert Config.load(None) == Config()


@pytest.mark.parametrize("pipeline", sorted((REPO / "pipelines").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_pipelines_load(pipeline):
    c = Config.load(pipeline)
    assert c.name and c.dataset.root  # every shipped pipeline names itself and its data


def test_flowers17_pipeline_is_a_75_25_split_with_seed_42():
    c = Config.load(REPO / "pipelines" / "flowers17.toml")
    assert (c.dataset.val, c.dataset.test, c.dataset.seed) == (0.0, 0.25, 42)
    assert c.backbone.name == "MobileNetV2" and c.backbone.pooling == "avg"


@pytest.mark.parametrize("assignment, dotted, expected", [
    ("dataset.test=0.2", "dataset.test", 0.2),
    ("dataset.test=1", "dataset.test", 1.0),  # an int for a float field becomes a float
    ("dataset.seed=7", "dataset.seed", 7),
    ("backbone.input_size=64", "backbone.input_size", 64),
    ("extract.strict=true", "extract.strict", True),
    ("extract.strict=yes", "extract.strict", True),
    ("extract.strict=0", "extract.strict", False),
    ("extract.strict=false", "extract.strict", False),
    ("classify.classifiers=logreg", "classify.classifiers", ["logreg"]),
    ("classify.classifiers=logreg, linear_svm", "classify.classifiers",
     ["logreg", "linear_svm"]),
    ('classify.classifiers=["linear_svm"]', "classify.classifiers", ["linear_svm"]),
    ("dataset.root=data/my flowers", "dataset.root", "data/my flowers"),
    ('dataset.root="quoted/path"', "dataset.root", "quoted/path"),
    ("dataset.name=2024", "dataset.name", "2024"),  # a number for a string field stays text
    ("name=a=b", "name", "a=b"),  # only the first '=' separates
    ("cache_dir=/tmp/featx cache", "cache_dir", "/tmp/featx cache"),
    (" backbone.pooling =max", "backbone.pooling", "max"),
])
def test_set_overrides_and_coerces(assignment, dotted, expected):
    c = Config()
    c.set(assignment)
    target = c
    for part in dotted.split(".")[:-1]:
        target = getattr(target, part)
    value = getattr(target, dotted.split(".")[-1])
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE)
    c = Config.load(path, ["dataset.test=0.4", "backbone.pooling=avg"])
    assert c.dataset.test == 0.4 and c.backbone.pooling == "avg"
    assert c.dataset.val == 0.1  # untouched fields still come from the file


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        Config().set("dataset.tset=0.2")
    message = str(e.value)
    assert "dataset.tset" in message
    for f in dataclasses.fields(DatasetConfig):
        assert f.name in message


def test_unknown_top_level_field_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        Config().set("outt=results")
    for f in dataclasses.fields(Config):
        assert f.name in str(e.value)


def test_unknown_section_lists_the_valid_sections():
    with pytest.raises(ConfigError) as e:
        Config().set("datset.test=0.2")
    message = str(e.value)
    assert "datset" in message
    missing = [s for s in _section_names() if s not in message]
    assert not missing, f"the error does not list the valid sections {missing}: {message}"


def test_unknown_section_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[backbon]\nname = "VGG16"\n')
    with pytest.raises(ConfigError, match="backbon") as e:
        Config.load(path)
    assert str(path) in str(e.value)


def test_a_section_is_not_a_field():
    with pytest.raises(ConfigError, match="dataset"):
        Config().set("dataset=3")


@pytest.mark.parametrize("assignment", [
    "backbone.input_size=abc",
    "dataset.test=abc",
    "extract.strict=maybe",
    "dataset.seed=[1, 2]",
])
def test_values_of_the_wrong_type_are_rejected(assignment):
    dotted = assignment.split("=")[0]
    with pytest.raises(ConfigError, match=dotted.replace(".", r"\.")):
        Config().set(assignment)


@pytest.mark.parametrize("assignment", [
    "backbone.input_size=32.5",  # was silently truncated to 32
    "classify.cv=2.9",  # was silently truncated to 2
    "dataset.seed=true",  # was silently taken as 1
])
def test_int_fields_reject_values_that_are_not_integers(assignment):
    with pytest.raises(ConfigError, match=assignment.split("=")[0].replace(".", r"\.")):
        Config().set(assignment)


@pytest.mark.parametrize("assignment", ["dataset.test=true", "dataset.val=false"])
def test_float_fields_reject_booleans(assignment):
    with pytest.raises(ConfigError, match=assignment.split("=")[0].replace(".", r"\.")):
        Config().set(assignment)


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="section.field=value"):
        Config().set("dataset.test")


def test_missing_pipeline_file_names_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        Config.load(missing)
    assert str(missing) in str(e.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[dataset\nroot = \n")
    with pytest.raises(ConfigError) as e:
        Config.load(path)
    assert str(path) in str(e.value)


def test_json_round_trip(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE)
    c = Config.load(path)
    assert Config.from_dict(json.loads(c.to_json())) == c


def test_cache_path_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FEATX_CACHE_DIR", raising=False)
    assert Config().cache_path == Path(config_module.DEFAULT_CACHE_DIR)
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "env"))
    assert Config().cache_path == tmp_path / "env"
    assert Config(cache_dir=str(tmp_path / "explicit")).cache_path == tmp_path / "explicit"


# ------------------------------------------------ allowed values, checked before any image

TYPOS = {  # one field of every section, and a value it does not take
    "dataset.hash": "md5", "backbone.pooling": "average", "extract.tencrop": "yes",
    "classify.classifiers": "logreg,svmm", "combine.mode": "vote",
    "finetune.warmup_optimizer": "adamm", "extract.batch_size": "0",
    "finetune.batch_size": "-1", "classify.cv": "1",
}


@pytest.mark.parametrize("field", sorted(TYPOS))
def test_a_bad_value_in_any_section_names_the_field_and_the_valid_values(field):
    with pytest.raises(ConfigError) as e:
        Config.load(None, [f"{field}={TYPOS[field]}"])
    message = str(e.value)
    assert field in message and ("is not one of" in message or "out of range" in message)


def test_every_learner_is_an_allowed_classifier():
    from featx.core.config import CLASSIFIERS
    from featx.learn.learners import LEARNERS

    assert tuple(LEARNERS) == CLASSIFIERS


def test_a_typo_fails_in_under_a_second_before_reading_images(tmp_path):
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "featx.cli", "extract", "-p",
                          "pipelines/flowers17.toml", "--data", str(tmp_path / "absent"),
                          "--set", "finetune.warmup_optimizer=adamm"], cwd=repo,
                         capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - t0
    assert run.returncode == 2
    assert "finetune.warmup_optimizer = 'adamm' is not one of 'adam', 'rmsprop'" in run.stderr
    assert "absent" not in run.stderr  # refused before the (missing) dataset was looked at
    assert seconds < 3, seconds  # measured 0.3 s here; 3 s leaves room for a busy machine


# ------------------------------------------------ the bounds of every number field

# Every int and float field of every section: its bounds (inclusive; None: open), or
# UNBOUNDED where any number is taken here (checked where it is used, or truly free).
BOUNDS = {
    "backbone.input_size": (0, None), "backbone.calibration_images": (1, 100000),
    "extract.batch_size": (1, 4096),
    "extract.augment": (0, 1000), "extract.shard_rows": (1, None), "classify.cv": (2, None),
    "classify.repeats": (1, 100), "finetune.warmup_epochs": (0, None),
    "finetune.epochs": (0, None), "finetune.unfreeze": (0, None),
    "finetune.batch_size": (1, 4096), "finetune.patience": (0, None),
    "finetune.crops": (0, 32), "dataset.duplicate_threshold": (0.5, 1.0),
}
UNBOUNDED = {
    "dataset.val", "dataset.test", "dataset.seed", "extract.augment_seed",
    "extract.augment_rotation", "extract.augment_zoom", "extract.augment_translation",
    "extract.augment_contrast", "classify.n_jobs", "classify.seed", "finetune.warmup_lr",
    "finetune.lr", "finetune.dropout", "finetune.holdout", "finetune.seed",
}


def _number_fields() -> set[str]:
    config = Config()
    found = set()
    for section in _section_names():
        for f in dataclasses.fields(getattr(config, section)):
            value = getattr(getattr(config, section), f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.add(f"{section}.{f.name}")
    return found


def test_every_number_field_is_listed_with_its_bounds():
    """A bound dropped (or a field added) fails here, not silently at run time."""
    assert _number_fields() == set(BOUNDS) | UNBOUNDED
    for dotted in sorted(BOUNDS) + sorted(UNBOUNDED):
        section, name = dotted.split(".")
        spec = {f.name: f for f in dataclasses.fields(getattr(Config(), section))}[name]
        assert spec.metadata.get("within") == BOUNDS.get(dotted), dotted


def _edges(dotted: str) -> list[tuple[int, bool]]:
    # (value, accepted) at and just past each bound
    low, high = BOUNDS[dotted]
    edges = [(low - 1, False), (low, True)]
    if high is not None:
        edges += [(high, True), (high + 1, False)]
    return edges


@pytest.mark.parametrize("dotted, value, accepted",
                         [(d, v, ok) for d in sorted(BOUNDS) for v, ok in _edges(d)])
def test_number_fields_take_exactly_their_range(dotted, value, accepted):
    config = Config()
    if accepted:
        config.set(f"{dotted}={value}")
        section, name = dotted.split(".")
        assert getattr(getattr(config, section), name) == value
    else:
        with pytest.raises(ConfigError, match=rf"{re.escape(dotted)} = {value} is out of range"):
            config.set(f"{dotted}={value}")
