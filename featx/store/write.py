"""Writing stores: whole (streamed, renamed into place when complete) or updated by
one more segment, and the small per-row columns beside the features."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx.core.errors import StoreError
from featx.core.files import write_atomic
from featx.core.layout import (
    assembling_path,
    segment_name,
    segments_dir,
    verified_stamp,
)
from featx.core.memory import CHUNK
from featx.store.blocks import BlockDir
from featx.store.keys import (
    STRING,
    FeatureDigest,
    as_text,
    columns_digest,
    read_rows_for,
    segment_digest,
)
from featx.store.read import FeatureStore, file_version

log = logging.getLogger(__name__)


CHUNK_BYTES = 2 << 20  # a store's HDF5 chunks: about this many bytes of rows each

# An update appends a segment (new rows only) unless the store would then have more than
# SEGMENTS_MAX segments or more than DEAD_MAX of its feature rows unused (removed or changed
# images): then it is rewritten whole, compacted, in dataset order. Rewrites every
# ~DEAD_MAX * N changed rows keep the amortised cost of an update O(changed rows).
SEGMENTS_MAX = 8


DEAD_MAX = 0.10


# A segmented store's file also holds ``features`` as an HDF5 virtual dataset over its
# segments, in dataset order, so that plain h5py reads it as any store: one mapping a run of
# consecutive rows. Measured here (h5py 3.14): 10,000 mappings take 0.74 s to write and
# 1 MB; an update needing more than this many is written whole instead.
VIRTUAL_RUNS_MAX = 16384


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
    (featx.features.distributed) never is a segment: it names its shards relative to its own
    folder."""
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
        feature_row=feature_row, segments=as_text(f.attrs["segments"]) if "segments" in f.attrs
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
            segments=as_text(f.attrs["segments"]) if "segments" in f.attrs else None)


def write_duplicates(path: Path, pairs: np.ndarray) -> None:
    """Record the duplicate files (``pairs``: (row, earlier row), int (k, 2)) in the store
    its writer has just finished, and that store as verified (its writer computed its
    checksums), without reading it back: at 1M rows opening it again costs seconds."""
    with h5py.File(path, "r+") as f:
        for name in ("duplicates", "duplicate_rows"):
            if name in f:
                del f[name]
        f.create_dataset("duplicate_rows", data=np.asarray(pairs, np.int64).reshape(-1, 2))
        key = as_text(f.attrs["key"])
        segments = json.loads(as_text(f.attrs["segments"])) if "segments" in f.attrs else []
    files = [Path(path), *(segments_dir(path) / s["file"] for s in segments)]
    with contextlib.suppress(OSError):
        write_atomic(verified_stamp(path), file_version(files, key).encode())
