"""What an int8 MobileNetV2 (OpenVINO post-training quantisation, NNCF) would give featx.

    .venv/bin/python benchmarks/int8.py      # needs openvino and nncf, and ../shared

One run, side by side: featx's float32 OpenVINO model of MobileNetV2 (ImageNet weights,
224 px, batch 32, backbone.runtime = "openvino") and the same model quantised to int8 by
``nncf.quantize`` (default preset, calibrated on 320 training images of Flowers-17 only).
It prints the speed of both over in-memory batches (alternating samples, medians; the machine
may be shared), how far the int8 features are from the float32 ones, and the rank-1 of
featx's logistic regression (quick grid) on Flowers-17's 75/25 split for seeds 42-44 with
each, paired. featx does not ship this option: see README "A faster runtime".
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLOWERS17 = SHARED / "datasets" / "flowers17"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
BATCH, SAMPLES, SEEDS, CALIBRATION = 32, 7, (42, 43, 44), 320


def log(message: str) -> None:
    print(f"[int8 {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import nncf
    import openvino as ov

    from featx.core.config import BackboneConfig, DatasetConfig
    from featx.data.dataset import TRAIN, load_dataset, stratified_split
    from featx.data.images import ReadErrors, read_batches
    from featx.features.backbones import Backbone
    from featx.features.runtime import OpenVINOForward, load_or_convert, model_key, thread_split
    from featx.learn.learners import fit

    if not (FLOWERS17.is_dir() and WEIGHTS.is_file()):
        print(f"int8: needs {FLOWERS17} and {WEIGHTS}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    data = load_dataset(DatasetConfig(root=str(FLOWERS17)))
    files = [data.absolute(i) for i in range(len(data))]
    log(f"decoding {len(files)} images")
    images = np.concatenate([b for _, b, _ in read_batches(files, 224, BATCH, ReadErrors())])
    backbone = Backbone(BackboneConfig(name="MobileNetV2", weights=str(WEIGHTS),
                                       runtime="openvino"),
                        cache_dir=Path(os.environ.get("TMPDIR", "/tmp")) / "featx-int8")
    model = load_or_convert(lambda: backbone.compiled(BATCH), backbone.cache_dir,
                            backbone.spec.name, BATCH,
                            model_key(backbone.describe(), BATCH))
    train = np.flatnonzero(stratified_split(data.labels, 0.0, 0.25, SEEDS[0]) == TRAIN)
    calib = images[np.random.default_rng(0).choice(train, CALIBRATION, replace=False)]
    log(f"quantising (nncf {nncf.__version__}, {CALIBRATION} training images)")
    tq = time.perf_counter()
    int8 = nncf.quantize(model, nncf.Dataset([calib[i:i + BATCH]
                                              for i in range(0, CALIBRATION, BATCH)]),
                         subset_size=CALIBRATION)
    tq = time.perf_counter() - tq
    split = thread_split()
    runs = {"float32": OpenVINOForward(model, split), "int8": OpenVINOForward(int8, split)}

    def features(run: OpenVINOForward) -> np.ndarray:
        out = []
        for i in range(0, len(images), BATCH):
            x = images[i:i + BATCH]
            pad = np.zeros((BATCH - len(x), *x.shape[1:]), np.uint8)
            out.append(run(np.concatenate([x, pad]))[:len(x)])
        return np.concatenate(out)

    log("features of every image, both models")
    feats = {name: features(run) for name, run in runs.items()}
    x = images[:BATCH]
    speed: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(SAMPLES):  # alternating: the machine's load drifts alike for both
        for name, run in runs.items():
            run(x)
            t = time.perf_counter()
            run(x), run(x)
            speed[name].append(2 * BATCH / (time.perf_counter() - t))
    ratio = statistics.median(a / b for a, b in zip(speed["int8"], speed["float32"]))
    scale = np.abs(feats["float32"]).max()
    diff = np.abs(feats["int8"] - feats["float32"])
    rank1: dict[str, list[float]] = {name: [] for name in feats}
    for seed in SEEDS:
        s = stratified_split(data.labels, 0.0, 0.25, seed)
        for name, f in feats.items():
            result = fit("logreg", f[s == TRAIN], data.labels[s == TRAIN], quick=True, seed=0)
            rank1[name].append(float((result.model.predict(f[s != TRAIN])
                                      == data.labels[s != TRAIN]).mean()))
    delta = [a - b for a, b in zip(rank1["int8"], rank1["float32"])]
    print()
    print(f"int8 vs float32, MobileNetV2 ImageNet, 224 px, batch {BATCH}, OpenVINO "
          f"{ov.__version__}, {split.describe()}")
    for name in runs:
        each = ", ".join(f"{r:.3f}" for r in rank1[name])
        print(f"  {name:<8} {statistics.median(speed[name]):6.1f} img/s (median of {SAMPLES})"
              f"   rank-1 {np.mean(rank1[name]):.3f} ({each})")
    print(f"  int8 / float32 speed: {ratio:.2f}x (median of paired samples); quantisation "
          f"took {tq:.0f} s")
    print(f"  feature difference: max {diff.max() / scale:.3f}, mean {diff.mean() / scale:.4f} "
          f"of the largest float32 feature")
    print(f"  rank-1 change (int8 - float32), logreg quick, seeds {SEEDS}: "
          f"{np.mean(delta):+.3f} ({', '.join(f'{d:+.3f}' for d in delta)})")
    print(f"(took {(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
