"""Updating a store in place: new images are appended as a segment, the previous store's
features are never copied or rewritten, rows stay in dataset order, checksums hold, and a
SIGKILL during an update leaves the previous store complete and usable. (The writer's own
rules, compaction and new splits: tests/test_write.py; a damaged segment: tests/test_read.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ADDED, FIRST, REPO, assert_close, random_pngs, small_config, store_then_update

from featx.core.layout import segments_dir
from featx.features.extraction import extract
from featx.store import write as store_write
from featx.store.read import FeatureStore


@pytest.fixture
def updated(tmp_path):
    """A store of FIRST, then the same folder with ADDED and one image removed."""
    return store_then_update(tmp_path)


def test_adding_images_appends_and_never_rewrites_old_rows(updated, tmp_path, monkeypatch):
    config, data, first, before, inode = updated
    passed = []  # images through the model
    from featx.features import backbones

    original = backbones.Backbone.batched

    def counting(self, batch):
        forward = original(self, batch)

        def run(images, ok):
            passed.append(int(ok.sum()))
            return forward(images, ok)
        return run

    monkeypatch.setattr(backbones.Backbone, "batched", counting)
    monkeypatch.setattr(store_write, "write_store", lambda *a, **k: pytest.fail(
        "an update of 3 images rewrote the whole store"))
    r = extract(config, progress=False)
    assert (r.extracted, r.dropped, r.reused) == (3, 1, len(FIRST) - 1)
    assert sum(passed) == 3  # only the new images went through the model
    assert not first.path.exists()  # superseded ...
    seg0 = segments_dir(r.path) / "seg-000.h5"
    assert seg0.stat().st_ino == inode  # ... its file is the new store's first segment, as is
    with FeatureStore(r.path) as s:
        assert s.segmented and s.physical_rows == len(FIRST) + 3
        s.verify()  # every block checked against its segment's checksums
        paths, feats = s.paths, s.features()
    monkeypatch.undo()
    fresh = extract(small_config(data, tmp_path / "fresh"), progress=False)
    with FeatureStore(fresh.path) as s:
        assert paths == s.paths  # dataset order, as a fresh store, new rows in place
        fresh_feats, fresh_split = s.features(), s.split
        assert fresh.key == r.key
    for p, row in zip(paths, feats):
        if p in before:
            np.testing.assert_array_equal(row, before[p])
    assert_close(feats, fresh_feats)
    with FeatureStore(r.path) as s:
        np.testing.assert_array_equal(s.split, fresh_split)
    assert extract(config, progress=False).cache_hit


KILLER = """
import sys, time
import featx.store.write as store_write
original = store_write._write_segment
def slow(*args, **kwargs):
    original(*args, **kwargs)
    open(sys.argv[2], "w").close()
    time.sleep(60)
store_write._write_segment = slow
from featx.cli import main
sys.exit(main(["extract", "--data", sys.argv[1], "--weights", "none", "--input-size", "32",
               "--batch-size", "4", "--cache-dir", sys.argv[3], "--no-progress"]))
"""


@pytest.mark.slow
def test_sigkill_during_an_update_leaves_the_previous_store_usable(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    random_pngs(data, FIRST)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-c", KILLER, str(data), str(tmp_path / "written"), str(cache)]
    extract(small_config(data, cache), progress=False)
    (old,) = cache.glob("*.h5")
    with FeatureStore(old) as s:
        old_paths, old_feats = s.paths, s.features()
    old_bytes = old.read_bytes()
    random_pngs(data, ADDED, seed=1)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "written").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert proc.poll() is None, "the update finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # the new segment written, the new store not yet
    proc.wait()
    assert list(cache.glob("*.h5")) == [old]  # no new store under a final name
    assert old.read_bytes() == old_bytes  # the previous store was never written to
    with FeatureStore(old) as s:
        s.verify()
        assert s.paths == old_paths
        np.testing.assert_array_equal(s.features(), old_feats)
    r = extract(small_config(data, cache), progress=False)  # the next run completes the update
    # from the killed run's finished blocks (kept for a resume): no image extracted again
    assert (r.extracted, r.reused) == (0, len(FIRST) + len(ADDED))
    with FeatureStore(r.path) as s:
        s.verify()
        assert len(s) == len(FIRST) + len(ADDED)
    assert [p.name for p in cache.glob("*.h5")] == [r.path.name]
    assert not list(cache.glob("*.assembling")) and not list(cache.glob("*.partial"))


