"""Synthetic class-per-folder datasets of any size, made of hard links to a few hundred small
JPEGs (no image data is duplicated: a million images cost a million inodes, not gigabytes).

    python benchmarks/synthetic.py DEST N [--classes 10] [--sources 300]

Layout: ``DEST/class-XX/dYYYY/imgZZZZZZZ.jpg``, 1,000 files a sub-folder (one folder of
100k entries makes every listing of it slow, and real datasets are rarely laid out so).
Growing an existing folder to a larger N keeps the files already there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PER_FOLDER = 1000


def sources(dest: Path, count: int = 300, size: int = 48) -> list[Path]:
    """``count`` small distinct JPEGs under ``dest/.sources`` (hidden: never listed)."""
    folder = dest / ".sources"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        path = folder / f"src{i:04d}.jpg"
        if not path.exists():
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            pixels[:, :, i % 3] = 40 + 70 * (i % 3)  # a class-ish tint
            Image.fromarray(pixels).save(path, quality=85)
        out.append(path)
    return out


def image_path(dest: Path, i: int, classes: int) -> Path:
    """Where image ``i`` lives: classes round-robin, 1,000 a sub-folder."""
    c = i % classes
    j = i // classes
    return dest / f"class-{c:02d}" / f"d{j // PER_FOLDER:04d}" / f"img{i:07d}.jpg"


def make(dest: Path, n: int, classes: int = 10, count: int = 300, start: int = 0) -> int:
    """Images ``start`` .. ``n - 1`` as hard links (those already there are kept); returns
    how many links were made."""
    srcs = sources(dest, count)
    made = 0
    last_dir = None
    for i in range(start, n):
        path = image_path(dest, i, classes)
        if path.parent != last_dir:
            path.parent.mkdir(parents=True, exist_ok=True)
            last_dir = path.parent
        try:
            os.link(srcs[(i * 7919) % len(srcs)], path)
            made += 1
        except FileExistsError:
            pass
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--sources", type=int, default=300)
    args = ap.parse_args(argv)
    made = make(args.dest, args.n, args.classes, args.sources)
    print(f"{args.dest}: {args.n} images ({made} new links)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
