"""[combine]: members' stores fused side by side or their probabilities averaged."""

from __future__ import annotations

import numpy as np
import pytest
from test_outofcore import write_synthetic_store

from featx.api import run_classify as classify
from featx.cli import main
from featx.core.config import Config, ConfigError
from featx.core.errors import StoreError
from featx.data.dataset import TEST, TRAIN
from featx.learn.classification import fit_learner, load_splits
from featx.learn.combine import fuse
from featx.report.metrics import evaluate

NAMES = ["a", "b", "c"]


def _member_stores(tmp_path, drop: str | None = None):
    """Two stores of the same 60 images, member B's rows in reverse order and its own
    features; ``drop``: a path member B lacks."""
    rng = np.random.default_rng(0)
    n = 60
    y = np.arange(n) % 3
    paths = [f"{NAMES[c]}/img{i:02d}.png" for i, c in enumerate(y)]
    split = np.where(np.arange(n) % 4 == 0, TEST, TRAIN).astype(np.int8)
    xa = rng.normal(size=(n, 4)) + 3 * np.eye(3, 4)[y]
    xb = rng.normal(size=(n, 3)) + 3 * np.eye(3)[y]
    a = write_synthetic_store(tmp_path / "a.h5", xa, y, paths, split, NAMES, backbone="A")
    keep = [i for i in range(n)[::-1] if paths[i] != drop]
    b = write_synthetic_store(tmp_path / "b.h5", xb[keep], y[keep], [paths[i] for i in keep],
                              split[keep], NAMES, backbone="B")
    return a, b, dict(zip(paths, xa.astype(np.float32))), dict(zip(paths, xb.astype(np.float32)))


def _config(**classify) -> Config:
    return Config.from_dict({"dataset": {"test": 0.25, "seed": 42},
                             "classify": {"n_jobs": 1, "cv": 2, **classify}})


def test_fusion_matches_rows_by_path(tmp_path):
    a, b, fa, fb = _member_stores(tmp_path)
    config = _config()
    parts = [load_splits(config, a), load_splits(config, b)]
    assert parts[0].paths[TRAIN] != parts[1].paths[TRAIN]  # the stores order rows differently
    fused = fuse(parts, ["ma", "mb"])
    for s in (TRAIN, TEST):
        assert fused.x[s].shape == (len(parts[0].paths[s]), 7)
        for row, path in zip(fused.x[s], fused.paths[s]):
            np.testing.assert_array_equal(row, np.r_[fa[path], fb[path]])
    assert fused.backbone["backbone"] == "A + B"
    assert "ma (A, avg)" in fused.backbone["combine"] and "mb" in fused.backbone["combine"]
    assert not fused.rows  # fused features are in memory only


def test_a_path_missing_from_a_member_is_an_error_naming_it(tmp_path):
    a, b, _, _ = _member_stores(tmp_path, drop="b/img07.png")
    config = _config()
    with pytest.raises(StoreError) as e:
        fuse([load_splits(config, a), load_splits(config, b)], ["ma", "mb"])
    assert "b/img07.png" in str(e.value) and str(b) in str(e.value)
    with pytest.raises(StoreError, match="b/img07.png"):  # either way round
        fuse([load_splits(config, b), load_splits(config, a)], ["mb", "ma"])


def _pipelines(tmp_path, root, mode, classifiers=("logreg",), ensemble=False):
    folder = tmp_path / "pipelines"
    folder.mkdir(exist_ok=True)
    for pooling in ("avg", "max"):
        (folder / f"tiny-{pooling}.toml").write_text(
            f'name = "tiny-{pooling}"\n[backbone]\nname = "MobileNetV2"\nweights = "none"\n'
            f'input_size = 32\npooling = "{pooling}"\n[extract]\nbatch_size = 8\n')
    names = ", ".join(f'"{c}"' for c in classifiers)
    parent = folder / f"tiny-{mode}.toml"
    parent.write_text(
        f'name = "tiny-{mode}"\ncache_dir = "{tmp_path / "cache"}"\nout = "{tmp_path / "out"}"\n'
        f'[dataset]\nroot = "{root}"\ntest = 0.25\nseed = 42\n'
        f'[classify]\nclassifiers = [{names}]\ncv = 2\nn_jobs = 1\n'
        f'ensemble = {str(ensemble).lower()}\n'
        f'[combine]\npipelines = ["tiny-avg.toml", "tiny-max.toml"]\nmode = "{mode}"\n')
    return parent


@pytest.mark.slow
def test_extract_and_classify_a_combined_pipeline(tiny_root, tmp_path, capsys):
    root, _ = tiny_root
    parent = _pipelines(tmp_path, root, "fuse", ("logreg", "sgd"), ensemble=True)
    assert main(["extract", "-p", str(parent), "--no-progress"]) == 0
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 2  # one store per member
    config = Config.load(parent)
    ms = config.members()
    assert [m.backbone.pooling for m in ms] == ["avg", "max"]
    assert all(m.dataset == config.dataset and m.cache_dir == config.cache_dir for m in ms)

    results = classify(config)
    assert [r["classifier"] for r in results] == ["logreg", "sgd", "ensemble(logreg+sgd)"]
    for r in results:
        assert r["backbone"]["combine"].startswith("fuse: tiny-avg (MobileNetV2, avg) + tiny-max")
        assert r["backbone"]["pooling"] == "avg + max"
        run = tmp_path / "out" / r["run"]
        assert (run / f"tiny-fuse-{r['classifier'].split('(')[0]}.json").is_file()

    # ensemble mode: each member's classifier, probabilities averaged
    config = Config.load(_pipelines(tmp_path, root, "ensemble"))
    [result] = classify(config)
    parts = [load_splits(m, p) for m, p in zip(config.members(),
                                                sorted((tmp_path / "cache").glob("*.h5")))]
    parts.sort(key=lambda p: p.attrs["pooling"])  # avg, max: the members' order
    probabilities = [fit_learner("logreg", p, config).model.predict_proba(p.x[TEST])
                     for p in parts]
    manual = evaluate(parts[0].y[TEST], np.mean(probabilities, axis=0), np.arange(3),
                      parts[0].label_names)
    assert result["rank1"] == manual["rank1"] and result["confusion"] == manual["confusion"]
    assert result["backbone"]["combine"].startswith("ensemble: ")
    assert set(result["best_params"]) == {"tiny-avg.C", "tiny-max.C"}


def test_combine_settings_are_checked(tmp_path):
    (tmp_path / "m.toml").write_text('name = "m"\n')
    (tmp_path / "nested.toml").write_text('[combine]\npipelines = ["m.toml", "m.toml"]\n')
    with pytest.raises(ConfigError, match="combine.mode = .vote. is not one of .fuse., .ensem"):
        Config.from_dict({"combine": {"pipelines": ["a", "b"], "mode": "vote"}})
    with pytest.raises(ConfigError, match="at least two"):
        Config.from_dict({"combine": {"pipelines": [str(tmp_path / "m.toml")]}}).members()
    with pytest.raises(ConfigError, match="nested.toml"):
        Config.from_dict({"combine": {"pipelines": [str(tmp_path / "nested.toml"),
                                                            str(tmp_path / "m.toml")]}}).members()
    parent = tmp_path / "sub" / "p.toml"
    parent.parent.mkdir()
    parent.write_text('[combine]\npipelines = ["../m.toml", "../m.toml"]\n')
    assert [m.name for m in Config.load(parent).members()] == ["m", "m"]  # relative to p.toml


def test_repeats_on_a_combined_pipeline_are_refused_not_ignored(tiny_root, tmp_path):
    config = Config.load(_pipelines(tmp_path, tiny_root[0], "fuse"))
    config.classify.repeats = 3
    with pytest.raises(ConfigError, match="classify.repeats = 3: a .combine. pipeline"):
        classify(config)
