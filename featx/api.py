"""The Python face of featx: the same functions as the command line, returning objects.

    import featx
    store = featx.extract("pipelines/flowers17.toml", data="path/to/flowers")
    X_train, y_train = store.split("train")
    X_test, y_test = store.split("test")

Overrides are the command line's flags (``data``, ``weights``, ``input_size``, ...) as
keyword arguments, plus ``set=["section.field=value", ...]`` for any other field.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featx.core.config import SHORTHANDS, Config
from featx.core.errors import ConfigError, DatasetError
from featx.core.log import shown
from featx.data.dataset import SPLIT_NAMES

if TYPE_CHECKING:
    from featx.inspect.sweep import SweepResult


def _lines_shown(progress: bool, verbose: bool = False) -> contextlib.AbstractContextManager:
    """featx's log lines during an API call, on stderr as the command line shows them: its
    progress lines (each result's summary line among them) with ``progress``, its debug lines
    too with ``verbose``, else warnings only (featx.core.log)."""
    return shown(logging.DEBUG if verbose else logging.INFO if progress else logging.WARNING)


def make_config(pipeline: str | os.PathLike | Config | None = None,
                set: list[str] | tuple[str, ...] = (), **overrides: Any) -> Config:
    """A validated :class:`~featx.core.config.Config` from a pipeline file (or a Config, copied;
    or the defaults), ``section.field=value`` items and keyword overrides."""
    if isinstance(pipeline, Config):
        config = Config.from_dict(pipeline.to_dict(), source="config")
        for item in set:
            config.set(item)
    else:
        config = Config.load(pipeline, list(set))
    for name, value in overrides.items():
        if name not in SHORTHANDS:
            raise ConfigError(f"unknown keyword {name!r} (valid: {', '.join(SHORTHANDS)}; any "
                              "other field: set=['section.field=value'])")
        if value is not None:
            config.assign(SHORTHANDS[name], value, "keyword")
    return config


class Store:
    """A feature store, read on demand (no file stays open between calls).

    Parameters
    ----------
    path : str or os.PathLike
        The store's ``.h5`` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def _open(self):
        from featx.store.read import FeatureStore

        return FeatureStore(self.path)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the readable images of one split.

        Parameters
        ----------
        name : {"train", "val", "test"}

        Returns
        -------
        X : ndarray of shape (n_rows, n_features), float32
        y : ndarray of shape (n_rows,), int32, indices into :attr:`label_names`
        """
        if name not in SPLIT_NAMES:
            raise ConfigError(f"split {name!r}: valid splits are {', '.join(SPLIT_NAMES)}")
        with self._open() as store:
            rows = np.flatnonzero((store.split == SPLIT_NAMES.index(name)) & store.ok)
            return store.features(rows), store.labels[rows]

    def split_paths(self, name: str) -> list[str]:
        """Image paths (relative to the dataset root) of :meth:`split`'s rows, in order."""
        with self._open() as store:
            rows = np.flatnonzero((store.split == SPLIT_NAMES.index(name)) & store.ok)
            paths = store.paths
            return [paths[i] for i in rows]

    @property
    def paths(self) -> list[str]:
        """Every row's image path, relative to the dataset root, shape (n_rows,)."""
        with self._open() as store:
            return store.paths

    @property
    def labels(self) -> np.ndarray:
        """Every row's label, int32 of shape (n_rows,)."""
        with self._open() as store:
            return store.labels

    @property
    def label_names(self) -> list[str]:
        """Class names, indexed by label."""
        with self._open() as store:
            return store.label_names

    @property
    def attrs(self) -> dict[str, Any]:
        """Everything recorded about the store: settings, key, versions, pipeline."""
        with self._open() as store:
            return store.attrs

    def __len__(self) -> int:
        with self._open() as store:
            return len(store)

    def iter_chunks(self, rows: np.ndarray | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(row indices, features)`` a chunk at a time, for stores larger than memory:
        features of shape (n_chunk_rows, *feature_shape), float32, checked as read."""
        with self._open() as store:
            yield from store.iter_chunks(rows)


def extract(pipeline: str | os.PathLike | Config | None = None, *,
            set: list[str] | tuple[str, ...] = (), progress: bool = True,
            **overrides: Any) -> Store:
    """Make sure the feature store of a pipeline exists and matches its images; return it.

    Parameters
    ----------
    pipeline : path to a pipeline TOML file, a Config, or None (defaults)
    set : list of "section.field=value"
    progress : bool, default=True
        Show the progress bar (a widget in a notebook) and featx's progress lines.
    **overrides
        The command line's flags: data, manifest, backbone, weights, layer, pooling,
        input_size, batch_size, cache_dir, engine, strict, ...

    Returns
    -------
    Store
        The plain store (variant stores the pipeline asks for are extracted too).
    """
    from featx.features.extraction import extract_all

    config = make_config(pipeline, set, **overrides)
    with _lines_shown(progress):
        results = list(extract_all(config, progress=progress))
    return Store(results[0].path)


@dataclass
class ClassifyResult:
    """One classifier's result on a store's test rows.

    Attributes
    ----------
    classifier : str
    estimator : fitted scikit-learn estimator, or None (a [combine] pipeline saves none)
    rank1, rank5 : float; rank5 is None where it means nothing (5 classes or fewer)
    per_class : dict of class name -> precision, recall, f1, support
    confusion : ndarray of shape (n_classes, n_classes), rows true, columns predicted
    label_names : list of str
    files : list of Path, everything written (reports, charts, the model)
    record : dict, the whole JSON result
    """

    classifier: str
    estimator: Any
    rank1: float
    rank5: float | None
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray
    label_names: list[str]
    files: list[Path]
    record: dict[str, Any] = field(repr=False)

    @property
    def model_file(self) -> Path | None:
        """The saved model (for :func:`load_model` and ``featx predict``), if one was."""
        return next((f for f in self.files if f.name == self.record.get("model")), None)


def run_classify(config: Config, store: Path | None = None) -> list[dict[str, Any]]:
    """``featx classify`` for any pipeline: a [combine] one by featx.learn.combine, any other by
    featx.learn.classification. Returns the result records (the JSON written for each); their
    summary lines go to featx.core.log.RESULTS as each is written."""
    from featx.learn.classification import classify as classify_store
    from featx.learn.combine import classify_combined

    if config.combine.pipelines:
        if store is not None:
            raise ConfigError("a [combine] pipeline reads its members' stores: drop --store")
        return classify_combined(config)
    return classify_store(config, store)


def classify(pipeline: str | os.PathLike | Config | None = None, *,
             store: str | os.PathLike | Store | None = None,
             set: list[str] | tuple[str, ...] = (), progress: bool = True,
             verbose: bool = False, **overrides: Any) -> list[ClassifyResult]:
    """Fit the pipeline's classifiers on a store's training rows, score them on its test
    rows, write the reports into a new run folder; return the results.

    Parameters
    ----------
    pipeline : path to a pipeline TOML file, a Config, or None (defaults)
    store : a store (or its path) to use instead of the one the pipeline's data names
    set : list of "section.field=value"
    progress : bool, default=True
        Show each classifier's summary line as it is done (as ``featx: ...`` lines on
        stderr) and featx's other progress lines.
    verbose : bool, default=False
        Also featx's debug lines.
    **overrides
        The command line's flags (data, classifiers, cache_dir, out, quick, ...).

    Returns
    -------
    list of ClassifyResult, one per classifier (and the ensemble, if asked)
    """
    from featx.learn import modelfile

    config = make_config(pipeline, set, **overrides)
    path = Path(store.path if isinstance(store, Store) else store) if store else None
    with _lines_shown(progress, verbose):
        records = run_classify(config, path)
    out = []
    for r in records:
        result = ClassifyResult(r["classifier"], None, r["rank1"], r.get("rank5"),
                                r["per_class"], np.asarray(r["confusion"]),
                                list(r["per_class"]), [Path(f) for f in r.get("files", [])], r)
        if result.model_file:  # the estimator as saved (it round-trips: tests/test_modelfile)
            result.estimator = modelfile.load(result.model_file)["model"]
        out.append(result)
    return out


def sweep(pipeline: str | os.PathLike | Config | None = None, *,
          layers: list[str] | tuple[str, ...] | None = None, out: str | os.PathLike | None = None,
          set: list[str] | tuple[str, ...] = (), progress: bool = True, verbose: bool = False,
          **overrides: Any) -> SweepResult:
    """Which layer to read: extract ``layers`` of the pipeline's backbone in one pass (one
    store), fit the pipeline's classifiers on each layer's features alone and score them on
    its test rows, as ``featx sweep`` does.

    Parameters
    ----------
    pipeline : path to a pipeline TOML file, a Config, or None (defaults)
    layers : layer names (default: the end of each stage of the backbone and its last layer,
        :meth:`featx.features.backbones.Backbone.stage_ends`)
    out : folder for sweep.md, .json, .png and .html (default: ``<store>.sweep/``)
    set : list of "section.field=value"
    progress : bool, default=True
        Show the extraction's progress bar, featx's progress lines and the table.
    verbose : bool, default=False
        Also featx's debug lines.
    **overrides
        The command line's flags (data, weights, classifiers, cache_dir, quick, ...).

    Returns
    -------
    featx.inspect.sweep.SweepResult
        ``scores``: one LayerScore (layer, depth, shape, columns, classifier, rank1, rank5,
        fit_seconds) per layer and classifier, shallow layers first.
    """
    from featx.inspect.sweep import sweep as run_sweep

    config = make_config(pipeline, set, **overrides)
    with _lines_shown(progress, verbose):
        return run_sweep(config, list(layers) if layers else None, out, progress=progress)


def load_model(path: str | os.PathLike, *, weights: str | None = None,
               trust: bool = False) -> Model:
    """A saved classifier (a ``.skops`` file, or the best model of a run folder) with the
    backbone that computes its features.

    Parameters
    ----------
    path : a model file or a run folder
    weights : the weights file where it is on this machine, if not where it was
    trust : bool, default=False
        Also load a pickle/joblib model, which can run code: only files you trust.
    """
    from featx.learn.predict import Predictor

    return Model(Predictor.load(path, weights=weights, trust=trust))


class Model:
    """Predict from images: a path or a list of paths, PIL images, or RGB pixels of 0..255
    values, (N, H, W, 3) or (H, W, 3), uint8 or floats (as keras' img_to_array gives), read
    and resized exactly as extraction reads them; anything else is refused, never cast
    (:func:`featx.features.transformer.as_images`)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.classes_: list[str] = predictor.classes  # column order of predict_proba

    def predict_proba(self, images: Any) -> np.ndarray:
        """ndarray of shape (N, n_classes): probabilities (softmax of decision values for a
        learner without predict_proba), columns in ``classes_`` order."""
        return self.predictor.predict_proba(self._features(images))

    def predict(self, images: Any) -> list[str]:
        """The best class name of each image, list of length N."""
        proba = self.predict_proba(images)
        return [self.classes_[i] for i in proba.argmax(axis=1)]

    def top_k(self, images: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` best (class name, score) of each image, best first."""
        proba = self.predict_proba(images)
        best = np.argsort(-proba, axis=1, kind="stable")[:, :min(k, proba.shape[1])]
        return [[(self.classes_[j], float(row[j])) for j in b] for row, b in zip(proba, best)]

    def _features(self, images: Any) -> np.ndarray:
        from featx.features.transformer import as_images, pixel_features

        kind, items = as_images(images)
        if kind == "paths":
            x, ok, reasons = self.predictor.features(items)
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                raise DatasetError(f"{int((~ok).sum())} image(s) could not be read, e.g. "
                                   f"{items[bad]}: {reasons.get(bad, 'unreadable')}")
            return x
        return pixel_features(self.predictor.backbone, items, 32, self.predictor.tencrop)
