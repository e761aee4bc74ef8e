"""What grows with the number of images stays small: packed paths, signatures made from the
stat arrays, duplicate detection's arrays (featx/core/memory.py, featx/data/dataset.py)."""

from __future__ import annotations

import os
import pickle
import tracemalloc

import numpy as np
import pytest

from featx.core import memory
from featx.core.config import DatasetConfig
from featx.core.memory import PackedStrings, Taken
from featx.data.dataset import load_dataset

TEXTS = ["class-00/a.jpg", "", "ünï/cödé €.png", "x" * 300, "z/z.JPG", "b", "class-09/0/1.webp"]


@pytest.mark.parametrize("chunk", [2, 3, 65536])
def test_packed_strings_equal_the_list_they_pack(monkeypatch, chunk):
    monkeypatch.setattr(memory, "CHUNK", chunk)  # chunk edges inside the list, or none
    packed = PackedStrings(iter(TEXTS))
    assert len(packed) == len(TEXTS) and list(packed) == TEXTS
    assert packed == TEXTS and packed == tuple(TEXTS) and TEXTS == packed
    assert packed != TEXTS[:-1] and packed != [*TEXTS[:-1], "other"]
    assert [packed[i] for i in range(len(TEXTS))] == TEXTS
    assert packed[-1] == TEXTS[-1] and packed[-len(TEXTS)] == TEXTS[0]
    for bad in (len(TEXTS), -len(TEXTS) - 1):
        with pytest.raises(IndexError):
            packed[bad]
    for s in (slice(1, 5), slice(0, 0), slice(5, 2), slice(None, None, 2), slice(None, None, -1),
              slice(-3, None)):
        assert list(packed[s]) == TEXTS[s] and packed[s] == TEXTS[s]
    order = [6, 0, 2, 2, 1]
    assert packed.take(order) == [TEXTS[i] for i in order] and list(packed.take([])) == []
    assert [c for chunk_ in packed.chunks(3) for c in chunk_] == TEXTS
    assert pickle.loads(pickle.dumps(packed)) == packed
    assert PackedStrings(packed) == packed and PackedStrings() == []
    assert list(Taken(packed.__getitem__, np.array([3, 0]))) == [TEXTS[3], TEXTS[0]]
    assert "\\0" not in TEXTS and TEXTS.index("b") == packed.index("b") and "b" in packed


def test_a_string_holding_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        PackedStrings(["a", "b\0c"])


def _links(root, n, sources=20, classes=5):
    """``n`` images under ``root``: hard links to ``sources`` files of a few sizes."""
    src = root.parent / f"{root.name}-sources"
    src.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(sources):
        path = src / f"s{i}.jpg"
        path.write_bytes(rng.integers(0, 255, 100 + 10 * (i % 4), np.uint8).tobytes())
        files.append(path)
    for c in range(classes):
        (root / f"class-{c:02d}").mkdir(parents=True)
    for i in range(n):
        os.link(files[i % sources], root / f"class-{i % classes:02d}" / f"image-{i:07d}.jpg")


def test_a_dataset_and_its_signatures_hold_under_100_bytes_an_image(tmp_path):
    """As lists of str, paths of this length and their ``size:mtime`` signatures held ~200 B
    an image (1M images: 190 MiB); packed paths and signatures made from the stat arrays
    hold the path's bytes, 8 B of offset and the stat arrays (4 x 8 B)."""
    n = 20_000
    root = tmp_path / "data"
    _links(root, n)
    tracemalloc.start()
    try:
        dataset = load_dataset(DatasetConfig(root=str(root)))
        signatures = dataset.signatures(listed=True)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset) == len(signatures) == n
    assert signatures[5] == f"{os.stat(dataset.absolute(5)).st_size}:" \
        f"{os.stat(dataset.absolute(5)).st_mtime_ns // 10**9}"
    assert held / n < 100, f"{held / n:.0f} B an image"


def test_duplicate_detection_holds_few_arrays_at_once(tmp_path):
    """Its arrays at their largest: 8.2x the pairs it returns, before; 3.9x now."""
    from featx.features.extraction import duplicate_rows

    n = 10_000
    root = tmp_path / "data"
    _links(root, n)
    dataset = load_dataset(DatasetConfig(root=str(root)))
    signatures = dataset.signatures(listed=True)
    tracemalloc.start()
    try:
        pairs = duplicate_rows(dataset, signatures)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    source = [int(path.rsplit("-", 1)[1][:-4]) % 20 for path in dataset.paths]
    first: dict[int, int] = {}
    expected = [[row, first.setdefault(s, row)] for row, s in enumerate(source)
                if first.setdefault(s, row) != row]
    assert pairs.dtype == np.int64 and pairs.tolist() == expected and len(expected) == n - 20
    assert peak < 5 * pairs.nbytes, f"{peak / pairs.nbytes:.1f}x the pairs"


def test_files_are_told_apart_by_device_and_inode():
    """An inode number repeats across file systems: rows are one file only when both match."""
    from featx.features.extraction import _files_of

    device = np.array([1, 2, 1, 2, 1], np.uint64)
    inode = np.array([5, 5, 5, 6, 7], np.uint64)
    file_id, first = _files_of(device, inode)
    pairs = {(int(device[r]), int(inode[r])) for r in first}
    assert len(first) == len(pairs) == 4
    for r in range(5):
        assert (device[first[file_id[r]]], inode[first[file_id[r]]]) == (device[r], inode[r])
    one_fs_id, one_fs_first = _files_of(np.ones(3, np.uint64), np.array([9, 5, 9], np.uint64))
    assert one_fs_id[0] == one_fs_id[2] != one_fs_id[1] and sorted(one_fs_first) == [0, 1]
    assert [len(a) for a in _files_of(np.zeros(0, np.uint64), np.zeros(0, np.uint64))] == [0, 0]
