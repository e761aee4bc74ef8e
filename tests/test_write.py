"""featx.store.write: whole stores streamed and renamed into place when complete, updates
as one more segment (or rewritten whole, compacted), and the small per-row columns."""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np
import pytest
from helpers import (
    FIRST,
    blobs,
    random_pngs,
    small_config,
    store_then_update,
    write_synthetic_store,
)

from featx.core.errors import StoreError
from featx.core.layout import assembling_path, segments_dir
from featx.features.extraction import extract
from featx.store import write as store_write
from featx.store.blocks import BlockDir
from featx.store.read import FeatureStore
from featx.store.write import (
    RowSource,
    can_append,
    feature_runs,
    rewrite_split,
    write_duplicates,
    write_store,
    write_strings,
)


@pytest.fixture
def updated(tmp_path):
    """A store of helpers.FIRST, then the same folder with ADDED and one image removed."""
    return store_then_update(tmp_path)


@pytest.fixture
def synthetic(tmp_path):
    """A store of 40 rows of 6 features (HDF5 chunks of 8 rows), written by write_store, and
    its features."""
    x, y = blobs(3, n=40, d=6, dtype=np.float32)
    path = write_synthetic_store(tmp_path / "old.h5", x, y, [f"{i:02d}.png" for i in range(40)],
                                 np.zeros(40, np.int8), ["a", "b", "c"], chunk_rows=8)
    return path, x


# ------------------------------------------------------------------------ updates: segments

def test_many_updates_compact_into_one_file(updated, monkeypatch):
    config, data, _, _, _ = updated
    monkeypatch.setattr(store_write, "SEGMENTS_MAX", 2)
    r = extract(config, progress=False)
    with FeatureStore(r.path) as s:
        assert len(s.segment_files) == 2
    random_pngs(data, ["dog/dog50.png"], seed=3)
    r = extract(config, progress=False)  # a third segment: rewritten whole
    with FeatureStore(r.path) as s:
        assert not s.segmented and len(s) == len(FIRST) + 3
        s.verify()
    assert not segments_dir(r.path).exists()


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
    np.testing.assert_array_equal(source.new_row, [0, -1, 1, -1, 2])
    assert [source.new(i) for i in (0, 2, 4)] == [0, 1, 2]
    np.testing.assert_array_equal(source.old_rows(1, 4), [3, -1, 0])
    every_row_new = RowSource()
    assert every_row_new.new(7) == 7
    np.testing.assert_array_equal(every_row_new.old_rows(2, 5), [-1, -1, -1])


def test_feature_runs_are_the_consecutive_rows_of_one_segment():
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
        assert can_append(old, live_rows=43, new_rows=3)
        assert can_append(old, live_rows=39, new_rows=3)  # 4 of 43 rows dead: 9%
        assert not can_append(old, live_rows=38, new_rows=3)  # 5 of 43: over 10%
        monkeypatch.setattr(store_write, "SEGMENTS_MAX", 1)
        assert not can_append(old, live_rows=43, new_rows=3)  # would make 2 segments


def test_strings_are_written_a_slice_at_a_time_and_all_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(store_write, "CHUNK", 3)
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
