"""SIGKILL an extraction at several points; the resumed store must equal an uninterrupted one
and must not recompute finished blocks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

BATCH = 2  # block = 8 batches = 16 rows
N_IMAGES = 96


def _make_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / f"class {i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i % 7, 50, 3), dtype=np.uint8)).save(
            folder / f"im{i:03d}.png")


def _cmd(data: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "featx.cli", "extract", "--data", str(data), "--weights",
            "none", "--input-size", "96", "--batch-size", str(BATCH), "--cache-dir", str(cache),
            "--no-progress"]


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _read(store: Path) -> tuple[list, np.ndarray]:
    with h5py.File(store, "r") as f:
        return [p.decode() for p in f["paths"][:]], f["features"][:]


def _kill_when(cmd: list[str], ready, timeout: float = 240) -> bool:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true; False if it finished first."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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
def reference(tmp_path_factory) -> tuple[Path, list, np.ndarray]:
    root = tmp_path_factory.mktemp("killdata")
    data = root / "data"
    _make_dataset(data)
    cache = root / "cache-ref"
    subprocess.run(_cmd(data, cache), env=_env(), check=True, capture_output=True)
    (store,) = cache.glob("*.h5")
    paths, features = _read(store)
    assert len(paths) == N_IMAGES
    return data, paths, features


def _blocks(cache: Path) -> int:
    return sum(len(list(p.glob("block-*.npz"))) for p in cache.glob("*.partial"))


@pytest.mark.parametrize("point", ["start", "1 block", "3 blocks", "5 blocks", "assembling"])
def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path, point):
    data, ref_paths, ref_features = reference
    cache = tmp_path / "cache"
    if point == "start":
        t0 = time.monotonic()
        killed = _kill_when(_cmd(data, cache), lambda: time.monotonic() - t0 > 3.0)
    elif point == "assembling":
        killed = _kill_when(_cmd(data, cache),
                            lambda: any(cache.glob("*.assembling")) if cache.exists() else False)
    else:
        k = int(point.split()[0])
        killed = _kill_when(_cmd(data, cache),
                            lambda: cache.exists() and _blocks(cache) >= k)
    assert killed, f"the extraction finished before the kill point {point!r}"
    assert not list(cache.glob("*.h5")), "a killed run left a store under its final name"
    done_blocks = _blocks(cache)

    out = subprocess.run(_cmd(data, cache), env=_env(), check=True, capture_output=True,
                         text=True).stdout
    extracted = int(re.search(r"extracted (\d+) images", out).group(1))
    # Finished blocks are not recomputed.
    assert extracted == N_IMAGES - min(done_blocks * 8 * BATCH, N_IMAGES)
    (store,) = cache.glob("*.h5")
    paths, features = _read(store)
    assert paths == ref_paths
    np.testing.assert_allclose(features, ref_features, atol=1e-5)
    assert not list(cache.glob("*.partial")) and not list(cache.glob("*.assembling"))
