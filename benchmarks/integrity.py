"""What the store's checksums cost: reading a 50k-row store with every block checked
against its SHA-256 (what classify, predict and the streaming learners do) against the
same reads with the check switched off, side by side in one run.

    make bench-integrity            # or: .venv/bin/python benchmarks/integrity.py [--rows N]

The store is synthetic (random float32 features, 1,280 wide: MobileNetV2's average-pooled
size), written by featx.store.write.write_store with its default chunking and lzf compression,
so its reads are what a real store's are. Rows alternate check / no check, three times;
the ratio of the medians is the cost. Also timed: opening the store (the column checksum
over labels, split, paths and ok) and the full verification of a cache hit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from featx.store.blocks import BlockDir
from featx.store.read import FeatureStore
from featx.store.write import RowSource, write_store

TARGET_READ = 1.25  # checked reads at most 25% slower than unchecked ones


def synthetic_store(path: Path, n: int, d: int) -> Path:
    rng = np.random.default_rng(0)
    blocks = BlockDir(path, "bench", rows=n, block_rows=4096)
    for b in range(blocks.n_blocks):
        rows = blocks.rows_of(b)
        blocks.save(b, rng.normal(size=(len(rows), d)).astype(np.float32),
                    np.ones(len(rows), bool), [""] * len(rows))
    labels = (np.arange(n) % 100).astype(np.int32)
    write_store(path, feature_shape=(d,), source=RowSource(np.full(n, -1), np.arange(n)),
                old=None, blocks=blocks, paths=[f"c{i % 100}/img_{i:07d}.jpg" for i in range(n)],
                signatures=[""] * n, labels=labels, label_names=[f"c{i}" for i in range(100)],
                split=(np.arange(n) % 4 == 0).astype(np.int8) * 2,
                attrs={"key": "bench", "settings_key": "bench", "dataset": "bench"})
    blocks.remove()
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=1280)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic_store(Path(tmp) / "bench-Synthetic-avg-0.h5", args.rows, args.dim)
        size = path.stat().st_size / 2**20
        opening = [timed(lambda: FeatureStore(path).close()) for _ in range(3)]
        checked, unchecked = [], []
        for _ in range(3):
            with FeatureStore(path) as store:
                checked.append(timed(store.features))
            with FeatureStore(path) as store:
                store.read_block = lambda b, s=store: s.file["features"][
                    b * s.rows_per_read:(b + 1) * s.rows_per_read]
                unchecked.append(timed(store.features))
        with FeatureStore(path) as store:
            verify = timed(store.verify)
    ratio = statistics.median(checked) / statistics.median(unchecked)
    print(f"store: {args.rows} rows x {args.dim} float32, {size:.0f} MiB on disk (lzf)")
    print(f"open (column checksum over labels, split, paths, ok): "
          f"{statistics.median(opening) * 1000:.0f} ms")
    print(f"read all features: checked {statistics.median(checked):.2f} s, unchecked "
          f"{statistics.median(unchecked):.2f} s (medians of 3, alternating)")
    print(f"cache-hit verification (once per file version): {verify:.2f} s")
    verdict = "PASS" if ratio <= TARGET_READ else "FAIL"
    print(f"  {verdict}  checked reads <= {TARGET_READ} x unchecked: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
