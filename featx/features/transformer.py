"""``FeatureExtractor``: a frozen ImageNet CNN as a scikit-learn transformer.

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    model = make_pipeline(FeatureExtractor(weights="imagenet", cache_dir="data/cache"),
                          LogisticRegression(max_iter=1000))
    model.fit(train_paths, train_labels).score(test_paths, test_labels)

Images go in as file paths, PIL images or RGB pixels of 0..255 values (:func:`as_images`);
float32 features (N, F) come out, read and resized exactly as ``featx extract`` reads them.
With file paths and a ``cache_dir``, features come from the same HDF5 stores as ``featx
extract``'s (any store there with the same settings that holds the file, unchanged since);
the others are extracted into a store of their own there, so a grid search or a
cross-validation pays for each image once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from featx.core.config import Config
from featx.core.errors import DatasetError
from featx.core.files import short_hash
from featx.core.layout import transform_manifest
from featx.core.log import plural

LABEL = "unlabelled"  # the one class of the stores this transformer writes


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Frozen-backbone features of images, cached on disk when asked.

    Parameters
    ----------
    backbone : str, default="MobileNetV2"
        A keras.applications name (``featx backbones`` lists them).
    weights : str, default="imagenet"
        ``"imagenet"`` (Keras' download or cache), a local weights file, or ``"none"``
        (random, seeded: for tests).
    layer : str, default=""
        The layer(s) to read, comma-separated; empty: the last convolutional output.
    pooling : {"avg", "max", "flatten", "none"}, default="avg"
    input_size : int, default=0
        Square input size in pixels; 0: the backbone's own.
    batch_size : int, default=32
    cache_dir : str or None, default=None
        Feature-store folder (as ``featx extract --cache-dir``); None: no cache.
    seed : int, default=42
        Seeds random weights (``weights="none"``), as ``dataset.seed`` does for extraction.
    runtime : {"tensorflow", "openvino", "auto"}, default="tensorflow"
        Who runs the backbone (``backbone.runtime``); OpenVINO's converted model is kept in
        ``cache_dir`` (None: featx's default cache folder). The features are the same
        within 1e-4 relative, so cached features serve either runtime.
    progress : bool, default=True
        A progress bar while files go through the backbone (``featx.core.progress``: a widget in
        a notebook); False: none.

    Notes
    -----
    The model is built on first use and never pickled or cloned: a clone or an unpickled
    copy builds its own.
    """

    def __init__(self, backbone: str = "MobileNetV2", weights: str = "imagenet",
                 layer: str = "", pooling: str = "avg", input_size: int = 0,
                 batch_size: int = 32, cache_dir: str | None = None, seed: int = 42,
                 runtime: str = "tensorflow", progress: bool = True) -> None:
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.input_size = input_size
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.seed = seed
        self.runtime = runtime
        self.progress = progress

    # -- scikit-learn API ------------------------------------------------------------------

    def fit(self, X: Any = None, y: Any = None) -> FeatureExtractor:
        """Check the settings (nothing is learned: the backbone is frozen). Returns self."""
        self._backbone()  # every setting checked here, before any image is read
        return self

    @property
    def n_features_out_(self) -> int:
        """Width of the features ``transform`` returns (builds the model if unknown)."""
        if getattr(self, "_width", None) is None:
            self._width = int(np.prod(self._backbone().feature_shape))
        return self._width

    def transform(self, X: Any) -> np.ndarray:
        """Features of the images ``X``.

        Parameters
        ----------
        X : path, sequence of paths, of PIL images or of (H, W, 3) arrays, or ndarray
            File paths, PIL images, or RGB pixels of 0..255 values (uint8, or floats as
            keras' img_to_array gives) of shape (N, H, W, 3) or (H, W, 3); anything else is
            refused (:func:`as_images`), never cast.

        Returns
        -------
        ndarray of shape (N, n_features_out_), float32
        """
        kind, items = as_images(X)
        if kind == "paths" and self.cache_dir:
            # resolved, as dataset roots are: a path through a symlink is the same file
            out = self._from_cache([os.path.realpath(p) for p in items])
        elif kind == "paths":
            out = self._compute_files(items)
        else:
            out = self._compute_pixels(items)
        out = out.reshape(len(out), -1).astype(np.float32, copy=False)
        if len(out):
            self._width = out.shape[1]
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``<backbone><pooling><i>``: one name per output column (channels have no names)."""
        prefix = f"{self.backbone.lower()}{self.pooling}"
        return np.asarray([f"{prefix}{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # a frozen network: nothing is learned from the data
        tags.input_tags.two_d_array = False  # images, not a feature matrix
        tags.input_tags.string = True  # file paths
        return tags

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_model", None)  # a live Keras model is rebuilt, never pickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({"progress": True, **state})  # pickled by featx 0.4: no progress

    def __sklearn_clone__(self) -> FeatureExtractor:
        return type(self)(**self.get_params())  # never the model

    # -- inside --------------------------------------------------------------------------

    def _config(self) -> Config:
        config = Config.from_dict({
            "backbone": {"name": self.backbone, "weights": self.weights, "layer": self.layer,
                         "pooling": self.pooling, "input_size": self.input_size,
                         "runtime": self.runtime},
            "extract": {"batch_size": self.batch_size},
            "dataset": {"seed": self.seed, "test": 0.0},
            "cache_dir": str(self.cache_dir or ""),
        }, source="FeatureExtractor")
        return config

    def _backbone(self):
        from featx.features.backbones import Backbone

        if getattr(self, "_model", None) is None:
            config = self._config()
            self._model = Backbone(config.backbone, seed=self.seed, cache_dir=config.cache_path)
        return self._model

    def _compute_pixels(self, items: list) -> np.ndarray:
        return pixel_features(self._backbone(), items, self.batch_size)

    def _compute_files(self, paths: list[str]) -> np.ndarray:
        from featx.core.progress import bar
        from featx.data.images import ReadErrors, read_batches

        backbone = self._backbone()
        forward = backbone.batched(self.batch_size)
        errors = ReadErrors()
        out = []
        with bar(len(paths), backbone.spec.name, "img", self.progress) as shown:
            for _, images, ok in read_batches([str(p) for p in paths], backbone.input_size,
                                              self.batch_size, errors, resize=backbone.resize):
                out.append(forward(images, ok))
                shown.update(len(images))
        if errors.reasons:
            _unreadable([(str(paths[i]), r) for i, r in sorted(errors.reasons.items())])
        return np.concatenate(out) if out else np.zeros((0, self.n_features_out_), np.float32)

    def _from_cache(self, paths: list[str]) -> np.ndarray:
        from featx.features.extraction import extract
        from featx.features.plan import feature_settings
        from featx.store.keys import store_key

        config = self._config()
        settings_key = store_key(feature_settings(self._backbone()))
        found = _read_cached(paths, Path(config.cache_path), settings_key)
        missing = sorted({p for i, p in enumerate(paths) if i not in found})
        if missing:
            # a store of their own, named by what it holds, made as `featx extract` makes one
            digest = short_hash("\n".join(missing), 12)
            manifest = transform_manifest(config.cache_path, digest)
            manifest.parent.mkdir(parents=True, exist_ok=True)
            with manifest.open("w", newline="") as f:
                csv.writer(f).writerows([("path", "label"), *((p, LABEL) for p in missing)])
            config.dataset.manifest = str(manifest)
            config.dataset.root = os.path.commonpath([os.path.dirname(p) for p in missing])
            # a name to read in `featx cache ls`: the images' common folder (their manifest
            # tells this set of images from another of that folder: plan.same_dataset)
            config.dataset.name = os.path.basename(config.dataset.root) or \
                f"images-{len(missing)}"
            result = extract(config, progress=self.progress)
            if result.skipped:
                _unreadable(result.skipped)
            found = _read_cached(paths, Path(config.cache_path), settings_key)
        if len(found) < len(paths):
            changed = len(paths) - len(found)
            raise DatasetError(f"{plural(changed, 'image')} changed while being extracted; "
                               "run again")
        return np.stack([found[i] for i in range(len(paths))])


def _read_cached(paths: list[str], cache_dir: Path, settings_key: str) -> dict[int, np.ndarray]:
    """The features of every path held, unchanged, by a plain store in ``cache_dir`` made
    with ``settings_key``, by the path's index in ``paths``."""
    import h5py

    from featx.core.errors import StoreError
    from featx.core.layout import store_files
    from featx.store.read import FeatureStore

    wanted: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        wanted.setdefault(p, []).append(i)
    found: dict[int, np.ndarray] = {}
    for path in store_files(cache_dir):
        try:
            with h5py.File(path, "r") as f:
                a = f.attrs
                if a.get("settings_key") != settings_key or "view" in f or \
                        a.get("hash", "stat") != "stat" or not a.get("complete", False):
                    continue
                root = str(a.get("root", ""))
        except OSError:
            continue
        try:
            with FeatureStore(path) as store:
                rows = {}
                for row, (rel, sig, ok) in enumerate(zip(store.paths, store.signatures,
                                                         store.ok)):
                    full = os.path.join(root, rel)
                    if full in wanted and wanted[full][0] not in found and ok and \
                            _signature(full) == sig:
                        rows[row] = wanted[full]
                if rows:
                    order = sorted(rows)
                    for row, feats in zip(order, store.features(np.asarray(order))):
                        for i in rows[row]:
                            found[i] = feats
        except StoreError:
            continue  # a damaged store serves nothing; extraction replaces what it held
    return found


def _signature(path: str) -> str:
    st = os.stat(path)  # as featx.data.dataset.Dataset.signatures makes it
    return f"{st.st_size}:{st.st_mtime_ns // 1_000_000_000}"


def _unreadable(skipped: list[tuple[str, str]]) -> None:
    first, reason = skipped[0]
    raise DatasetError(f"{plural(len(skipped), 'image')} could not be read, e.g. {first}: "
                       f"{reason}")


def pixel_features(backbone: Any, items: list, batch_size: int,
                   tencrop: bool = False) -> np.ndarray:
    """Features (N, ...) of PIL images or uint8 arrays (H, W, 3), each resized as
    :func:`featx.data.images.load_image` resizes a file (with ``tencrop``: the mean of its 10
    crops, as the 10-crop store holds it)."""
    from PIL import Image

    from featx.data.images import crop_load_size, fit_image, ten_crops

    size = backbone.input_size
    load = crop_load_size(size) if tencrop else size
    images = [fit_image(x if isinstance(x, Image.Image) else Image.fromarray(x), load,
                        backbone.resize)
              for x in items]
    if tencrop:
        images = [crop for image in images for crop in ten_crops(image, size)]
    forward = backbone.batched(batch_size)
    chunks = [forward(np.stack(images[i:i + batch_size]),
                      np.ones(len(images[i:i + batch_size]), bool))
              for i in range(0, len(images), batch_size)]
    if not chunks:
        return np.zeros((0, int(np.prod(backbone.feature_shape))), np.float32)
    x = np.concatenate(chunks).reshape(len(images), -1)
    return x.reshape(len(items), 10, -1).mean(axis=1) if tencrop else x


def as_images(X: Any) -> tuple[str, list]:
    """The images argument of :meth:`FeatureExtractor.transform` and
    :meth:`featx.api.Model.predict_proba`, checked once, here: ``("paths", [str])`` or
    ``("pixels", [PIL image or uint8 (H, W, 3)])``, resized later by the backbone.

    Takes a path (str or os.PathLike: one image) or a list of paths; a PIL image or a list
    of them; RGB pixels as an array (H, W, 3) or (N, H, W, 3) or a list of (H, W, 3) arrays,
    holding 0..255 values: uint8, another integer dtype whose values fit, or floats (as
    keras' ``img_to_array`` gives them). Refuses, never casts: no images, other shapes,
    values outside 0..255 or not finite, and floats all within 0..1 (scaled to 0..1?).
    """
    from PIL import Image

    if isinstance(X, str | os.PathLike | Image.Image):
        X = [X]
    if isinstance(X, np.ndarray) and not (X.ndim == 1 and X.dtype.kind in "OUS"):
        if X.ndim == 4 and len(X) == 0:
            raise DatasetError(f"no images: the image array has shape {X.shape}")
        pixels = _pixels(X, "the image array", ndims=(3, 4))
        return "pixels", [pixels] if pixels.ndim == 3 else list(pixels)
    if not isinstance(X, Sequence | np.ndarray):
        raise DatasetError(f"images must be a path, a list of paths or of PIL images, or an "
                           f"(N, H, W, 3) array, not of type {type(X).__name__}")
    items = list(X)
    if not items:
        raise DatasetError("no images: the list of images is empty")
    is_path = [isinstance(x, str | os.PathLike) for x in items]
    if all(is_path):
        return "paths", [os.fspath(x) for x in items]
    if any(is_path):
        i, j = is_path.index(True), is_path.index(False)
        raise DatasetError(f"images[{i}] is a path but images[{j}] of type "
                           f"{type(items[j]).__name__}: pass all paths, or all pixels (PIL "
                           "images or arrays)")
    return "pixels", [x if isinstance(x, Image.Image) else _pixels(x, f"images[{i}]")
                      for i, x in enumerate(items)]


def _pixels(x: Any, where: str, ndims: tuple[int, ...] = (3,)) -> np.ndarray:
    """``x`` as uint8 RGB pixels, (H, W, 3) or, where ``ndims`` has 4, (N, H, W, 3): exactly
    its values, which must be 0..255; ``where`` names it in the error."""
    if not isinstance(x, np.ndarray):
        raise DatasetError(f"{where} is of type {type(x).__name__}, not a path, a PIL image "
                           "or an (H, W, 3) array")
    if x.ndim not in ndims or x.shape[-1] != 3 or 0 in x.shape[-3:-1]:
        shapes = " or ".join(("(H, W, 3)", "(N, H, W, 3)")[:len(ndims)])
        raise DatasetError(f"{where} has shape {x.shape}, not RGB {shapes}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "uif":
        raise DatasetError(f"{where} holds {x.dtype}: pass uint8 or float pixel values 0..255")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DatasetError(f"{where} holds {plural(bad, 'non-finite value')} (NaN or inf): "
                           "pass pixel values 0..255")
    low, high = x.min(), x.max()
    span = "..".join(np.format_float_positional(v, trim="-") for v in (low, high))
    if low < 0 or high > 255:
        raise DatasetError(f"{where} holds {x.dtype} values {span}, outside "
                           "0..255: pass pixel values 0..255 (featx neither wraps nor clips)")
    if x.dtype.kind == "f" and 0 < high <= 1:
        raise DatasetError(f"{where} holds float values all within 0..1 ({span}): "
                           "scaled to 0..1? pass 0..255, as keras' img_to_array gives")
    return (np.rint(x) if x.dtype.kind == "f" else x).astype(np.uint8)
