"""Reading stores: every feature checked against its block's checksum as it is read."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx.core.errors import DamagedStoreError, StoreError
from featx.core.files import write_atomic
from featx.core.layout import (
    partial_dirs,
    segments_dir,
    verified_stamp,
)
from featx.core.log import plural
from featx.core.memory import CHUNK, PackedStrings
from featx.store.keys import as_text, columns_digest, segment_digest

BLOCK_CACHE = 8  # checked physical blocks a segmented store keeps (a read mixes ~2-3)


def missing_sources(path: Path, dataset: h5py.Dataset) -> list[str]:
    """The source files of a virtual dataset that are not there (relative to the store)."""
    if not dataset.is_virtual:
        return []
    files = {m.file_name for m in dataset.virtual_sources()}
    return sorted(f for f in files if not (Path(path).parent / f).is_file())


class _Segment:
    """One immutable file of a segmented store's features (physical rows ``start`` on)."""

    def __init__(self, path: Path, file: h5py.File, start: int) -> None:
        self.path, self.file, self.start = path, file, start
        self.rows = int(file["features"].shape[0])
        self.check_rows = int(file.attrs["check_rows"])
        self._sums: list[str] | None = None

    @property
    def block_sha256(self) -> list[str]:
        if self._sums is None:
            self._sums = [as_text(x) for x in self.file["block_sha256"][:]]
        return self._sums

    @property
    def digest(self) -> str:
        """:func:`segment_digest` of this file."""
        return segment_digest(self.rows, self.check_rows, self.block_sha256)


def checked_rows(features: Any, start: int, stop: int, digests: list[str], block: int,
                 path: Path) -> np.ndarray:
    """Rows ``start:stop`` of an HDF5 ``features`` dataset (block number ``block`` of the
    file at ``path``), checked against the block checksum recorded when it was written."""
    try:
        rows = features[start:stop]
    except OSError as e:  # Fletcher-32 or I/O: name the file, never h5py's bare message
        raise DamagedStoreError(f"{path}: features of rows {start}-{stop - 1} unreadable "
                                f"({str(e).split(':')[0]}); the file is damaged: run `featx "
                                "extract` to rebuild the store", str(path)) from None
    # the array's own buffer: no copy of its bytes (2 MB a block) beside it
    digest = hashlib.sha256(np.ascontiguousarray(rows, np.float32)).hexdigest()
    if block >= len(digests) or digest != digests[block]:
        raise DamagedStoreError(f"{path}: features of rows {start}-{stop - 1} do not match "
                                "the checksum recorded when they were written; run `featx "
                                "extract` to rebuild the store", str(path))
    return rows


def groups_digest(key: str, groups: np.ndarray, pairs: np.ndarray, similarity: np.ndarray,
                  info: str) -> str:
    """One SHA-256 of a store's duplicate groups (featx.store.write.write_groups): the
    groups, the near-duplicate pairs and their similarities, how they were found (``info``,
    JSON), bound to the store's content key."""
    h = hashlib.sha256(f"{key}\0{info}\0".encode())
    h.update(np.ascontiguousarray(groups, "<i4").tobytes() + b"\x1e")
    h.update(np.ascontiguousarray(pairs, "<i8").tobytes() + b"\x1e")
    h.update(np.ascontiguousarray(similarity, "<f4").tobytes())
    return h.hexdigest()


class StoredGroups:
    """The duplicate groups a store records: ``groups`` int32 (N,) (each row's group, named by
    its smallest row), ``pairs`` int64 (k, 2) and ``similarity`` float32 (k,) (the
    near-duplicate pairs found, i < j, most similar first), ``info`` (threshold, neighbours,
    method, counts, seconds)."""

    def __init__(self, groups: np.ndarray, pairs: np.ndarray, similarity: np.ndarray,
                 info: dict[str, Any]) -> None:
        self.groups, self.pairs, self.similarity, self.info = groups, pairs, similarity, info

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"])


def stored_groups(f: h5py.File, path: str | os.PathLike = "") -> StoredGroups | None:
    """The duplicate groups recorded in an open store file, or None where it records none
    (made before featx 0.7, or a variant store: those follow the plain store's split); a
    StoreError when they do not match their checksum."""
    if "groups" not in f or "groups_sha256" not in f.attrs:
        return None
    info_text = as_text(f.attrs["groups"])
    groups, pairs = f["groups"][:], f["near_pairs"][:].reshape(-1, 2)
    similarity = f["near_similarity"][:]
    if groups_digest(as_text(f.attrs.get("key", "")), groups, pairs, similarity, info_text) \
            != as_text(f.attrs["groups_sha256"]) or len(groups) != f["labels"].shape[0]:
        raise StoreError(f"{path or f.filename}: its duplicate groups do not match the checksum "
                         "recorded with them; run `featx extract` to find them again")
    return StoredGroups(groups.astype(np.int32), pairs.astype(np.int64),
                        similarity.astype(np.float32), json.loads(info_text))


class FeatureStore:
    """Read access to a complete store. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            partial = partial_dirs(self.path.parent, self.path)
            hint = " (an unfinished extraction: run `featx extract` again to resume)" \
                if partial else " (run `featx extract` first)"
            raise StoreError(f"no feature store at {self.path}{hint}")
        if self.path.parent.name.endswith(".segments"):  # a hard link of an older version
            store = self.path.parent.with_name(self.path.parent.name[:-len(".segments")])
            raise StoreError(f"{self.path} is a feature segment of {store.name}, not a store: "
                             f"open {store}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({e})") from None
        if not self.file.attrs.get("complete", False):
            self.file.close()
            raise StoreError(f"{self.path}: store is not complete")
        self._segments: list[_Segment] = []
        self._feature_row: np.ndarray | None = None
        self._paths: list[str] | None = None  # read once, when asked for
        self._signatures: list[str] | None = None
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        try:
            if "feature_row" in self.file:
                self._open_segments()
            else:
                missing = missing_sources(self.path, self.file["features"])
                if missing:  # a virtual store (featx.features.distributed) would read fill values
                    raise StoreError(f"{self.path}: {plural(len(missing), 'shard file')} "
                                     "missing, "
                                     f"e.g. {missing[0]} (run `featx extract` again)")
            self._check_columns()
        except StoreError:
            self.close()
            raise
        self._block_sha256: list[str] | None = None

    def _open_segments(self) -> None:
        """Open the segments of a segmented store, checking that each is there, complete and
        as long as recorded."""
        folder = segments_dir(self.path)
        start = 0
        for entry in json.loads(as_text(self.file.attrs["segments"])):
            path = folder / entry["file"]
            try:
                f = h5py.File(path, "r")
            except OSError as e:
                raise StoreError(f"{self.path}: feature segment {path} missing or unreadable "
                                 f"({str(e).split(':')[0]}); run `featx extract` to rebuild "
                                 "the store") from None
            self._segments.append(_Segment(path, f, start))
            if f["features"].shape[0] != int(entry["rows"]) or "block_sha256" not in f:
                raise StoreError(f"{self.path}: feature segment {path} holds "
                                 f"{f['features'].shape[0]} rows, {entry['rows']} recorded; "
                                 "run `featx extract` to rebuild the store")
            if entry.get("sha256") != self._segments[-1].digest:  # swapped or replaced
                raise StoreError(f"{self.path}: feature segment {path} is not the one the "
                                 "store was written with (its block checksums differ); run "
                                 "`featx extract` to rebuild the store")
            start += int(entry["rows"])
        rows = self.file["feature_row"][:]
        if len(rows) and (rows.min() < 0 or rows.max() >= start):
            raise StoreError(f"{self.path}: feature_row points outside its {start} feature "
                             "rows; run `featx extract` to rebuild the store")
        # int32 while it can: an update holds it while the model works (1M rows: 4 MB less)
        self._feature_row = rows.astype(np.int32) if start < 2**31 else rows

    def _check_columns(self) -> None:
        recorded = self.file.attrs.get("columns_sha256")
        if recorded is None or not ("block_sha256" in self.file or self._segments):
            raise StoreError(f"{self.path}: a store without checksums (written by an older "
                             "featx); run `featx extract` to rebuild it")
        try:
            now = columns_digest(labels=self.labels, paths=column_bytes(self.file["paths"]),
                                 split=self.split, ok=self.ok, label_names=self.label_names,
                                 feature_row=self._feature_row,
                                 segments=as_text(self.file.attrs["segments"])
                                 if self._segments else None)
        except (OSError, KeyError) as e:
            raise StoreError(f"{self.path}: unreadable ({e}); run `featx extract` to "
                             "rebuild it") from None
        if now != as_text(recorded):
            raise StoreError(f"{self.path}: labels, split, paths or ok do not match the "
                             "checksum recorded when the store was written; run `featx "
                             "extract` to rebuild it")

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close its files and let go of the blocks it keeps (a merge's: up to 16 MiB)."""
        for segment in self._segments:
            segment.file.close()
        self.file.close()
        self._cache.clear()

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
        return int(self.file["labels"].shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one row's features."""
        ds = self._segments[0].file["features"] if self._segments else self.file["features"]
        return tuple(ds.shape[1:])

    @property
    def segmented(self) -> bool:
        return bool(self._segments)

    @cached_property
    def parts(self) -> list[_Segment]:
        """The files holding the features, as segments: a plain store is its only one."""
        return self._segments or [_Segment(self.path, self.file, 0)]

    @property
    def segment_files(self) -> list[Path]:
        """The files holding the features: the segments, or the store itself."""
        return [s.path for s in self._segments] or [self.path]

    @property
    def segment_rows(self) -> list[int]:
        return [s.rows for s in self._segments] or [len(self)]

    @property
    def physical_rows(self) -> int:
        """Feature rows held (those of removed images included, until a rewrite)."""
        return sum(self.segment_rows)

    @property
    def feature_rows(self) -> np.ndarray:
        """The physical feature row of every row (int (N,): int32 under 2**31 rows)."""
        return self._feature_row if self._feature_row is not None else np.arange(len(self))

    def feature_rows_of(self, rows: np.ndarray) -> np.ndarray:
        """The physical feature row of each of ``rows`` (a new int64 (k,); -1 stays -1),
        a slice at a time: an update maps a million rows with no array of N beside them."""
        out = np.array(rows, np.int64)
        if self._feature_row is not None:
            for a in range(0, len(out), CHUNK):
                some = out[a:a + CHUNK]  # a view: mapped in place
                some[some >= 0] = self._feature_row[some[some >= 0]]
        return out

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
        """Read once (a list of N strings: do not change it)."""
        if self._signatures is None:
            self._signatures = self.file["signatures"].asstr()[:].tolist() \
                if "signatures" in self.file else [""] * len(self)
        return self._signatures

    @property
    def paths(self) -> list[str]:
        """Read once (a list of N strings: do not change it)."""
        if self._paths is None:
            self._paths = self.file["paths"].asstr()[:].tolist()
        return self._paths

    def strings(self, name: str) -> PackedStrings:
        """The string column ``name`` (``paths``, ``signatures``: (N,)) packed, read a slice
        at a time (:func:`packed_column`), and not kept: what an update matches rows with. A
        store without signatures has "" for each."""
        if name not in self.file:
            return PackedStrings([""] * len(self))
        return packed_column(self.file[name])

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
    def groups(self) -> StoredGroups | None:
        """The duplicate groups found after extraction (featx/data/groups.py), or None
        (a store made before featx 0.7, or a variant store)."""
        return stored_groups(self.file, self.path)

    @property
    def grouping(self) -> dict[str, Any]:
        """How the recorded split treats duplicates (featx.data.groups.grouping_identity):
        ``{"duplicates": false}`` for a store made before featx 0.7."""
        recorded = self.attrs.get("grouping")
        return recorded if isinstance(recorded, dict) else {"duplicates": False}

    @property
    def has_duplicates(self) -> bool:
        """Whether extraction recorded the duplicate files (every store featx writes)."""
        return "duplicate_rows" in self.file or "duplicates" in self.file

    @property
    def duplicate_rows(self) -> np.ndarray:
        """(row, earlier row with the same bytes) for every image that repeats another's
        (int64 (k, 2)), as extraction found them."""
        if "duplicate_rows" in self.file:
            return self.file["duplicate_rows"][:].astype(np.int64).reshape(-1, 2)
        if "duplicates" not in self.file:  # pairs of paths: stores of featx <= 0.3
            return np.empty((0, 2), np.int64)
        row = {p: i for i, p in enumerate(self.paths)}
        return np.asarray([(row[a], row[b]) for a, b in self.file["duplicates"].asstr()[:]
                           if a in row and b in row], np.int64).reshape(-1, 2)

    @property
    def duplicates(self) -> list[tuple[str, str]]:
        """(path, path of an earlier image with the same bytes), as extraction found them."""
        pairs = self.duplicate_rows
        return row_pairs_to_paths(pairs, self.paths) if len(pairs) else []

    @property
    def rows_per_read(self) -> int:
        """The rows ``iter_chunks`` reads at a time: one checksum block (whole chunks)."""
        return int(self.file.attrs["check_rows"])

    def read_block(self, b: int) -> np.ndarray:
        """Rows ``b * rows_per_read`` onwards, checked against their recorded SHA-256."""
        step, n = self.rows_per_read, len(self)
        start, stop = b * step, min((b + 1) * step, n)
        if self._segments:
            return self._gather(self._feature_row[start:stop])
        if self._block_sha256 is None:
            self._block_sha256 = [as_text(x) for x in self.file["block_sha256"][:]]
        with self._forgetting_on_damage():
            return checked_rows(self.file["features"], start, stop, self._block_sha256, b,
                                self.path)

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Features of ``rows`` (any order, repeats allowed), (len(rows), *feature_shape),
        into ``out`` where given: read a checked block at a time, as every read is (a writer
        copying them never copies a damaged row under fresh checksums)."""
        rows = np.asarray(rows, np.int64)
        return self._gather(self.feature_rows[rows] if self._segments else rows, out)

    @contextlib.contextmanager
    def _forgetting_on_damage(self) -> Iterator[None]:
        """A damaged block found: this file version is no longer recorded as verified, so
        the next ``featx extract`` checks it whole and rebuilds it (never 'cache hit')."""
        try:
            yield
        except DamagedStoreError:
            self.forget_verified()
            raise

    def _gather(self, physical: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Features of ``physical`` rows, from checked blocks of the store's segments (the
        last BLOCK_CACHE kept: a read of dataset-ordered rows of a segmented store mixes an
        old block or two with a few rows of the appended segments)."""
        if out is None:
            out = np.empty((len(physical), *self.feature_shape), np.float32)
        starts = np.asarray([s.start for s in self.parts])
        seg = np.searchsorted(starts, physical, side="right") - 1
        local = physical - starts[seg]
        check = np.asarray([s.check_rows for s in self.parts])[seg]
        block = local // check
        keys = seg * (1 << 40) + block
        for key in np.unique(keys):
            at = np.flatnonzero(keys == key)
            s, b = int(seg[at[0]]), int(block[at[0]])
            data = self._segment_block(s, b)
            out[at] = data[local[at] - b * self.parts[s].check_rows]
        return out

    def _segment_block(self, s: int, b: int) -> np.ndarray:
        got = self._cache.get((s, b))
        if got is not None:
            self._cache.move_to_end((s, b))
            return got
        segment = self.parts[s]
        start, stop = b * segment.check_rows, min((b + 1) * segment.check_rows, segment.rows)
        with self._forgetting_on_damage():
            data = checked_rows(segment.file["features"], start, stop, segment.block_sha256,
                                b, segment.path)
        self._cache[(s, b)] = data
        if len(self._cache) > BLOCK_CACHE:
            self._cache.popitem(last=False)
        return data

    def iter_chunks(self, rows: np.ndarray | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, features) chunk by chunk, so no more than a chunk is in memory.
        Every chunk is checked against its checksum as it is read (``read_block``)."""
        step, n = self.rows_per_read, len(self)
        wanted = np.arange(n) if rows is None else np.sort(np.asarray(rows))
        # only the blocks holding wanted rows: bounds[b]:bounds[b + 1] are block b's rows
        bounds = np.searchsorted(wanted, np.arange(0, n + step, step))
        for b in np.flatnonzero(np.diff(bounds)):
            sel = wanted[bounds[b]:bounds[b + 1]]
            yield sel, self.read_block(int(b))[sel - int(b) * step]

    def verify(self) -> None:
        """Read and check every feature block; raise StoreError on the first mismatch."""
        for _ in self.iter_chunks():
            pass

    def verify_once(self) -> bool:
        """:meth:`verify`, unless this very file version (size, mtime, inode) was verified
        before; records it beside the store when the folder is writable. True when it read."""
        try:
            if verified_stamp(self.path).read_text() == self._version():
                return False
        except OSError:
            pass
        self.verify()
        self.mark_verified()
        return True

    def forget_verified(self) -> None:
        """Record that this store is no longer known to be sound (a check failed)."""
        with contextlib.suppress(OSError):
            verified_stamp(self.path).unlink(missing_ok=True)

    def mark_verified(self) -> None:
        """Record this file version as checked (its writer computed the checksums)."""
        with contextlib.suppress(OSError):  # a read-only cache verifies every time
            write_atomic(verified_stamp(self.path), self._version().encode())

    def _version(self) -> str:
        return file_version([self.path, *(s.path for s in self._segments)],
                             as_text(self.file.attrs["key"]))

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Features of ``rows`` (all rows by default, ascending), flattened to 2-D float32."""
        wanted = np.arange(len(self)) if rows is None else np.sort(np.asarray(rows))
        row_size = int(np.prod(self.feature_shape))
        out = np.empty((len(wanted), row_size), np.float32)
        at = 0
        for sel, block in self.iter_chunks(wanted):
            out[at:at + len(sel)] = block.reshape(len(sel), -1)
            at += len(sel)
        return out


def column_bytes(ds: h5py.Dataset, step: int = 65536) -> Iterator[bytes]:
    """A string dataset's values as it holds them (UTF-8 bytes), read a slice at a time:
    what its checksum is taken from, with no list of N strings (1M paths: ~70 MB) and no
    str made (a column check of a 1M-row store took 1.25 s with them, 0.57 without, both
    under cProfile)."""
    for start in range(0, ds.shape[0], step):
        yield from ds[start:start + step].tolist()


def packed_column(ds: h5py.Dataset) -> PackedStrings:
    """A utf-8 string dataset (N,) as :class:`~featx.core.memory.PackedStrings`, read CHUNK
    rows at a time: their bytes go into one buffer and no str is made (1M paths: ~37 MB,
    where a list of str took ~80 MB and reading it whole as one ~160 MB more)."""
    buffer, ends = bytearray(), []
    for start in range(0, ds.shape[0], CHUNK):
        part = ds[start:start + CHUNK].tolist()  # bytes: h5py decodes only with asstr()
        sizes = np.fromiter(map(len, part), np.int64, len(part)) + 1  # each with its NUL
        ends.append(len(buffer) + np.cumsum(sizes) - 1)
        buffer += b"\0".join(part)
        buffer += b"\0"
    ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    return PackedStrings._of(buffer, ends.astype(np.int32) if len(ends) and
                             ends[-1] < 2**31 - 1 else ends)


def file_version(files: list[Path], key: str) -> str:
    """A store file's size, mtime and inode, and its segments' (swapping a segment file
    changes the version), and its key."""
    parts = []
    for path in files:
        st = path.stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return ":".join(parts) + f":{key}"


def row_pairs_to_paths(pairs: np.ndarray, paths: list[str]) -> list[tuple[str, str]]:
    """Pairs of rows as pairs of their paths."""
    if not len(pairs):
        return []
    names = np.asarray(paths, dtype=object)
    return list(zip(names[pairs[:, 0]].tolist(), names[pairs[:, 1]].tolist()))
