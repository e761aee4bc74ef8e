"""featx extraction benchmark: featx end to end vs the compute-only bound vs the naive loop.

    make bench                      # or: .venv/bin/python benchmarks/bench.py [--help]

For MobileNetV2 and ResNet50 (random weights: the speed is the same as with ImageNet ones,
and nothing is downloaded) at 224x224, batch 32, on a subset of flowers17 (~500px JPEGs) and
flowers5 (128px JPEGs), one run measures side by side:

* bound: the same model (``Backbone.compiled``: preprocess + model(x, training=False)) in a
  ``tf.function`` at the same batch size over uint8 batches already in memory. It is sampled
  before and after every featx and naive run; each run is divided by the mean of its two
  neighbouring samples, and the table gives medians of those ratios.
* featx: ``featx.features.extraction.extract(config, progress=False)`` over a temporary folder of
symlinks
  to the subset, with a temporary cache folder (never a cache hit): decode, resize,
  preprocess, model, store write. "steady" is featx's own ``ExtractResult.images_per_second``;
  "wall" is rows / wall time of the whole ``extract()`` call (dataset scan, model build,
  tracing and the final HDF5 assembly included).
* naive: what a user writes by hand: load one image at a time with PIL (keras.utils.load_img),
  resize to 224, ``preprocess_input``, ``model.predict`` on batches of 32, append to a list,
  write everything to HDF5 at the end (the model is built and warmed up outside the timing).
  It runs in its own process, without featx and with the environment `make bench` was started
  with, so that TensorFlow settings featx makes (threads, oneDNN) do not leak into it.
* OpenVINO (when installed, ``pip install featx[openvino]``): the same backbone with
  ``backbone.runtime = "openvino"``. Its bound (``Backbone.openvino``: the converted model,
  one synchronous float32 request over the same in-memory batch) is sampled beside
  TensorFlow's, and featx end to end runs with it after the TensorFlow runs; its converted
  model is made once, before (the conversion is paid once per cache folder). The thread split
  (featx.features.runtime.thread_split) is printed with the table, and so is what decoding's share
  of
  the cores predicts: each file also costs one core ``load_image``'s time (measured here, one
  thread), so were the bound using every core, end to end would reach cores / (cores / bound
  + decode time) of it. (It is not a ceiling: the bound leaves its cores idle a little at
  every layer's end, and decoding fills some of that.)
* KerasHub backbones (featx/features/hub.py; needs ``pip install featx[hub]``): ViT-B/16,
  DINOv2-S/14 and CLIP-B/32's image tower at 224 px, built from their published
  configurations with random weights and saved as local preset folders (nothing is
  downloaded; random weights run at a real preset's speed, but say nothing of its accuracy).
  Each gets the TensorFlow bound, featx end to end, and with OpenVINO its bound and featx end
  to end, beside the same figures of MobileNetV2 and ResNet50 from the rows above, with each
  backbone's feature width (``backbone.pooling`` avg: the mean of the patch tokens).
* memory: peak resident memory (VmHWM) of a featx extraction of N and of 4N images
  (MobileNetV2, flowers17; 4N = the same files under 4x distinct names), each in a fresh process.
* int8 (when OpenVINO and NNCF are installed; ``--only int8`` runs this part alone, about 10
  minutes): ``backbone.precision = "int8"`` beside float32 OpenVINO and TensorFlow, MobileNetV2
  and ResNet50 on flowers17. Speed: the three bounds sampled side by side (the int8 model
  quantised once before, on the subset's own images, as featx does), then featx end to end
  with each runtime, each run against the TensorFlow bound samples around it; and what
  decoding alone reads (featx's reader over the same files on every core, no model) with
  what its share of the cores predicts for int8 end to end. Accuracy: all of Flowers-17 with
  the real MobileNetV2 weights (../shared/weights), 224 px, extracted with float32 OpenVINO
  and with int8, then ``classify.repeats = 5`` (logistic regression) on each store and
  ``featx runs --compare`` (int8 - float32 rank-1 over the 5 splits, paired).

The machine may be shared: read ratios and medians, and the "bg" column (cores busy outside
this process during the row, from /proc/stat). Missing a target is reported, never an error;
missing data under ../shared is (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]
SHARED = Path("../shared")  # relative to the repository root
DATASETS = ("flowers17", "flowers5")
MODELS = ("MobileNetV2", "ResNet50")
DEFAULT_IMAGES = {"MobileNetV2": 256, "ResNet50": 128}  # per end-to-end measurement
DEFAULT_REPEATS = {"MobileNetV2": 3, "ResNet50": 1}  # featx runs per row
BATCH = 32
SIZE = 224
BOUND_BATCHES = {"MobileNetV2": 3, "ResNet50": 1}  # timed batches per bound sample

TARGET_BOUND = 0.85  # featx / bound, MobileNetV2 and ResNet50 on flowers17
TARGET_NAIVE = 3.0  # featx / naive, MobileNetV2
TARGET_MEMORY = 1.15  # peak RSS at 4N / at N
# featx end to end with OpenVINO / TensorFlow's compute-only bound, on flowers17 (issue 15)
TARGET_OV_OVER_TF = {"MobileNetV2": 1.5, "ResNet50": 1.15}
TARGET_OV_OWN = {"MobileNetV2": 0.85}  # featx end to end with OpenVINO / OpenVINO's bound
# The real MobileNetV2 weights under ../shared (the int8 accuracy row)
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# KerasHub backbones at their published configurations (random weights), images per row
HUB_MODELS = ("ViT-B/16", "DINOv2-S/14", "CLIP-B/32")
HUB_IMAGES = 64


def die(message: str) -> NoReturn:
    print(f"bench: {message}", file=sys.stderr)
    sys.exit(2)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- machine load

def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall time of a block, and how many cores other processes kept busy meanwhile."""

    def __enter__(self) -> Meter:
        self.ticks, self.cpu, self.t0 = _cpu_ticks(), _own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        ticks, cpu = _cpu_ticks(), _own_cpu()
        self.background = float("nan")
        if self.ticks and ticks and self.seconds > 0:
            hz = os.sysconf("SC_CLK_TCK")
            busy = (ticks[0] - self.ticks[0]) / hz
            self.background = max(0.0, busy - (cpu - self.cpu)) / self.seconds


# --------------------------------------------------------------------------- data

def data_paths(shared: Path) -> dict[str, Path]:
    roots = {name: shared / "datasets" / name for name in DATASETS}
    missing = [str(p) for p in roots.values() if not p.is_dir()]
    if missing:
        die("real data not found: " + ", ".join(missing) + "\n"
                 f"  The benchmark reads {shared}/datasets/{{flowers17,flowers5}} "
                 "(class-per-folder JPEGs) beside the repository; "
                 "pass --shared DIR if they live elsewhere.")
    return roots


def list_images(root: Path) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png"}
    return sorted(p for p in root.glob("*/*") if p.suffix.lower() in exts and p.is_file())


def decode_ms(files: list[Path], rounds: int = 2) -> float:
    """One thread's time to read a file as featx does (``load_image``: decode and resize),
    ms; the best of ``rounds`` passes over ``files``."""
    from featx.data.images import load_image

    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for f in files:
            load_image(str(f), SIZE)
        best = min(best, (time.perf_counter() - t0) * 1000 / len(files))
    return best


def decode_share(decode: float, bound: float, cores: int) -> float:
    """The part of a runtime's bound (img/s) an end-to-end run reaches when each image also
    costs ``decode`` ms of one core and the bound used every core: cores / (cores / bound +
    decode / 1000), over the bound."""
    return 1.0 / (1.0 + decode / 1000 * bound / cores)


def pick(files: list[Path], n: int) -> list[Path]:
    """n files spread evenly over the sorted list (so over every class folder)."""
    n = min(n, len(files))
    return [files[i * len(files) // n] for i in range(n)]


def link_subset(files: list[Path], dest: Path, copies: int = 1) -> Path:
    """A class-per-folder dataset of symlinks to ``files`` (``copies`` distinct names each)."""
    for f in files:
        folder = dest / f.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            name = f.name if copies == 1 else f"c{c}_{f.name}"
            (folder / name).symlink_to(f.resolve())
    return dest


# --------------------------------------------------------------------------- measurements

def featx_config(model: str, root: Path, cache: Path, runtime: str = "tensorflow"):
    from featx.core.config import Config

    config = Config()
    config.dataset.root = str(root)
    config.backbone.name = model
    config.backbone.weights = "none"
    config.backbone.runtime = runtime
    config.extract.batch_size = BATCH
    config.cache_dir = str(cache)
    return config


def run_featx(model: str, root: Path, work: Path, runtime: str = "tensorflow",
              precision: str = "float32") -> tuple[int, float, float, float]:
    """(rows, steady img/s, wall img/s, background cores) of one featx extraction. OpenVINO's
    converted (or int8) model is taken from ``work``, where the OpenVINO (int8) bound made
    it: the conversion is paid once per cache folder, not per extraction."""
    from featx.core.layout import OPENVINO_DIR
    from featx.features.extraction import extract

    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    if runtime == "openvino":
        (cache / OPENVINO_DIR).symlink_to(OVBound.cache(work) / OPENVINO_DIR)
    config = featx_config(model, root, cache, runtime)
    config.backbone.precision = precision
    with Meter() as m:
        result = extract(config, progress=False)
    if result.cache_hit or not result.extracted:
        raise RuntimeError(f"featx extraction of {root} was a cache hit: nothing measured")
    wall = result.extracted / m.seconds
    steady = result.images_per_second or wall
    return result.extracted, steady, wall, m.background


class Bound:
    """The compute-only bound: featx's backbone in a tf.function over in-memory uint8 batches."""

    def __init__(self, model: str) -> None:
        from featx.core.config import BackboneConfig
        from featx.features.backbones import Backbone

        # featx's own tf.function, as extract() uses it
        self.forward = Backbone(BackboneConfig(name=model, weights="none")).compiled(BATCH)
        self.batches = max(1, BOUND_BATCHES.get(model, 1))

    def load(self, files: list[Path]) -> None:
        """Decode a batch's worth of real images once (uint8 in memory) and warm up."""
        import numpy as np
        import tensorflow as tf

        from featx.data.images import load_image

        images = np.stack([load_image(str(f), SIZE) for f in (files * BATCH)[:BATCH]])
        self.images = tf.constant(images)
        self.forward(self.images).numpy()

    def sample(self) -> tuple[float, float]:
        self.forward(self.images).numpy()  # untimed: the first batch after a pause is slower
        with Meter() as m:
            for _ in range(self.batches):
                self.forward(self.images).numpy()
        return self.batches * BATCH / m.seconds, m.background


class OVBound:
    """OpenVINO's compute-only bound: featx's converted backbone (``Backbone.openvino``, the
    same function as the TensorFlow bound's) over the same in-memory uint8 batch."""

    def __init__(self, model: str, work: Path) -> None:
        from featx.features.backbones import Backbone

        # the extraction's backbone (seeded by dataset.seed): featx's runs find its model
        config = featx_config(model, Path("."), self.cache(work), "openvino")
        backbone = Backbone(config.backbone, seed=config.dataset.seed,
                            cache_dir=self.cache(work))
        self.forward = backbone.openvino(BATCH)
        self.batches = max(1, BOUND_BATCHES.get(model, 1))

    @staticmethod
    def cache(work: Path) -> Path:
        return work / "openvino-models"

    def load(self, images) -> None:
        self.images = images.numpy()
        self.forward(self.images)

    def sample(self) -> tuple[float, float]:
        self.forward(self.images)
        with Meter() as m:
            for _ in range(self.batches):
                self.forward(self.images)
        return self.batches * BATCH / m.seconds, m.background


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


class Naive:
    """The loop from the book: PIL one image at a time, model.predict per batch of 32.

    It runs in its own process with the environment the benchmark was started with and
    without importing featx, as a user's own script would (anything featx sets up for
    TensorFlow does not reach it). The process is kept for all rows of a model and is idle
    while the other measurements run.
    """

    def __init__(self, model: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--naive-child", model],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.setup = self._reply()  # built and warmed up: its TF settings

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("BENCH-NAIVE "):
                return json.loads(line.split(" ", 1)[1])
        raise RuntimeError(f"the naive baseline process died (exit {self.proc.wait()})")

    def run(self, files: list[Path], out: Path) -> tuple[float, float]:
        self.proc.stdin.write(json.dumps({"files": [str(f) for f in files],
                                          "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        return reply["ips"], reply["bg"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def naive_child(model: str) -> None:
    """The naive baseline's process: build, warm up, then run each request from stdin."""
    import h5py
    import keras
    import numpy as np

    app = getattr(keras.applications, model)
    module = getattr(keras.applications, {"MobileNetV2": "mobilenet_v2",
                                          "ResNet50": "resnet50"}[model])
    net = app(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    net.predict(np.zeros((BATCH, SIZE, SIZE, 3), np.float32), verbose=0)
    print("BENCH-NAIVE " + json.dumps(tf_settings()), flush=True)
    for request in sys.stdin:
        job = json.loads(request)
        files = job["files"]
        with Meter() as m:
            features = []
            for start in range(0, len(files), BATCH):
                batch = [keras.utils.img_to_array(keras.utils.load_img(f, target_size=(SIZE, SIZE)))
                         for f in files[start:start + BATCH]]
                x = module.preprocess_input(np.array(batch))
                features.append(net.predict(x, batch_size=BATCH, verbose=0))
            with h5py.File(job["out"], "w") as h5:
                h5.create_dataset("features", data=np.concatenate(features))
                h5.create_dataset("paths", data=files)
        print("BENCH-NAIVE " + json.dumps({"ips": len(files) / m.seconds,
                                           "bg": m.background}), flush=True)


@dataclass
class Row:
    """One (model, dataset): every sample, and each featx/naive run divided by the mean of
    the bound samples taken just before and just after it (that cancels most of the drift
    of a shared machine's load)."""

    model: str
    dataset: str
    rows: int = 0
    bound: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)
    steady_rel: list[float] = field(default_factory=list)
    wall_rel: list[float] = field(default_factory=list)
    naive_rel: list[float] = field(default_factory=list)
    background: list[float] = field(default_factory=list)
    # OpenVINO: its bound; featx end to end with it, over TF's bound and over its own
    ov_bound: list[float] = field(default_factory=list)
    ov_steady: list[float] = field(default_factory=list)
    ov_wall: list[float] = field(default_factory=list)
    ov_bound_rel: list[float] = field(default_factory=list)  # OV bound / TF bound, same time
    ov_rel_tf: list[float] = field(default_factory=list)
    ov_rel_own: list[float] = field(default_factory=list)
    decode_ms: float = float("nan")  # one thread's decode + resize time of a file (load_image)

    def median(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")

    @property
    def featx_over_naive(self) -> float:
        """(featx / bound) / (naive / bound), each against its own neighbouring bounds."""
        return self.median("steady_rel") / self.median("naive_rel")


def measure_row(model: str, dataset: str, files: list[Path], bound: Bound, naive: Naive,
                work: Path, repeats: int, ov: OVBound | None = None) -> Row:
    """bound, featx, bound, featx, ..., bound, naive, bound (featx ``repeats`` times); with
    ``ov``, each bound sample is a TensorFlow and an OpenVINO one, and featx with OpenVINO
    runs ``repeats`` times more at the end (bound, featx-ov, bound, ...)."""
    row = Row(model, dataset)
    bound.load(files)
    if ov is not None:
        ov.load(bound.images)
    root = link_subset(files, work / f"{model}-{dataset}" / dataset)
    ov_before = [0.0]
    if ov is not None:
        row.decode_ms = decode_ms(files)

    def sample_bound() -> float:
        rate, bg = bound.sample()
        row.bound.append(rate)
        row.background.append(bg)
        if ov is not None:
            ov_rate, bg = ov.sample()
            row.ov_bound.append(ov_rate)
            row.ov_bound_rel.append(ov_rate / rate)
            row.background.append(bg)
            ov_before.append(ov_rate)
        return rate

    before = sample_bound()
    for _ in range(max(1, repeats)):
        row.rows, steady, wall, bg = run_featx(model, root, work)
        row.background.append(bg)
        after = sample_bound()
        row.steady.append(steady)
        row.wall.append(wall)
        row.steady_rel.append(steady / ((before + after) / 2))
        row.wall_rel.append(wall / ((before + after) / 2))
        before = after
    rate, bg = naive.run(files, work / f"naive-{model}-{dataset}.h5")
    row.background.append(bg)
    after = sample_bound()
    row.naive.append(rate)
    row.naive_rel.append(rate / ((before + after) / 2))
    before = after
    for _ in range(max(1, repeats) if ov is not None else 0):
        ov_prev = ov_before[-1]
        _, steady, wall, bg = run_featx(model, root, work, "openvino")
        row.background.append(bg)
        after = sample_bound()
        row.ov_steady.append(steady)
        row.ov_wall.append(wall)
        row.ov_rel_tf.append(steady / ((before + after) / 2))
        row.ov_rel_own.append(steady / ((ov_prev + ov_before[-1]) / 2))
        before = after
    log(f"{model:<11} {dataset:<9} bound {', '.join(f'{b:.1f}' for b in row.bound)} | featx "
        f"steady {', '.join(f'{v:.1f}' for v in row.steady)} wall "
        f"{', '.join(f'{v:.1f}' for v in row.wall)} | naive {rate:.1f} img/s")
    if ov is not None:
        log(f"{model:<11} {dataset:<9} openvino bound "
            f"{', '.join(f'{b:.1f}' for b in row.ov_bound)} | featx-openvino steady "
            f"{', '.join(f'{v:.1f}' for v in row.ov_steady)} wall "
            f"{', '.join(f'{v:.1f}' for v in row.ov_wall)} img/s")
    return row


# --------------------------------------------------------------------------- KerasHub

def hub_preset(label: str, work: Path) -> Path:
    """A local preset folder of the KerasHub backbone ``label`` (HUB_MODELS) as published
    (ViT-B/16: Dosovitskiy et al.; DINOv2 ViT-S/14; CLIP ViT-B/32's image tower), random
    weights and its family's image converter (scale and offset as its presets have them)."""
    import keras
    from keras_hub import layers as L
    from keras_hub import models as M

    folder = work / "hub" / label.replace("/", "_").replace("-", "_")
    if (folder / "config.json").is_file():
        return folder
    keras.utils.set_random_seed(0)
    std = [0.229, 0.224, 0.225]
    imagenet = {"scale": [1 / (255 * s) for s in std],
                "offset": [-m / s for m, s in zip([0.485, 0.456, 0.406], std)]}
    size = (SIZE, SIZE)
    if label == "ViT-B/16":
        model = M.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=16, num_layers=12,
                              num_heads=12, hidden_dim=768, mlp_dim=3072)
        converter = L.ViTImageConverter(image_size=size, scale=1 / 127.5, offset=-1)
    elif label == "DINOv2-S/14":
        model = M.DINOV2Backbone(patch_size=14, num_layers=12, hidden_dim=384, num_heads=6,
                                 intermediate_dim=1536, image_shape=(SIZE, SIZE, 3),
                                 position_embedding_shape=(518, 518, 3))
        converter = L.DINOV2ImageConverter(image_size=size, **imagenet)
    elif label == "CLIP-B/32":
        vision = M.CLIPVisionEncoder(patch_size=32, hidden_dim=768, num_layers=12, num_heads=12,
                                     intermediate_dim=3072, image_shape=(SIZE, SIZE, 3))
        text = M.CLIPTextEncoder(vocabulary_size=49408, embedding_dim=512, hidden_dim=512,
                                 num_layers=1, num_heads=8, intermediate_dim=2048,
                                 max_sequence_length=77)  # unused by featx: kept small
        model = M.CLIPBackbone(vision, text, projection_dim=512)
        converter = L.CLIPImageConverter(image_size=size, scale=1 / 255)
    else:
        die(f"unknown KerasHub benchmark model {label!r} (known: {', '.join(HUB_MODELS)})")
    model.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


@dataclass
class HubRow:
    """A backbone's speeds on one dataset, with its feature width (one featx run each)."""

    model: str
    width: int
    bound: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list)
    ov_bound: list[float] = field(default_factory=list)
    ov_steady: list[float] = field(default_factory=list)
    error: str = ""

    def median(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")


def measure_hub_row(label: str, model: str, files: list[Path], work: Path,
                    openvino: bool) -> HubRow:
    """bound, featx, bound (and with OpenVINO: its bound beside each, then featx-openvino)."""
    from featx.core.config import BackboneConfig
    from featx.features.backbones import Backbone

    width = Backbone(BackboneConfig(name=model, weights="none")).feature_shape[-1]
    row = HubRow(label, int(width))
    bound = Bound(model)
    bound.load(files)
    ov = OVBound(model, work) if openvino else None
    if ov is not None:
        ov.load(bound.images)
    root = link_subset(files, work / f"hub-{len(os.listdir(work))}" / "flowers17")

    def sample() -> None:
        row.bound.append(bound.sample()[0])
        if ov is not None:
            row.ov_bound.append(ov.sample()[0])

    sample()
    row.steady.append(run_featx(model, root, work)[1])
    sample()
    if ov is not None:
        row.ov_steady.append(run_featx(model, root, work, "openvino")[1])
        sample()
    log(f"{label:<11} flowers17 bound {row.median('bound'):.1f} featx {row.median('steady'):.1f}"
        f" | openvino bound {row.median('ov_bound'):.1f} featx {row.median('ov_steady'):.1f}"
        " img/s")
    return row


def measure_hub(labels: list[str], files: list[Path], work: Path) -> list[HubRow]:
    """The KerasHub rows, and MobileNetV2 and ResNet50 measured the same way beside them."""
    if importlib.util.find_spec("keras_hub") is None:
        log("KerasHub not installed (pip install 'featx[hub]'): no KerasHub rows")
        return []
    rows = []
    n = min(HUB_IMAGES, len(files))
    for label in (*MODELS, *labels):
        model = label if label in MODELS else f"hub:{hub_preset(label, work)}"
        log(f"{label}: the KerasHub table's row")
        rows.append(measure_hub_row(label, model, pick(files, n), work, openvino_installed()))
    return rows


def report_hub(rows: list[HubRow], images: int) -> None:
    if not rows:
        return
    print()
    print(f"KerasHub backbones beside keras.applications: img/s on flowers17 ({images} images, "
          f"224 px, batch {BATCH}; random weights: a real preset's speed, not its accuracy)")
    header = (f"{'model':<12} {'width':>5} {'tf bound':>8} {'featx':>6} {'ov bound':>8} "
              f"{'featx-ov':>8} {'featx-ov/featx':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.model:<12} {r.width:>5} {r.median('bound'):8.1f} {r.median('steady'):6.1f} "
              f"{r.median('ov_bound'):8.1f} {r.median('ov_steady'):8.1f} "
              f"{fmt_ratio(r.median('ov_steady') / r.median('steady')):>14}")
    print("""width: features per image (pooling avg; a transformer's cls+mean doubles it). tf/ov
bound: the backbone alone over an in-memory batch (median of the samples around the runs);
featx / featx-ov: one end-to-end extraction each, with TensorFlow / OpenVINO.""")


# --------------------------------------------------------------------------- int8

# featx end to end with backbone.precision = "int8" / TensorFlow's compute bound (issue 30)
TARGET_INT8_OVER_TF = {"MobileNetV2": 2.5}
TARGET_INT8_RANK1 = 0.005  # int8 rank-1 - float32's, mean over the splits: at least -this
INT8_SPLITS = 5
INT8_DEFAULT_REPEATS = 2  # featx runs per runtime and model in the int8 rows


def int8_installed() -> bool:
    return openvino_installed() and importlib.util.find_spec("nncf") is not None


class Int8Bound(OVBound):
    """The int8 model's compute-only bound: featx's own (``Backbone.openvino`` with
    precision int8, calibrated on ``root``'s images as an extraction of ``root`` is), over the
    same in-memory batch; quantised here once, kept where featx's int8 runs find it."""

    def __init__(self, model: str, root: Path, work: Path) -> None:
        from featx.features.plan import plan

        config = featx_config(model, root, self.cache(work), "openvino")
        config.backbone.precision = "int8"
        backbone = plan(config).backbone  # calibrated on root's images, as extract() is
        t0 = time.perf_counter()
        self.forward = backbone.openvino(BATCH)
        self.seconds = time.perf_counter() - t0  # conversion and quantisation
        self.calibration = len(backbone.calibration.files)
        self.batches = 3 * max(1, BOUND_BATCHES.get(model, 1))  # fast: more batches a sample


def decode_rate(files: list[Path]) -> float:
    """img/s of featx's reader alone (read_batches: every core, decode and resize, no model)
    over ``files``, the best of two passes."""
    from featx.data.images import ReadErrors, read_batches

    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in read_batches([str(f) for f in files], SIZE, BATCH, ReadErrors()):
            pass
        best = max(best, len(files) / (time.perf_counter() - t0))
    return best


@dataclass
class Int8Row:
    """One model on flowers17: the three bounds sampled side by side, featx end to end with
    each runtime against the TensorFlow bound samples around each run, decoding alone."""

    model: str
    rows: int = 0
    bound: list[float] = field(default_factory=list)
    ov_bound: list[float] = field(default_factory=list)
    int8_bound: list[float] = field(default_factory=list)
    int8_bound_rel: list[float] = field(default_factory=list)  # int8 / TF bound, same time
    int8_over_ov: list[float] = field(default_factory=list)  # int8 / float32 OV bound
    steady: dict[str, list[float]] = field(default_factory=dict)  # runtime -> img/s
    wall: dict[str, list[float]] = field(default_factory=dict)
    rel_tf: dict[str, list[float]] = field(default_factory=dict)  # / TF bound around it
    int8_rel_own: list[float] = field(default_factory=list)  # int8 end to end / int8 bound
    background: list[float] = field(default_factory=list)
    decode_ms: float = float("nan")  # one thread, a file
    decode_rate: float = float("nan")  # featx's reader alone, every core
    quantise_s: float = float("nan")
    calibration: int = 0

    def median(self, name: str, runtime: str = "") -> float:
        values = getattr(self, name)
        values = values.get(runtime, []) if isinstance(values, dict) else values
        return statistics.median(values) if values else float("nan")


INT8_RUNS = (("tensorflow", "tensorflow", "float32"), ("openvino", "openvino", "float32"),
             ("int8", "openvino", "int8"))  # (label, runtime, precision)


def measure_int8_row(model: str, files: list[Path], work: Path, repeats: int) -> Int8Row:
    """bounds, then per repeat: featx TF, bounds, featx OV float32, bounds, featx int8,
    bounds."""
    row = Int8Row(model)
    root = link_subset(files, work / f"int8-{model}" / "flowers17")
    bound, ov = Bound(model), OVBound(model, work)
    bound.load(files)
    ov.load(bound.images)
    log(f"{model}: quantising to int8 on the subset's own images (once)")
    q8 = Int8Bound(model, root, work)
    q8.load(bound.images)
    row.quantise_s, row.calibration = q8.seconds, q8.calibration
    row.decode_ms, row.decode_rate = decode_ms(files), decode_rate(files)
    before: list[tuple[float, float]] = []

    def sample() -> tuple[float, float]:
        tf_rate, bg = bound.sample()
        ov_rate, bg2 = ov.sample()
        q_rate, bg3 = q8.sample()
        row.bound.append(tf_rate)
        row.ov_bound.append(ov_rate)
        row.int8_bound.append(q_rate)
        row.int8_bound_rel.append(q_rate / tf_rate)
        row.int8_over_ov.append(q_rate / ov_rate)
        row.background += [bg, bg2, bg3]
        before.append((tf_rate, q_rate))
        return tf_rate, q_rate

    sample()
    for _ in range(max(1, repeats)):
        for label, runtime, precision in INT8_RUNS:
            tf_before, q_before = before[-1]
            row.rows, steady, wall, bg = run_featx(model, root, work, runtime, precision)
            row.background.append(bg)
            tf_after, q_after = sample()
            row.steady.setdefault(label, []).append(steady)
            row.wall.setdefault(label, []).append(wall)
            row.rel_tf.setdefault(label, []).append(steady / ((tf_before + tf_after) / 2))
            if label == "int8":
                row.int8_rel_own.append(steady / ((q_before + q_after) / 2))
    log(f"{model:<11} flowers17 bounds: tf {row.median('bound'):.1f}, openvino "
        f"{row.median('ov_bound'):.1f}, int8 {row.median('int8_bound'):.1f} | featx "
        + ", ".join(f"{label} {row.median('steady', label):.1f}" for label, *_ in INT8_RUNS)
        + f" | decoding alone {row.decode_rate:.0f} img/s")
    return row


def measure_int8_accuracy(flowers17: Path, weights: Path, work: Path) -> dict:
    """All of Flowers-17 with the real MobileNetV2 weights, 224 px, batch 32: extracted with
    float32 OpenVINO and with int8 (calibration: the default sample), classified with
    classify.repeats = INT8_SPLITS (logistic regression, its full grid; stratified splits,
    not grouped by near-duplicates) on each store, and compared as ``featx runs --compare``
    compares (int8 - float32 over the shared splits)."""
    import numpy as np

    from featx.core.config import Config
    from featx.features.extraction import extract
    from featx.learn.classification import classify
    from featx.report import runs
    from featx.store.read import FeatureStore

    out: dict = {"seconds": {}, "features": {}}
    for precision in ("float32", "int8"):
        config = Config()
        config.dataset.root = str(flowers17)
        config.backbone.weights = str(weights)
        config.backbone.runtime = "openvino"
        config.backbone.precision = precision
        config.extract.batch_size = BATCH
        config.cache_dir = str(work / "accuracy-cache")
        config.out = str(work / f"accuracy-runs-{precision}")
        config.classify.classifiers = ["logreg"]
        config.classify.repeats = INT8_SPLITS
        # the same 5 splits for both: grouped splits follow each store's own near-duplicate
        # groups, and int8's features make 1 of Flowers-17's 66 near-duplicate pairs another
        config.dataset.group_duplicates = False
        log(f"accuracy: Flowers-17 extracted with {precision} OpenVINO")
        t0 = time.perf_counter()
        result = extract(config, progress=False)
        out["seconds"][precision] = time.perf_counter() - t0
        out["rows"] = result.rows
        with FeatureStore(result.path) as store:
            out["features"][precision] = store.features()
            out["calibration"] = store.attrs.get("calibration", out.get("calibration"))
        log(f"accuracy: classify.repeats = {INT8_SPLITS} on the {precision} store")
        classify(config)
    x, y = out["features"]["float32"], out["features"]["int8"]
    scale = float(np.abs(x).max())
    out["max_diff"] = float(np.abs(y - x).max()) / scale
    out["mean_diff"] = float(np.abs(y - x).mean()) / scale
    [out["compare"]] = runs.compare(work / "accuracy-runs-int8", work / "accuracy-runs-float32")
    del out["features"]
    return out


def report_int8(rows: list[Int8Row], accuracy: dict | None) -> None:
    print()
    if not rows and not accuracy:
        print("int8: OpenVINO and NNCF not installed (pip install 'featx[openvino]'): no int8 "
              "rows")
        return
    import nncf
    import openvino

    from featx.features.runtime import thread_split

    cores = thread_split().cores
    print(f"int8 (backbone.precision = \"int8\": OpenVINO {openvino.__version__}, NNCF "
          f"{nncf.__version__}), float32 OpenVINO and TensorFlow side by side, flowers17, "
          f"224 px, batch {BATCH}, random weights; {thread_split().describe()}")
    if rows:
        header = (f"{'model':<11} {'n':>4} {'runs':>4} {'tf bound':>8} {'ov bound':>8} "
                  f"{'int8 bound':>10} {'featx-tf':>8} {'featx-ov':>8} {'featx-int8':>10} "
                  f"{'int8/tf bound':>13} {'wall':>6} {'decode':>6} {'bg':>4}")
        print(header)
        print("-" * len(header))
        for r in rows:
            bg = statistics.mean(r.background) if r.background else float("nan")
            print(f"{r.model:<11} {r.rows:>4} {len(r.rel_tf.get('int8', [])):>4} "
                  f"{r.median('bound'):8.1f} {r.median('ov_bound'):8.1f} "
                  f"{r.median('int8_bound'):10.1f} {r.median('steady', 'tensorflow'):8.1f} "
                  f"{r.median('steady', 'openvino'):8.1f} {r.median('steady', 'int8'):10.1f} "
                  f"{fmt_ratio(r.median('rel_tf', 'int8')):>13} "
                  f"{r.median('wall', 'int8'):6.1f} {r.decode_rate:6.0f} {bg:4.1f}")
        print("""bounds: each model alone over one in-memory batch (TensorFlow, OpenVINO float32,
OpenVINO int8), sampled side by side before and after every featx run. featx-*: featx end
to end (decode, model, store; steady state) with TensorFlow, float32 OpenVINO and int8.
int8/tf bound: featx-int8 over the TensorFlow bound samples around each run (median).
wall: featx-int8's whole extract() call (dataset scan, model read back, store assembly).
decode: featx's reader alone (decode + resize on every core, no model), img/s.""")
        for r in rows:
            share = decode_share(r.decode_ms, r.median("int8_bound"), cores)
            print(f"  {r.model}: int8 bound {fmt_ratio(r.median('int8_bound_rel')).strip()} x "
                  f"TensorFlow's, {fmt_ratio(r.median('int8_over_ov')).strip()} x float32 "
                  f"OpenVINO's; featx-int8 reaches {fmt_ratio(r.median('int8_rel_own')).strip()}"
                  f" of its own bound, decoding's share of the cores predicts {share:.2f} "
                  f"({r.decode_ms:.2f} ms a file on one of {cores} cores; decoding alone "
                  f"{r.decode_rate:.0f} img/s); quantised once in {r.quantise_s:.0f} s on "
                  f"{r.calibration} images")
    if accuracy:
        c = accuracy["compare"]
        print(f"accuracy: Flowers-17 (all {accuracy['rows']} images), MobileNetV2 ImageNet "
              f"weights, 224 px; calibration {accuracy.get('calibration')}; logreg, "
              f"{c['splits']} splits (classify.repeats), paired as featx runs --compare "
              "pairs them:")
        print(f"  rank-1 float32 {c['b']:.4f}, int8 {c['a']:.4f}, int8 - float32 "
              f"{c['difference']:+.4f} (s.e. {c['standard_error']:.4f}); features differ by "
              f"at most {accuracy['max_diff']:.3f} (mean {accuracy['mean_diff']:.4f}) of the "
              f"largest float32 one; extraction {accuracy['seconds']['float32']:.0f} s "
              f"float32, {accuracy['seconds']['int8']:.0f} s int8 (quantising included)")
    print("targets (int8):")
    by = {r.model: r for r in rows}
    for model, target in TARGET_INT8_OVER_TF.items():
        r = by.get(model)
        if r:
            ratio = r.median("rel_tf", "int8")
            print(f"  {'PASS' if ratio >= target else 'FAIL'}  featx-int8 >= {target} x "
                  f"TensorFlow's bound, {model} flowers17: {ratio:.2f} (wall incl. start-up: "
                  f"{r.median('wall', 'int8') / r.median('bound'):.2f})")
    if accuracy:
        d = accuracy["compare"]["difference"]
        print(f"  {'PASS' if d >= -TARGET_INT8_RANK1 else 'FAIL'}  int8 rank-1 within "
              f"{TARGET_INT8_RANK1 * 100:g} points of float32's on average, MobileNetV2 "
              f"Flowers-17: {d * 100:+.2f} points over {accuracy['compare']['splits']} splits")


def measure_int8(models: list[str], files: list[Path], shared: Path, work: Path,
                 images: int, repeats: int) -> tuple[list[Int8Row], dict | None]:
    if not int8_installed():
        log("OpenVINO or NNCF not installed (pip install 'featx[openvino]'): no int8 rows")
        return [], None
    rows = [measure_int8_row(model, pick(files, images or DEFAULT_IMAGES.get(model, 256)),
                             work, repeats or INT8_DEFAULT_REPEATS) for model in models]
    weights = shared / "weights" / WEIGHTS_FILE
    if not weights.is_file():
        log(f"no {weights}: no int8 accuracy row")
        return rows, None
    return rows, measure_int8_accuracy(shared / "datasets" / "flowers17", weights, work)


# --------------------------------------------------------------------------- memory

def memory_child(root: str, cache: str) -> None:
    """Run in a fresh process: one featx extraction, then print its peak memory as JSON."""
    from featx.features.extraction import extract

    result = extract(featx_config("MobileNetV2", Path(root), Path(cache)), progress=False)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of this
    # (large) benchmark process would report the parent's size. VmHWM restarts at exec.
    peak_kib = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak_kib = int(line.split()[1])
    except OSError:
        pass
    if not peak_kib:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print("BENCH-MEMORY " + json.dumps({"rows": result.extracted, "peak_kib": peak_kib}),
          flush=True)


def measure_memory(files: list[Path], work: Path, env: dict[str, str]) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for copies in (1, 4):
        root = link_subset(files, work / f"memory-x{copies}" / "flowers17", copies=copies)
        cache = work / f"memory-cache-x{copies}"
        log(f"memory: featx extraction of {len(files) * copies} images in a fresh process")
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(root),
             str(cache)], cwd=REPO, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-MEMORY ")]
        if proc.returncode or not lines:
            log(f"memory child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            return {}
        out[copies] = json.loads(lines[-1].split(" ", 1)[1])
    return out


# --------------------------------------------------------------------------- report

def tf_settings() -> dict:
    """The TensorFlow settings in effect in this process (TF must be imported already)."""
    import tensorflow as tf

    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn: bool | None = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    return {"tf": tf.__version__,
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn": onednn,
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                               "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS")
                    if k in os.environ}}


def describe_settings(settings: dict, cores: int) -> str:
    def threads(n: int) -> str:
        return f"{n}" if n else f"0 (default: {cores})"

    onednn = {True: "on", False: "off", None: "?"}[settings.get("onednn")]
    env = " ".join(f"{k}={v}" for k, v in settings.get("env", {}).items())
    return (f"intra_op threads {threads(settings.get('intra', 0))}, inter_op threads "
            f"{threads(settings.get('inter', 0))}, oneDNN {onednn}"
            + (f", env {env}" if env else ""))


def fmt_ratio(x: float) -> str:
    return "   -" if x != x else f"{x:5.2f}"


def report(rows: list[Row], memory: dict[int, dict], n_memory: int, seconds: float,
           naive_setup: dict) -> None:
    print()
    print("featx extraction benchmark: img/s (higher is better) and ratios, medians over runs")
    mine = tf_settings()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"TensorFlow {mine['tf']} on {cores} usable cores")
    print(f"  featx + bound process: {describe_settings(mine, cores)}")
    if naive_setup:
        print(f"  naive process:         {describe_settings(naive_setup, cores)}")
    header = (f"{'model':<11} {'dataset':<9} {'n':>4} {'runs':>4} {'bound':>6} {'featx':>6} "
              f"{'/bound':>6} {'wall':>6} {'/bound':>6} {'naive':>6} {'featx/naive':>11} "
              f"{'bg':>4}")
    print(header)
    print("-" * len(header))
    for r in rows:
        bg = statistics.mean(r.background) if r.background else float("nan")
        print(f"{r.model:<11} {r.dataset:<9} {r.rows:>4} {len(r.steady):>4} "
              f"{r.median('bound'):6.1f} {r.median('steady'):6.1f} "
              f"{fmt_ratio(r.median('steady_rel')):>6} {r.median('wall'):6.1f} "
              f"{fmt_ratio(r.median('wall_rel')):>6} {r.median('naive'):6.1f} "
              f"{fmt_ratio(r.featx_over_naive):>11} {bg:4.1f}")
    print("""bound: Backbone tf.function on in-memory uint8 batches. featx: steady state
(ExtractResult.images_per_second, after the first batch). wall: rows / the whole extract()
call (model build, tracing, store assembly included). naive: PIL + preprocess_input +
model.predict + HDF5 at the end. Ratios: each run against the bound samples taken just
before and after it. bg: cores kept busy by other processes meanwhile (a shared machine).""")
    if memory:
        a, b = memory.get(1, {}), memory.get(4, {})
        ra, rb = a.get("peak_kib", 0) / 1024, b.get("peak_kib", 0) / 1024
        print(f"peak RSS (VmHWM) of featx extraction, MobileNetV2 flowers17, fresh process each: "
              f"N={a.get('rows')}: {ra:.0f} MiB, 4N={b.get('rows')}: {rb:.0f} MiB")
    print()
    print("targets:")
    by = {(r.model, r.dataset): r for r in rows}
    for model in MODELS:
        r = by.get((model, "flowers17"))
        if r:
            ratio = r.median("steady_rel")
            verdict = "PASS" if ratio >= TARGET_BOUND else "FAIL"
            print(f"  {verdict}  featx >= {TARGET_BOUND} x bound, {model} flowers17: "
                  f"{ratio:.2f} (wall incl. startup: {r.median('wall_rel'):.2f})")
    r = by.get(("MobileNetV2", "flowers17")) or by.get(("MobileNetV2", "flowers5"))
    if r:
        ratio = r.featx_over_naive
        verdict = "PASS" if ratio >= TARGET_NAIVE else "FAIL"
        print(f"  {verdict}  featx >= {TARGET_NAIVE:g} x naive, MobileNetV2 {r.dataset}: "
              f"{ratio:.2f}x (bound / naive, what featx would get at 1.00 x bound: "
              f"{1 / r.median('naive_rel'):.2f}x)")
    if memory.get(1) and memory.get(4):
        ratio = memory[4]["peak_kib"] / memory[1]["peak_kib"]
        verdict = "PASS" if ratio <= TARGET_MEMORY else "FAIL"
        print(f"  {verdict}  peak memory at 4N <= {TARGET_MEMORY} x at N (N={n_memory}): "
              f"{ratio:.2f}")
    report_openvino(rows)
    print(f"(benchmark took {seconds / 60:.1f} min; targets missed are reported, not errors)")


def report_openvino(rows: list[Row]) -> None:
    """The OpenVINO rows: both bounds side by side, featx end to end with OpenVINO, targets."""
    ov_rows = [r for r in rows if r.ov_bound]
    print()
    if not ov_rows:
        print("OpenVINO: not installed (pip install 'featx[openvino]'): no OpenVINO rows")
        return
    import openvino

    from featx.features.runtime import thread_split

    print(f"OpenVINO {openvino.__version__} (CPU plugin, PERFORMANCE_HINT=LATENCY, float32), "
          f"thread split: {thread_split().describe()}")
    header = (f"{'model':<11} {'dataset':<9} {'tf bound':>8} {'ov bound':>8} {'ov/tf':>6} "
              f"{'featx-ov':>8} {'/tf bound':>9} {'/ov bound':>9} {'wall':>6}")
    print(header)
    print("-" * len(header))
    for r in ov_rows:
        print(f"{r.model:<11} {r.dataset:<9} {r.median('bound'):8.1f} {r.median('ov_bound'):8.1f} "
              f"{fmt_ratio(r.median('ov_bound_rel')):>6} {r.median('ov_steady'):8.1f} "
              f"{fmt_ratio(r.median('ov_rel_tf')):>9} {fmt_ratio(r.median('ov_rel_own')):>9} "
              f"{r.median('ov_wall'):6.1f}")
    print("""ov bound: the converted model over the same in-memory batch, sampled right after each
TensorFlow bound sample (ov/tf: median of the paired ratios). featx-ov: featx end to end
with backbone.runtime = "openvino" (steady state; its converted model made once before).""")
    print("targets (OpenVINO):")
    by = {(r.model, r.dataset): r for r in ov_rows}
    for model, target in TARGET_OV_OVER_TF.items():
        r = by.get((model, "flowers17"))
        if r:
            ratio = r.median("ov_rel_tf")
            print(f"  {'PASS' if ratio >= target else 'FAIL'}  featx-openvino >= {target} x "
                  f"TensorFlow's bound, {model} flowers17: {ratio:.2f} (OpenVINO's own bound: "
                  f"{r.median('ov_bound_rel'):.2f} x TensorFlow's)")
    cores = thread_split().cores
    for model, target in TARGET_OV_OWN.items():
        r = by.get((model, "flowers17"))
        if r:
            ratio = r.median("ov_rel_own")
            share = decode_share(r.decode_ms, r.median("ov_bound"), cores)
            print(f"  {'PASS' if ratio >= target else 'FAIL'}  featx-openvino >= {target} x "
                  f"OpenVINO's bound, {model} flowers17: {ratio:.2f} (decoding's share of "
                  f"the cores predicts {share:.2f}: {r.decode_ms:.2f} ms a file on one of "
                  f"{cores} cores)")


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated (default: %(default)s)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="comma-separated (default: %(default)s)")
    parser.add_argument("--images", type=int, default=0,
                        help="images per end-to-end measurement (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_IMAGES.items()) + ")")
    parser.add_argument("--repeats", type=int, default=0,
                        help="featx runs per row (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_REPEATS.items()) + ")")
    parser.add_argument("--hub-models", default=",".join(HUB_MODELS),
                        help="KerasHub backbones measured beside MobileNetV2 and ResNet50 on "
                        "flowers17 (default: %(default)s; empty: none)")
    parser.add_argument("--memory-images", type=int, default=300,
                        help="N of the memory row (default: %(default)s; 0: skip it)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (~1.5 min): MobileNetV2 only, 128 images, one featx "
                        "run per row, memory N=128")
    parser.add_argument("--only", choices=("int8",),
                        help="run one part alone: int8 (its speed rows and Flowers-17 "
                        "accuracy, about 10 minutes)")
    parser.add_argument("--shared", type=Path, default=None,
                        help="folder holding datasets/ (default: ../shared beside the repo)")
    parser.add_argument("--memory-child", nargs=2, metavar=("ROOT", "CACHE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--naive-child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # log noise only
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    if args.naive_child:
        naive_child(args.naive_child)
        return 0
    # The environment a user's own script would run with: taken before featx is imported,
    # so that whatever featx sets up for TensorFlow reaches featx's runs only.
    user_env = dict(os.environ)

    if args.quick:
        args.models, args.images, args.repeats = "MobileNetV2", args.images or 128, 1
        args.memory_images = min(args.memory_images, 128)
        args.hub_models = ""
    shared = args.shared or (REPO / SHARED)
    roots = data_paths(shared)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in datasets:
        if d not in roots:
            die(f"unknown dataset {d!r} (known: {', '.join(roots)})")
    files = {d: list_images(roots[d]) for d in datasets}
    for d, found in files.items():
        if not found:
            die(f"no images under {roots[d]}")

    t0 = time.perf_counter()
    log("loading featx and TensorFlow")
    # featx first: whatever it sets up for TensorFlow at import must come before TF loads.
    for module in ("featx", "featx.features.backbones", "featx.data.images",
                   "featx.features.extraction"):
        importlib.import_module(module)
    importlib.import_module("tensorflow")  # (the import itself is not measured)

    rows: list[Row] = []
    naive_setup: dict = {}
    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
        work = Path(tmp)
        flowers17 = files.get("flowers17") or list_images(roots["flowers17"])
        if args.only == "int8":
            int8_rows, accuracy = measure_int8(models, flowers17, shared, work, args.images,
                                               args.repeats)
            report_int8(int8_rows, accuracy)
            print(f"(benchmark took {(time.perf_counter() - t0) / 60:.1f} min; targets missed "
                  "are reported, not errors)")
            return 0
        for model in models:
            log(f"{model}: building the bound and the naive models")
            bound, naive = Bound(model), Naive(model, user_env)
            ov = OVBound(model, work) if openvino_installed() else None
            naive_setup = naive.setup
            n = args.images or DEFAULT_IMAGES.get(model, 256)
            try:
                for d in datasets:
                    rows.append(measure_row(model, d, pick(files[d], n), bound, naive, work,
                                            args.repeats or DEFAULT_REPEATS.get(model, 1), ov))
            finally:
                naive.close()
            del bound, naive, ov
        hub_labels = [m.strip() for m in args.hub_models.split(",") if m.strip()]
        hub_rows = measure_hub(hub_labels, files.get("flowers17")
                               or list_images(roots["flowers17"]), work) if hub_labels else []
        memory: dict[int, dict] = {}
        if args.memory_images > 0:
            memory = measure_memory(pick(flowers17, args.memory_images), work, user_env)
        int8_rows, accuracy = ([], None) if args.quick else \
            measure_int8(models, flowers17, shared, work, args.images, args.repeats)
    report(rows, memory, args.memory_images, time.perf_counter() - t0, naive_setup)
    report_hub(hub_rows, HUB_IMAGES)
    if not args.quick:
        report_int8(int8_rows, accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
