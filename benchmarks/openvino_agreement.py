"""How far OpenVINO's features are from TensorFlow's on real photographs (not a speed
benchmark: the bound behind the README's sentence and tests/test_trust.py's real-data test).

Every image of a folder (default: ../shared's Flowers-17) through one MobileNetV2 with the
ImageNet weights, once by TensorFlow (its traced function) and once by OpenVINO (the same
function converted), on the same batches. Prints the largest difference relative to the
largest feature, and the largest per-element relative difference among features above 1% of
the largest (smaller ones are all rounding).

    python benchmarks/openvino_agreement.py [--data DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / \
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def agreement(files: list[str], weights: Path, cache_dir: Path, batch: int = 32
              ) -> dict[str, float]:
    """Largest |OV - TF| / max |TF|, and the largest per-element relative difference of
    features above 1% of the largest, over ``files``."""
    from featx.core.config import BackboneConfig
    from featx.data.images import ReadErrors, read_batches
    from featx.features.backbones import Backbone

    config = BackboneConfig(name="MobileNetV2", weights=str(weights), input_size=224,
                            runtime="openvino")
    backbone = Backbone(config, seed=0, cache_dir=cache_dir)
    tf_forward, ov_forward = backbone.compiled(batch), backbone.openvino(batch)
    worst_abs, scale, worst_rel = 0.0, 0.0, 0.0
    tf_all, ov_all = [], []
    for _, images, _ in read_batches(files, 224, batch, ReadErrors(), resize=backbone.resize):
        n = len(images)
        padded = np.concatenate([images, np.zeros((batch - n, *images.shape[1:]), np.uint8)])
        tf_all.append(tf_forward(padded).numpy()[:n])
        ov_all.append(ov_forward(padded)[:n])
    tf_out, ov_out = np.concatenate(tf_all), np.concatenate(ov_all)
    scale = float(np.abs(tf_out).max())
    diff = np.abs(ov_out - tf_out)
    worst_abs = float(diff.max())
    big = np.abs(tf_out) > 0.01 * scale
    worst_rel = float((diff[big] / np.abs(tf_out[big])).max())
    return {"images": len(tf_out), "largest feature": scale, "max abs diff": worst_abs,
            "of the largest": worst_abs / scale, "max rel diff (features > 1%)": worst_rel,
            "features": int(tf_out.size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/datasets/flowers17"))
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    files = sorted(str(p) for p in Path(args.data).rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = files[:args.limit] if args.limit else files
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as cache:
        got = agreement(files, WEIGHTS, Path(cache))
    for name, value in got.items():
        print(f"{name:<30} {value:.3g}" if isinstance(value, float) else f"{name:<30} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
