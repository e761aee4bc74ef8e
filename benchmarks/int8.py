"""What caps int8 extraction, and what would lift it: decoding the JPEGs.

    .venv/bin/python benchmarks/int8.py [--images N]   # needs openvino, nncf and ../shared
    # the candidate decoder, where installed: pip install simplejpeg

With ``backbone.precision = "int8"`` MobileNetV2 computes several times faster than float32,
so the reader's share of the cores (decode + resize, one core's time a file) becomes what
limits featx end to end (``make bench ARGS="--only int8"`` prints it). One run, on N
Flowers-17 JPEGs (~500 px), side by side:

* featx's int8 MobileNetV2 bound (random weights, 224 px, batch 32, calibrated on the same
  files, as featx does), over one in-memory batch;
* one thread's time a file of featx's reader (``load_image``: Pillow, JPEG DCT-domain
  downscaling by ``draft``, EXIF, bilinear resize), and of its parts (decode, resize);
* the candidate: libjpeg-turbo's scaled decode through ``simplejpeg`` (the same DCT
  downscaling, no Pillow decoder object), then the same Pillow resize; whether every
  file gives featx's pixels exactly (a reader that changes a pixel changes every store's
  key), and its time a file;
* what each predicts for featx end to end at that bound: cores / (cores / bound + decode).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FLOWERS17 = REPO.parent / "shared" / "datasets" / "flowers17"
BATCH, SIZE = 32, 224


def per_file_ms(function, items: list, rounds: int = 3) -> float:
    """One thread's time an item, ms: the best of ``rounds`` passes."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for item in items:
            function(item)
        best = min(best, (time.perf_counter() - t0) * 1000 / len(items))
    return best


def int8_bound(files: list[Path]) -> float:
    """img/s of featx's int8 MobileNetV2 over one in-memory batch (median of 5 samples),
    calibrated on ``files`` as an extraction of them is."""
    from featx.core.config import Config
    from featx.data.images import load_image
    from featx.features.plan import plan

    with tempfile.TemporaryDirectory(prefix="featx-int8-") as tmp:
        root = Path(tmp) / "flowers17"
        for f in files:
            (root / f.parent.name).mkdir(parents=True, exist_ok=True)
            (root / f.parent.name / f.name).symlink_to(f)
        config = Config()
        config.dataset.root = str(root)
        config.backbone.weights = "none"
        config.backbone.runtime = "openvino"
        config.backbone.precision = "int8"
        config.cache_dir = str(Path(tmp) / "cache")
        forward = plan(config).backbone.openvino(BATCH)
        images = np.stack([load_image(str(f), SIZE) for f in (files * BATCH)[:BATCH]])
        forward(images)
        rates = []
        for _ in range(5):
            t0 = time.perf_counter()
            forward(images)
            forward(images)
            rates.append(2 * BATCH / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="Flowers-17 files (default "
                        "%(default)s, spread over every class)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from PIL import Image

    from featx.data.images import load_image, usable_cores

    every = sorted(FLOWERS17.glob("*/*.jpg"))
    if not every:
        print(f"int8: needs {FLOWERS17}", file=sys.stderr)
        return 2
    files = [every[i * len(every) // args.images] for i in range(min(args.images, len(every)))]
    cores = usable_cores()

    def draft_decode(f: Path) -> Image.Image:
        with Image.open(f) as img:
            img.draft("RGB", (SIZE, SIZE))
            img.load()
            return img.copy()

    decoded = [draft_decode(f) for f in files]
    rows = {"featx (load_image)": per_file_ms(lambda f: load_image(str(f), SIZE), files),
            "  its decode (Pillow draft)": per_file_ms(draft_decode, files),
            "  its resize (Pillow bilinear)": per_file_ms(
                lambda im: im.resize((SIZE, SIZE), Image.BILINEAR), decoded)}
    same = None
    if importlib.util.find_spec("simplejpeg") is not None:
        import simplejpeg

        def candidate(f: Path) -> np.ndarray:
            # the smallest libjpeg-turbo scale still >= SIZE on both sides, as draft picks
            pixels = simplejpeg.decode_jpeg(f.read_bytes(), colorspace="RGB",
                                            min_height=SIZE, min_width=SIZE)
            return np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), Image.BILINEAR))

        rows["simplejpeg + the same resize"] = per_file_ms(candidate, files)
        same = sum(np.array_equal(candidate(f), load_image(str(f), SIZE)) for f in files)
    print(f"quantising featx's int8 MobileNetV2 on the {len(files)} files", flush=True)
    bound = int8_bound(files)
    print()
    print(f"decoding {len(files)} Flowers-17 JPEGs to {SIZE} px, one thread (best of 3), and "
          f"what it predicts for int8 end to end at its bound ({bound:.0f} img/s, {cores} "
          "cores):")
    for name, ms in rows.items():
        predicted = cores / (cores / bound + ms / 1000)
        whole = not name.startswith("  ")
        print(f"  {name:<31} {ms:5.2f} ms a file" + (
            f"  -> {predicted:5.0f} img/s end to end ({predicted / bound:.2f} of the bound)"
            if whole else ""))
    if same is None:
        print("  simplejpeg not installed (pip install simplejpeg): no candidate row")
    else:
        print(f"  simplejpeg's pixels equal featx's in {same} of {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
