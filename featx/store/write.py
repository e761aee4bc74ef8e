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
from featx.core.log import plural
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
from featx.store.read import FeatureStore, column_bytes, file_version, groups_digest

log = logging.getLogger(__name__)


CHUNK_BYTES = 2 << 20  # a store's HDF5 chunks: about this many bytes of rows each

# An update appends a segment (new rows only) while the store then has at most SEGMENTS_MAX
# segments; past that it merges its last, small segments with the new rows into one and
# keeps the first ones, large, as they are (:func:`segments_kept`): no update rewrites the
# whole of a large store for having been updated often. More than DEAD_MAX of the feature
# rows kept unused (removed or changed images) and the store is rewritten whole, compacted,
# in dataset order: rewrites every ~DEAD_MAX * N changed rows keep the amortised cost of an
# update O(changed rows).
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

    def old_rows(self, rows: np.ndarray) -> np.ndarray:
        """The old row of each of ``rows`` (store rows (k,)), -1 where new (int (k,))."""
        if self.old_row is None:
            return np.full(len(rows), -1, np.int64)
        return self.old_row[rows]

    @cached_property
    def new_rows(self) -> np.ndarray:
        """The new rows, ascending (int64 (K,)): row k of the blocks is row new_rows[k] (K
        entries, not another N: an update's are few)."""
        return np.flatnonzero(self.old_row < 0)

    def new(self, rows: np.ndarray) -> np.ndarray:
        """The row of the new blocks of each of ``rows`` (new store rows, int64 (k,))."""
        return rows if self.old_row is None else np.searchsorted(self.new_rows, rows)


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
    copy = _RowCopier(source, old, blocks, feature_shape, paths, ok_all, skipped)
    try:
        with h5py.File(tmp, "w") as f:
            feats = f.create_dataset("features", (n, *feature_shape), np.float32,
                                     chunks=(chunk_rows, *feature_shape), compression=comp,
                                     shuffle=comp is not None, fletcher32=True)
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                block = copy(np.arange(start, stop))
                feats[start:stop] = block
                digest.update(block)
            write_columns(f, labels=labels, paths=paths, signatures=signatures,
                          label_names=label_names, split=split, ok=ok_all, skipped=skipped,
                          attrs=attrs, digest=digest, extra=extra)
    except OSError as e:  # full disk, file size limit: say where, keep the old store
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {tmp}: {e.strerror or e}") from None
    except BaseException:  # a damaged old row, an interrupt: no half-written file stays
        tmp.unlink(missing_ok=True)
        raise
    if old is not None:
        old.close()  # the old store is replaced below; nothing reads it any more
    os.replace(tmp, path)  # atomic: a store under its final name is complete
    # a store rebuilt under its own name leaves no segments of its previous version behind
    shutil.rmtree(segments_dir(path), ignore_errors=True)
    return sorted(skipped)


class _RowCopier:
    """The features of store rows, each from where it comes: its row of the old store (read a
    checked block at a time: a damaged row is never copied under fresh checksums) or the new
    blocks; records each row's ok in ``ok_all`` and each unreadable one in ``skipped``."""

    def __init__(self, source: RowSource, old: FeatureStore | None, blocks: BlockDir | None,
                 feature_shape: tuple[int, ...], paths: Sequence[str], ok_all: np.ndarray,
                 skipped: list[tuple[str, str]]) -> None:
        self.source, self.old, self.blocks, self.shape = source, old, blocks, feature_shape
        self.paths, self.ok_all, self.skipped = paths, ok_all, skipped
        # the old store's small per-row datasets read once, not per chunk or row
        self.old_ok = old.ok if old is not None else None
        self.old_reasons = dict(old.skipped) if old is not None else {}

    def reused(self, rows: np.ndarray, old_rows: np.ndarray) -> None:
        """Record ok and skips of ``rows`` (store rows), reused from ``old_rows``."""
        ok = self.old_ok[old_rows]
        self.ok_all[rows] = ok
        for row in rows[~ok].tolist():  # a reused row has the same path in the old store
            rel = self.paths[row]
            self.skipped.append((rel, self.old_reasons.get(rel, "unreadable")))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Features of ``rows`` (store rows, int64 (k,)): float32 (k, *feature_shape)."""
        block = np.empty((len(rows), *self.shape), np.float32)
        old_rows = self.source.old_rows(rows)
        reuse = np.flatnonzero(old_rows >= 0)
        if len(reuse):
            order = np.argsort(old_rows[reuse])  # h5py reads increasing indices
            block[reuse[order]] = self.old.read_rows(old_rows[reuse][order])
            self.reused(rows[reuse], old_rows[reuse])
        new = np.flatnonzero(old_rows < 0)
        at = self.source.new(rows[new])  # their rows of the blocks
        which = at // self.blocks.block_rows if len(new) else at
        for b in np.unique(which).tolist():
            sel = which == b
            j = at[sel] - b * self.blocks.block_rows
            got = self.blocks.load(b)
            block[new[sel]] = got["features"][j]
            ok = np.asarray(got["ok"][j], bool)
            self.ok_all[rows[new[sel]]] = ok
            for row, k in zip(rows[new[sel]][~ok].tolist(), j[~ok].tolist()):
                self.skipped.append((self.paths[row], str(got["reasons"][k])))
        return block


def segments_kept(old: FeatureStore, old_row: np.ndarray, new_rows: int) -> int | None:
    """How many of ``old``'s segments (from the first) an update to the rows ``old_row``
    (each row's row of ``old``; -1: one of the ``new_rows`` new ones) keeps as they are,
    hard-linked; the rows it still uses of the others are merged with the new rows into one
    new segment. All of them where that makes at most SEGMENTS_MAX segments (an append);
    else the most, k, that leave at most SEGMENTS_MAX and whose last holds at least as many
    rows as the merged segment will: segments then shrink from the first to the last, a row
    is rewritten as the segment holding it grows, and no update rewrites the whole store
    for having been updated often. None (rewrite whole, compacted) where no k >= 1 does, or
    where more than DEAD_MAX of the feature rows kept would be unused. A virtual store
    (featx.features.distributed) never is a segment: it names its shards relative to its own
    folder."""
    if not old.segmented and old.file["features"].is_virtual:
        return None
    sizes = np.asarray(old.segment_rows, np.int64)
    live = np.zeros(len(sizes), np.int64)  # rows still used, per segment
    for a in range(0, len(old_row), CHUNK):  # a slice at a time: 1M rows, no 8 MB arrays
        some = old_row[a:a + CHUNK]
        used = old.feature_rows_of(some[some >= 0])
        live += np.bincount(np.searchsorted(np.cumsum(sizes), used, side="right"),
                            minlength=len(sizes))
    # merged[k]: the rows of the new segment where the first k segments are kept
    merged = np.concatenate([np.cumsum(live[::-1])[::-1], [0]]) + new_rows
    if len(sizes) + (new_rows > 0) <= SEGMENTS_MAX:
        keep = len(sizes)
    else:
        keep = next((k for k in range(min(len(sizes), SEGMENTS_MAX - 1), 0, -1)
                     if sizes[k - 1] >= merged[k]), None)
        if keep is None:
            return None
    kept = int(sizes[:keep].sum())
    dead = kept - int(live[:keep].sum())
    return keep if dead <= DEAD_MAX * (kept + merged[keep]) else None


def append_store(path: Path, *, source: RowSource, old: FeatureStore, blocks: BlockDir,
                 feature_shape: tuple[int, ...], paths: list[str], signatures: list[str],
                 labels: np.ndarray, label_names: list[str], split: np.ndarray,
                 attrs: dict[str, Any], compression: str = "lzf", keep: int | None = None
                 ) -> list[tuple[str, str]] | None:
    """Make the store ``path`` from ``old`` plus the new rows in ``blocks`` without copying
    or rewriting ``old``'s first ``keep`` segments (default: all; :func:`segments_kept`):
    hard-link them (or ``old`` itself) into ``path``'s segment folder, write the rows still
    used of the others and the new rows as one more segment, in dataset order, then a small
    store file (every per-row column in dataset order, ``feature_row``) under a temporary
    name, renamed into place last. No file of ``old`` is ever opened for writing, so a kill
    at any moment leaves ``old`` complete and usable, and leftovers are removed by the next
    try (an error, by this one).

    Costs O(rows of the new segment) in feature I/O, plus O(N) small-column work (paths,
    labels... ~40 MB at 1M rows) that opening any store does anyway. Returns the skipped
    (path, reason) pairs, or None where hard links cannot be made here (the caller rewrites
    instead)."""
    n = len(paths)
    keep = len(old.segment_rows) if keep is None else keep
    kept_rows = sum(old.segment_rows[:keep])
    feature_row = old.feature_rows_of(source.old_row)  # -1: new
    # the rows the new segment holds, in dataset order: new ones, and those of the segments
    # merged into it (in dataset order, rows added together stay one run of the virtual
    # dataset, however many segments they came from)
    moved = (feature_row < 0) | (feature_row >= kept_rows)
    written = np.flatnonzero(moved)
    feature_row[written] = kept_rows + np.arange(len(written))
    segment_rows = [*old.segment_rows[:keep], *([len(written)] if len(written) else [])]
    runs = feature_runs(feature_row, segment_rows)
    if len(runs[0]) > VIRTUAL_RUNS_MAX:
        log.info("an update of %s in %d runs of rows: rewriting it", old.path, len(runs[0]))
        return None
    folder = segments_dir(path)
    shutil.rmtree(folder, ignore_errors=True)  # what a killed try left
    folder.mkdir(parents=True)
    try:
        for i, src in enumerate(old.segment_files[:keep]):
            os.link(src, folder / segment_name(i))
    except OSError as e:  # no hard links on this file system (or across devices)
        log.info("cannot link %s into %s (%s): rewriting the store", old.path, folder,
                 e.strerror or e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if keep < len(old.segment_rows):
        log.info("%s: its last %s merged with the new rows (%s), the first %d kept",
                 old.path.name, plural(len(old.segment_rows) - keep, "segment"),
                 plural(len(written), "row"), keep)
    chunk_rows = old.rows_per_read  # the same blocks as the old store's: one read pattern
    ok_all = np.empty(n, bool)
    skipped: list[tuple[str, str]] = []
    copy = _RowCopier(source, old, blocks, feature_shape, paths, ok_all, skipped)
    for a in range(0, n, CHUNK):  # the rows whose features stay where they are
        stay = np.flatnonzero(~moved[a:a + CHUNK]) + a
        copy.reused(stay, source.old_row[stay])
    del moved
    segment = folder / segment_name(keep)
    tmp = assembling_path(segment)
    index = assembling_path(path)
    try:
        # each segment named with the checksum of its blocks: bound to its place
        digests = [part.digest for part in old.parts[:keep]]
        if len(written):
            digests.append(_write_segment(tmp, segment, copy, written, feature_shape,
                                          chunk_rows, compression))
        old.close()  # every row it gives is copied: its blocks kept go before the columns
        del copy
        segments = [{"file": segment_name(i), "rows": int(r), "sha256": d}
                    for i, (r, d) in enumerate(zip(segment_rows, digests))]
        with h5py.File(index, "w") as f:
            _virtual_features(f, path, feature_shape, segments, runs)
            write_columns(f, labels=labels, paths=paths, signatures=signatures,
                          label_names=label_names, split=split, ok=ok_all, skipped=skipped,
                          attrs={**attrs, "segments": segments}, digest=None,
                          feature_row=feature_row, check_rows=chunk_rows)
    except BaseException as e:  # full disk, a damaged old row, an interrupt: keep the old
        tmp.unlink(missing_ok=True)  # store, and nothing half-written
        index.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, OSError):  # say where
            raise StoreError(f"cannot write {folder}: {e.strerror or e}") from None
        raise
    os.replace(index, path)  # atomic: a store under its final name is whole
    return sorted(skipped)


def write_update(path: Path, *, in_place: bool, source: RowSource, old: FeatureStore | None,
                 blocks: BlockDir, feature_shape: tuple[int, ...],
                 extra: dict[str, np.ndarray] | None = None, **columns: Any
                 ) -> list[tuple[str, str]]:
    """The store ``path`` from ``old``'s reused rows and ``blocks``' new ones (both engines'
    last step): one more segment beside ``old``'s features (:func:`append_store`) where
    ``in_place`` (``old`` is the previous version of this very store), rows are images and
    :func:`segments_kept` allows (past SEGMENTS_MAX its last segments merged with the new
    rows); else written whole (:func:`write_store`). ``columns``: the per-row columns,
    attributes and compression of :func:`write_store`."""
    keep = segments_kept(old, source.old_row, blocks.rows) if in_place and old is not None \
        and extra is None and "view" not in old.file else None
    if keep is not None:
        skipped = append_store(path, source=source, old=old, blocks=blocks,
                               feature_shape=feature_shape, keep=keep, **columns)
        if skipped is not None:
            return skipped
    return write_store(path, feature_shape=feature_shape, source=source, old=old,
                       blocks=blocks, extra=extra, **columns)


def feature_runs(feature_row: np.ndarray, segment_rows: list[int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of rows whose features are consecutive rows of one segment: (first row,
    end row, segment, its first row in that segment), each int64 (R,). Found CHUNK rows at
    a time: no temporary arrays of N (1M rows: they took ~30 MB at once)."""
    n = len(feature_row)
    starts = np.cumsum([0, *segment_rows])[:-1]
    cuts = [np.empty(0, np.int64)]
    for a in range(1, n, CHUNK):  # row i starts a run unless it follows row i - 1
        now = feature_row[a:a + CHUNK]
        before = feature_row[a - 1:a - 1 + len(now)]
        cuts.append(np.flatnonzero((now != before + 1) | np.isin(now, starts)) + a)
    cut = np.concatenate(cuts)
    first = np.concatenate([[0], cut]).astype(np.int64) if n else np.empty(0, np.int64)
    end = np.concatenate([cut, [n]]).astype(np.int64) if n else np.empty(0, np.int64)
    seg = np.searchsorted(starts, feature_row[first], side="right") - 1
    return first, end, seg, feature_row[first] - starts[seg]


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


def _write_segment(tmp: Path, segment: Path, copy: _RowCopier, rows: np.ndarray,
                   feature_shape: tuple[int, ...], chunk_rows: int, compression: str) -> str:
    """The features of store ``rows`` (int64 (k,), ascending: new rows and those of merged
    segments) as one segment file (``features``, ``block_sha256``, ``check_rows``), written
    under ``tmp`` and renamed to ``segment``. Returns its :func:`segment_digest`."""
    comp = None if compression == "none" else compression
    n = len(rows)
    with h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", (n, *feature_shape), np.float32,
                                 chunks=(max(1, min(chunk_rows, n)), *feature_shape),
                                 compression=comp, shuffle=comp is not None, fletcher32=True)
        digest = FeatureDigest(chunk_rows)
        for start in range(0, n, chunk_rows):
            block = copy(rows[start:start + chunk_rows])
            feats[start:start + len(block)] = block
            digest.update(block)
        _, block_sums = digest.finish()
        f.create_dataset("block_sha256", data=np.asarray(block_sums, dtype=object),
                         dtype=STRING)
        f.attrs["check_rows"] = chunk_rows
        f.attrs["rows"] = n
        f.attrs["complete"] = True
    os.replace(tmp, segment)
    return segment_digest(n, chunk_rows, block_sums)


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


STRINGS_AT_ONCE = 16384  # a slice of 65,536 paths held ~13 MiB of str and bytes objects


def write_strings(f: h5py.File, name: str, texts: Sequence[str]) -> None:
    """A utf-8 string dataset (N,), written a slice at a time: h5py converts what it writes
    at once into C strings, and all of a million paths at once held ~60 MiB more."""
    ds = f.create_dataset(name, (len(texts),), dtype=STRING)
    it, start = iter(texts), 0
    while chunk := list(itertools.islice(it, STRINGS_AT_ONCE)):
        ds[start:start + len(chunk)] = np.asarray(chunk, dtype=object)
        start += len(chunk)


def rewrite_split(path: Path, split: np.ndarray, split_attr: str,
                  grouping: dict[str, Any] | None = None) -> None:
    """Give a complete store a new split in place (no features change), checksum included;
    ``grouping``: how it treats duplicates (its ``grouping`` attribute). A file with other
    hard links (the first segment of a newer store) is copied first and the copy renamed
    over it: segments are never written."""
    _in_place(path, "split", lambda f: _write_split(f, split, split_attr, grouping))


def _in_place(path: Path, what: str, write) -> None:
    """``write(path)`` on a complete store, or on a copy renamed over it where the file has
    other hard links (the first segment of a newer store: segments are never written)."""
    if os.stat(path).st_nlink > 1:
        tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.{what}")
        try:
            shutil.copyfile(path, tmp)
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    write(path)


def write_groups(path: Path, groups: np.ndarray, pairs: np.ndarray, similarity: np.ndarray,
                 info: dict[str, Any]) -> None:
    """Record a complete store's duplicate groups (featx/data/groups.py) in place: ``groups``
    int (N,), the near-duplicate ``pairs`` int (k, 2) and their ``similarity`` (k,), and
    ``info`` (how they were found), with their checksum (featx.store.read.groups_digest).
    No feature or other column changes."""
    info_text = json.dumps(info, sort_keys=True)
    groups = np.asarray(groups, np.int32)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    similarity = np.asarray(similarity, np.float32).reshape(-1)

    def write(target: Path) -> None:
        with h5py.File(target, "r+") as f:
            if len(groups) != f["labels"].shape[0]:
                raise StoreError(f"{path}: {len(groups)} groups for {f['labels'].shape[0]} rows")
            for name, values in (("groups", groups), ("near_pairs", pairs),
                                 ("near_similarity", similarity)):
                if name in f:
                    del f[name]
                f.create_dataset(name, data=values)
            f.attrs["groups"] = info_text
            f.attrs["groups_sha256"] = groups_digest(as_text(f.attrs["key"]), groups, pairs,
                                                     similarity, info_text)

    _in_place(path, "groups", write)


def _write_split(path: Path, split: np.ndarray, split_attr: str,
                 grouping: dict[str, Any] | None = None) -> None:
    with h5py.File(path, "r+") as f:
        f["split"][:] = split
        f.attrs["split"] = split_attr
        if grouping is not None:
            f.attrs["grouping"] = json.dumps(grouping)
        f.attrs["columns_sha256"] = columns_digest(
            labels=f["labels"][:], paths=column_bytes(f["paths"]), split=split, ok=f["ok"][:],
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
        # int64 in the file; HDF5 converts int32 pairs as it writes (no copy of them here)
        f.create_dataset("duplicate_rows", data=np.asarray(pairs).reshape(-1, 2), dtype=np.int64)
        key = as_text(f.attrs["key"])
        segments = json.loads(as_text(f.attrs["segments"])) if "segments" in f.attrs else []
    files = [Path(path), *(segments_dir(path) / s["file"] for s in segments)]
    with contextlib.suppress(OSError):
        write_atomic(verified_stamp(path), file_version(files, key).encode())
