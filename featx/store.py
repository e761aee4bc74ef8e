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
    block_sha256 utf-8 (B,)       SHA-256 of each ``check_rows`` rows of features
    attrs: key (content key), settings_key, backbone settings, weights identity, versions,
           pipeline, split, root, features_sha256, columns_sha256, check_rows, complete

The file name carries the content key (settings plus the image manifest: featx/layout.py).
Extraction writes whole blocks into a ``.partial`` folder and assembles the store under a
temporary name renamed only when complete, so a finished store is never confused with an
unfinished one and a killed extraction resumes from its last finished block.

A store updated in place (a few images added or removed) is *segmented*: its file holds the
per-row columns in dataset order, ``feature_row`` (int64 (N,): the physical row of each
row's features), ``segments`` (attr, JSON: file name, rows and :func:`segment_digest` of
each segment, in ``<store>.segments/``) and ``features`` as a virtual dataset over the
segments in dataset order, so that plain h5py reads ``features``, ``labels`` and
``label_names`` from every store featx writes. Physical rows are the segments' ``features``
one after the other; each segment is an immutable HDF5 file with its own ``features``,
``block_sha256`` and ``check_rows`` (the first is usually the previous complete store,
hard-linked: no copy; featx refuses to open a segment as a store). An update writes a new
segment and a new small store file and never modifies a file of the previous store, so a
kill at any moment leaves the previous store as it was.

Integrity: ``labels``, ``split``, ``paths``, ``ok`` and ``label_names`` (and a segmented
store's ``feature_row`` and ``segments``) are checked against ``columns_sha256`` whenever a
store is opened (cheap: they are small), and each segment against the digest its store
recorded; features are checked block by block against ``block_sha256`` as they are read,
by every reader (an update copying rows and an export included), and HDF5's Fletcher-32
catches damage below that. A block that fails removes the store's ``.verified`` stamp, so
the next ``featx extract`` checks it whole and rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import platform
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx.errors import DamagedStoreError, StoreError
from featx.files import installed_version, short_hash, write_atomic
from featx.layout import (
    assembling_path,
    block_file,
    job_meta,
    partial_dir,
    partial_dirs,
    safe_name,
    segment_name,
    segments_dir,
    shard_dir,
    store_path,
    verified_stamp,
)
from featx.memory import CHUNK, PackedStrings

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: content-keyed file names, column and block checksums
CHUNK_BYTES = 2 << 20
MIN_READ_ROWS = 64  # iter_chunks reads at least this many rows at a time
VIRTUAL_READ_ROWS = 4096  # rows a read of a virtual store (no chunks of its own)
STRING = h5py.string_dtype("utf-8")
# An update appends a segment (new rows only) unless the store would then have more than
# SEGMENTS_MAX segments or more than DEAD_MAX of its feature rows unused (removed or changed
# images): then it is rewritten whole, compacted, in dataset order. Rewrites every
# ~DEAD_MAX * N changed rows keep the amortised cost of an update O(changed rows).
SEGMENTS_MAX = 8
DEAD_MAX = 0.10
BLOCK_CACHE = 8  # checked physical blocks a segmented store keeps (a read mixes ~2-3)
# A segmented store's file also holds ``features`` as an HDF5 virtual dataset over its
# segments, in dataset order, so that plain h5py reads it as any store: one mapping a run of
# consecutive rows. Measured here (h5py 3.14): 10,000 mappings take 0.74 s to write and
# 1 MB; an update needing more than this many is written whole instead.
VIRTUAL_RUNS_MAX = 16384
__all__ = ["safe_name", "shard_dir", "store_path"]  # re-exported names of featx.layout



def store_key(settings: dict[str, Any]) -> str:
    """A short hash of everything that changes the numbers (never of locations or speeds)."""
    return short_hash(json.dumps({**settings, "format_version": FORMAT_VERSION}, sort_keys=True))


def columns_digest(*, labels, paths, split, ok, label_names, feature_row=None,
                   segments: str | None = None) -> str:
    """One SHA-256 of every per-row column a result depends on, besides the features
    (a segmented store's ``feature_row`` and ``segments`` list included; a plain store's
    digest is unchanged)."""
    h = hashlib.sha256()
    if feature_row is not None:
        h.update(b"\x1f" + np.ascontiguousarray(feature_row, "<i8").tobytes())
    if segments is not None:  # which segment file holds which rows, and their checksums
        h.update(b"\x1d" + segments.encode())
    h.update(np.ascontiguousarray(labels, "<i4").tobytes())
    h.update(np.ascontiguousarray(split, "i1").tobytes())
    h.update(np.ascontiguousarray(ok, bool).tobytes())
    for texts in (paths, label_names):
        h.update(b"\x1e")
        if isinstance(texts, PackedStrings):  # its buffer is each text followed by NUL
            h.update(texts.buffer)
            continue
        it = iter(texts)
        while piece := [str(t) for t in itertools.islice(it, CHUNK)]:
            # each text followed by NUL, as one update a slice (1M paths: 0.1 s, not 0.6)
            h.update(("\0".join(piece) + "\0").encode())
    return h.hexdigest()


class FeatureDigest:
    """SHA-256 of every ``rows`` rows of features (``block_sha256``) and of all of them,
    fed rows in order, in pieces of any size."""

    def __init__(self, rows: int) -> None:
        self.rows = max(1, int(rows))
        self.whole = hashlib.sha256()
        self.blocks: list[str] = []
        self._block = hashlib.sha256()
        self._filled = 0

    def update(self, features: np.ndarray) -> None:
        features = np.ascontiguousarray(features, np.float32)
        self.whole.update(features.tobytes())
        at = 0
        while at < len(features):
            take = min(self.rows - self._filled, len(features) - at)
            self._block.update(features[at:at + take].tobytes())
            self._filled += take
            at += take
            if self._filled == self.rows:
                self.blocks.append(self._block.hexdigest())
                self._block, self._filled = hashlib.sha256(), 0

    def finish(self) -> tuple[str, list[str]]:
        if self._filled:
            self.blocks.append(self._block.hexdigest())
            self._block, self._filled = hashlib.sha256(), 0
        return self.whole.hexdigest(), self.blocks


def read_rows_for(chunk_rows: int | None) -> int:
    """How many rows one read (and one checksum block) covers: whole chunks, at least
    MIN_READ_ROWS rows; a virtual dataset over Ray shards has no chunks of its own."""
    if not chunk_rows:
        return VIRTUAL_READ_ROWS
    return chunk_rows * max(1, MIN_READ_ROWS // chunk_rows)


def library_versions() -> dict[str, str]:
    """Installed versions, from package metadata: importing TensorFlow to ask would cost
    seconds, and a cache hit imports none."""
    import featx

    def installed(*names: str) -> str:
        return installed_version(*names) or "?"

    return {"featx": featx.__version__,
            "tensorflow": installed("tensorflow", "tensorflow-cpu", "tf-nightly"),
            "keras": installed("keras"), "h5py": h5py.__version__, "numpy": np.__version__,
            "scikit-learn": installed("scikit-learn"), "python": platform.python_version()}


class BlockDir:
    """Finished blocks of an unfinished extraction, one ``.npz`` file each, with the SHA-256
    of its bytes in a ``.sha256`` file beside it.

    A block is written to a temporary name and renamed, so a process killed at any moment
    leaves only whole blocks; the next run skips them. A block that cannot be read or does
    not match its checksum is discarded with a warning and extracted again. The folder is
    named by the content key and ``meta.json`` records the ``job`` (which rows of the store
    the blocks hold: an update extracts only some) and the row count: blocks of any other
    job are discarded, never resumed from.
    """

    def __init__(self, store: Path, content_key: str, rows: int, block_rows: int,
                 job: str = "all") -> None:
        self.dir = partial_dir(store, content_key)
        self.rows = rows
        self.block_rows = resume_unit(self.dir, {"key": content_key, "job": job, "rows": rows},
                                      "block_rows", max(1, block_rows))
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None
        self._checked: set[int] = set()

    @property
    def n_blocks(self) -> int:
        return -(-self.rows // self.block_rows)

    def block_path(self, index: int) -> Path:
        return block_file(self.dir, index)

    def _digest_path(self, index: int) -> Path:
        return self.block_path(index).with_suffix(".sha256")

    def done(self) -> list[int]:
        """The finished blocks; damaged ones are discarded here (checked once each)."""
        out = []
        for i in range(self.n_blocks):
            if i in self._checked:
                out.append(i)
            elif self.block_path(i).exists():
                problem = self._problem(i)
                if problem:
                    warn(f"discarding resume block {self.block_path(i)} ({problem}); "
                         "its rows are extracted again")
                    self.block_path(i).unlink(missing_ok=True)
                    self._digest_path(i).unlink(missing_ok=True)
                else:
                    self._checked.add(i)
                    out.append(i)
        return out

    def _problem(self, index: int) -> str:
        """Why block ``index`` cannot be used ("" when it can)."""
        try:
            data = self.block_path(index).read_bytes()
            recorded = self._digest_path(index).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            return f"no readable checksum: {e.strerror or e}"
        if hashlib.sha256(data).hexdigest() != recorded:
            return "does not match its checksum"
        try:
            with np.load(io.BytesIO(data)) as z:
                n = len(z["features"])
                ok = len(z["ok"])
        except Exception as e:  # any damage numpy's reader trips on
            return f"unreadable: {type(e).__name__}"
        if n != ok or n != len(self.rows_of(index)):
            return f"holds {n} rows, expected {len(self.rows_of(index))}"
        return ""

    def rows_of(self, index: int) -> range:
        return range(index * self.block_rows, min((index + 1) * self.block_rows, self.rows))

    def save(self, index: int, features: np.ndarray, ok: np.ndarray, reasons: list[str]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, features=features, ok=ok, reasons=np.asarray(reasons, dtype=str))
        data = buffer.getvalue()
        path = self.block_path(index)
        try:
            # checksum first: a block without its checksum file is never trusted
            write_atomic(self._digest_path(index), hashlib.sha256(data).hexdigest().encode())
            write_atomic(path, data)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e} "
                             "(finished blocks are kept for a resume)") from None
        self._checked.add(index)

    def load(self, index: int) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != index:
            with np.load(self.block_path(index)) as z:
                self._cache = (index, {k: z[k] for k in z.files})
        return self._cache[1]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def warn(message: str) -> None:
    log.warning("%s", message)


def resume_unit(folder: Path, job: dict[str, Any], unit: str, size: int) -> int:
    """The block (or shard) size of the extraction job resumed in ``folder``: the one
    recorded in its ``meta.json`` when that records this very ``job`` (key, rows and which
    rows), else ``size``, the folder emptied first (what it holds was made for another
    job, or cannot be told apart). Records the job and its size."""
    meta_path = job_meta(folder)
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if all(meta.get(k) == v for k, v in job.items()):
                size = int(meta[unit])  # a resumed job keeps the size it started with
            else:
                warn(f"{folder}: made for another job ({meta.get('rows')} rows to extract, "
                     f"{job['rows']} now); extracting afresh")
                shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            warn(f"{meta_path}: unreadable; what it holds is extracted again")
            shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(meta_path, json.dumps({**job, unit: size}).encode())
    return size


@dataclass
class RowSource:
    """Where each row of a new store comes from: a reused row of the old store
    (``old_row >= 0``), else the next row of the new blocks, in order. ``old_row`` None:
    every row is new, row i of the blocks (no array of N rows for a fresh extraction)."""

    old_row: np.ndarray | None = None

    def old_rows(self, start: int, stop: int) -> np.ndarray:
        if self.old_row is None:
            return np.full(stop - start, -1, np.int64)
        return self.old_row[start:stop]

    @cached_property
    def new_row(self) -> np.ndarray:
        """Per row, its row of the new blocks, or -1 (int64 (N,))."""
        new = self.old_row < 0
        return np.where(new, np.cumsum(new) - 1, -1)

    def new(self, row: int) -> int:
        return row if self.old_row is None else int(self.new_row[row])


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
    tmp = assembling_path(path)
    digest = FeatureDigest(read_rows_for(chunk_rows))
    ok_all = np.ones(n, bool)
    skipped: list[tuple[str, str]] = []
    # Read the old store's small per-row datasets once, not per chunk or per row.
    old_reasons = dict(old.skipped) if old is not None else {}
    old_ok = old.ok if old is not None else None
    try:
        with h5py.File(tmp, "w") as f:
            feats = f.create_dataset("features", (n, *feature_shape), np.float32,
                                     chunks=(chunk_rows, *feature_shape), compression=comp,
                                     shuffle=comp is not None, fletcher32=True)
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                block = np.empty((stop - start, *feature_shape), np.float32)
                old_rows = source.old_rows(start, stop)
                reuse = np.flatnonzero(old_rows >= 0)
                if len(reuse):
                    order = np.argsort(old_rows[reuse])  # h5py reads increasing indices
                    got = old.read_rows(old_rows[reuse][order])
                    block[reuse[order]] = got
                    for i in reuse:
                        ok_all[start + i] = old_ok[old_rows[i]]
                for i in np.flatnonzero(old_rows < 0):
                    row = source.new(start + i)
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
                digest.update(block)
            write_columns(f, labels=labels, paths=paths, signatures=signatures,
                          label_names=label_names, split=split, ok=ok_all, skipped=skipped,
                          attrs=attrs, digest=digest, extra=extra)
    except OSError as e:  # full disk, file size limit: say where, keep the old store
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {tmp}: {e.strerror or e}") from None
    if old is not None:
        old.close()  # the old store is replaced below; nothing reads it any more
    os.replace(tmp, path)  # atomic: a store under its final name is complete
    # a store rebuilt under its own name leaves no segments of its previous version behind
    shutil.rmtree(segments_dir(path), ignore_errors=True)
    return sorted(skipped)


def can_append(old: FeatureStore, live_rows: int, new_rows: int) -> bool:
    """Whether updating ``old`` to ``live_rows`` rows, ``new_rows`` of them new, appends a
    segment (else: rewrite whole, compacted; see SEGMENTS_MAX and DEAD_MAX). A virtual store
    (featx.distributed) never is a segment: it names its shards relative to its own folder."""
    if not old.segmented and old.file["features"].is_virtual:
        return False
    physical = old.physical_rows + new_rows
    return len(old.segment_files) + 1 <= SEGMENTS_MAX and \
        physical - live_rows <= DEAD_MAX * physical


def append_store(path: Path, *, source: RowSource, old: FeatureStore, blocks: BlockDir,
                 feature_shape: tuple[int, ...], paths: list[str], signatures: list[str],
                 labels: np.ndarray, label_names: list[str], split: np.ndarray,
                 attrs: dict[str, Any], compression: str = "lzf"
                 ) -> list[tuple[str, str]] | None:
    """Make the store ``path`` from ``old`` plus the new rows in ``blocks`` without copying
    or rewriting ``old``'s features: hard-link ``old``'s segments (or ``old`` itself) into
    ``path``'s segment folder, write the new rows as one more segment, then a small store
    file (every per-row column in dataset order, ``feature_row``) under a temporary name,
    renamed into place last. No file of ``old`` is ever opened for writing, so a kill at any
    moment leaves ``old`` complete and usable, and leftovers are removed by the next try.

    Costs O(new rows) in feature I/O, plus O(N) small-column work (paths, labels... ~40 MB
    at 1M rows) that opening any store does anyway. Returns the skipped (path, reason)
    pairs, or None where hard links cannot be made here (the caller rewrites instead)."""
    n, n_new = len(paths), blocks.rows
    reuse = source.old_row >= 0
    new_index = np.flatnonzero(~reuse)
    feature_row = np.empty(n, np.int64)
    feature_row[reuse] = old.feature_rows[source.old_row[reuse]]
    feature_row[new_index] = old.physical_rows + source.new_row[new_index]
    segment_rows = [*old.segment_rows, n_new] if n_new else list(old.segment_rows)
    runs = feature_runs(feature_row, segment_rows)
    if len(runs[0]) > VIRTUAL_RUNS_MAX:
        log.info("an update of %s in %d runs of rows: rewriting it", old.path, len(runs[0]))
        return None
    folder = segments_dir(path)
    shutil.rmtree(folder, ignore_errors=True)  # what a killed try left
    folder.mkdir(parents=True)
    linked = []
    try:
        for i, src in enumerate(old.segment_files):
            os.link(src, folder / segment_name(i))
            linked.append(i)
    except OSError as e:  # no hard links on this file system (or across devices)
        log.info("cannot link %s into %s (%s): rewriting the store", old.path, folder,
                 e.strerror or e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    chunk_rows = old.rows_per_read  # the same blocks as the old store's: one read pattern
    ok_all = np.empty(n, bool)
    skipped: list[tuple[str, str]] = []
    old_reasons = dict(old.skipped)
    old_ok = old.ok
    ok_all[reuse] = old_ok[source.old_row[reuse]]
    for i in np.flatnonzero(reuse & ~ok_all):
        skipped.append((paths[i], old_reasons.get(paths[i], "unreadable")))
    segment = folder / segment_name(len(linked))
    tmp = assembling_path(segment)
    try:
        # each segment named with the checksum of its blocks: bound to its place
        digests = [part.digest for part in old.parts]
        if n_new:
            digests.append(_write_segment(tmp, segment, blocks, feature_shape, chunk_rows,
                                          compression, source, new_index, paths, ok_all,
                                          skipped))
        segments = [{"file": segment_name(i), "rows": int(r), "sha256": d}
                    for i, (r, d) in enumerate(zip(segment_rows, digests))]
        index = assembling_path(path)
        with h5py.File(index, "w") as f:
            _virtual_features(f, path, feature_shape, segments, runs)
            write_columns(f, labels=labels, paths=paths, signatures=signatures,
                          label_names=label_names, split=split, ok=ok_all, skipped=skipped,
                          attrs={**attrs, "segments": segments}, digest=None,
                          feature_row=feature_row, check_rows=chunk_rows)
    except OSError as e:  # full disk, file size limit: say where, keep the old store
        tmp.unlink(missing_ok=True)
        assembling_path(path).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        raise StoreError(f"cannot write {folder}: {e.strerror or e}") from None
    old.close()
    os.replace(assembling_path(path), path)  # atomic: a store under its final name is whole
    return sorted(skipped)


def write_update(path: Path, *, in_place: bool, source: RowSource, old: FeatureStore | None,
                 blocks: BlockDir, feature_shape: tuple[int, ...],
                 extra: dict[str, np.ndarray] | None = None, **columns: Any
                 ) -> list[tuple[str, str]]:
    """The store ``path`` from ``old``'s reused rows and ``blocks``' new ones (both engines'
    last step): one more segment beside ``old``'s features (:func:`append_store`) where
    ``in_place`` (``old`` is the previous version of this very store), rows are images and
    :func:`can_append` allows; else written whole (:func:`write_store`). ``columns``: the
    per-row columns, attributes and compression of :func:`write_store`."""
    if in_place and old is not None and extra is None and "view" not in old.file and \
            can_append(old, len(source.old_row), blocks.rows):
        skipped = append_store(path, source=source, old=old, blocks=blocks,
                               feature_shape=feature_shape, **columns)
        if skipped is not None:
            return skipped
    return write_store(path, feature_shape=feature_shape, source=source, old=old,
                       blocks=blocks, extra=extra, **columns)


def feature_runs(feature_row: np.ndarray, segment_rows: list[int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of rows whose features are consecutive rows of one segment: (first row,
    end row, segment, its first row in that segment), each int64 (R,)."""
    n = len(feature_row)
    starts = np.cumsum([0, *segment_rows])[:-1]
    seg = np.searchsorted(starts, feature_row, side="right") - 1
    cut = np.flatnonzero((np.diff(feature_row) != 1) | (np.diff(seg) != 0)) + 1
    first = np.concatenate([[0], cut]).astype(np.int64) if n else np.empty(0, np.int64)
    end = np.concatenate([cut, [n]]).astype(np.int64) if n else np.empty(0, np.int64)
    return first, end, seg[first], feature_row[first] - starts[seg[first]]


def _virtual_features(f: h5py.File, path: Path, feature_shape: tuple[int, ...],
                      segments: list[dict[str, Any]],
                      runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    """``features`` of a segmented store as a virtual dataset over its segments, in dataset
    order (what plain h5py reads; featx reads the segments, checked). Segments are named
    relative to the store's folder, as the Ray engine names its shards: moving the cache
    folder breaks nothing; NaN, never zeros, where a segment is missing."""
    first, end, seg, local = runs
    n = int(end[-1]) if len(end) else 0
    layout = h5py.VirtualLayout((n, *feature_shape), np.float32)
    sources = [h5py.VirtualSource(f"{segments_dir(path).name}/{s['file']}", "features",
                                  (int(s["rows"]), *feature_shape)) for s in segments]
    for a, b, s, at in zip(first.tolist(), end.tolist(), seg.tolist(), local.tolist()):
        layout[a:b] = sources[s][at:at + b - a]
    f.create_virtual_dataset("features", layout, fillvalue=np.nan)


def segment_digest(rows: int, check_rows: int, block_sha256: list[str]) -> str:
    """What binds a segment file to its place in a store: a SHA-256 of its row count, block
    size and block checksums (swapping two segment files of one length changes it)."""
    text = json.dumps([int(rows), int(check_rows), list(block_sha256)])
    return hashlib.sha256(text.encode()).hexdigest()


def _write_segment(tmp: Path, segment: Path, blocks: BlockDir, feature_shape: tuple[int, ...],
                   chunk_rows: int, compression: str, source: RowSource,
                   new_index: np.ndarray, paths: list[str], ok_all: np.ndarray,
                   skipped: list[tuple[str, str]]) -> str:
    """The new rows of an update as one segment file (``features`` in block order,
    ``block_sha256``, ``check_rows``), written under ``tmp`` and renamed to ``segment``;
    fills ``ok_all`` and ``skipped`` for the store rows they belong to. Returns its
    :func:`segment_digest`."""
    comp = None if compression == "none" else compression
    n_new = blocks.rows
    with h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", (n_new, *feature_shape), np.float32,
                                 chunks=(max(1, min(chunk_rows, n_new)), *feature_shape),
                                 compression=comp, shuffle=comp is not None, fletcher32=True)
        digest = FeatureDigest(chunk_rows)
        where = np.empty(n_new, np.int64)  # store row of each new row
        where[source.new_row[new_index]] = new_index
        for b in range(blocks.n_blocks):
            got = blocks.load(b)
            rows = blocks.rows_of(b)
            feats[rows.start:rows.stop] = got["features"]
            digest.update(got["features"])
            for j, row in enumerate(rows):
                ok_all[where[row]] = bool(got["ok"][j])
                if not got["ok"][j]:
                    skipped.append((paths[where[row]], str(got["reasons"][j])))
        _, block_sums = digest.finish()
        f.create_dataset("block_sha256", data=np.asarray(block_sums, dtype=object),
                         dtype=STRING)
        f.attrs["check_rows"] = chunk_rows
        f.attrs["rows"] = n_new
        f.attrs["complete"] = True
    os.replace(tmp, segment)
    return segment_digest(n_new, chunk_rows, block_sums)


def write_columns(f: h5py.File, *, labels, paths, signatures, label_names, split, ok,
                  skipped: list[tuple[str, str]], attrs: dict[str, Any],
                  digest: FeatureDigest | None, extra: dict[str, Any] | None = None,
                  feature_row: np.ndarray | None = None, check_rows: int = 0) -> None:
    """Everything of a store but ``features``: the per-row datasets, the checksums and the
    attributes, the last of them ``complete``. A segmented store (``feature_row`` given, no
    ``digest``: its segments hold the block checksums) records ``check_rows`` given."""
    if digest is not None:
        whole, blocks = digest.finish()
        f.create_dataset("block_sha256", data=np.asarray(blocks, dtype=object), dtype=STRING)
    if feature_row is not None:
        f.create_dataset("feature_row", data=np.asarray(feature_row, np.int64))
    f.create_dataset("labels", data=np.asarray(labels, np.int32))
    write_strings(f, "paths", paths)
    write_strings(f, "signatures", signatures)
    f.create_dataset("label_names", data=np.asarray(label_names, dtype=object), dtype=STRING)
    f.create_dataset("split", data=np.asarray(split, np.int8))
    f.create_dataset("ok", data=np.asarray(ok, bool))
    for name, values in (extra or {}).items():
        f.create_dataset(name, data=np.asarray(values))
    f.create_dataset("skipped", data=np.asarray(sorted(skipped), dtype=object).reshape(-1, 2),
                     dtype=STRING)
    for name, value in attrs.items():
        f.attrs[name] = value if isinstance(value, (int, float, str)) else json.dumps(value)
    if digest is not None:  # a segmented store has no whole-features checksum: computing
        f.attrs["features_sha256"] = whole  # one would read every row (O(N) per update)
    f.attrs["check_rows"] = digest.rows if digest is not None else int(check_rows)
    f.attrs["columns_sha256"] = columns_digest(
        labels=labels, paths=paths, split=split, ok=ok, label_names=label_names,
        feature_row=feature_row, segments=_text(f.attrs["segments"]) if "segments" in f.attrs
        else None)
    f.attrs["rows"] = len(labels)
    f.attrs["complete"] = True


def write_strings(f: h5py.File, name: str, texts: Sequence[str]) -> None:
    """A utf-8 string dataset (N,), written a slice at a time: h5py converts what it writes
    at once into C strings, and all of a million paths at once held ~60 MiB more."""
    ds = f.create_dataset(name, (len(texts),), dtype=STRING)
    it, start = iter(texts), 0
    while chunk := list(itertools.islice(it, CHUNK)):
        ds[start:start + len(chunk)] = np.asarray(chunk, dtype=object)
        start += len(chunk)


def rewrite_split(path: Path, split: np.ndarray, split_attr: str) -> None:
    """Give a complete store a new split in place (no features change), checksum included.
    A file with other hard links (the first segment of a newer store) is copied first and
    the copy renamed over it: segments are never written."""
    if os.stat(path).st_nlink > 1:
        tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.split")
        try:
            shutil.copyfile(path, tmp)
            _write_split(tmp, split, split_attr)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    _write_split(path, split, split_attr)


def _write_split(path: Path, split: np.ndarray, split_attr: str) -> None:
    with h5py.File(path, "r+") as f:
        f["split"][:] = split
        f.attrs["split"] = split_attr
        f.attrs["columns_sha256"] = columns_digest(
            labels=f["labels"][:], paths=f["paths"].asstr()[:], split=split, ok=f["ok"][:],
            label_names=f["label_names"].asstr()[:],
            feature_row=f["feature_row"][:] if "feature_row" in f else None,
            segments=_text(f.attrs["segments"]) if "segments" in f.attrs else None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
            self._sums = [_text(x) for x in self.file["block_sha256"][:]]
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
    digest = hashlib.sha256(np.ascontiguousarray(rows, np.float32).tobytes()).hexdigest()
    if block >= len(digests) or digest != digests[block]:
        raise DamagedStoreError(f"{path}: features of rows {start}-{stop - 1} do not match "
                                "the checksum recorded when they were written; run `featx "
                                "extract` to rebuild the store", str(path))
    return rows

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
                if missing:  # a virtual store (featx.distributed) would read fill values
                    raise StoreError(f"{self.path}: {len(missing)} shard file(s) missing, "
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
        for entry in json.loads(_text(self.file.attrs["segments"])):
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
        self._feature_row = self.file["feature_row"][:]
        if len(self._feature_row) and (self._feature_row.min() < 0 or
                                       self._feature_row.max() >= start):
            raise StoreError(f"{self.path}: feature_row points outside its {start} feature "
                             "rows; run `featx extract` to rebuild the store")

    def _check_columns(self) -> None:
        recorded = self.file.attrs.get("columns_sha256")
        if recorded is None or not ("block_sha256" in self.file or self._segments):
            raise StoreError(f"{self.path}: a store without checksums (written by an older "
                             "featx); run `featx extract` to rebuild it")
        try:
            now = columns_digest(labels=self.labels, paths=self._iter_paths(),
                                 split=self.split, ok=self.ok, label_names=self.label_names,
                                 feature_row=self._feature_row,
                                 segments=_text(self.file.attrs["segments"])
                                 if self._segments else None)
        except (OSError, KeyError) as e:
            raise StoreError(f"{self.path}: unreadable ({e}); run `featx extract` to "
                             "rebuild it") from None
        if now != _text(recorded):
            raise StoreError(f"{self.path}: labels, split, paths or ok do not match the "
                             "checksum recorded when the store was written; run `featx "
                             "extract` to rebuild it")

    def _iter_paths(self, step: int = 65536) -> Iterator[str]:
        """The paths, read a slice at a time: the column check of a 1M-row store holds
        no list of a million strings (~70 MB) that nothing else asked for."""
        ds = self.file["paths"]
        for start in range(0, ds.shape[0], step):
            yield from (_text(p) for p in ds[start:start + step])

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for segment in self._segments:
            segment.file.close()
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
        """The physical feature row of every row (int64 (N,))."""
        return self._feature_row if self._feature_row is not None else np.arange(len(self))

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
            self._block_sha256 = [_text(x) for x in self.file["block_sha256"][:]]
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
        return _file_version([self.path, *(s.path for s in self._segments)],
                             _text(self.file.attrs["key"]))

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


def _file_version(files: list[Path], key: str) -> str:
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


def write_duplicates(path: Path, pairs: np.ndarray) -> None:
    """Record the duplicate files (``pairs``: (row, earlier row), int (k, 2)) in the store
    its writer has just finished, and that store as verified (its writer computed its
    checksums), without reading it back: at 1M rows opening it again costs seconds."""
    with h5py.File(path, "r+") as f:
        for name in ("duplicates", "duplicate_rows"):
            if name in f:
                del f[name]
        f.create_dataset("duplicate_rows", data=np.asarray(pairs, np.int64).reshape(-1, 2))
        key = _text(f.attrs["key"])
        segments = json.loads(_text(f.attrs["segments"])) if "segments" in f.attrs else []
    files = [Path(path), *(segments_dir(path) / s["file"] for s in segments)]
    with contextlib.suppress(OSError):
        write_atomic(verified_stamp(path), _file_version(files, key).encode())
