"""The feature store: one HDF5 file per (dataset, extraction settings), found by a content key.

Layout (every dataset has one row per image, in the dataset's sorted path order)::

    features     float32 (N, ...)   chunked by rows (~2 MB a chunk), lzf by default
    labels       int32   (N,)       index into label_names
    paths        utf-8   (N,)       relative to the dataset root
    split        int8    (N,)       0 train, 1 val, 2 test
    ok           bool    (N,)       False where the image could not be read (row is zeros)
    label_names  utf-8   (C,)
    signatures   utf-8   (N,)       size:mtime (or content hash) of each image when read
    skipped      utf-8   (K, 2)     path, reason of every unreadable image
    attrs: key (content key), settings_key, backbone settings, weights identity, versions,
           pipeline, split, features_sha256, complete

The file name carries the settings key (what the numbers depend on, less the images), the
``key`` attribute the content key (settings plus the image manifest). Extraction writes
whole blocks into ``<name>.h5.<key>.partial/`` and assembles the store under a temporary
name renamed only when complete, so a finished store is never confused with an unfinished
one and a killed extraction resumes from its last finished block.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
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


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def store_path(cache_dir: Path, dataset_name: str, backbone: str, pooling: str, key: str) -> Path:
    return Path(cache_dir) / f"{safe_name(dataset_name)}-{backbone}-{pooling}-{key}.h5"


def shard_dir(store: Path, content_key: str) -> Path:
    """Where the Ray engine (featx.distributed) keeps the shard files of a store."""
    return Path(store).with_name(Path(store).name + f".{content_key}.shards")


def library_versions() -> dict[str, str]:
    import keras
    import sklearn
    import tensorflow as tf

    import featx

    return {"featx": featx.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version()}


class BlockDir:
    """Finished blocks of an unfinished extraction, one ``.npz`` file each.

    A block is written to a temporary name and renamed, so a process killed at any moment
    leaves only whole blocks; the next run skips them. The folder is named by the content
    key, so only the very same job resumes from it.
    """

    def __init__(self, store: Path, content_key: str, rows: int, block_rows: int) -> None:
        self.dir = Path(store).with_name(Path(store).name + f".{content_key}.partial")
        self.rows = rows
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            try:  # a resumed job keeps the block size it started with
                block_rows = int(json.loads(meta_path.read_text())["block_rows"])
            except (ValueError, KeyError):
                pass
        self.block_rows = block_rows
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(meta_path, json.dumps({"key": content_key, "rows": rows,
                                             "block_rows": block_rows}).encode())
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    @property
    def n_blocks(self) -> int:
        return -(-self.rows // self.block_rows)

    def block_path(self, index: int) -> Path:
        return self.dir / f"block-{index:06d}.npz"

    def done(self) -> list[int]:
        return [i for i in range(self.n_blocks) if self.block_path(i).exists()]

    def rows_of(self, index: int) -> range:
        return range(index * self.block_rows, min((index + 1) * self.block_rows, self.rows))

    def save(self, index: int, features: np.ndarray, ok: np.ndarray, reasons: list[str]) -> None:
        tmp = self.block_path(index).with_suffix(".tmp")
        with tmp.open("wb") as f:
            np.savez(f, features=features, ok=ok, reasons=np.asarray(reasons, dtype=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.block_path(index))

    def load(self, index: int) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != index:
            with np.load(self.block_path(index)) as z:
                self._cache = (index, {k: z[k] for k in z.files})
        return self._cache[1]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class RowSource:
    """Where each row of a new store comes from: a reused row of the old store
    (``old_row >= 0``) or a row of the new blocks (``new_row >= 0``)."""

    old_row: np.ndarray
    new_row: np.ndarray


def write_store(path: Path, *, feature_shape: tuple[int, ...], source: RowSource,
                old: FeatureStore | None, blocks: BlockDir | None, paths: list[str],
                signatures: list[str], labels: np.ndarray, label_names: list[str],
                split: np.ndarray, attrs: dict[str, Any], compression: str = "lzf",
                extra: dict[str, np.ndarray] | None = None) -> list[tuple[str, str]]:
    """Assemble a complete store from reused and new rows, streaming chunk by chunk, under a
    temporary name; rename it into place only when everything is written. ``extra``: more
    per-row datasets (e.g. a variant store's ``view``). Returns the skipped (path, reason)
    pairs, sorted."""
    n = len(paths)
    row_bytes = 4 * int(np.prod(feature_shape))
    chunk_rows = int(max(1, min(n, CHUNK_BYTES // max(row_bytes, 1))))
    comp = None if compression == "none" else compression
    tmp = path.with_name(path.name + ".assembling")
    digest = hashlib.sha256()
    ok_all = np.ones(n, bool)
    skipped: list[tuple[str, str]] = []
    # Read the old store's small per-row datasets once, not per chunk or per row.
    old_reasons = dict(old.skipped) if old is not None else {}
    old_ok = old.ok if old is not None else None
    with h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", (n, *feature_shape), np.float32,
                                 chunks=(chunk_rows, *feature_shape), compression=comp,
                                 shuffle=comp is not None, fletcher32=True)
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            block = np.empty((stop - start, *feature_shape), np.float32)
            old_rows = source.old_row[start:stop]
            reuse = np.flatnonzero(old_rows >= 0)
            if len(reuse):
                order = np.argsort(old_rows[reuse])  # h5py reads increasing indices
                got = old.file["features"][old_rows[reuse][order]]
                block[reuse[order]] = got
                for i in reuse:
                    ok_all[start + i] = old_ok[old_rows[i]]
            for i in np.flatnonzero(old_rows < 0):
                row = int(source.new_row[start + i])
                b = blocks.load(row // blocks.block_rows)
                j = row - (row // blocks.block_rows) * blocks.block_rows
                block[i] = b["features"][j]
                ok_all[start + i] = bool(b["ok"][j])
                if not b["ok"][j]:
                    skipped.append((paths[start + i], str(b["reasons"][j])))
            for i in reuse:  # a reused row has the same path in the old store
                if not ok_all[start + i]:
                    rel = paths[start + i]
                    skipped.append((rel, old_reasons.get(rel, "unreadable")))
            feats[start:stop] = block
            digest.update(np.ascontiguousarray(block).tobytes())
        write_columns(f, labels=labels, paths=paths, signatures=signatures,
                      label_names=label_names, split=split, ok=ok_all, skipped=skipped,
                      attrs=attrs, features_sha256=digest.hexdigest(), extra=extra)
    if old is not None:
        old.close()  # the old store is replaced below; nothing reads it any more
    os.replace(tmp, path)  # atomic: a store under its final name is complete
    return sorted(skipped)


def write_columns(f: h5py.File, *, labels, paths, signatures, label_names, split, ok,
                  skipped: list[tuple[str, str]], attrs: dict[str, Any], features_sha256: str,
                  extra: dict[str, Any] | None = None) -> None:
    """Everything of a store but ``features``: the per-row datasets and the attributes, the
    last of them ``complete``."""
    f.create_dataset("labels", data=np.asarray(labels, np.int32))
    f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=STRING)
    f.create_dataset("signatures", data=np.asarray(signatures, dtype=object), dtype=STRING)
    f.create_dataset("label_names", data=np.asarray(label_names, dtype=object), dtype=STRING)
    f.create_dataset("split", data=np.asarray(split, np.int8))
    f.create_dataset("ok", data=np.asarray(ok, bool))
    for name, values in (extra or {}).items():
        f.create_dataset(name, data=np.asarray(values))
    f.create_dataset("skipped", data=np.asarray(sorted(skipped), dtype=object).reshape(-1, 2),
                     dtype=STRING)
    for name, value in attrs.items():
        f.attrs[name] = value if isinstance(value, (int, float, str)) else json.dumps(value)
    f.attrs["features_sha256"] = features_sha256
    f.attrs["rows"] = len(labels)
    f.attrs["complete"] = True


def missing_sources(path: Path, dataset: h5py.Dataset) -> list[str]:
    """The source files of a virtual dataset that are not there (relative to the store)."""
    if not dataset.is_virtual:
        return []
    files = {m.file_name for m in dataset.virtual_sources()}
    return sorted(f for f in files if not (Path(path).parent / f).is_file())


class FeatureStore:
    """Read access to a complete store. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            partial = list(self.path.parent.glob(self.path.name + ".*.partial"))
            hint = " (an unfinished extraction: run `featx extract` again to resume)" \
                if partial else " (run `featx extract` first)"
            raise StoreError(f"no feature store at {self.path}{hint}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({e})") from None
        if not self.file.attrs.get("complete", False):
            self.file.close()
            raise StoreError(f"{self.path}: store is not complete")
        missing = missing_sources(self.path, self.file["features"])
        if missing:  # a virtual store (featx.distributed) would read fill values
            self.file.close()
            raise StoreError(f"{self.path}: {len(missing)} shard file(s) missing, e.g. "
                             f"{missing[0]} (run `featx extract` again)")

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
    def signatures(self) -> list[str]:
        if "signatures" not in self.file:
            return [""] * len(self)
        return [p.decode() if isinstance(p, bytes) else p for p in self.file["signatures"][:]]

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

    @property
    def rows_per_read(self) -> int:
        """The rows ``iter_chunks`` reads at a time: whole chunks, at least 64 rows (a virtual
        dataset over Ray shards has no chunks of its own)."""
        chunks = self.file["features"].chunks
        return chunks[0] * max(1, 64 // chunks[0]) if chunks else 4096

    def iter_chunks(self, rows: np.ndarray | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, features) chunk by chunk, so no more than a chunk is in memory."""
        ds, step = self.file["features"], self.rows_per_read
        n = len(self)
        wanted = np.arange(n) if rows is None else np.sort(np.asarray(rows))
        # only the blocks holding wanted rows: bounds[b]:bounds[b + 1] are block b's rows
        bounds = np.searchsorted(wanted, np.arange(0, n + step, step))
        for b in np.flatnonzero(np.diff(bounds)):
            sel = wanted[bounds[b]:bounds[b + 1]]
            start = int(b) * step
            block = ds[start:min(start + step, n)]
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
