"""Extraction into the HDF5 feature store: layout, equality with the backbone, the cache,
split changes, unreadable images, strict mode, resume and incremental updates."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import FIRST, assert_close, extract_killed_after_first_block, random_pngs, small_config

from featx.core.config import ConfigError
from featx.core.errors import StoreError
from featx.core.layout import segments_dir
from featx.core.memory import PackedStrings
from featx.data.dataset import StatSignatures, load_dataset, stratified_split
from featx.data.images import load_image
from featx.features.backbones import Backbone
from featx.features.extraction import ExtractError, extract
from featx.features.plan import locate_store, match_rows, plan
from featx.store import write as store_write
from featx.store.keys import columns_digest
from featx.store.read import FeatureStore, packed_column
from featx.store.write import write_strings

LEFTOVER_SUFFIXES = (".partial", ".assembling", ".tmp")


def direct_features(config, root: Path, paths: list[str]) -> np.ndarray:
    """The backbone called directly, one image at a time, without the extraction runner."""
    backbone = Backbone(config.backbone, seed=config.dataset.seed)
    images = np.stack([load_image(str(root / p), backbone.input_size) for p in paths])
    return np.asarray(backbone.features(images))


def forbid_model_work(monkeypatch):
    """Any attempt to build a backbone model fails the test."""
    def no_model(self):
        raise AssertionError("the backbone model was built")
    monkeypatch.setattr(Backbone, "model", property(no_model))


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(LEFTOVER_SUFFIXES)]


def clone(tiny_store, tmp_path, make_config, **sections):
    """A private copy of the tiny dataset (same name, sizes and mtimes) and of its store, so
    that a test may change either. Returns (config, root); the copy is a cache hit."""
    root = tmp_path / "data" / tiny_store.root.name
    shutil.copytree(tiny_store.root, root)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(tiny_store.path, cache / tiny_store.path.name)
    config = make_config(root, cache, **sections)
    return config, root


@pytest.fixture(scope="module")
def expected_features(tiny_store):
    with FeatureStore(tiny_store.path) as store:
        paths = store.paths
    return direct_features(tiny_store.config, tiny_store.root, paths)


# ---------------------------------------------------------------------------------- layout

def test_store_layout(tiny_store):
    config = tiny_store.config
    dataset = load_dataset(config.dataset)
    n = len(dataset)
    assert tiny_store.rows == n == sum(len(v) for v in tiny_store.written.values())
    feature_shape = Backbone(config.backbone, seed=config.dataset.seed).feature_shape
    with h5py.File(tiny_store.path, "r") as f:
        feats = f["features"]
        assert feats.dtype == np.float32 and feats.shape == (n, *feature_shape)
        assert feats.chunks is not None
        assert feats.chunks[1:] == feature_shape and 1 <= feats.chunks[0] <= n  # by rows
        assert feats.compression == "lzf"
        assert f["labels"].dtype == np.int32
        assert np.array_equal(f["labels"][:], dataset.labels)
        paths = [p.decode() for p in f["paths"][:]]
        assert paths == dataset.paths
        assert all(not os.path.isabs(p) and (tiny_store.root / p).is_file() for p in paths)
        assert np.array_equal(f["split"][:], stratified_split(
            dataset.labels, config.dataset.val, config.dataset.test, config.dataset.seed))
        assert [s.decode() for s in f["label_names"][:]] == dataset.label_names
        assert f["ok"].dtype == bool and f["ok"].shape == (n,) and f["ok"][:].all()
        attrs = dict(f.attrs)
    assert attrs["backbone"] == "MobileNetV2"
    assert attrs["weights_id"] == Backbone(config.backbone, seed=config.dataset.seed).weights_id
    assert attrs["layer"] and attrs["pooling"] == "avg" and attrs["input_size"] == 32
    assert attrs["preprocess"] == "tf"
    versions = json.loads(attrs["versions"])
    assert {"tensorflow", "keras", "h5py", "numpy", "featx"} <= set(versions)
    assert json.loads(attrs["pipeline"]) == json.loads(config.to_json())
    assert attrs["key"] == tiny_store.key
    assert bool(attrs["complete"]) is True


def test_store_reads_back_through_feature_store(tiny_store):
    with FeatureStore(tiny_store.path) as store, h5py.File(tiny_store.path, "r") as f:
        assert len(store) == tiny_store.rows
        np.testing.assert_array_equal(store.features(), f["features"][:].reshape(len(store), -1))
        rows = np.array([5, 0, 17, 3])
        np.testing.assert_array_equal(store.features(rows), f["features"][:][np.sort(rows)])
        attrs = store.attrs
        assert attrs["versions"]["keras"]  # JSON attributes come back parsed
        assert attrs["split"] == {"val": 0.0, "test": 0.25, "seed": 42}
        assert store.skipped == []


def test_features_equal_the_backbone_called_directly(tiny_store, expected_features):
    with FeatureStore(tiny_store.path) as store:
        stored = store.file["features"][:]
    assert len(np.unique(stored.round(20), axis=0)) > 1  # distinct images, distinct features
    assert_close(stored, expected_features)


def test_second_call_is_a_cache_hit_without_model_work(tiny_store, monkeypatch):
    before = tiny_store.path.stat().st_mtime_ns
    forbid_model_work(monkeypatch)
    result = extract(tiny_store.config, progress=False)
    assert result.cache_hit is True
    assert result.path == tiny_store.path and result.key == tiny_store.key
    assert result.rows == tiny_store.rows and result.extracted == 0
    assert tiny_store.path.stat().st_mtime_ns == before  # not even rewritten


def test_no_unfinished_files_are_left(tiny_store):
    assert leftovers(tiny_store.path.parent) == []
    stores = list(tiny_store.path.parent.glob("*.h5"))
    assert stores == [tiny_store.path]


def test_locate_store_needs_no_model(tiny_store, monkeypatch):
    forbid_model_work(monkeypatch)
    assert locate_store(tiny_store.config) == tiny_store.path


@pytest.mark.parametrize("section, values", [
    ("backbone", {"pooling": "max"}),
    ("backbone", {"pooling": "flatten"}),
    ("backbone", {"layer": "block_3_expand_relu"}),
    ("backbone", {"input_size": 64}),
    ("backbone", {"name": "MobileNet"}),
    ("backbone", {"precision": "mixed_float16"}),
    ("dataset", {"seed": 7}),  # random weights are drawn from the seed
])
def test_what_changes_the_features_changes_the_store(tiny_store, make_config, section, values):
    changed = make_config(tiny_store.root, tiny_store.config.cache_dir, **{section: values})
    assert locate_store(changed) != tiny_store.path


@pytest.mark.parametrize("section, values", [
    ("dataset", {"test": 0.5}),
    ("dataset", {"val": 0.2}),
    ("extract", {"batch_size": 3}),
    ("extract", {"compression": "gzip"}),
    ("classify", {"classifiers": ["logreg"]}),
])
def test_what_leaves_the_features_alone_keeps_the_store(tiny_store, make_config, section,
                                                        values):
    same = make_config(tiny_store.root, tiny_store.config.cache_dir, **{section: values})
    assert locate_store(same) == tiny_store.path


def test_other_pooling_is_another_key(tiny_store, make_config, monkeypatch):
    forbid_model_work(monkeypatch)  # the key is known before any model work
    same = plan(make_config(tiny_store.root, tiny_store.config.cache_dir))
    other = plan(make_config(tiny_store.root, tiny_store.config.cache_dir,
                             backbone={"pooling": "max"}))
    assert same.key == tiny_store.key and same.path == tiny_store.path
    assert other.key != tiny_store.key and other.path != tiny_store.path
    assert "max" in other.path.name and other.path.parent == tiny_store.path.parent


def test_extraction_uses_the_weights_it_is_given(tiny_store, make_config, tmp_path):
    """A weights file (like "imagenet") is loaded into the model the extraction runs: the
    store must hold the features of those weights, not of a fresh initialisation."""
    import keras

    keras.utils.set_random_seed(1234)
    base = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
    weights = tmp_path / "trained.weights.h5"
    base.save_weights(weights)
    config = make_config(tiny_store.root, tmp_path / "cache",
                         backbone={"weights": str(weights)})
    result = extract(config, progress=False)
    with FeatureStore(result.path) as store:
        assert store.attrs["weights"] == "file"
        stored, paths = store.features(), store.paths
    assert_close(stored, direct_features(config, tiny_store.root, paths))


# ---------------------------------------------------------------------------------- split

def test_changing_only_the_split_rewrites_it_without_extraction(tiny_store, make_config,
                                                                 tmp_path, monkeypatch):
    config, _ = clone(tiny_store, tmp_path, make_config, dataset={"test": 0.5, "val": 0.2})
    path = Path(config.cache_dir) / tiny_store.path.name
    with FeatureStore(path) as store:
        features_before, split_before = store.features(), store.split
    forbid_model_work(monkeypatch)
    result = extract(config, progress=False)
    assert result.cache_hit and result.path == path
    with FeatureStore(path) as store:
        expected = stratified_split(store.labels, 0.2, 0.5, 42)
        assert np.array_equal(store.split, expected)
        assert not np.array_equal(store.split, split_before)
        assert store.attrs["split"] == {"val": 0.2, "test": 0.5, "seed": 42}
        np.testing.assert_array_equal(store.features(), features_before)


# ---------------------------------------------------------------------------------- bad images

@pytest.fixture(scope="module")
def broken_data(tmp_path_factory, image_folder):
    """2 classes x 4 good images, plus a .jpg of random bytes and an empty .png."""
    root = tmp_path_factory.mktemp("broken") / "broken"
    image_folder(root, classes={"ant": (250, 0, 0), "bee": (0, 0, 250)}, per_class=4,
                 junk=False)
    (root / "ant" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    (root / "bee" / "empty.png").write_bytes(b"")
    return root, {"ant/corrupt.jpg", "bee/empty.png"}


@pytest.fixture(scope="module")
def broken_store(broken_data, tmp_path_factory, make_config):
    root, bad = broken_data
    config = make_config(root, tmp_path_factory.mktemp("broken-cache"))
    return config, extract(config, progress=False)


def test_unreadable_images_are_recorded_skips(broken_data, broken_store):
    root, bad = broken_data
    config, result = broken_store
    assert not result.cache_hit
    assert {p for p, _ in result.skipped} == bad
    assert all(reason.strip() for _, reason in result.skipped)
    with FeatureStore(result.path) as store:
        ok = store.ok
        paths = store.paths
        assert dict(store.skipped).keys() == bad
        assert len(store) == 10
        feats = store.features()
    assert {p for p, good in zip(paths, ok) if not good} == bad
    assert ok.sum() == 8
    assert not feats[~ok].any()  # unreadable rows are zeros
    assert (np.abs(feats[ok]).max(axis=1) > 0).all()
    assert leftovers(result.path.parent) == []


def test_strict_mode_raises_and_finishes_no_store(broken_data, tmp_path, make_config):
    root, bad = broken_data
    config = make_config(root, tmp_path / "cache", extract={"strict": True})
    for attempt in range(2):  # and again: a resumed strict run must fail just the same
        with pytest.raises(ExtractError) as e:
            extract(config, progress=False)
        assert any(name in str(e.value) for name in bad), attempt
        assert not locate_store(config).exists()
        with pytest.raises(StoreError):
            FeatureStore(locate_store(config))


def test_strict_mode_raises_even_when_the_store_is_cached(broken_data, broken_store):
    """A strict run over a dataset with unreadable images fails, whether or not a lenient run
    has already cached its store."""
    root, bad = broken_data
    config, result = broken_store
    strict = type(config).from_dict(json.loads(config.to_json()))
    strict.extract.strict = True
    with pytest.raises(ExtractError) as e:
        extract(strict, progress=False)
    assert any(name in str(e.value) for name in bad)


# ---------------------------------------------------------------------------------- resume

def test_interrupted_extraction_resumes_from_finished_blocks(tiny_store, make_config, tmp_path,
                                                             monkeypatch, expected_features):
    # batches of 2 rows: blocks of a few rows, so 18 images make several blocks
    config = make_config(tiny_store.root, tmp_path / "cache", extract={"batch_size": 2})
    saved = extract_killed_after_first_block(config, monkeypatch)
    path = locate_store(config)
    assert not path.exists() and saved == [0]
    with pytest.raises(StoreError, match="unfinished"):
        FeatureStore(path)

    result = extract(config, progress=False)
    assert not result.cache_hit
    assert 0 < result.extracted < tiny_store.rows  # the finished block was not redone
    assert result.extracted + result.reused == tiny_store.rows
    with FeatureStore(path) as store:
        assert store.attrs["key"] == tiny_store.key
        assert_close(store.features(), expected_features)
    assert leftovers(path.parent) == []


# ---------------------------------------------------------------------------------- updates

def test_changed_dataset_is_updated_incrementally(tiny_store, make_config, tmp_path,
                                                  image_file):
    config, root = clone(tiny_store, tmp_path, make_config)
    path = Path(config.cache_dir) / tiny_store.path.name
    assert extract(config, progress=False).cache_hit  # the copy is the same dataset
    with FeatureStore(path) as store:
        old = dict(zip(store.paths, store.features()))

    removed = tiny_store.written["cat"][0]
    (root / removed).unlink()
    added = "dog/new_one.png"
    image_file(root / added, colour=(10, 20, 30), seed=77)
    result = extract(config, progress=False)
    # a new version is a store of its own; the copied store was made from another folder,
    # so it is not this folder's to replace and stays as it was
    assert not result.cache_hit and result.path != path
    with FeatureStore(path) as store:
        assert store.attrs["key"] == tiny_store.key
    # rows are reused from that store, but none of this folder's was dropped: its removed
    # image was in another dataset's store (before, that row was counted as dropped)
    assert (result.extracted, result.dropped, result.reused) == (1, 0, tiny_store.rows - 1)
    with FeatureStore(result.path) as store:
        paths, feats = store.paths, store.features()
        assert paths == load_dataset(config.dataset).paths
        assert store.attrs["key"] != tiny_store.key
    assert removed not in paths and added in paths
    for p, row in zip(paths, feats):
        if p != added:
            np.testing.assert_array_equal(row, old[p])  # reused rows are copied, not redone
    assert_close(feats[paths.index(added)], direct_features(config, root, [added])[0])
    assert leftovers(path.parent) == []


def test_updates_past_the_segment_limit_equal_a_fresh_extraction(tmp_path, monkeypatch):
    """Images added, removed, changed, unreadable and copied, update after update, past
    SEGMENTS_MAX (3 here), so that small segments are merged again and again: each update
    extracts only its new images and never writes the first store's file, and the last
    store holds exactly what a fresh extraction of the same images does (features, labels,
    paths, split, ok, skips, duplicates and their checksums)."""
    monkeypatch.setattr(store_write, "SEGMENTS_MAX", 3)
    data = tmp_path / "data"
    random_pngs(data, FIRST)
    config = small_config(data, tmp_path / "cache")
    first = os.stat(extract(config, progress=False).path)

    def changed(name: str) -> None:  # other pixels, and a signature that says so
        random_pngs(data, [name], seed=44)
        os.utime(data / name, (first.st_mtime + 100, first.st_mtime + 100))

    steps = [  # (images added, what else happens, images it extracts)
        (["cat/cat01.png", "dog/dog01.png"], None, 2),
        ([], lambda: (data / "cat/cat03.png").write_bytes(b"not an image"), 1),
        ([], lambda: shutil.copyfile(data / "cat/cat00.png", data / "cat/cat99.png"), 1),
        (["dog/dog03.png", "dog/dog05.png"], lambda: (data / "cat/cat01.png").unlink(), 2),
        (["cat/cat07.png"], lambda: changed("dog/dog04.png"), 2),
        (["dog/dog07.png", "cat/cat09.png"], None, 2),
        (["dog/dog09.png"], lambda: (data / "cat/cat02.png").unlink(), 1),
    ]
    shapes = []
    for i, (added, then, extracted) in enumerate(steps):
        random_pngs(data, added, seed=i + 1)
        if then is not None:
            then()
        r = extract(config, progress=False)
        assert r.extracted == extracted
        with FeatureStore(r.path) as s:
            shapes.append(s.segment_rows)
            kept = os.stat(s.segment_files[0])
            assert (kept.st_ino, kept.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert max(map(len, shapes)) == 3 and any(len(b) < len(a) for a, b in
                                             zip(shapes, shapes[1:])), shapes  # merged
    fresh = extract(small_config(data, tmp_path / "fresh"), progress=False)
    assert fresh.key == r.key and fresh.duplicate_rows.tolist() == r.duplicate_rows.tolist()
    with FeatureStore(r.path) as got, FeatureStore(fresh.path) as want:
        assert got.segmented and not want.segmented
        for column in ("paths", "signatures", "label_names", "skipped"):
            assert getattr(got, column) == getattr(want, column), column
        for column in ("labels", "split", "ok", "duplicate_rows"):
            np.testing.assert_array_equal(getattr(got, column), getattr(want, column))
        assert len(got.skipped) == 1 and len(got.duplicate_rows) == 1
        features = got.features()
        np.testing.assert_array_equal(features, want.features())
        assert hashlib.sha256(features.tobytes()).hexdigest() == \
            want.attrs["features_sha256"]
        assert columns_digest(labels=got.labels, paths=got.paths, split=got.split,
                              ok=got.ok, label_names=got.label_names) == \
            want.attrs["columns_sha256"]
        got.verify()


def test_a_merge_killed_midway_leaves_the_previous_store_whole(tmp_path, monkeypatch):
    """A store of two segments, and one more image with at most 2 segments: its last segment
    and the new row are merged. Dying while the merged segment is half written leaves the
    previous store as it was, and nothing half-written; the next run completes the update
    without extracting again."""
    monkeypatch.setattr(store_write, "SEGMENTS_MAX", 2)
    data = tmp_path / "data"
    random_pngs(data, FIRST)
    config = small_config(data, tmp_path / "cache")
    first = os.stat(extract(config, progress=False).path)
    random_pngs(data, ["cat/cat01.png"], seed=1)
    previous = extract(config, progress=False).path
    files = [previous, *sorted(segments_dir(previous).iterdir())]
    before = {f: f.read_bytes() for f in files}
    with FeatureStore(previous) as s:
        old_rows = dict(zip(s.paths, s.features()))
    random_pngs(data, ["dog/dog01.png"], seed=2)
    original = store_write._write_segment

    def dies_midway(tmp, segment, copy, rows, *args):
        def copy_then_die(some):
            copy(some)  # the old rows read, the file open ...
            raise RuntimeError("killed")
        return original(tmp, segment, copy_then_die, rows, *args)

    monkeypatch.setattr(store_write, "_write_segment", dies_midway)
    with pytest.raises(RuntimeError, match="killed"):
        extract(config, progress=False)
    assert sorted(Path(config.cache_dir).glob("*.h5")) == [previous]
    assert {f: f.read_bytes() for f in files} == before
    # no half-written store, segment folder or segment (the finished blocks are kept)
    assert list(Path(config.cache_dir).glob("*.segments")) == [segments_dir(previous)]
    assert [p for p in leftovers(Path(config.cache_dir)) if not p.endswith(".partial")] == []
    with FeatureStore(previous) as s:
        s.verify()
        assert dict(zip(s.paths, s.features())).keys() == old_rows.keys()
    monkeypatch.setattr(store_write, "_write_segment", original)
    r = extract(config, progress=False)
    assert r.extracted == 0  # from the blocks the killed run finished
    with FeatureStore(r.path) as s:
        assert s.segment_rows == [len(FIRST), 2]
        kept = os.stat(s.segment_files[0])
        assert (kept.st_ino, kept.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
        for path, row in zip(s.paths, s.features()):
            if path in old_rows:
                np.testing.assert_array_equal(row, old_rows[path])
        s.verify()


def reference_match(old_paths, old_signatures, paths, signatures) -> list[int]:
    """match_rows as a dict of paths does it."""
    index = dict(zip(old_paths, range(len(old_paths))))
    return [index[p] if p in index and old_signatures[index[p]] == s else -1
            for p, s in zip(paths, signatures)]


@pytest.mark.parametrize("keys", ["hashes", "colliding"])
def test_rows_match_by_path_and_signature_whatever_their_keys(keys, monkeypatch):
    """Every (path, signature) pair finds its old row, or none, also where the 64-bit keys
    collide (here: keys made to collide for most pairs)."""
    if keys == "colliding":
        from featx.features import plan as plan_module

        monkeypatch.setattr(plan_module, "_pair_keys", lambda paths, signatures: np.fromiter(
            (len(p) % 3 for p in paths), np.int64, len(paths)))
    rng = np.random.default_rng(5)
    old_paths = [f"c{i % 4}/img{i}.png" for i in range(300)]
    old_signatures = [f"{100 + i % 7}:{i % 11}" for i in range(300)]
    paths, signatures = [], []
    for i in rng.permutation(320):  # any order; 20 new, some changed
        paths.append(f"c{i % 4}/img{i}.png")
        signatures.append(f"{100 + i % 7}:{i % 11}" if i % 13 else "999:1")
    got = match_rows(PackedStrings(old_paths), PackedStrings(old_signatures),
                     PackedStrings(paths), signatures)
    expected = reference_match(old_paths, old_signatures, paths, signatures)
    assert got.tolist() == expected and 0 < expected.count(-1) < 100
    assert match_rows(old_paths, old_signatures, ["x/new.png"], ["1:1"]).tolist() == [-1]
    assert match_rows([], [], paths[:2], signatures[:2]).tolist() == [-1, -1]
    assert match_rows(old_paths, old_signatures, [], []).tolist() == []


def test_matching_holds_the_paths_packed_not_a_dict_or_lists_of_them(tmp_path):
    """The rows of an update of a 200k-row store found with at most three times the packed
    size of the old paths and signatures (those, the new signatures packed, slices) and 6
    int64 a row (keys, their order, the result ...): a dict of the paths or lists of them
    would not fit (lists and a dict: 275 B a row, 52 MiB; this, 164 B)."""
    n = 200_000
    paths = PackedStrings(f"class-{i % 10:02d}/d{i // 10_000:04d}/img{i:07d}.jpg"
                          for i in range(n))
    signatures = StatSignatures(1000 + np.arange(n) % 300, np.full(n, 1_700_000_000))
    with h5py.File(tmp_path / "columns.h5", "w") as f:
        write_strings(f, "paths", paths)
        write_strings(f, "signatures", signatures)
    keep = np.flatnonzero(np.arange(n) % 1000 != 7)  # 200 removed ...
    now = PackedStrings([*paths.take(keep), *(f"new/{i}.jpg" for i in range(200))])
    sizes = np.concatenate([signatures.size[keep], np.full(200, 5)])
    sizes[10] += 1  # ... 200 added, one changed
    now_signatures = StatSignatures(sizes, np.full(len(now), 1_700_000_000))
    with h5py.File(tmp_path / "columns.h5", "r") as f:
        tracemalloc.start()
        try:
            old_paths, old_signatures = packed_column(f["paths"]), packed_column(
                f["signatures"])
            got = match_rows(old_paths, old_signatures, now, now_signatures)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    expected = np.concatenate([keep, np.full(200, -1)])
    expected[10] = -1
    np.testing.assert_array_equal(got, expected)
    packed = sum(len(s.buffer) + s.ends.nbytes for s in (old_paths, old_signatures))
    assert peak <= 3 * packed + 6 * 8 * n, (peak, packed)


def test_unknown_hash_mode_is_an_error(tiny_store, make_config):
    with pytest.raises(ConfigError, match="dataset.hash = 'md5' is not one of 'stat', 'content'"):
        make_config(tiny_store.root, tiny_store.config.cache_dir, dataset={"hash": "md5"})


def test_mixed_precision_store_holds_float32(tiny_store, make_config, tmp_path):
    config = make_config(tiny_store.root, tmp_path / "cache",
                         backbone={"precision": "mixed_float16"})
    result = extract(config, progress=False)
    import tensorflow as tf

    # where the model ran is reported: the first GPU TensorFlow sees, else the CPU
    gpus = tf.config.list_physical_devices("GPU")
    assert result.device.startswith("GPU:0 ") if gpus else result.device == "CPU", result.device
    with FeatureStore(result.path) as store:
        assert store.file["features"].dtype == np.float32
        assert store.attrs["precision"] == "mixed_float16"
        assert store.features().shape == (tiny_store.rows, 1280)


# ---------------------------------------------------------------------- duplicate groups

def _with_copies(tmp_path: Path) -> tuple[object, list[tuple[str, str]]]:
    """small_config's data (2 classes x 10 random PNGs) with 3 byte copies: (config, pairs)."""
    data = tmp_path / "data"
    pairs = [("cat/cat1_copy.png", "cat/cat1.png"), ("cat/cat7_copy.png", "cat/cat7.png"),
             ("dog/dog3_copy.png", "dog/dog3.png")]
    random_pngs(data, n_per_class=10, copies=pairs)
    return small_config(data, tmp_path / "cache"), pairs


def _apart(store: FeatureStore, pairs: list[tuple[str, str]]) -> int:
    index = {p: i for i, p in enumerate(store.paths)}
    split = store.split
    return sum(split[index[a]] != split[index[b]] for a, b in pairs)


def test_the_store_records_its_groups_and_a_grouped_split(tmp_path):
    config, pairs = _with_copies(tmp_path)
    result = extract(config, progress=False)
    with FeatureStore(result.path) as store:
        found = store.groups
        assert store.grouping == {"duplicates": True, "threshold": 0.95}
        assert found.info["exact_pairs"] == 3 and found.info["groups"] == 3
        assert found.groups.dtype == np.int32 and len(found.groups) == len(store)
        assert _apart(store, pairs) == 0
        ungrouped = stratified_split(store.labels, 0.0, 0.3, 42)
        index = {p: i for i, p in enumerate(store.paths)}
    assert any(ungrouped[index[a]] != ungrouped[index[b]] for a, b in pairs)
    # the groups are covered by a checksum: a changed group is a damaged store
    with h5py.File(result.path, "r+") as f:
        f["groups"][0] = 5
    with FeatureStore(result.path) as store, pytest.raises(StoreError, match="duplicate groups"):
        _ = store.groups


def test_byte_copies_are_grouped_before_the_model_and_the_store_written_so(
        tmp_path, monkeypatch):
    """With random weights the groups are the byte copies alone, known before any image
    goes through the model: the store is written with the split they make and never split
    again after it (at 1M images, grouping after the model raised the peak by ~60 MiB)."""
    import featx.features.extraction as extraction

    config, pairs = _with_copies(tmp_path)
    again: list = []
    monkeypatch.setattr(extraction, "rewrite_split", lambda *a, **k: again.append(a))
    path = extract(config, progress=False).path
    assert again == []
    with FeatureStore(path) as store:
        assert store.grouping == {"duplicates": True, "threshold": 0.95}
        assert _apart(store, pairs) == 0
        assert store.groups.info["groups"] == 3


def test_switching_the_grouping_rewrites_the_split_without_model_work(tmp_path, monkeypatch):
    """dataset.group_duplicates and its threshold are part of the split's identity: each
    switch re-splits the store in place (no features again), and is recorded."""
    config, pairs = _with_copies(tmp_path)
    path = extract(config, progress=False).path
    with FeatureStore(path) as store:
        features = store.features()
    forbid_model_work(monkeypatch)
    config.dataset.group_duplicates = False
    assert extract(config, progress=False).cache_hit
    with FeatureStore(path) as store:
        assert store.grouping == {"duplicates": False}
        assert np.array_equal(store.split, stratified_split(store.labels, 0.0, 0.3, 42))
        assert _apart(store, pairs) > 0
        assert store.groups is not None  # still recorded: classify counts what crosses
    config.dataset.group_duplicates = True
    config.dataset.duplicate_threshold = 0.99  # another threshold: the groups found again
    assert extract(config, progress=False).cache_hit
    with FeatureStore(path) as store:
        assert store.grouping == {"duplicates": True, "threshold": 0.99}
        assert store.groups.threshold == 0.99 and _apart(store, pairs) == 0
        np.testing.assert_array_equal(store.features(), features)


def test_a_store_made_before_grouping_reads_as_ungrouped_and_is_grouped_in_place(
        tmp_path, monkeypatch):
    """A store as featx 0.6 wrote it (no groups, no grouping attribute, the plain split)
    reads, its split ungrouped; `featx extract` then finds its groups and re-splits it,
    without model work."""
    config, pairs = _with_copies(tmp_path)
    path = extract(config, progress=False).path
    with FeatureStore(path) as store:
        plain = stratified_split(store.labels, 0.0, 0.3, 42)
    store_write.rewrite_split(path, plain, '{"val": 0.0, "test": 0.3, "seed": 42}')
    with h5py.File(path, "r+") as f:  # what featx 0.6 wrote
        for name in ("groups", "near_pairs", "near_similarity"):
            del f[name]
        for name in ("groups", "groups_sha256", "grouping"):
            del f.attrs[name]
    with FeatureStore(path) as store:
        assert store.groups is None and store.grouping == {"duplicates": False}
        assert _apart(store, pairs) > 0
    forbid_model_work(monkeypatch)
    assert extract(config, progress=False).cache_hit
    with FeatureStore(path) as store:
        assert store.groups is not None and store.grouping["duplicates"]
        assert _apart(store, pairs) == 0
