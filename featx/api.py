"""The Python face of featx: the same functions as the command line, returning objects.

    import featx
    store = featx.extract("pipelines/flowers17.toml", data="path/to/flowers")
    X_train, y_train = store.split("train")
    X_test, y_test = store.split("test")

Overrides are the command line's flags (``data``, ``weights``, ``input_size``, ...) as
keyword arguments, plus ``set=["section.field=value", ...]`` for any other field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from featx.config import SHORTHANDS, Config
from featx.dataset import SPLIT_NAMES
from featx.errors import ConfigError


def make_config(pipeline: str | os.PathLike | Config | None = None,
                set: list[str] | tuple[str, ...] = (), **overrides: Any) -> Config:
    """A validated :class:`~featx.config.Config` from a pipeline file (or a Config, copied;
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
        from featx.store import FeatureStore

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
            set: list[str] | tuple[str, ...] = (), progress: bool = False,
            **overrides: Any) -> Store:
    """Make sure the feature store of a pipeline exists and matches its images; return it.

    Parameters
    ----------
    pipeline : path to a pipeline TOML file, a Config, or None (defaults)
    set : list of "section.field=value"
    progress : bool, default=False
        Show the progress bar.
    **overrides
        The command line's flags: data, manifest, backbone, weights, layer, pooling,
        input_size, batch_size, cache_dir, engine, strict, ...

    Returns
    -------
    Store
        The plain store (variant stores the pipeline asks for are extracted too).
    """
    from featx.extract import extract_all

    config = make_config(pipeline, set, **overrides)
    results = list(extract_all(config, progress=progress))
    return Store(results[0].path)
