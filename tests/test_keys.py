"""featx.store.keys: the content key and every checksum of a store: each changes with
what it covers, and with nothing else."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import featx
from featx.core.memory import PackedStrings
from featx.store import keys
from featx.store.keys import (
    FeatureDigest,
    as_text,
    columns_digest,
    library_versions,
    read_rows_for,
    segment_digest,
    store_key,
)

SETTINGS = {"backbone": "MobileNetV2", "input_size": 224, "pooling": "avg", "layer": ""}


def test_the_store_key_is_the_settings_whatever_their_order():
    key = store_key(SETTINGS)
    assert len(key) == 16 and int(key, 16) >= 0
    assert store_key(dict(reversed(SETTINGS.items()))) == key
    assert store_key({**SETTINGS, "pooling": "max"}) != key


def test_the_store_key_changes_with_the_format(monkeypatch):
    key = store_key(SETTINGS)
    monkeypatch.setattr(keys, "FORMAT_VERSION", keys.FORMAT_VERSION + 1)
    assert store_key(SETTINGS) != key  # stores of another format are never found


def _columns(**change):
    columns = {"labels": np.array([0, 1, 1]), "paths": ["a.png", "b/ü.png", "c.png"],
               "split": np.array([0, 0, 2], np.int8), "ok": np.array([True, False, True]),
               "label_names": ["cat", "dog"]}
    return {**columns, **change}


@pytest.mark.parametrize("change", [
    {"labels": np.array([0, 1, 0])}, {"paths": ["a.png", "b/u.png", "c.png"]},
    {"split": np.array([0, 1, 2], np.int8)}, {"ok": np.array([True, True, True])},
    {"label_names": ["dog", "cat"]},
    {"paths": ["a.pngb/ü.png", "", "c.png"]},  # the same characters, cut elsewhere
    {"feature_row": np.arange(3)}, {"segments": "[]"}])
def test_the_columns_digest_changes_with_every_column(change):
    assert columns_digest(**_columns(**change)) != columns_digest(**_columns())


def test_the_columns_digest_reads_any_sequence_of_texts_alike(monkeypatch):
    want = columns_digest(**_columns())
    assert columns_digest(**_columns(paths=PackedStrings(_columns()["paths"]))) == want
    assert columns_digest(**_columns(paths=np.asarray(_columns()["paths"], object))) == want
    monkeypatch.setattr(keys, "CHUNK", 2)  # hashed a slice at a time: the same digest
    assert columns_digest(**_columns(paths=iter(_columns()["paths"]))) == want


def test_a_feature_digest_is_the_same_fed_in_any_pieces():
    features = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    whole = FeatureDigest(4)
    whole.update(features)
    pieces = FeatureDigest(4)
    for part in np.split(features, [1, 2, 7]):
        pieces.update(part)
    assert whole.finish() == pieces.finish()
    total, blocks = whole.finish()
    assert total == hashlib.sha256(features.tobytes()).hexdigest()
    assert blocks == [hashlib.sha256(features[i:i + 4].tobytes()).hexdigest()
                      for i in (0, 4, 8)]  # the last block short
    as_float64 = FeatureDigest(4)
    as_float64.update(features.astype(np.float64))  # checked as the float32 stored
    assert as_float64.finish() == (total, blocks)


def test_a_read_is_whole_chunks_of_at_least_64_rows():
    assert read_rows_for(16) == 64 and read_rows_for(50) == 50 and read_rows_for(64) == 64
    assert read_rows_for(30) == 60 and read_rows_for(200) == 200
    assert read_rows_for(None) == keys.VIRTUAL_READ_ROWS and read_rows_for(0) == 4096


def test_a_segment_digest_binds_rows_block_size_and_checksums():
    digest = segment_digest(10, 4, ["a", "b", "c"])
    assert digest == hashlib.sha256(json.dumps([10, 4, ["a", "b", "c"]]).encode()).hexdigest()
    assert digest != segment_digest(10, 4, ["b", "a", "c"])
    assert digest != segment_digest(9, 4, ["a", "b", "c"])
    assert digest != segment_digest(10, 5, ["a", "b", "c"])
    assert segment_digest(np.int64(10), np.int32(4), ("a", "b", "c")) == digest


def test_library_versions_are_read_without_importing_them():
    found = library_versions()
    assert found["featx"] == featx.__version__ and found["numpy"] == np.__version__
    assert {"tensorflow", "keras", "h5py", "scikit-learn", "python"} <= set(found)
    assert all(isinstance(v, str) and v for v in found.values())  # "?" where not installed


def test_as_text_decodes_bytes():
    assert as_text(b"\xc3\xbc") == "ü" and as_text("x") == "x" and as_text(3) == "3"
