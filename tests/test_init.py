"""``featx init``: a pipeline file holding the dataset and the settings given (and only
those), read back by Config.load as it was written, so that later commands need only -p."""

from __future__ import annotations

import shutil
import sys

import pytest
from helpers import featx_here, one_error_line

from featx.cli import main
from featx.core.config import Config
from featx.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# classify quickly on 18 images; no store setting among them
FAST = ["--set", "classify.cv=2", "--set", "classify.n_jobs=1",
        "--set", "classify.classifiers=['logreg']"]


def test_init_writes_what_was_given_and_the_pipeline_serves_extract_and_classify(
        tiny_store, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(tiny_store.path, cache / tiny_store.path.name)  # the store these settings name
    out = tmp_path / "tiny.toml"
    r = featx_here("init", tiny_store.root, "--weights", "none", "--input-size", "32",
                   "--batch-size", "8", "--cache-dir", cache, *FAST, "-o", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out} ")
    assert f"featx extract -p {out}" in r.stdout and f"featx classify -p {out}" in r.stdout
    # only the settings given, and the dataset (as an absolute path: any folder reads it)
    assert tomllib.loads(out.read_text()) == {
        "cache_dir": str(cache.resolve()),
        "dataset": {"root": str(tiny_store.root.resolve())},
        "backbone": {"weights": "none", "input_size": 32},
        "extract": {"batch_size": 8},
        "classify": {"classifiers": ["logreg"], "cv": 2, "n_jobs": 1},
    }
    expected = Config.load(None, [*FAST[1::2], f"cache_dir='{cache.resolve()}'",
                                  f"dataset.root='{tiny_store.root.resolve()}'",
                                  "backbone.weights='none'", "backbone.input_size=32",
                                  "extract.batch_size=8"])
    assert Config.load(out).to_dict() == expected.to_dict()
    r = featx_here("extract", "-p", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"cache hit: {cache / tiny_store.path.name}" in r.stdout
    r = featx_here("classify", "-p", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("logreg ")
    # never over an existing file
    before = out.read_text()
    r = featx_here("init", tiny_store.root, "--weights", "imagenet", "-o", out)
    assert r.returncode == 2
    assert "exists already" in one_error_line(r.stderr, out)
    assert out.read_text() == before


def test_a_pipeline_of_the_data_alone_classifies_the_one_store_of_it(tiny_store, tmp_path,
                                                                    monkeypatch, capsys):
    """Settings said once, to featx extract: the pipeline names only the data, and
    classify -p reads the one store of it. The default file name is the dataset's."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(tiny_store.path, cache / tiny_store.path.name)
    monkeypatch.chdir(tmp_path)
    assert main(["init", str(tiny_store.root), "--cache-dir", str(cache), *FAST]) == 0
    out = tmp_path / f"{tiny_store.root.name}.toml"
    assert f"wrote {out.name} " in capsys.readouterr().out
    assert "backbone" not in tomllib.loads(out.read_text())
    r = featx_here("classify", "-p", out)
    assert r.returncode == 0, r.stderr
    assert f"using the store {tiny_store.path.name}" in r.stderr


def test_init_refuses_data_that_is_not_there_and_writes_nothing(tmp_path):
    out = tmp_path / "p.toml"
    r = featx_here("init", tmp_path / "missing", "-o", out)
    assert r.returncode == 2
    assert "missing" in one_error_line(r.stderr)
    assert not out.exists()


def test_the_toml_writer_round_trips_every_kind_of_value(tmp_path):
    """Quotes, backslashes, control characters, non-ASCII text, floats, booleans and lists:
    Config.load reads back what to_toml wrote."""
    data = {"name": 'a "quoted" näme',
            "dataset": {"root": "/data/tab\there\nnew line\x7f", "test": 1e-05, "seed": 7},
            "backbone": {"layer": ["block_1_add", "out_relu"], "flip": True,
                         "input_size": 96},
            "classify": {"classifiers": ["logreg", "knn"], "mlflow": "ünïcode ✓ back\\slash"},
            "finetune": {"lr": 0.000123, "refit": False}}
    config = Config.from_dict(data)
    path = tmp_path / "all.toml"
    config.write(path)
    back = Config.load(path)
    assert back.to_dict() == config.to_dict()
    assert set(back.given) == set(config.given)
    with pytest.raises(ConfigError, match="exists already"):
        config.write(path)
