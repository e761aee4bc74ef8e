"""Feature-store variants: the plain store (one row per image) and the stores made from
several views of each image, each its own cache entry with its own settings key.

- ``augmented``: ``extract.augment = K`` passes of Keras random augmentation over the
  training images only, one row per (image, pass), a ``view`` dataset holding the pass.
- ``tencrop``: the four corners, the centre and their mirror images, read at
  ``input_size * 256/224``; ``extract.tencrop = "mean"`` stores their average per image,
  ``"keep"`` one row per (image, crop) with the crop in ``view``.

``classify.train_features`` and ``classify.test_features`` choose which store the training
rows and the validation/test rows come from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import FLIPS, TENCROP_MODES, AugmentParams, Config, ConfigError
from featx.core.errors import StoreError
from featx.data.images import Views, crop_load_size, ten_crops
from featx.store.read import FeatureStore

TRAIN_FEATURES = ("plain", "augmented", "tencrop")
TEST_FEATURES = ("plain", "tencrop")


def image_seeds(paths: Sequence[str], seed: int) -> np.ndarray:
    """One int64 seed per image from the global seed and the image's relative path, so that
    an image keeps its views when other images are added or removed."""
    out = np.empty(len(paths), np.int64)
    for i, rel in enumerate(paths):
        digest = hashlib.sha256(f"{seed}\0{rel}".encode()).digest()
        out[i] = int.from_bytes(digest[:7], "little")  # 56 bits: a non-negative int64
    return out


@dataclass(frozen=True)
class Variant:
    name: str  # plain | augmented | tencrop
    settings: dict[str, Any] = field(default_factory=lambda: {"variant": "single"})
    views: int = 1  # backbone passes per image
    rows_per_image: int = 1  # views, or 1 where the views are averaged
    train_only: bool = False  # rows for the training split's images only
    augment: AugmentParams | None = None
    seed: int = 0

    @property
    def suffix(self) -> str:
        """Added to the dataset name in the store's file name (plain stores keep theirs)."""
        return "" if self.name == "plain" else f".{self.name}"

    @property
    def group(self) -> int:
        """Backbone passes averaged into one stored row."""
        return self.views // self.rows_per_image

    def reader(self, input_size: int, paths: Sequence[str]) -> Views | None:
        """How ``read_batches`` makes this variant's views of the images at ``paths``."""
        if self.name == "tencrop":
            return Views(count=10, load_size=crop_load_size(input_size),
                         crop=partial(ten_crops, size=input_size))
        if self.name == "augmented":
            from featx.data.augment import Augmenter

            augmenter = Augmenter(self.views, self.augment)
            return Views(count=self.views, augment=augmenter.views,
                         seeds=image_seeds(paths, self.seed))
        return None


PLAIN = Variant("plain")


def get_variant(config: Config, name: str = "plain") -> Variant:
    """The variant ``name`` as the pipeline's ``extract`` section sets it up."""
    e = config.extract
    if name == "plain":
        return PLAIN
    if name == "augmented":
        if e.augment < 1:
            raise ConfigError("augmented features need extract.augment = K > 0 passes "
                              f"(it is {e.augment})")
        params = AugmentParams(e.augment_flip, e.augment_rotation, e.augment_zoom,
                               e.augment_translation, e.augment_contrast)
        if params.flip not in FLIPS:
            raise ConfigError(f"extract.augment_flip = {params.flip!r}; valid: "
                              f"{', '.join(FLIPS)}")
        settings = {"variant": "augmented", "passes": e.augment, "augment_seed": e.augment_seed,
                    "augment": asdict(params), "rows": "train"}
        return Variant("augmented", settings, views=e.augment, rows_per_image=e.augment,
                       train_only=True, augment=params, seed=e.augment_seed)
    if name == "tencrop":
        if e.tencrop not in ("mean", "keep"):
            raise ConfigError(f"10-crop features need extract.tencrop = \"mean\" or \"keep\" "
                              f"(it is {e.tencrop!r})")
        settings = {"variant": "tencrop", "crops": 10, "crop_ratio": "256/224",
                    "tencrop": e.tencrop}
        return Variant("tencrop", settings, views=10,
                       rows_per_image=10 if e.tencrop == "keep" else 1)
    raise ConfigError(f"unknown feature variant {name!r}; valid: {', '.join(TRAIN_FEATURES)}")


def extracted_variants(config: Config) -> list[str]:
    """The variant stores ``featx extract`` makes besides the plain one."""
    check(config)
    out = []
    if config.extract.augment > 0:
        out.append("augmented")
    if config.extract.tencrop != "off":
        out.append("tencrop")
    return out


def check(config: Config) -> None:
    """The variant settings make sense together (before any work is done)."""
    e, c = config.extract, config.classify
    if e.augment < 0:
        raise ConfigError(f"extract.augment = {e.augment}: passes cannot be negative")
    if e.tencrop not in TENCROP_MODES:
        raise ConfigError(f"extract.tencrop = {e.tencrop!r}; valid: {', '.join(TENCROP_MODES)}")
    if c.train_features not in TRAIN_FEATURES:
        raise ConfigError(f"classify.train_features = {c.train_features!r}; valid: "
                          f"{', '.join(TRAIN_FEATURES)}")
    if c.test_features not in TEST_FEATURES:
        raise ConfigError(f"classify.test_features = {c.test_features!r}; valid: "
                          f"{', '.join(TEST_FEATURES)} (augmentation is for training only)")
    for side, name in (("train", c.train_features), ("test", c.test_features)):
        if name == "augmented" and e.augment < 1:
            raise ConfigError(f"classify.{side}_features = \"augmented\" needs "
                              "extract.augment = K > 0")
        if name == "tencrop" and e.tencrop == "off":
            raise ConfigError(f"classify.{side}_features = \"tencrop\" needs "
                              "extract.tencrop = \"mean\" or \"keep\"")


@dataclass
class Rows:
    """Rows of one split taken from a variant store."""

    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    rows: np.ndarray  # row numbers in the variant store
    groups: np.ndarray  # one id per image: the rows of one image share it


def read_rows(path: Path, splits: tuple[int, ...], label_names: list[str],
              average: bool = False) -> Rows:
    """The readable rows of ``splits`` in the variant store at ``path``; with ``average``,
    one row per image (the mean of its views)."""
    with FeatureStore(path) as store:
        if store.label_names != label_names:
            raise StoreError(f"{path}: its classes differ from the plain store's; run "
                             "`featx extract` again")
        split, ok, paths = store.split, store.ok, store.paths
        rows = np.flatnonzero(np.isin(split, splits) & ok)
        x, y = store.features(rows), store.labels[rows]
    row_paths = [paths[i] for i in rows]
    # Rows of one image are consecutive (the store keeps the dataset's path order).
    starts = np.flatnonzero(np.r_[True, np.asarray(row_paths[1:]) != np.asarray(row_paths[:-1])])
    groups = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rows)]))
    if average and len(starts) < len(rows):
        sums = np.zeros((len(starts), x.shape[1]), np.float64)
        np.add.at(sums, groups, x)
        x = (sums / np.bincount(groups)[:, None]).astype(np.float32)
        rows, y = rows[starts], y[starts]
        row_paths = [row_paths[i] for i in starts]
        groups = np.arange(len(starts))
    return Rows(x, y, row_paths, rows, groups)
