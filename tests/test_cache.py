"""The store as a cache: content key, reuse, incremental updates, one writer, management."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import assert_close, featx_here
from helpers import random_pngs as _images
from PIL import Image

from featx.cli import main
from featx.core.config import Config
from featx.features.extraction import extract
from featx.features.plan import plan
from featx.store import cache


def _config(data: Path, cache_dir: Path, **backbone) -> Config:
    c = Config()
    c.dataset.root = str(data)
    c.dataset.test = 0.4
    c.backbone.weights = "none"
    c.backbone.input_size = 32
    for k, v in backbone.items():
        setattr(c.backbone, k, v)
    c.extract.batch_size = 4
    c.cache_dir = str(cache_dir)
    return c


@pytest.fixture
def data(tmp_path) -> Path:
    _images(tmp_path / "data")
    return tmp_path / "data"


def test_key_ignores_locations_and_speeds_but_not_settings(data, tmp_path):
    base = plan(_config(data, tmp_path / "c1"))
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved, copy_function=shutil.copy2)  # keeps mtimes
    other = _config(moved, tmp_path / "c2")
    other.extract.batch_size = 7
    other.extract.compression = "gzip"
    assert plan(other).key == base.key
    assert plan(_config(data, tmp_path / "c1", pooling="max")).key != base.key
    assert plan(_config(data, tmp_path / "c1", input_size=48)).key != base.key
    assert plan(_config(data, tmp_path / "c1", layer="block_1_expand")).key != base.key
    seeded = _config(data, tmp_path / "c1")
    seeded.dataset.seed = 1  # random weights follow the seed
    assert plan(seeded).key != base.key
    (data / "cat" / "cat0.png").write_bytes((data / "cat" / "cat1.png").read_bytes())
    os.utime(data / "cat" / "cat0.png", (1, 1))
    assert plan(_config(data, tmp_path / "c1")).key != base.key


def test_content_hash_mode_ignores_mtime(data, tmp_path):
    c = _config(data, tmp_path / "c")
    c.dataset.hash = "content"
    before = plan(c).key
    os.utime(data / "cat" / "cat0.png", (12345, 12345))
    assert plan(c).key == before
    stat = _config(data, tmp_path / "c")
    assert plan(stat).key != before


def test_reuse_across_pipelines_and_split_change(data, tmp_path, monkeypatch):
    c = _config(data, tmp_path / "cache")
    first = extract(c, progress=False)
    assert not first.cache_hit and first.extracted == 10
    from featx.features import backbones

    def no_model(self):
        raise AssertionError("a cache hit built the model")

    monkeypatch.setattr(backbones.Backbone, "model", property(no_model))
    c2 = _config(data, tmp_path / "cache")
    c2.classify.classifiers = ["linear_svm"]
    c2.dataset.test = 0.2
    hit = extract(c2, progress=False)
    assert hit.cache_hit and hit.path == first.path
    with h5py.File(hit.path, "r") as f:
        assert (f["split"][:] == 2).sum() == 2  # re-split without new features


def test_incremental_add_remove_change(data, tmp_path):
    c = _config(data, tmp_path / "cache")
    extract(c, progress=False)
    _images(data, n_per_class=2, classes=("bird",), seed=5)  # one new class, two images
    (data / "dog" / "dog4.png").unlink()
    rng = np.random.default_rng(9)
    Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(
        data / "cat" / "cat2.png")
    os.utime(data / "cat" / "cat2.png", (time.time() + 10,) * 2)
    r = extract(c, progress=False)
    assert (r.extracted, r.reused, r.dropped) == (3, 8, 2)  # bird0-1 + cat2; dog4 + old cat2
    fresh = extract(_config(data, tmp_path / "fresh"), progress=False)
    with h5py.File(r.path, "r") as a, h5py.File(fresh.path, "r") as b:
        assert list(a["paths"][:]) == list(b["paths"][:])
        assert list(a["label_names"][:]) == [b"bird", b"cat", b"dog"]
        np.testing.assert_array_equal(a["labels"][:], b["labels"][:])
        assert_close(a["features"][:], b["features"][:])


def test_store_with_other_settings_is_never_used(data, tmp_path, capsys):
    c = _config(data, tmp_path / "cache")
    r = extract(c, progress=False)
    with h5py.File(r.path, "r+") as f:
        f.attrs["settings_key"] = "0000000000000000"
        f["features"][0] = 42.0
    again = extract(c, progress=False)
    assert not again.cache_hit and again.extracted == 10
    with h5py.File(again.path, "r") as f:
        assert f["features"][0].max() != 42.0


@pytest.mark.slow
def test_second_writer_waits_for_the_first(data, tmp_path):
    args = ["extract", "--data", str(data), "--weights", "none", "--input-size", "64",
            "--batch-size", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    cmd = [sys.executable, "-m", "featx.cli", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = featx_here(*args)  # in this process: the first holds the lock from its own
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1[-2000:] + second.stderr[-2000:]
    assert "extracted 10 images" in out1
    assert "waiting" in second.stderr and "cache hit" in second.stdout
    assert cache.verify(next((tmp_path / "cache").glob("*.h5"))) == []


def test_cache_commands(data, tmp_path, capsys):
    c = _config(data, tmp_path / "cache")
    r = extract(c, progress=False)
    folder = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["cache", "ls", *folder]) == 0
    out = capsys.readouterr().out
    assert r.key[:16] in out and "complete" in out and "data" in out
    assert main(["cache", "info", r.key[:8], *folder]) == 0
    out = capsys.readouterr().out
    assert '"backbone": "MobileNetV2"' in out and '"pooling": "avg"' in out
    assert main(["cache", "verify", *folder]) == 0
    assert "OK" in capsys.readouterr().out
    # Corrupt a feature chunk on disk: the checksum catches it.
    with h5py.File(r.path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(r.path, "r+b") as fh:
        fh.seek(offset + 20)
        fh.write(b"\xff\xfe\xfd\xfc")
    assert main(["cache", "verify", *folder]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["cache", "rm", r.key, *folder]) == 0
    assert not r.path.exists()
    assert main(["cache", "info", "ffff", *folder]) == 2
    assert "no store with key" in capsys.readouterr().err


def test_partial_extraction_is_listed_and_not_a_store(data, tmp_path):
    c = _config(data, tmp_path / "cache")
    p = plan(c)
    from featx.core.errors import StoreError
    from featx.store.blocks import BlockDir
    from featx.store.read import FeatureStore

    blocks = BlockDir(p.path, p.key, rows=10, block_rows=4)
    blocks.save(0, np.zeros((4, 1280), np.float32), np.ones(4, bool), [""] * 4)
    (entry,) = cache.entries(tmp_path / "cache")
    assert not entry.complete and entry.rows == 4
    with pytest.raises(StoreError, match="resume"):
        FeatureStore(p.path)
    r = extract(c, progress=False)
    assert r.extracted == 6  # the saved block was taken as done


def test_cache_ls_reads_hyphenated_dataset_names(tmp_path, capsys):
    from featx.cli import main
    from featx.store import cache

    store = tmp_path / "flowers-17-MobileNetV2-avg-0123456789abcdef.h5"
    partial = store.with_name(store.name + ".0123456789abcdef.partial")
    partial.mkdir(parents=True)
    (partial / "meta.json").write_text('{"rows": 10, "block_rows": 4}')
    [entry] = cache.entries(tmp_path)
    assert (entry.dataset, entry.backbone, entry.key) == ("flowers-17", "MobileNetV2",
                                                          "0123456789abcdef")
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert "flowers-17" in capsys.readouterr().out


def test_an_unfinished_finetuning_is_listed_and_removed_by_key(tmp_path, capsys):
    """A fine-tuning's checkpoint lives beside the stores: `cache ls` lists it (state
    checkpoint, rows = epochs done), `cache rm KEY` removes it, `cache verify` leaves it be."""
    from featx.core.layout import checkpoint_path
    from featx.learn.finetune import Checkpoint

    key = "0123456789abcdef"
    path = checkpoint_path(tmp_path, "my-flowers", "MobileNetV2", key)
    history = [{"phase": "warmup", "epoch": e} for e in (1, 2, 3)]
    Checkpoint(path, key).save({"phase": 0, "epoch": 3, "history": history, "kept": {}},
                               {"weights": [np.zeros(3, np.float32)]})
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.endswith(key)]
    # no layer, pooling, input size or weights recorded: "-"
    assert line.split() == ["my-flowers", "MobileNetV2", "-", "-", "-", "-", "3", "0.0",
                            "checkpoint", key]
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0
    assert key not in capsys.readouterr().out
    assert main(["cache", "rm", key, "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"removed {path}"
    assert not path.exists()


def test_cache_ls_tells_a_datasets_stores_apart_in_100_columns(tmp_path, capsys):
    """Two stores of one dataset differ in pooling and input size: ls shows both (it showed
    two identical rows); a long dataset name is cut in the middle, never the key."""
    data = tmp_path / ("holiday-photos-" * 5 + "2024")
    _images(data)
    folder = tmp_path / "cache"
    for backbone in ({}, {"pooling": "max", "input_size": 48}):
        extract(_config(data, folder, **backbone), progress=False)
    assert main(["cache", "ls", "--cache-dir", str(folder)]) == 0
    header, *lines, total = capsys.readouterr().out.splitlines()
    assert header.split() == ["dataset", "backbone", "layer", "pooling", "px", "weights",
                              "rows", "MB", "state", "key"]
    assert len(lines) == 2 and all(len(line) <= 100 for line in [header, *lines])
    words = [line.split() for line in lines]  # the layer, "(last conv)", is two words
    assert sorted(tuple(w[4:7]) for w in words) == [("avg", "32", "none"),
                                                   ("max", "48", "none")]
    assert all(w[0].startswith("holiday-") and w[0].endswith("-2024") and "…" in w[0]
               for w in words)
    assert {w[-1] for w in words} == {e.key for e in cache.entries(folder)}


def test_feature_extractor_stores_are_named_after_their_images_folder(tmp_path, image_file):
    """Not transform-<hash>: the images' folder. Two sets of images of one folder are two
    datasets: the second store does not replace the first."""
    from featx.features.transformer import FeatureExtractor

    photos = [str(image_file(tmp_path / "holiday" / f"p{i}.png", seed=i)) for i in range(4)]
    folder = tmp_path / "cache"
    fx = FeatureExtractor(weights="none", input_size=32, batch_size=8, cache_dir=str(folder),
                          progress=False)
    first = fx.transform(photos[:2])
    fx.transform(photos[2:])
    assert [e.dataset for e in cache.entries(folder)] == ["holiday", "holiday"]
    np.testing.assert_array_equal(fx.transform(photos[:2]), first)
