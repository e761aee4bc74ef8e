"""featx.store.read: a store is opened only when complete and its columns match their
checksum, and every feature read is checked against the checksum of its block."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from helpers import blobs, copy_of_store, store_then_update, write_synthetic_store

from featx.core.errors import DamagedStoreError, StoreError
from featx.core.layout import partial_dir, segments_dir, verified_stamp
from featx.core.memory import PackedStrings
from featx.features.extraction import extract
from featx.store import read as store_read
from featx.store.read import FeatureStore, checked_rows, file_version, row_pairs_to_paths


@pytest.fixture
def synthetic(tmp_path):
    """A store of 100 rows of 8 features in HDF5 chunks of 16 rows (checked 64 at a time),
    written by featx.store.write, and its features."""
    x, y = blobs(4, n=100, d=8, dtype=np.float32)
    split = (np.arange(100) % 4 == 0).astype(np.int8) * 2
    path = write_synthetic_store(tmp_path / "synthetic.h5", x, y,
                                 [f"c{c}/{i:03d}.png" for i, c in enumerate(y)], split,
                                 ["a", "b", "c", "d"], chunk_rows=16)
    return path, x


@pytest.fixture
def own_store(tiny_store, tmp_path, make_config):
    """A private cache holding a copy of the tiny store, and its config."""
    path = copy_of_store(tiny_store.path, tmp_path / "cache")
    return make_config(tiny_store.root, path.parent), path


@pytest.fixture
def updated(tmp_path):
    """A store of helpers.FIRST, then the same folder with ADDED and one image removed."""
    return store_then_update(tmp_path)


# ------------------------------------------------------------------ checksums on every read

def test_rewritten_features_are_refused_and_extract_rebuilds_them(own_store, capsys):
    config, path = own_store
    with FeatureStore(path) as store:
        good = store.features()
    with h5py.File(path, "r+") as f:  # valid HDF5, valid Fletcher-32: other numbers
        f["features"][0] = f["features"][0] * 3 + 1
    with pytest.raises(StoreError, match=r"rows 0-.* do not match the checksum"):
        with FeatureStore(path) as store:
            store.features()
    from featx.learn.classification import classify

    with pytest.raises(StoreError, match=str(path)):
        classify(config)
    result = extract(config, progress=False)
    assert not result.cache_hit and result.extracted == len(good)
    assert "extracting afresh" in capsys.readouterr().err
    with FeatureStore(path) as store:
        np.testing.assert_allclose(store.features(), good, rtol=1e-5,
                                   atol=1e-5 * np.abs(good).max())


@pytest.mark.parametrize("column", ["labels", "split", "ok", "paths"])
def test_changed_labels_split_ok_or_paths_are_refused(own_store, column):
    config, path = own_store
    with h5py.File(path, "r+") as f:
        if column == "paths":
            f["paths"][0] = f["paths"][1]
        elif column == "ok":
            f["ok"][0] = not f["ok"][0]
        else:
            f[column][0] = (int(f[column][0]) + 1) % 2
    with pytest.raises(StoreError, match="do not match the checksum"):
        FeatureStore(path)
    from featx.store import cache

    assert any("checksum" in p for p in cache.verify(path))
    assert not extract(config, progress=False).cache_hit  # rebuilt, not trusted
def test_a_damaged_or_missing_segment_is_refused(updated):
    config, _, _, _, _ = updated
    r = extract(config, progress=False)
    new_segment = segments_dir(r.path) / "seg-001.h5"
    with h5py.File(new_segment, "r+") as f:
        f["features"][0] = f["features"][0] + 1.0
    with FeatureStore(r.path) as s, pytest.raises(StoreError, match="do not match"):
        s.verify()
    new_segment.unlink()
    with pytest.raises(StoreError, match="segment .* missing"):
        FeatureStore(r.path)


# -------------------------------------------------------------- what a store is, and is not

def test_no_store_says_what_to_run(tmp_path):
    path = tmp_path / "shapes-MobileNetV2-avg-0123456789abcdef.h5"
    with pytest.raises(StoreError, match=r"no feature store at .*\(run `featx extract` first\)"):
        FeatureStore(path)
    partial_dir(path, "0123456789abcdef").mkdir()
    with pytest.raises(StoreError, match="an unfinished extraction: run `featx extract` "
                                         "again to resume"):
        FeatureStore(path)


def test_a_file_that_is_not_hdf5_is_refused(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"not HDF5")
    with pytest.raises(StoreError, match=f"{path}: not a readable HDF5 file"):
        FeatureStore(path)


@pytest.mark.parametrize("change", ["not complete", "no checksums"])
def test_an_unfinished_or_unchecked_store_is_refused(synthetic, change):
    path, _ = synthetic
    with h5py.File(path, "r+") as f:
        if change == "not complete":
            f.attrs["complete"] = False
        else:  # as featx <= 0.3 wrote them
            del f.attrs["columns_sha256"]
    message = "store is not complete" if change == "not complete" else "without checksums"
    with pytest.raises(StoreError, match=message):
        FeatureStore(path)


def test_the_columns_and_attributes_read_back(synthetic):
    path, x = synthetic
    with FeatureStore(path) as s:
        assert len(s) == 100 and s.feature_shape == (8,)
        assert s.label_names == ["a", "b", "c", "d"]
        np.testing.assert_array_equal(s.labels, np.arange(100) % 4)
        assert s.paths[:2] == ["c0/000.png", "c1/001.png"] and s.signatures == [""] * 100
        assert s.ok.all() and s.skipped == [] and not s.segmented
        assert s.segment_files == [path] and s.physical_rows == 100
        np.testing.assert_array_equal(s.feature_rows, np.arange(100))
        assert s.attrs["feature_shape"] == [8]  # JSON attributes decoded
        assert s.attrs["split"] == {"val": 0.0, "test": 0.25, "seed": 42}
        assert s.rows_per_read == 64  # whole chunks of 16, at least 64 rows
        assert not s.has_duplicates and s.duplicates == []


def test_string_columns_read_packed_a_slice_at_a_time(tmp_path, monkeypatch):
    """``strings`` (what an update matches rows with) reads a column into one buffer, in
    slices of CHUNK rows, and gives "" for each row of a store without signatures."""
    monkeypatch.setattr(store_read, "CHUNK", 3)
    x, y = blobs(2, n=8, d=2, dtype=np.float32)
    paths = [f"c{c}/{i}-é.png" if i % 3 else f"c{c}/{i}.png" for i, c in enumerate(y)]
    path = write_synthetic_store(tmp_path / "s.h5", x, y, paths, np.zeros(8, np.int8),
                                 ["a", "b"])
    with FeatureStore(path) as s:
        packed = s.strings("paths")
        assert isinstance(packed, PackedStrings) and packed == paths and list(packed) == paths
        assert s.strings("signatures") == [""] * 8
    with h5py.File(path, "r+") as f:
        del f["signatures"]  # a store of an older featx
    with FeatureStore(path) as s:
        assert s.strings("signatures") == [""] * 8 and len(s.strings("signatures")) == 8


# ----------------------------------------------------------------------------------- reads

def test_rows_in_any_order_with_repeats(synthetic):
    path, x = synthetic
    rows = np.array([99, 3, 70, 3, 0, 64, 63])
    with FeatureStore(path) as s:
        np.testing.assert_array_equal(s.read_rows(rows), x[rows])
        out = np.zeros((len(rows), 8), np.float32)
        assert s.read_rows(rows, out) is out
        np.testing.assert_array_equal(out, x[rows])
        np.testing.assert_array_equal(s.features(rows), x[np.sort(rows)])  # ascending
        np.testing.assert_array_equal(s.features(), x)


def test_iter_chunks_reads_only_the_blocks_holding_wanted_rows(synthetic, monkeypatch):
    path, x = synthetic
    read = []
    original = FeatureStore.read_block

    def spy(self, b):
        read.append(b)
        return original(self, b)

    monkeypatch.setattr(FeatureStore, "read_block", spy)
    with FeatureStore(path) as s:
        chunks = list(s.iter_chunks(np.array([90, 70])))
        assert read == [1]  # rows 64-99 only: block 0 (rows 0-63) is never read
        assert [list(rows) for rows, _ in chunks] == [[70, 90]]
        np.testing.assert_array_equal(chunks[0][1], x[[70, 90]])
        read.clear()
        chunks = list(s.iter_chunks(np.array([90, 5, 2])))
    assert read == [0, 1]
    assert [list(rows) for rows, _ in chunks] == [[2, 5], [90]]
    np.testing.assert_array_equal(np.concatenate([f for _, f in chunks]), x[[2, 5, 90]])


def test_a_changed_row_names_its_rows_and_file_and_forgets_the_store_was_verified(synthetic):
    path, _ = synthetic
    with FeatureStore(path) as s:
        assert s.verify_once()
    assert verified_stamp(path).is_file()
    with h5py.File(path, "r+") as f:
        f["features"][70] = f["features"][70] + 1
    with FeatureStore(path) as s:
        s.read_block(0)  # rows 0-63: unchanged
        with pytest.raises(DamagedStoreError, match=f"{path}: features of rows 64-99 do not "
                                                    "match the checksum") as raised:
            s.read_rows(np.array([70]))
    assert raised.value.path == str(path)
    assert not verified_stamp(path).exists()  # the next `featx extract` checks it whole


def test_verify_once_reads_each_version_of_the_file_once(synthetic, monkeypatch):
    path, _ = synthetic
    reads = []
    monkeypatch.setattr(FeatureStore, "verify", lambda self: reads.append(1))
    with FeatureStore(path) as s:
        assert s.verify_once() and not s.verify_once()
    assert len(reads) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # another version
    with FeatureStore(path) as s:
        assert s.verify_once()
        s.forget_verified()
        assert not verified_stamp(path).exists()
        assert s.verify_once()
    assert len(reads) == 3


def test_checked_rows_refuse_a_block_without_a_recorded_checksum(tmp_path):
    features = np.ones((4, 2), np.float32)
    with pytest.raises(DamagedStoreError, match="rows 0-3 do not match"):
        checked_rows(features, 0, 4, [], 0, tmp_path / "x.h5")


def test_file_version_changes_with_any_file_and_the_key(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    version = file_version([a, b], "k")
    assert version.endswith(":k") and version != file_version([a, b], "other")
    assert version != file_version([b, a], "k")  # segments swapped
    b.write_bytes(b"333")
    assert version != file_version([a, b], "k")


def test_duplicate_rows_are_read_as_pairs_of_paths(synthetic):
    path, _ = synthetic
    with h5py.File(path, "r+") as f:
        f.create_dataset("duplicate_rows", data=np.array([[5, 1], [9, 1]], np.int64))
    with FeatureStore(path) as s:
        assert s.has_duplicates
        np.testing.assert_array_equal(s.duplicate_rows, [[5, 1], [9, 1]])
        assert s.duplicates == [("c1/005.png", "c1/001.png"), ("c1/009.png", "c1/001.png")]
    assert row_pairs_to_paths(np.empty((0, 2), np.int64), ["a"]) == []


def test_old_duplicates_as_path_pairs_are_read_as_rows(synthetic):
    """Stores of featx <= 0.3 recorded pairs of paths (``duplicates``)."""
    path, _ = synthetic
    with h5py.File(path, "r+") as f:
        f.create_dataset("duplicates", data=np.array([["c1/005.png", "c1/001.png"],
                                                      ["gone.png", "c1/001.png"]], object),
                         dtype=h5py.string_dtype())
    with FeatureStore(path) as s:
        np.testing.assert_array_equal(s.duplicate_rows, [[5, 1]])  # a path no longer there
        assert json.loads(json.dumps(s.duplicates)) == [["c1/005.png", "c1/001.png"]]
