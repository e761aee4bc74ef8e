"""The feature store: one HDF5 file per (dataset, extraction settings), found by a content key.

Layout (every dataset has one row per image, in the dataset's sorted path order)::

    features     float32 (N, ...)   chunked by rows (~2 MB a chunk), lzf by default
    labels       int32   (N,)       index into label_names
    paths        utf-8   (N,)       relative to the dataset root
    split        int8    (N,)       0 train, 1 val, 2 test
    ok           bool    (N,)       False where the image could not be read (row is zeros)
    label_names  utf-8   (C,)
    skipped      utf-8   (K, 2)     path, reason of every unreadable image
    attrs: key, backbone settings, weights identity, versions, pipeline, rows_done, complete

A store is written under ``<name>.h5.partial`` and renamed when complete, so a finished
store is never confused with an unfinished one; ``rows_done`` records progress so that an
interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 1
CHUNK_BYTES = 2 << 20
STRING = h5py.string_dtype("utf-8")


class StoreError(ValueError):
    """A store that is missing, unfinished or does not match what was asked."""


def store_key(settings: dict[str, Any]) -> str:
    """A short hash of everything that changes the numbers (never of locations or speeds)."""
    text = json.dumps({**settings, "format_version": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_path(cache_dir: Path, dataset_name: str, backbone: str, pooling: str, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset_name)
    return Path(cache_dir) / f"{safe}-{backbone}-{pooling}-{key}.h5"


def library_versions() -> dict[str, str]:
    import keras
    import sklearn
    import tensorflow as tf

    import featx

    return {"featx": featx.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version()}


class StoreWriter:
    """Writes rows in order into ``<path>.partial``, resuming a matching partial file."""

    def __init__(self, path: Path, *, key: str, feature_shape: tuple[int, ...],
                 paths: list[str], labels: np.ndarray, label_names: list[str],
                 split: np.ndarray, attrs: dict[str, Any], compression: str = "lzf") -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.n_rows = len(paths)
        self.file = self._open_partial(key, feature_shape)
        if "features" not in self.file:
            self._create(feature_shape, paths, labels, label_names, split, attrs, compression)
        self.rows_done = int(self.file.attrs["rows_done"])

    def _open_partial(self, key: str, feature_shape: tuple[int, ...]) -> h5py.File:
        if self.partial.exists():
            try:
                f = h5py.File(self.partial, "r+")
                if (f.attrs.get("key") == key and "features" in f
                        and f["features"].shape == (self.n_rows, *feature_shape)):
                    return f
                f.close()
            except OSError:
                pass  # unreadable leftovers of a killed run: start again
            self.partial.unlink()
        return h5py.File(self.partial, "w")

    def _create(self, feature_shape, paths, labels, label_names, split, attrs, compression):
        f = self.file
        row_bytes = 4 * int(np.prod(feature_shape))
        chunk_rows = int(max(1, min(self.n_rows, CHUNK_BYTES // max(row_bytes, 1))))
        comp = None if compression == "none" else compression
        f.create_dataset("features", (self.n_rows, *feature_shape), np.float32,
                         chunks=(chunk_rows, *feature_shape), compression=comp,
                         shuffle=comp is not None)
        f.create_dataset("labels", data=np.asarray(labels, np.int32))
        f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=STRING)
        f.create_dataset("label_names", data=np.asarray(label_names, dtype=object), dtype=STRING)
        f.create_dataset("split", data=np.asarray(split, np.int8))
        f.create_dataset("ok", (self.n_rows,), bool, fillvalue=True)
        for name, value in attrs.items():
            f.attrs[name] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        f.attrs["rows_done"] = 0
        f.attrs["complete"] = False
        f.flush()

    def write(self, first: int, features: np.ndarray, ok: np.ndarray) -> None:
        """Write rows ``first:first+len(features)``; they must follow the rows already done."""
        if first != self.rows_done:
            raise StoreError(f"rows must be written in order: got {first}, "
                             f"expected {self.rows_done}")
        end = first + len(features)
        self.file["features"][first:end] = features
        if not ok.all():
            self.file["ok"][first:end] = ok
        self.file.attrs["rows_done"] = end
        self.rows_done = end

    def flush(self) -> None:
        self.file.flush()

    def finish(self, skipped: list[tuple[str, str]]) -> Path:
        if self.rows_done != self.n_rows:
            raise StoreError(f"{self.partial}: {self.rows_done} of {self.n_rows} rows written")
        if "skipped" in self.file:
            del self.file["skipped"]
        self.file.create_dataset("skipped", data=np.asarray(skipped, dtype=object).reshape(-1, 2),
                                 dtype=STRING)
        self.file.attrs["complete"] = True
        self.file.close()
        os.replace(self.partial, self.path)  # atomic: a store under its final name is complete
        return self.path

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


class FeatureStore:
    """Read access to a complete store. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = " (an unfinished extraction: run `featx extract` again to resume)" \
                if partial.exists() else " (run `featx extract` first)"
            raise StoreError(f"no feature store at {self.path}{hint}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({e})") from None
        if not self.file.attrs.get("complete", False):
            self.file.close()
            raise StoreError(f"{self.path}: store is not complete")

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    @property
    def attrs(self) -> dict[str, Any]:
        out = {}
        for k, v in self.file.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str) and v[:1] in "{[":
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    pass
            out[k] = v.item() if isinstance(v, np.generic) else v
        return out

    def __len__(self) -> int:
        return int(self.file["features"].shape[0])

    @property
    def labels(self) -> np.ndarray:
        return self.file["labels"][:]

    @property
    def split(self) -> np.ndarray:
        return self.file["split"][:]

    @property
    def ok(self) -> np.ndarray:
        return self.file["ok"][:]

    @property
    def paths(self) -> list[str]:
        return [p.decode() if isinstance(p, bytes) else p for p in self.file["paths"][:]]

    @property
    def label_names(self) -> list[str]:
        return [p.decode() if isinstance(p, bytes) else p for p in self.file["label_names"][:]]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        if "skipped" not in self.file:
            return []
        return [tuple(x.decode() if isinstance(x, bytes) else x for x in row)
                for row in self.file["skipped"][:]]

    def iter_chunks(self, rows: np.ndarray | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, features) chunk by chunk, so no more than a chunk is in memory."""
        ds = self.file["features"]
        step = ds.chunks[0] * max(1, 64 // ds.chunks[0]) if ds.chunks else 4096
        wanted = np.arange(len(self)) if rows is None else np.sort(np.asarray(rows))
        for start in range(0, len(self), step):
            sel = wanted[(wanted >= start) & (wanted < start + step)]
            if len(sel):
                block = ds[start:min(start + step, len(self))]
                yield sel, block[sel - start]

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Features of ``rows`` (all rows by default, ascending), flattened to 2-D float32."""
        wanted = np.arange(len(self)) if rows is None else np.sort(np.asarray(rows))
        row_size = int(np.prod(self.file["features"].shape[1:]))
        out = np.empty((len(wanted), row_size), np.float32)
        at = 0
        for sel, block in self.iter_chunks(wanted):
            out[at:at + len(sel)] = block.reshape(len(sel), -1)
            at += len(sel)
        return out
