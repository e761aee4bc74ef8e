"""Real data from ``../shared`` for the slow tests: paths, the session's Flowers-17 store
(extracted once, see conftest.py) and helpers. Skipped cleanly where ``../shared`` is absent,
except under ``FEATX_REQUIRE_SHARED=1`` (set by ``.ci/run``): there a missing dataset or
weights file, or a ``ray`` that does not import, fails the tests that need it.

Keras reads ``KERAS_HOME`` once, when it is imported; the test session has imported it long
before these tests run. So :func:`keras_home_set` points Keras' own setting (what
``keras_home()`` returns, where ``get_file`` looks) at a folder seeded with the shared weights
file under Keras' own cache name, and ``featx extract`` runs in this process (a fresh one
would pay TensorFlow's start-up again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import featx_here

from featx.core.config import Config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLOWERS17 = SHARED / "datasets" / "flowers17"
FLOWERS5 = SHARED / "datasets" / "flowers5"
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS = SHARED / "weights" / WEIGHTS_FILE
PIPELINE = REPO / "pipelines" / "flowers17.toml"

REQUIRE_SHARED = os.environ.get("FEATX_REQUIRE_SHARED", "") not in ("", "0")


def unavailable(reason: str, module_level: bool = False):
    """Skip, or fail under FEATX_REQUIRE_SHARED=1 (CI, where everything must be there)."""
    if REQUIRE_SHARED:
        pytest.fail(f"{reason} (FEATX_REQUIRE_SHARED=1: a skip here would hide it)",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def shared_missing() -> str | None:
    """Why the real-data tests cannot run here, or None."""
    missing = [str(p) for p in (FLOWERS17, WEIGHTS) if not p.exists()]
    return f"needs {' and '.join(missing)} (../shared)" if missing else None


def import_or_unavailable(name: str):
    """``pytest.importorskip`` that fails instead under FEATX_REQUIRE_SHARED=1."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        unavailable(f"cannot import {name}: {e}", module_level=True)


def once_per_run(tmp_path_factory, name: str, build: Callable[[Path], dict]) -> dict:
    """``build(folder)``, once per test run: with pytest-xdist (``make test`` runs two
    workers) the first worker to get here builds, the others wait on a lock and get what it
    returned (JSON). ``folder`` is shared by the run's workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is a folder of the run's
        base = base.parent
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "built.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            done.write_text(json.dumps(build(folder)))
    return json.loads(done.read_text())


@pytest.fixture
def shared_data() -> None:
    reason = shared_missing()
    if reason:
        unavailable(reason)


# For tests that read ../shared by path: skipped (or failed, see above) where it is missing.
needs_shared = pytest.mark.usefixtures("shared_data")


def seeded_keras_home(folder: Path) -> Path:
    """A KERAS_HOME whose models/ holds the weights file under Keras' own cache name."""
    models = folder / "models"
    models.mkdir(parents=True)
    try:
        (models / WEIGHTS_FILE).symlink_to(WEIGHTS)
    except OSError:
        import shutil

        shutil.copy(WEIGHTS, models / WEIGHTS_FILE)
    return folder


@contextlib.contextmanager
def keras_home_set(folder: Path) -> Iterator[Path]:
    """Keras' download folder is ``folder`` inside the block, in this process: Keras read
    ``KERAS_HOME`` when it was imported, into the value its ``keras_home()`` returns and its
    ``get_file`` (ImageNet weights included) reads on every call."""
    from keras.src.backend import config as keras_config

    from featx.features.backbones import keras_home

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras_config, "_KERAS_DIR", str(folder))
        patch.setenv("KERAS_HOME", str(folder))
        assert keras_home() == Path(folder)  # where featx says Keras looks, too
        yield folder


def flowers_config(cache: Path, out: Path) -> Config:
    config = Config.load(PIPELINE)
    config.dataset.root = str(FLOWERS17)
    config.cache_dir = str(cache)
    config.out = str(out)
    config.classify.classifiers = ["logreg"]
    return config


@pytest.fixture(scope="session")
def flowers17(tmp_path_factory):
    """Extract Flowers-17 once per test run (about a minute on 2 cores). The Ray test and
    ``featx predict`` read it too: never extract Flowers-17 again in a test."""
    reason = shared_missing()
    if reason:
        unavailable(reason)

    def build(base: Path) -> dict:
        config = flowers_config(base / "cache", base / "results")
        keras_home = seeded_keras_home(keras_home_of(config))
        with keras_home_set(keras_home):  # weights="imagenet" served from it, offline
            done = featx_here("extract", "-p", PIPELINE, "--data", FLOWERS17,
                              "--cache-dir", config.cache_dir, "--no-progress")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "extracted 1360 images" in done.stdout, done.stdout
        return {"cache": config.cache_dir, "out": config.out}

    built = once_per_run(tmp_path_factory, "flowers17", build)
    return flowers_config(Path(built["cache"]), Path(built["out"]))


def keras_home_of(config: Config) -> Path:
    """The seeded KERAS_HOME the session's Flowers-17 store was extracted with."""
    return Path(config.cache_dir).parent / "keras"


@pytest.fixture(scope="session")
def flowers17_logreg(flowers17, tmp_path_factory):
    """Logistic regression fitted once per test run on the Flowers-17 store:
    (its result, the saved model bundle)."""
    from featx.learn.classification import classify

    def build(_: Path) -> dict:
        (result,) = classify(flowers17)
        return result

    result = once_per_run(tmp_path_factory, "flowers17-logreg", build)
    return result, Path(flowers17.out) / result["run"] / result["model"]


def store_of(config: Config) -> Path:
    stores = list(Path(config.cache_dir).glob("*.h5"))
    assert len(stores) == 1, stores
    return stores[0]


def assert_pretrained(feats: np.ndarray) -> None:
    """Pooled ReLU6 outputs of the pretrained network are O(0.1-1); a randomly initialised
    MobileNetV2 gives ~1e-12 (its activations vanish layer by layer)."""
    assert feats.min() >= 0
    assert feats.mean() > 0.01, (
        f"mean feature {feats.mean():.3g}: these are not the pretrained network's features "
        "(were the ImageNet weights loaded?)")




# --- a Flowers-17 subset with planted faults (featx explain and featx audit) ----------------

PLANTED_CLASSES = ["bluebell", "crocus", "daisy", "fritillary", "iris", "pansy", "sunflower",
                   "tigerlily"]
N_MOVED, N_COPIES = 10, 5


def _split_of(root: Path, seed: int = 42) -> dict[str, int]:
    from featx.core.config import DatasetConfig
    from featx.data.dataset import load_dataset, stratified_split

    d = load_dataset(DatasetConfig(root=str(root)))
    return dict(zip(d.paths, stratified_split(d.labels, 0.0, 0.25, seed)))


@dataclass
class Planted:
    """The planted subset: its folder, store, a logreg model, the moved images (relative
    path now -> true class) and the copies (relative path -> the training image copied)."""

    root: Path
    store: Path
    model: Path
    moved: dict[str, str]
    copies: dict[str, str]


@pytest.fixture(scope="session")
def planted_flowers(tmp_path_factory) -> Planted:
    """Eight Flowers-17 classes (640 images) copied, then 10 images moved into wrong classes
    and 5 resized, re-compressed copies of training images added to the test split;
    extracted with the real weights (about 20 s) and a logistic regression fitted, once per
    test run."""
    if not (FLOWERS17.is_dir() and WEIGHTS.is_file()):
        pytest.skip("../shared is absent")
    built = once_per_run(tmp_path_factory, "planted", _plant)
    return Planted(**{k: Path(v) if k in ("root", "store", "model") else v
                      for k, v in built.items()})


def _plant(base: Path) -> dict:
    import shutil

    from PIL import Image

    from featx.data.dataset import TEST, TRAIN
    from featx.features.extraction import extract
    from featx.learn.classification import classify

    root = base / "flowers"
    for name in PLANTED_CLASSES:
        shutil.copytree(FLOWERS17 / name, root / name)
    rng = np.random.default_rng(7)
    moved = {}
    for k in range(N_MOVED):  # from class k % 8 to another class, keeping the file name
        source = PLANTED_CLASSES[k % len(PLANTED_CLASSES)]
        target = PLANTED_CLASSES[(k % len(PLANTED_CLASSES) + 1 + k // 8 * 3)
                                 % len(PLANTED_CLASSES)]
        files = sorted((root / source).iterdir())
        f = files[int(rng.integers(len(files)))]
        while f.name in {Path(m).name for m in moved}:
            f = files[int(rng.integers(len(files)))]
        shutil.move(f, root / target / f.name)
        moved[f"{target}/{f.name}"] = source
    # The split depends only on each class's size and order: place each copy (one per class)
    # under a name whose position goes to the test split, then fill it from a training image.
    copies = {}
    for name in PLANTED_CLASSES[:N_COPIES]:
        for n in range(10_000):
            rel = f"{name}/image_{n:04d}_copy.jpg"
            (root / rel).write_bytes(b"")
            if _split_of(root)[rel] == TEST:
                break
            (root / rel).unlink()
        copies[rel] = ""
    split = _split_of(root)
    for rel in copies:
        cls = rel.split("/")[0]
        source = next(p for p in sorted(split) if p.startswith(cls + "/") and split[p] == TRAIN
                      and p not in moved and p not in copies)
        with Image.open(root / source) as img:
            small = img.convert("RGB").resize((img.width * 2 // 3, img.height * 2 // 3))
            small.save(root / rel, format="JPEG", quality=60)
        copies[rel] = source
    config = Config.load(PIPELINE)
    config.name = "planted"
    config.dataset.root = str(root)
    config.backbone.weights = str(WEIGHTS)
    config.cache_dir = str(base / "cache")
    config.out = str(base / "out")
    config.classify.classifiers = ["logreg"]
    config.classify.quick = True
    store = extract(config, progress=False).path
    results = classify(config, store)
    model = base / "out" / results[0]["run"] / "planted-logreg.skops"
    return {k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(Planted(root, store, model, moved, copies)).items()}


def flowers5_subset(root: Path, per_class: int) -> Path:
    """``root``: ``per_class`` flowers5 photographs of each of its 5 classes, evenly spaced
    in name order, as links (nothing copied out of ../shared); skipped without it."""
    if not FLOWERS5.is_dir():
        unavailable(f"needs {FLOWERS5}")
    for folder in sorted(FLOWERS5.iterdir()):
        files = sorted(folder.iterdir())
        (root / folder.name).mkdir(parents=True)
        for f in files[::len(files) // per_class][:per_class]:
            (root / folder.name / f.name).symlink_to(f)
    return root
