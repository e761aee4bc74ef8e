"""Which store a command reads (featx.features.plan.find_store, settle): settings said once
(only the data given: the one store of it), several stores told apart, and the messages that
name each setting that differs, or what stopped an unfinished extraction."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import featx_here, one_error_line, tiny_args

from featx.core.config import Config
from featx.core.errors import BackboneError, StoreError
from featx.features import backbones
from featx.features.plan import find_store, settings_given, settle
from featx.store import cache

LAYER = "block_1_expand_relu"
# classify as fast as it goes on 18 images: settings that choose no store
FAST = ["--classifiers", "logreg", "--n-jobs", "1", "--set", "classify.cv=2"]


@dataclass
class Made:
    root: Path
    weights: Path
    digest: str  # the first 8 hex digits of the weights file's SHA-256
    stores: dict[str, Path]  # none (tiny_store's), file, layer (the file, another layer)


@pytest.fixture(scope="module")
def made(tiny_store, tmp_path_factory) -> Made:
    """Three stores of the tiny dataset at 32 px: random weights (tiny_store's), a weights
    file, and that file read at another layer. Tests copy those they need into a cache
    folder of their own."""
    import keras

    base = tmp_path_factory.mktemp("plan")
    keras.utils.set_random_seed(7)
    net = keras.applications.MobileNetV2(include_top=False, weights=None,
                                         input_shape=(32, 32, 3))
    weights = base / "w.weights.h5"
    net.save_weights(weights)
    folder = base / "made"
    stores = {"none": tiny_store.path}
    for name, more in (("file", []), ("layer", ["--layer", LAYER])):
        r = featx_here("extract", *tiny_args(tiny_store.root, folder, "--weights", weights,
                                             *more))
        assert r.returncode == 0, r.stderr
        stores[name] = Path(r.stdout.rsplit("-> ", 1)[1].split()[0])
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:8]
    return Made(tiny_store.root, weights, digest, stores)


def cache_of(made: Made, folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copy2(made.stores[name], folder / made.stores[name].name)
    return folder


def classify(made: Made, cache_dir: Path, *more) -> tuple[int, str, str]:
    r = featx_here("classify", "--data", made.root, "--cache-dir", cache_dir, *FAST, *more)
    return r.returncode, r.stdout, r.stderr


def test_only_the_data_classifies_the_one_store_of_it_and_says_which(made, tmp_path):
    """Extracted with --weights FILE, classified with --data alone (the user's story: it
    said 'no feature store ... with these settings')."""
    folder = cache_of(made, tmp_path / "cache", "file")
    code, out, err = classify(made, folder)
    assert code == 0, err
    (line,) = [x for x in err.splitlines() if "using the store" in x]
    name = made.stores["file"].name
    assert f"using the store {name} (MobileNetV2, layer (last conv), avg pooling, weights " \
           f"file:{made.weights.name} sha256:{made.digest}, 32 px)" in line
    runs = folder / (made.stores["file"].stem + ".runs")
    (run,) = runs.iterdir()  # the results went beside that store
    (result,) = run.glob("*.json")
    assert json.loads(result.read_text())["backbone"]["weights"] == "file"
    (entry,) = [e for e in cache.entries(folder) if e.kind == "store"]  # as cache ls shows it
    assert entry.weights == f"file:{made.weights.name} sha256:{made.digest}"


def test_the_python_face_goes_through_the_same_lookup(made, tmp_path):
    import featx

    folder = cache_of(made, tmp_path / "cache", "file")
    (result,) = featx.classify(data=str(made.root), cache_dir=str(folder),
                               classifiers=["logreg"], n_jobs=1, set=["classify.cv=2"],
                               progress=False)
    assert Path(result.record["store"]).name == made.stores["file"].name


def test_a_setting_that_differs_is_named_with_its_flag_and_field(made, tmp_path):
    folder = cache_of(made, tmp_path / "cache", "file")
    code, _, err = classify(made, folder, "--weights", "none", "--input-size", "32")
    line = one_error_line(err, made.stores["file"].name)
    assert code == 2
    assert (f"backbone.weights=file:{made.weights.name} sha256:{made.digest}, this command "
            "asked for none (--weights / backbone.weights)") in line
    assert "input_size" not in line  # the same input size: not named
    # two settings said: both that differ are named, each with its own flag
    code, _, err = classify(made, folder, "--weights", "none", "--input-size", "48")
    line = one_error_line(err)
    assert "backbone.input_size=32, this command asked for 48 (--input-size / " \
           "backbone.input_size)" in line and "--weights / backbone.weights" in line


def test_several_stores_of_the_data_are_told_apart_and_one_is_chosen(made, tmp_path):
    folder = cache_of(made, tmp_path / "cache", "file", "none")
    code, _, err = classify(made, folder)
    line = one_error_line(err)
    assert code == 2 and "2 stores hold" in line
    assert f"{made.stores['none'].name} (weights none)" in line
    assert f"{made.stores['file'].name} (weights file:{made.weights.name} " in line
    assert "--weights (backbone.weights)" in line and "--store KEY" in line
    assert "layer" not in line  # they do not differ there
    # the flag that tells them apart chooses one (the rest taken from it: 32 px)
    code, _, err = classify(made, folder, "--weights", "none")
    assert code == 0, err
    assert f"using the store {made.stores['none'].name}" in err
    # so does a key, as featx cache ls prints it
    key = made.stores["file"].stem.rsplit("-", 1)[1]
    code, out, err = classify(made, folder, "--store", key)
    assert code == 0, err
    assert (folder / (made.stores["file"].stem + ".runs")).is_dir()


def test_settle_for_a_sweep_ignores_the_layer_only(made, tmp_path):
    """featx sweep reads layers of its own: stores that differ only in their layer agree on
    the rest, which it takes; other commands must choose."""
    folder = cache_of(made, tmp_path / "cache", "file", "layer")
    config = Config.load(None, [f"dataset.root={json.dumps(str(made.root))}",
                                f"cache_dir={json.dumps(str(folder))}"])
    swept = settle(config, ignore=("backbone.layer",))
    assert swept.backbone.weights == str(made.weights) and swept.backbone.input_size == 32
    assert swept.backbone.layer == "" and "backbone.layer" not in swept.given
    with pytest.raises(StoreError, match=r"--layer \(backbone\.layer\)"):
        settle(config)
    assert config.backbone.weights == "imagenet"  # the config given is left as it was


def test_settings_given_are_what_the_user_set(tmp_path):
    assert not settings_given(Config.load(None, ["dataset.root='x'", "classify.cv=2"]))
    assert settings_given(Config.load(None, ["backbone.pooling='avg'"]))  # said, if default
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[backbone]\nweights = "none"\n')
    assert settings_given(Config.load(pipeline))
    direct = Config()
    direct.backbone.input_size = 48  # set without assign: not the default, so given
    assert settings_given(direct)
    assert not settings_given(direct, ignore=("backbone.input_size",))


def test_an_unfinished_extraction_says_what_stopped_it(made, tmp_path, monkeypatch):
    """A failed offline attempt (weights=imagenet) is unfinished: resuming it would fail
    the same way, so the message says why instead of 'run featx extract to resume it', and
    names the store of the data that exists. Nothing is downloaded: the weights fail to
    load before any download."""
    folder = cache_of(made, tmp_path / "cache", "file")

    def offline(self, batch):
        raise BackboneError("could not get ImageNet weights for MobileNetV2: no network\n"
                            "  No network? Give a local no-top weights file instead")

    monkeypatch.setattr(backbones.Backbone, "batched", offline)
    r = featx_here("extract", "--data", made.root, "--cache-dir", folder, "--no-progress")
    assert r.returncode == 2
    monkeypatch.undo()
    (partial,) = folder.glob("*.partial")
    asked = Config.load(None, [f"dataset.root={json.dumps(str(made.root))}",
                               f"cache_dir={json.dumps(str(folder))}", "backbone.layer=''",
                               "backbone.weights='imagenet'"])
    with pytest.raises(StoreError) as e:
        find_store(asked)
    message = str(e.value)
    assert "it stopped on: could not get ImageNet weights for MobileNetV2: no network; " \
           "`featx extract` stops there again" in message and "resume it" not in message
    assert f"backbone.weights=file:{made.weights.name} sha256:{made.digest}, this command " \
           "asked for imagenet (--weights / backbone.weights)" in message
    # featx cache ls tells the unfinished extraction by its settings
    listed = {e.state: e for e in cache.entries(folder)}
    assert (listed["partial"].weights, listed["partial"].input_size) == ("imagenet", 224)
    # a folder of featx 0.4 (no record of why or what) still reads as resumable
    meta = partial / "meta.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items()
                                if k not in ("stopped", "about")}))
    with pytest.raises(StoreError, match="run `featx extract` to resume it"):
        find_store(asked)
    assert cache.entries(folder)[-1].weights == ""


def test_an_unfinished_extraction_of_other_settings_is_named(made, tmp_path, monkeypatch):
    """No store of the data at all, but an unfinished extraction of it with other
    settings: the message names it, its settings and what stopped it."""
    folder = tmp_path / "cache"

    def broken(self, batch):
        raise BackboneError("could not load MobileNetV2 weights: truncated file")

    monkeypatch.setattr(backbones.Backbone, "batched", broken)
    r = featx_here("extract", *tiny_args(made.root, folder, "--weights", made.weights))
    assert r.returncode == 2
    monkeypatch.undo()
    code, _, err = classify(made, folder, "--weights", "none", "--input-size", "32")
    line = one_error_line(err)
    assert "no feature store for" in line and "an unfinished extraction of it with other " \
        "settings" in line and f"weights file:{made.weights.name}" in line
    assert "it stopped on: could not load MobileNetV2 weights: truncated file" in line


def test_a_variant_store_follows_the_grouped_split_of_the_plain_one(tmp_path):
    """The augmented store holds the training images of the plain store's grouped split
    (byte copies kept with their originals), and the grouping is part of its key: switching
    dataset.group_duplicates names another augmented store."""
    import numpy as np
    from helpers import random_pngs, small_config

    from featx.data.dataset import TRAIN
    from featx.features.extraction import extract
    from featx.features.plan import plan
    from featx.store.read import FeatureStore

    data = tmp_path / "data"
    pairs = [("cat/cat2_copy.png", "cat/cat2.png"), ("dog/dog6_copy.png", "dog/dog6.png"),
             ("dog/dog8_copy.png", "dog/dog8.png")]
    random_pngs(data, n_per_class=10, copies=pairs)
    config = small_config(data, tmp_path / "cache")
    config.extract.augment = 2
    augmented = extract(config, progress=False, variant="augmented")  # the plain one first
    with FeatureStore(plan(config).path) as plain:
        train = {p for p, s in zip(plain.paths, plain.split) if s == TRAIN}
        side = dict(zip(plain.paths, plain.split))
        grouping = plain.grouping
    assert grouping == {"duplicates": True, "threshold": 0.95}
    assert all(side[a] == side[b] for a, b in pairs)
    with FeatureStore(augmented.path) as store:
        assert set(store.paths) == train and store.grouping == grouping
    off = small_config(data, tmp_path / "cache")
    off.extract.augment = 2
    off.dataset.group_duplicates = False
    ungrouped = plan(off, "augmented")
    assert ungrouped.key != plan(config, "augmented").key
    held = {data_path for data_path, s in zip(ungrouped.dataset.paths, ungrouped.split)
            if s == TRAIN}
    assert held != train and ungrouped.images is not None
    assert np.array_equal(ungrouped.images, np.flatnonzero(ungrouped.split == TRAIN))
