"""featx.store.write: whole stores streamed and renamed into place when complete, updates
as one more segment (or rewritten whole, compacted), and the small per-row columns."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import (
    FIRST,
    blobs,
    random_pngs,
    small_config,
    write_synthetic_store,
)

from featx.core.errors import StoreError
from featx.core.layout import assembling_path, segments_dir
from featx.features.extraction import extract
from featx.features.plan import match_rows
from featx.store import write as store_write
from featx.store.blocks import BlockDir
from featx.store.read import FeatureStore
from featx.store.write import (
    RowSource,
    feature_runs,
    rewrite_split,
    segments_kept,
    write_duplicates,
    write_store,
    write_strings,
    write_update,
)


@pytest.fixture
def synthetic(tmp_path):
    """A store of 40 rows of 6 features (HDF5 chunks of 8 rows), written by write_store, and
    its features."""
    x, y = blobs(3, n=40, d=6, dtype=np.float32)
    path = write_synthetic_store(tmp_path / "old.h5", x, y, [f"{i:02d}.png" for i in range(40)],
                                 np.zeros(40, np.int8), ["a", "b", "c"], chunk_rows=8)
    return path, x


# ------------------------------------------------------------------------ updates: segments

def synthetic_update(old_path: Path, new_path: Path, rows: dict[str, np.ndarray]) -> None:
    """Update the store ``old_path`` in place into ``new_path``, holding ``rows`` (path ->
    features; an old path keeps its old row, features given or not), as extraction does."""
    paths = sorted(rows)
    with FeatureStore(old_path) as old:
        old_row = match_rows(old.strings("paths"), old.strings("signatures"), paths,
                             [""] * len(paths))
        new = [rows[q] for q, r in zip(paths, old_row) if r < 0]
        blocks = BlockDir(new_path, "k", rows=len(new), block_rows=3)
        for b in range(blocks.n_blocks):
            got = np.asarray(new[b * 3:b * 3 + 3], np.float32).reshape(-1, 6)
            blocks.save(b, got, np.ones(len(got), bool), [""] * len(got))
        write_update(new_path, in_place=True, source=RowSource(old_row), old=old,
                     blocks=blocks, feature_shape=(6,), paths=paths,
                     signatures=[""] * len(paths), labels=np.arange(len(paths)) % 3,
                     label_names=["a", "b", "c"], split=np.zeros(len(paths), np.int8),
                     attrs={"key": new_path.stem, "split": "{}"})
        blocks.remove()


def test_past_the_segment_limit_the_small_segments_merge_and_the_first_stays(
        synthetic, tmp_path, monkeypatch):
    """Four rows added at a time with at most 3 segments: appended while they fit; past
    that the last segments merge with the new rows into one, as long as the segment kept
    before them is at least as large; the first segment, the original store, is never
    written (same inode and mtime) until the small ones outgrow it. Every version reads the
    rows by path, checked and as plain h5py reads them."""
    monkeypatch.setattr(store_write, "SEGMENTS_MAX", 3)
    path, x = synthetic
    rows = {f"{i:02d}.png": x[i] for i in range(40)}
    first = os.stat(path)
    shapes = []
    for update in range(15):
        for j in range(4):
            rows[f"{j:02d}.png.{update:02d}"] = np.full(6, 100 * update + j, np.float32)
        new_path = tmp_path / f"v{update}.h5"
        synthetic_update(path, new_path, rows)
        with FeatureStore(new_path) as s:
            shapes.append(s.segment_rows if s.segmented else len(s))
            np.testing.assert_array_equal(s.features(), [rows[q] for q in sorted(rows)])
            assert s.paths == sorted(rows)
        with h5py.File(new_path, "r") as f:  # a plain HDF5 reader: the virtual dataset
            np.testing.assert_array_equal(f["features"][:], [rows[q] for q in sorted(rows)])
        if segments_dir(new_path).exists():
            kept = os.stat(segments_dir(new_path) / "seg-000.h5")
            assert (kept.st_ino, kept.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
        path = new_path
    assert shapes == [[40, 4], [40, 4, 4], [40, 12], [40, 12, 4], [40, 12, 8], [40, 12, 12],
                      [40, 28], [40, 28, 4], [40, 28, 8], [40, 28, 12], [40, 28, 16],
                      [40, 28, 20], [40, 28, 24], [40, 28, 28],
                      100]  # neither [40, 28, 32] nor [40, 60] would do: rewritten whole
    assert not segments_dir(path).exists()


def test_a_merge_writes_its_rows_in_dataset_order(synthetic, tmp_path, monkeypatch):
    """Two segments whose rows interleave in dataset order, merged with new rows added at
    the same places: the merged segment holds its rows in dataset order, so that the rows
    added at one place are one run of the virtual dataset, not one per segment they came
    from (too many runs and the store is rewritten whole: VIRTUAL_RUNS_MAX)."""
    monkeypatch.setattr(store_write, "SEGMENTS_MAX", 3)
    path, x = synthetic
    rows = {f"{i:02d}.png": x[i] for i in range(40)}
    for update in range(3):  # [40, 6], [40, 6, 6], then merged: [40, 18]
        rows.update({f"{i:02d}.png.{update}": np.full(6, 10 * update + i, np.float32)
                     for i in range(3, 40, 7)})
        synthetic_update(path, tmp_path / f"v{update}.h5", rows)
        path = tmp_path / f"v{update}.h5"
    with FeatureStore(path) as s:
        assert s.segment_rows == [40, 18]
        np.testing.assert_array_equal(s.features(), [rows[q] for q in sorted(rows)])
        merged = s.feature_rows[s.feature_rows >= 40]
        np.testing.assert_array_equal(merged, np.arange(40, 58))  # in dataset order
        first, *_ = feature_runs(s.feature_rows, s.segment_rows)
    assert len(first) == 1 + 2 * 6  # old rows, 3 added, old rows, ... : 6 places


def test_a_merge_drops_the_unused_rows_of_the_segments_it_merges(synthetic, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(store_write, "SEGMENTS_MAX", 2)
    path, x = synthetic
    rows = {f"{i:02d}.png": x[i] for i in range(40)}
    rows.update({f"new{j}": np.full(6, j, np.float32) for j in range(6)})
    synthetic_update(path, tmp_path / "a.h5", rows)  # [40, 6]
    del rows["new1"], rows["new4"]  # two rows of the second segment unused ...
    rows["new9"] = np.full(6, 9, np.float32)
    synthetic_update(tmp_path / "a.h5", tmp_path / "b.h5", rows)  # ... and not copied
    with FeatureStore(tmp_path / "b.h5") as s:
        assert s.segment_rows == [40, 5] and s.physical_rows == len(s) == 45
        np.testing.assert_array_equal(s.features(), [rows[q] for q in sorted(rows)])


def test_a_new_split_never_writes_a_file_another_store_links_to(tmp_path):
    """A store kept beside a newer one made from it (another folder of the same images) is
    the newer store's first segment, one file under two names: re-splitting the old store
    writes a copy, and the segment keeps its bytes."""
    data = tmp_path / "data"
    random_pngs(data, FIRST)
    config = small_config(data, tmp_path / "cache")
    store = extract(config, progress=False).path
    segment = tmp_path / "segment-link.h5"
    os.link(store, segment)
    before = segment.read_bytes()
    config.dataset.test = 0.5  # (with random weights the seed is the network: another key)
    again = extract(config, progress=False)
    assert again.path == store and again.cache_hit
    assert segment.read_bytes() == before and os.stat(segment).st_nlink == 1
    with FeatureStore(store) as s, h5py.File(segment, "r") as old:
        assert not np.array_equal(s.split, old["split"][:])  # the store has its new split


# ------------------------------------------------------------------------- whole stores

def _columns(paths: list[str]) -> dict:
    n = len(paths)
    return {"paths": paths, "signatures": [f"sig{i}" for i in range(n)],
            "labels": np.arange(n) % 2, "label_names": ["x", "y"],
            "split": np.zeros(n, np.int8), "attrs": {"key": "k", "split": "{}"}}


def test_a_store_from_reused_and_new_rows_in_dataset_order(synthetic, tmp_path):
    """Rows 0 and 2 new (from the blocks, row 2 unreadable), rows 1 and 3 reused from the old
    store: each row's features, ok and skip reason from where it came."""
    old_path, x = synthetic
    blocks = BlockDir(tmp_path / "new.h5", "k", rows=2, block_rows=2)
    fresh = np.full((2, 6), 7.0, np.float32)
    blocks.save(0, fresh, np.array([True, False]), ["", "OSError: truncated"])
    old_row = np.array([-1, 30, -1, 4])
    paths = ["n0.png", "30.png", "n1.png", "04.png"]
    with FeatureStore(old_path) as old:
        skipped = write_store(tmp_path / "new.h5", feature_shape=(6,),
                              source=RowSource(old_row), old=old, blocks=blocks,
                              **_columns(paths))
    assert skipped == [("n1.png", "OSError: truncated")]
    with FeatureStore(tmp_path / "new.h5") as s:
        np.testing.assert_array_equal(s.features(), [fresh[0], x[30], fresh[1], x[4]])
        np.testing.assert_array_equal(s.ok, [True, True, False, True])
        assert s.paths == paths and s.signatures == ["sig0", "sig1", "sig2", "sig3"]
        assert s.skipped == [("n1.png", "OSError: truncated")]
        assert s.attrs["rows"] == 4 and s.attrs["complete"]
        s.verify()
    assert not assembling_path(tmp_path / "new.h5").exists()


def test_a_failed_write_raises_naming_the_file_and_leaves_no_store(synthetic, tmp_path,
                                                                  monkeypatch):
    _, x = synthetic
    blocks = BlockDir(tmp_path / "new.h5", "k", rows=2, block_rows=2)
    blocks.save(0, x[:2], np.ones(2, bool), ["", ""])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_write, "write_columns", full)
    tmp = assembling_path(tmp_path / "new.h5")
    with pytest.raises(StoreError, match=f"cannot write {tmp}: No space left on device"):
        write_store(tmp_path / "new.h5", feature_shape=(6,), source=RowSource(), old=None,
                    blocks=blocks, **_columns(["a.png", "b.png"]))
    assert not tmp.exists() and not (tmp_path / "new.h5").exists()


def test_row_source_numbers_the_new_rows_in_order():
    source = RowSource(np.array([-1, 3, -1, 0, -1]))
    np.testing.assert_array_equal(source.new_rows, [0, 2, 4])
    np.testing.assert_array_equal(source.new(np.array([0, 2, 4])), [0, 1, 2])
    np.testing.assert_array_equal(source.old_rows(np.arange(1, 4)), [3, -1, 0])
    every_row_new = RowSource()
    np.testing.assert_array_equal(every_row_new.new(np.array([7])), [7])
    np.testing.assert_array_equal(every_row_new.old_rows(np.arange(2, 5)), [-1, -1, -1])


@pytest.mark.parametrize("chunk", [65536, 2])  # found a slice of rows at a time
def test_feature_runs_are_the_consecutive_rows_of_one_segment(chunk, monkeypatch):
    monkeypatch.setattr(store_write, "CHUNK", chunk)
    # segments of 4 and 3 physical rows; dataset rows read 0 1 2 | 5 6 | 3
    first, end, seg, local = feature_runs(np.array([0, 1, 2, 5, 6, 3]), [4, 3])
    assert (first.tolist(), end.tolist(), seg.tolist(), local.tolist()) == \
        ([0, 3, 5], [3, 5, 6], [0, 1, 0], [0, 1, 3])
    # 3 then 4: consecutive numbers, but the first segment ends between them
    first, end, seg, local = feature_runs(np.array([3, 4]), [4, 3])
    assert (first.tolist(), seg.tolist(), local.tolist()) == ([0, 1], [0, 1], [3, 0])
    assert [len(a) for a in feature_runs(np.empty(0, np.int64), [4])] == [0, 0, 0, 0]


def test_an_update_appends_unless_too_many_segments_or_dead_rows(synthetic, monkeypatch):
    path, _ = synthetic
    with FeatureStore(path) as old:  # 40 rows, one file

        def kept(old_rows: list[int], new_rows: int) -> int | None:
            return segments_kept(old, np.asarray([*old_rows, *[-1] * new_rows]), new_rows)

        assert kept(list(range(40)), 3) == 1  # the old file kept, a segment appended
        assert kept(list(range(36)), 3) == 1  # 4 of 43 rows dead: 9%
        assert kept(list(range(35)), 3) is None  # 5 of 43: over 10%, rewritten whole
        monkeypatch.setattr(store_write, "SEGMENTS_MAX", 1)
        assert kept(list(range(40)), 3) is None  # would make 2 segments


def test_strings_are_written_a_slice_at_a_time_and_all_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(store_write, "STRINGS_AT_ONCE", 3)
    texts = [f"dir/ünï {i}.png" for i in range(10)]
    with h5py.File(tmp_path / "s.h5", "w") as f:
        write_strings(f, "paths", texts)
        write_strings(f, "none", [])
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["paths"].asstr()[:].tolist() == texts and len(f["none"]) == 0


@pytest.mark.parametrize("linked", [False, True])
def test_a_new_split_keeps_the_columns_checksum_and_never_writes_a_linked_file(synthetic,
                                                                             tmp_path, linked):
    path, x = synthetic
    link = tmp_path / "segment-link.h5"
    if linked:
        os.link(path, link)
    split = (np.arange(40) % 5 == 0).astype(np.int8) * 2
    rewrite_split(path, split, '{"test": 0.2}')
    with FeatureStore(path) as s:  # opens: the columns match their new checksum
        np.testing.assert_array_equal(s.split, split)
        assert s.attrs["split"] == {"test": 0.2}
        np.testing.assert_array_equal(s.features(), x)
    if linked:
        assert os.stat(path).st_nlink == 1
        with h5py.File(link, "r") as f:
            assert not f["split"][:].any()  # the other name keeps the old split


def test_duplicates_are_recorded_and_the_store_marked_verified(synthetic, monkeypatch):
    path, _ = synthetic
    write_duplicates(path, np.array([[7, 2]]))
    write_duplicates(path, np.array([[9, 2], [8, 1]]))  # replaces, never adds to
    monkeypatch.setattr(FeatureStore, "verify", lambda self: pytest.fail("read again"))
    with FeatureStore(path) as s:
        np.testing.assert_array_equal(s.duplicate_rows, [[9, 2], [8, 1]])
        assert not s.verify_once()  # its writer's checksums count as a check
