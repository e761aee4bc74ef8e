"""Time and peak memory of `featx audit` on a synthetic store (default 100,000 rows x 1280
float32 features, 20 classes: class centres plus noise, so that the classes can be learned).

    python benchmarks/audit.py [--rows 100000] [--dim 1280]

Runs `featx audit --store` in a child process and reports its wall time and peak resident
memory (ru_maxrss of the child), with the audit's own step timings from its page.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from featx.store.blocks import BlockDir
from featx.store.write import RowSource, write_store

REPO = Path(__file__).resolve().parents[1]


def clustered_store(path: Path, n: int, d: int, classes: int = 20) -> Path:
    rng = np.random.default_rng(0)
    centres = rng.gamma(1.0, 1.0, size=(classes, d)).astype(np.float32)
    labels = (np.arange(n) % classes).astype(np.int32)
    blocks = BlockDir(path, "bench", rows=n, block_rows=4096)
    for b in range(blocks.n_blocks):
        rows = blocks.rows_of(b)
        x = centres[labels[rows.start:rows.stop]] + rng.gamma(
            1.0, 0.6, size=(len(rows), d)).astype(np.float32)
        blocks.save(b, x, np.ones(len(rows), bool), [""] * len(rows))
    write_store(path, feature_shape=(d,), source=RowSource(np.full(n, -1), np.arange(n)),
                old=None, blocks=blocks,
                paths=[f"c{i % classes}/img_{i:07d}.jpg" for i in range(n)],
                signatures=[""] * n, labels=labels,
                label_names=[f"c{i}" for i in range(classes)],
                split=(np.arange(n) % 4 == 0).astype(np.int8) * 2,
                attrs={"key": "bench", "settings_key": "bench", "dataset": "bench"})
    blocks.remove()
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = clustered_store(Path(tmp) / "bench-Synthetic-avg-0.h5", args.rows, args.dim)
        print(f"store: {args.rows} rows x {args.dim} float32 "
              f"({store.stat().st_size / 2**20:.0f} MiB), written in "
              f"{time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "featx.cli", "audit", "--store",
                               str(store), "--out", str(Path(tmp) / "audit")], cwd=REPO,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        if done.returncode:
            print(done.stderr[-3000:])
            return 1
        page = (Path(tmp) / "audit" / "audit.html").read_text()
        steps = re.search(r"<p>(read features [^<]*)</p>", page)
        method = re.search(r"neighbours: ([^)]*\))", page)
        print(f"featx audit: {seconds:.0f} s wall, peak memory {peak:.2f} GiB")
        print(f"  steps: {steps.group(1) if steps else '?'}")
        print(f"  neighbour search: {method.group(1) if method else '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
