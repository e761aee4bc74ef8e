"""Shared fixtures: tiny generated image folders, a tiny random-weights configuration and one
feature store extracted from it per test session (MobileNetV2 at 32x32 takes seconds)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realdata import (  # noqa: F401  (session fixtures, real data, once a session)
    flowers17,
    flowers17_logreg,
    planted_flowers,
    shared_data,
)

from featx.core.config import Config

# None of the imports above loads TensorFlow (featx imports it lazily): set this before it is,
# to keep TF's C++ start-up chatter out of the test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Classes are created out of alphabetical order on purpose.
TINY_CLASSES = {"fox": (200, 70, 30), "cat": (40, 170, 60), "dog": (30, 60, 210)}
# (extension, PIL format, mode, (width, height)): both formats, several modes and sizes and
# every spelling of the extensions a camera or a phone writes.
TINY_VARIANTS = [
    (".png", "PNG", "RGB", (40, 30)),
    (".JPG", "JPEG", "RGB", (64, 48)),
    (".jpeg", "JPEG", "RGB", (33, 90)),
    (".PNG", "PNG", "RGBA", (50, 50)),
    (".Jpg", "JPEG", "L", (120, 80)),
    (".png", "PNG", "L", (32, 32)),
]
# Files that are not images and must never be listed.
NOT_IMAGES = ["notes.txt", "thumbs.db", ".DS_Store", "photo.jpg.txt", "labels.csv"]


def write_image(path: Path, fmt: str = "PNG", mode: str = "RGB", size=(40, 30),
                colour=(128, 128, 128), seed: int = 0) -> Path:
    """A small striped, noisy picture of one dominant colour."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.empty((height, width, 3), np.float32)
    pixels[:] = colour
    xx = np.arange(width, dtype=np.float32)[None, :, None]
    pixels += 50 * np.sin(xx / (3 + seed % 5) + seed)
    pixels += rng.normal(0, 20, pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if mode == "RGBA":
        alpha = np.linspace(64, 255, width * height).reshape(height, width).astype(np.uint8)
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(alpha, "L"))
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_image_folder(root: Path, classes: dict[str, tuple] | None = None, per_class: int = 6,
                      junk: bool = True) -> dict[str, list[str]]:
    """Write ``root/<class>/<images>``; return the relative POSIX paths written, by class.

    With ``junk``, every class folder also gets non-image files, and the root a hidden
    folder holding an image and a stray file, none of which may be listed.
    """
    classes = TINY_CLASSES if classes is None else classes
    written: dict[str, list[str]] = {}
    for c, (name, colour) in enumerate(classes.items()):
        written[name] = []
        for i in range(per_class):
            ext, fmt, mode, size = TINY_VARIANTS[i % len(TINY_VARIANTS)]
            rel = f"{name}/{name}_{i:02d}{ext}"
            write_image(root / rel, fmt, mode, size, colour, seed=100 * c + i)
            written[name].append(rel)
        if junk:
            for junk_name in NOT_IMAGES:
                (root / name / junk_name).write_text("not an image\n")
    if junk:
        write_image(root / ".thumbnails" / "hidden.png")
        (root / "README.txt").write_text("a stray file beside the class folders\n")
    return written


def tiny_config(root: Path, cache_dir: Path, **sections) -> Config:
    """A pipeline for the tiny folders: random-weight MobileNetV2 at 32x32, batches of 8
    (so that 18 images make a padded last batch)."""
    data = {
        "name": "tiny",
        "dataset": {"root": str(root), "val": 0.0, "test": 0.25, "seed": 42},
        "backbone": {"name": "MobileNetV2", "weights": "none", "input_size": 32,
                     "pooling": "avg", "layer": ""},
        "extract": {"batch_size": 8, "compression": "lzf"},
        "classify": {"classifiers": ["logreg", "linear_svm"], "cv": 2, "n_jobs": 1},
        "cache_dir": str(cache_dir),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return Config.from_dict(data)


@dataclass
class TinyStore:
    config: Config
    root: Path
    written: dict[str, list[str]]
    path: Path
    key: str
    rows: int


@pytest.fixture(scope="session")
def image_folder() -> Callable[..., dict[str, list[str]]]:
    return make_image_folder


@pytest.fixture(scope="session")
def image_file() -> Callable[..., Path]:
    return write_image


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Config]:
    return tiny_config


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """3 classes x 6 images (PNG and JPEG, mixed sizes, modes and extension cases) plus junk.
    Shared by the whole session: tests must not change it."""
    root = tmp_path_factory.mktemp("tiny") / "shapes"
    written = make_image_folder(root)
    return root, written


@pytest.fixture(scope="session")
def tiny_store(tiny_root, tmp_path_factory) -> TinyStore:
    """The feature store of ``tiny_root``, extracted once per session. Read it, never write it:
    tests that change a store work on a copy."""
    from featx.features.extraction import extract

    root, written = tiny_root
    config = tiny_config(root, tmp_path_factory.mktemp("tiny-cache"))
    result = extract(config, progress=False)
    assert not result.cache_hit and result.path.is_file()
    return TinyStore(config, root, written, result.path, result.key, result.rows)


def pytest_configure(config):
    # Keras' own save/convert code trips NumPy 2's __array__(copy=) deprecation: not ours.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture
def featx_info():
    """featx's info lines shown on stderr during the test, as the command line shows them
    (a library caller sees warnings only)."""
    import logging

    from featx.core.log import set_level

    previous = set_level(logging.INFO)
    yield
    set_level(previous)
