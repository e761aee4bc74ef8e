"""SIGKILL an extraction at several points, each run resuming the one killed before it; the
finished store must equal an uninterrupted one, and finished blocks are never recomputed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import REPO, assert_close, featx_command, featx_here
from PIL import Image

from featx.core.config import Config
from featx.features.extraction import extract

pytestmark = pytest.mark.slow

BATCH = 2  # block = 8 batches = 16 rows
BLOCK_ROWS = 8 * BATCH
N_IMAGES = 96
SIZE = 96
# One process per point, each resuming what the one before left: before any block, after
# one, after three (a resumed run adding blocks), while assembling (all blocks done).
KILL_POINTS = ["start", "1 block", "3 blocks", "assembling"]


def _make_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / f"class {i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i % 7, 50, 3), dtype=np.uint8)).save(
            folder / f"im{i:03d}.png")


def _args(data: Path, cache: Path) -> list:
    return ["extract", "--data", data, "--weights", "none", "--input-size", SIZE,
            "--batch-size", BATCH, "--cache-dir", cache, "--no-progress"]


def _cmd(data: Path, cache: Path) -> list[str]:
    return featx_command(*_args(data, cache))


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _read(store: Path) -> tuple[list, np.ndarray]:
    with h5py.File(store, "r") as f:
        return [p.decode() for p in f["paths"][:]], f["features"][:]


def _kill_when(cmd: list[str], ready, log: Path, timeout: float = 240) -> bool:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true; False if it finished first.
    Its stderr goes to ``log``."""
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=err)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str, list, np.ndarray]:
    """The uninterrupted store, extracted in this process (the same job as ``_cmd``)."""
    root = tmp_path_factory.mktemp("killdata")
    data = root / "data"
    _make_dataset(data)
    config = Config()
    config.dataset.root = str(data)
    config.backbone.weights = "none"
    config.backbone.input_size = SIZE
    config.extract.batch_size = BATCH
    config.cache_dir = str(root / "cache-ref")
    result = extract(config, progress=False)
    paths, features = _read(result.path)
    assert len(paths) == N_IMAGES
    return data, result.path.name, paths, features


def _block_files(cache: Path) -> dict[str, int]:
    """The finished blocks: name -> modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in cache.glob("*.partial/block-*.npz")}


def _ready(point: str, cache: Path, kept: int):
    """When to kill the run at ``point``, ``kept`` blocks having been left before it (a
    resumed run is killed only once it has added a block of its own)."""
    if point == "start":  # still starting (importing TensorFlow, building the model)
        t0 = time.monotonic()
        return lambda: time.monotonic() - t0 > 3.0
    if point == "assembling":
        return lambda: cache.exists() and any(cache.glob("*.assembling"))
    k = max(int(point.split()[0]), kept + 1)
    return lambda: cache.exists() and len(_block_files(cache)) >= k


def test_sigkill_at_each_point_then_resume_equals_uninterrupted(reference, tmp_path):
    data, name, ref_paths, ref_features = reference
    cache = tmp_path / "cache"
    n_blocks = -(-N_IMAGES // BLOCK_ROWS)
    kept: dict[str, int] = {}
    for point in KILL_POINTS:
        log = tmp_path / f"{point}.log"
        assert _kill_when(_cmd(data, cache), _ready(point, cache, len(kept)), log), \
            f"the extraction finished before the kill point {point!r}"
        assert not list(cache.glob("*.h5")), f"killed at {point!r}: a store under its final name"
        if kept:  # this run took the blocks left before it as done ...
            assert f"resuming: {len(kept)} of {n_blocks} blocks" in log.read_text(), point
        blocks = _block_files(cache)
        # ... and neither rewrote nor removed them
        assert {b: blocks.get(b) for b in kept} == kept, point
        kept = blocks
    assert len(kept) == n_blocks  # killed while assembling: every block was finished

    done = featx_here(*_args(data, cache))  # the last resume, killed by no one: here
    done.check_returncode()
    extracted = int(re.search(r"extracted (\d+) images", done.stdout).group(1))
    assert extracted == N_IMAGES - min(len(kept) * BLOCK_ROWS, N_IMAGES)
    (store,) = cache.glob("*.h5")
    assert store.name == name  # the same key as the uninterrupted run
    paths, features = _read(store)
    assert paths == ref_paths
    assert_close(features, ref_features)
    assert not list(cache.glob("*.partial")) and not list(cache.glob("*.assembling"))
