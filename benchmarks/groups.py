"""What grouping duplicates costs next to extraction: Flowers-17 extracted with the real
MobileNetV2 weights (../shared), its duplicate groups found and its grouped split made, then
the same grouping on synthetic stores of 100k rows (and 50k: the largest exact search) of
1,280 floats with planted copies, side by side in one run.

    make bench-groups          # or: .venv/bin/python benchmarks/groups.py [--rows 100000 50000]

The grouping is featx.features.extraction.find_groups (read the features, search each row's
neighbours, join the pairs, record them) and featx.data.groups.grouped_split; the synthetic
stores are written by featx.store.write.write_store as real ones are. PASS when the
grouping takes at most 10% of what extracting that many images takes at the extraction
speed measured here on Flowers-17.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from featx.core.config import Config
from featx.data.dataset import TRAIN
from featx.data.groups import group_sizes, grouped_split
from featx.features.extraction import extract, find_groups
from featx.store.blocks import BlockDir
from featx.store.read import FeatureStore
from featx.store.write import RowSource, write_duplicates, write_store

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLOWERS17 = SHARED / "datasets" / "flowers17"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
BUDGET = 0.10  # grouping at most this share of the extraction time
CLASSES = 100


def synthetic_store(path: Path, n: int, d: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A store of ``n`` rows like pooled ReLU features (non-negative; a median cosine of
    about 0.6 between rows, MobileNetV2's on Flowers-17 is 0.47): 2.5% of the rows are
    copies of another row, one in five of them exact (recorded as byte copies, as
    extraction does), the others with noise of 2% of the row's norm (cosine about 0.98).
    Returns the store and the planted pairs (copy, original)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % CLASSES).astype(np.int32)
    centres = np.abs(rng.normal(size=(CLASSES, d))).astype(np.float32)
    x = centres[labels] + np.abs(rng.normal(size=(n, d))).astype(np.float32)
    copies = rng.choice(n, n // 40, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), len(copies), replace=False)
    labels[copies] = labels[originals]
    x[copies] = x[originals]
    near = copies[n // 200:]  # the first n // 200 copies stay exact
    noise = rng.normal(size=(len(near), d)).astype(np.float32)
    x[near] += 0.02 * noise * np.linalg.norm(x[near], axis=1, keepdims=True) / np.sqrt(d)
    blocks = BlockDir(path, "bench", rows=n, block_rows=4096)
    for b in range(blocks.n_blocks):
        rows = blocks.rows_of(b)
        blocks.save(b, x[rows.start:rows.stop], np.ones(len(rows), bool), [""] * len(rows))
    del x
    write_store(path, feature_shape=(d,), source=RowSource(), old=None, blocks=blocks,
                paths=[f"c{labels[i]}/img_{i:07d}.jpg" for i in range(n)],
                signatures=[""] * n, labels=labels,
                label_names=[f"c{i}" for i in range(CLASSES)], split=np.zeros(n, np.int8),
                attrs={"key": "bench", "settings_key": "bench", "dataset": "bench",
                       "weights": "imagenet"})
    blocks.remove()
    write_duplicates(path, np.stack([copies[:n // 200], originals[:n // 200]], axis=1))
    return path, np.stack([copies, originals], axis=1)


def group(path: Path, labels: np.ndarray, config: Config) -> tuple[float, float, np.ndarray]:
    """(seconds to find and record the groups, seconds to split by them, the groups)."""
    p = SimpleNamespace(path=path, settings={"weights": "imagenet"})
    t0 = time.perf_counter()
    groups = find_groups(p, config)  # type: ignore[arg-type]
    found = time.perf_counter() - t0
    t0 = time.perf_counter()
    split = grouped_split(labels, groups, config.dataset.val, config.dataset.test, 42)
    seconds = time.perf_counter() - t0
    assert (split == TRAIN).any()
    return found, seconds, groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 50_000])
    ap.add_argument("--dim", type=int, default=1280)
    args = ap.parse_args()
    if not (FLOWERS17.is_dir() and WEIGHTS.is_file()):
        print(f"needs {FLOWERS17} and {WEIGHTS} (../shared)")
        return 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Config()
        config.dataset.root, config.cache_dir = str(FLOWERS17), f"{tmp}/cache"
        config.backbone.weights = str(WEIGHTS)
        t0 = time.perf_counter()
        r = extract(config, progress=False)
        wall = time.perf_counter() - t0
        with FeatureStore(r.path) as store:
            info, labels = store.groups.info, store.labels
        rate = r.rows / r.seconds
        print(f"Flowers-17: extracted {r.rows} images in {r.seconds:.1f} s ({rate:.1f} img/s; "
              f"the whole command {wall:.1f} s); {info['groups']} groups "
              f"({info['images']} images), {info['method']}")
        found, split_s, _ = group(r.path, labels, config)
        results.append(("Flowers-17", r.rows, found, split_s, r.seconds, ""))
        for n in args.rows:
            t0 = time.perf_counter()
            path, planted = synthetic_store(Path(tmp) / f"synthetic-{n}.h5", n, args.dim)
            made = time.perf_counter() - t0
            with FeatureStore(path) as store:
                labels = store.labels
            found, split_s, groups = group(path, labels, config)
            caught = float(np.mean(groups[planted[:, 0]] == groups[planted[:, 1]]))
            path.unlink()
            results.append((f"synthetic {n // 1000}k", n, found, split_s, n / rate,
                            f"; planted pairs grouped {caught:.1%}, {group_sizes(groups)[0]} "
                            f"groups (store written in {made:.0f} s)"))
    ok = True
    print(f"\n{'data':<16}{'rows':>8}{'find s':>9}{'split s':>9}{'extract s':>11}{'share':>8}")
    for name, n, found, split_s, extraction, note in results:
        share = (found + split_s) / extraction
        ok &= share <= BUDGET
        print(f"{name:<16}{n:>8}{found:>9.2f}{split_s:>9.2f}{extraction:>11.0f}{share:>8.1%}"
              f"{note}")
    print(f"\n{'PASS' if ok else 'FAIL'}: grouping <= {BUDGET:.0%} of extraction time at "
          f"{rate:.1f} img/s (extraction of the synthetic rows: at that speed, not run)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
