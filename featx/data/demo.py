"""The embedded default dataset: scikit-learn's handwritten digits as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from featx.core.files import write_atomic


def export_digits(root: str | Path) -> Path:
    """Write the 1,797 8x8 digits as ``root/<digit>/<index>.png`` (once; kept if present)."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    done = root / ".complete"
    if done.exists():
        return root
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        # 0-16 ink levels -> 0-255, dark ink on white paper like a scanned digit.
        pixels = (255 - image * (255.0 / 16.0)).round().astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{index:04d}.png")
    write_atomic(done, f"{len(digits.images)} images\n")
    return root
