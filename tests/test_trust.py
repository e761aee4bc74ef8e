"""Trust at the seams added since 0.3 (issue 24): resume blocks, segments, converted models,
updates and exports are bound to exactly what they were made from and checked where they
are reused; a failed check leads to a rebuild, never to a loop or to another job's rows.

Each test failed on 0.4.1 (2405678) unless it says it guards a planted bug.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import assert_close, random_pngs, small_config

from featx.cli import main
from featx.core.errors import StoreError
from featx.core.layout import segments_dir
from featx.features.extraction import extract
from featx.store import blocks as store_blocks
from featx.store import cache
from featx.store.read import FeatureStore


def _names(prefix: str, n: int) -> list[str]:
    return [f"{c}/{prefix}{c}{i:02d}.png" for i in range(n) for c in ("cat", "dog")][:n]


def _features(path: Path) -> dict[str, np.ndarray]:
    with FeatureStore(path) as s:
        return dict(zip(s.paths, s.features()))


def _fresh(data: Path, cache_dir: Path) -> dict[str, np.ndarray]:
    """The features of ``data`` extracted from nothing, in a cache of their own."""
    return _features(extract(small_config(data, cache_dir), progress=False).path)


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    names = sorted(want)
    assert_close(np.stack([got[n] for n in names]), np.stack([want[n] for n in names]))


def _flip_chunk_byte(path: Path, chunk: int = 0, keep_times: bool = True) -> None:
    """Bit rot: one byte of a features chunk changed, size, mtime and inode as they were."""
    st = path.stat()
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(chunk).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 40)
        byte = fh.read(1)
        fh.seek(offset + 40)
        fh.write(bytes([byte[0] ^ 0x55]))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class Interrupted(Exception):
    pass


@pytest.fixture
def first(tmp_path):
    """12 images and their store: (data folder, config, extraction result)."""
    data = tmp_path / "data"
    random_pngs(data, _names("a", 12))
    config = small_config(data, tmp_path / "cache")
    return data, config, extract(config, progress=False)


def _copy_with_one_more(data: Path, copy: Path) -> Path:
    """A copy of the dataset with one image more: an update reuses the first store's rows."""
    shutil.copytree(data, copy)
    random_pngs(copy, ["cat/zz.png"], seed=5)
    return copy


# ------------------------------------------------- 1. resume blocks are bound to their job
# (BlockDir's own check of the job: tests/test_blocks.py)

def test_resume_blocks_of_an_update_are_not_reused_by_another_job(tmp_path, monkeypatch,
                                                                   capsys):
    data = tmp_path / "data"
    random_pngs(data, _names("a", 12))
    config = small_config(data, tmp_path / "cache")
    old = extract(config, progress=False)
    random_pngs(data, _names("b", 40), seed=1)  # 40 new images: several blocks of 16
    original = store_blocks.BlockDir.save
    saved = []

    def kill_after_one(self, *args, **kwargs):
        if saved:
            raise Interrupted
        saved.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(store_blocks.BlockDir, "save", kill_after_one)
    monkeypatch.setattr("featx.features.extraction.BLOCK_BATCHES", 4)
    with pytest.raises(Interrupted):
        extract(config, progress=False)
    monkeypatch.setattr(store_blocks.BlockDir, "save", original)
    # the old store goes; the update's finished block stays
    assert main(["cache", "rm", old.key, "--cache-dir", str(config.cache_path)]) == 0
    assert not old.path.exists() and list(config.cache_path.glob("*.partial"))
    r = extract(config, progress=False)
    assert r.extracted == r.rows == 52  # every image, none from the update's blocks
    _assert_same(_features(r.path), _fresh(data, tmp_path / "fresh"))


# ------------------------------------------- 2. segments are bound to their place in a store

@pytest.fixture
def segmented(tmp_path):
    """A store updated once: seg-000 (10 images) and seg-001 (10 new ones), equal lengths."""
    data = tmp_path / "data"
    random_pngs(data, _names("a", 10))
    config = small_config(data, tmp_path / "cache")
    extract(config, progress=False)
    random_pngs(data, _names("b", 10), seed=1)
    r = extract(config, progress=False)
    with FeatureStore(r.path) as s:
        assert s.segmented and s.segment_rows == [10, 10]
    return config, data, r.path


def test_swapped_segment_files_are_refused_and_rebuilt(segmented, tmp_path):
    config, data, path = segmented
    folder = segments_dir(path)
    a, b = folder / "seg-000.h5", folder / "seg-001.h5"
    a.rename(folder / "x")
    b.rename(a)
    (folder / "x").rename(b)
    with pytest.raises(StoreError, match="seg-00"):
        with FeatureStore(path) as s:
            s.features()
    assert any("seg-00" in p for p in cache.verify(path))
    r = extract(config, progress=False)
    assert not r.cache_hit
    _assert_same(_features(r.path), _fresh(data, tmp_path / "fresh"))


def test_a_changed_feature_row_is_refused(segmented):
    """Guards a plant: feature_row dropped from the column checksum."""
    config, _, path = segmented
    with h5py.File(path, "r+") as f:
        rows = f["feature_row"][:]
        f["feature_row"][:2] = rows[:2][::-1]
    with pytest.raises(StoreError, match="checksum"):
        FeatureStore(path)
    assert not extract(config, progress=False).cache_hit


def test_swapped_class_names_are_refused(segmented):
    """Guards a plant: label_names dropped from the column checksum (swapping two class names
    would rename every prediction)."""
    config, _, path = segmented
    with h5py.File(path, "r+") as f:
        names = f["label_names"].asstr()[:]
        f["label_names"][0], f["label_names"][1] = names[1], names[0]
    with pytest.raises(StoreError, match="checksum"):
        FeatureStore(path)
    assert not extract(config, progress=False).cache_hit


# ------------------------------------ 11. every store featx writes reads as the seeds' layout

def test_a_segmented_store_reads_with_plain_h5py(segmented):
    _, _, path = segmented
    with FeatureStore(path) as s:
        want, labels, names = s.features(), s.labels, s.label_names
    with h5py.File(path, "r") as db:  # the seeds' readers
        np.testing.assert_array_equal(db["features"][:].reshape(len(want), -1), want)
        np.testing.assert_array_equal(db["labels"][:], labels)
        assert [n.decode() for n in db["label_names"][:]] == names


def test_a_segment_file_does_not_pass_for_a_store(segmented):
    _, _, path = segmented
    for segment in sorted(segments_dir(path).glob("seg-*.h5")):
        with pytest.raises(StoreError, match=f"segment of {path.name}"):
            FeatureStore(segment)


# ----------------------------- 4, 6. an update reads only checked rows of the store it reuses

def test_an_update_never_copies_a_changed_row(first, tmp_path, capsys):
    data, config, first = first
    with h5py.File(first.path, "r+") as f:  # valid HDF5 and Fletcher-32: other numbers
        f["features"][0] = f["features"][0] * 3 + 1
    copy = _copy_with_one_more(data, tmp_path / "copy")
    r = extract(small_config(copy, config.cache_path), progress=False)
    assert r.extracted == 13, "rows were reused from a store that fails its checksums"
    assert str(first.path) in capsys.readouterr().err
    _assert_same(_features(r.path), _fresh(copy, tmp_path / "fresh"))


def test_a_damaged_store_of_one_dataset_does_not_block_another(first, tmp_path, capsys):
    data, config, first = first
    _flip_chunk_byte(first.path)
    copy = _copy_with_one_more(data, tmp_path / "copy")
    for _ in range(2):  # every run works, not only the first
        code = main(["extract", "--data", str(copy), "--cache-dir", str(config.cache_path),
                     "--weights", "none", "--input-size", "32", "--batch-size", "4",
                     "--no-progress"])
        assert code == 0, capsys.readouterr().err
    assert str(first.path) in capsys.readouterr().err  # the damaged store is named
    r = extract(small_config(copy, config.cache_path), progress=False)
    assert r.cache_hit
    _assert_same(_features(r.path), _fresh(copy, tmp_path / "fresh"))


# ------------------------------------------------------- 5. bit rot leads to a rebuild, once

def test_bit_rot_with_the_same_mtime_is_rebuilt_not_looped(first):
    _, config, first = first
    good = _features(first.path)
    _flip_chunk_byte(first.path)
    from featx.learn.classification import classify

    with pytest.raises(StoreError, match="run `featx extract` to rebuild"):
        classify(config)
    r = extract(config, progress=False)  # as classify said: rebuilt, not "cache hit"
    assert not r.cache_hit and r.extracted == 12
    _assert_same(_features(r.path), good)
    classify(config)
    assert extract(config, progress=False).cache_hit


def test_cache_verify_failure_leads_to_a_rebuild(first):
    _, config, first = first
    _flip_chunk_byte(first.path)
    assert cache.verify(first.path)
    assert not extract(config, progress=False).cache_hit


# ------------------------------------------------------------ 12. export reads checked rows

def test_export_refuses_a_changed_row_of_a_plain_store(first, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    _, _, first = first
    with h5py.File(first.path, "r+") as f:
        f["features"][3] = f["features"][3] + 1
    code = main(["cache", "export", str(first.path), "--format", "npy", "--out",
                 str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(first.path) in err and "checksum" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_export_names_the_file_on_a_byte_flip(first, tmp_path, capsys):
    _, _, first = first
    _flip_chunk_byte(first.path)
    code = main(["cache", "export", str(first.path), "--format", "npz", "--out",
                 str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(first.path) in err[0], err


# ------------------------------------ 3. a converted OpenVINO model is checked when it is read

def test_a_damaged_converted_model_is_found_and_converted_again(tmp_path, capsys,
                                                                 monkeypatch):
    pytest.importorskip("openvino")
    from test_runtime import SIZE, backbone

    import featx.features.runtime as runtime
    from featx.core.layout import converted_model_dir

    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    ok = np.ones(3, bool)
    first = backbone(tmp_path, "openvino")
    good = first.batched(4)(images, ok)
    folder = converted_model_dir(tmp_path, "MobileNetV2", 4,
                                 runtime.model_key(first.describe(), 4))
    assert cache.verify(folder) == []
    weights = folder / "model.bin"
    data = bytearray(weights.read_bytes())
    at = len(data) // 2
    data[at:at + 64] = bytes(64)  # other weights, the same size: OpenVINO reads it happily
    weights.write_bytes(bytes(data))
    assert any("model.bin" in p and "checksum" in p for p in cache.verify(folder))
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 1
    assert f"FAIL {folder.name}" in capsys.readouterr().out
    conversions = []
    real = runtime.convert
    monkeypatch.setattr(runtime, "convert", lambda f: conversions.append(1) or real(f))
    again = backbone(tmp_path, "openvino").batched(4)(images, ok)
    assert conversions == [1]  # converted again, not read back damaged
    assert "converting again" in capsys.readouterr().err
    np.testing.assert_array_equal(again, good)
    assert cache.verify(folder) == []


# ------------------------ 14. OpenVINO agrees with TensorFlow within the bound the docs state

# Measured 2026-12-06 (benchmarks/openvino_agreement.py, all 1,360 Flowers-17 images,
# MobileNetV2 ImageNet weights, 224 px, OpenVINO 2026.4.1, TensorFlow 2.21): 1.02e-5 of the
# largest feature; 4.7e-4 relative per element above 1% of the largest. The README states
# these and the bounds below, which leave about 3x and 4x of margin.
OPENVINO_OF_LARGEST = 3e-5
OPENVINO_PER_ELEMENT = 2e-3


@pytest.mark.slow
@pytest.mark.shared
def test_openvino_agrees_with_tensorflow_on_photographs_within_the_stated_bound(tmp_path):
    import sys

    from realdata import FLOWERS17, WEIGHTS, shared_missing, unavailable

    if shared_missing():
        unavailable(shared_missing())
    pytest.importorskip("openvino")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from openvino_agreement import agreement

    files = sorted(str(p) for p in FLOWERS17.rglob("*.jpg"))[::20]  # 68 of 1,360, all classes
    got = agreement(files, WEIGHTS, tmp_path)
    assert got["images"] == len(files) > 60
    assert got["of the largest"] <= OPENVINO_OF_LARGEST, got
    assert got["max rel diff (features > 1%)"] <= OPENVINO_PER_ELEMENT, got
