"""featx.store.blocks: the finished blocks of an unfinished extraction, each checked against
its checksum before a resume uses it, and bound to the job they were made for."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from featx.core.errors import StoreError
from featx.core.layout import job_meta
from featx.store import blocks as store_blocks
from featx.store.blocks import BlockDir, resume_unit


def _features(rows: int, width: int = 3, start: int = 0) -> np.ndarray:
    return np.arange(start * width, (start + rows) * width, dtype=np.float32).reshape(rows, -1)


@pytest.fixture
def blocks(tmp_path) -> BlockDir:
    """10 rows in blocks of 4 (the last one of 2), blocks 0 and 2 finished."""
    b = BlockDir(tmp_path / "x.h5", "key", 10, block_rows=4)
    for i in (0, 2):
        rows = b.rows_of(i)
        ok = np.ones(len(rows), bool)
        ok[0] = False
        b.save(i, _features(len(rows), start=rows.start), ok,
               ["OSError: unreadable"] + [""] * (len(rows) - 1))
    return b


def test_resume_blocks_hold_the_job_they_were_made_for(tmp_path):
    """Blocks of one job, asked for by another with as many rows: discarded, never used."""
    store = tmp_path / "x.h5"
    blocks = store_blocks.BlockDir(store, "key", 8, block_rows=4, job="one")
    blocks.save(0, np.ones((4, 2), np.float32), np.ones(4, bool), [""] * 4)
    assert store_blocks.BlockDir(store, "key", 8, block_rows=4, job="one").done() == [0]
    assert store_blocks.BlockDir(store, "key", 8, block_rows=4, job="two").done() == []


def test_blocks_cover_the_rows_in_order_the_last_one_short(blocks):
    assert blocks.n_blocks == 3
    assert [blocks.rows_of(i) for i in range(3)] == [range(0, 4), range(4, 8), range(8, 10)]
    assert blocks.dir.name == "x.h5.key.partial"


def test_a_saved_block_reads_back_as_written_and_counts_as_done(blocks):
    assert blocks.done() == [0, 2]
    got = blocks.load(2)
    np.testing.assert_array_equal(got["features"], _features(2, start=8))
    np.testing.assert_array_equal(got["ok"], [False, True])
    assert list(got["reasons"]) == ["OSError: unreadable", ""]
    # a resumed run sees the same blocks
    assert BlockDir(blocks.dir.parent / "x.h5", "key", 10, block_rows=4).done() == [0, 2]


@pytest.mark.parametrize("damage", ["flipped bytes", "no checksum", "other rows"])
def test_a_damaged_block_is_discarded_with_a_warning(blocks, capsys, damage):
    path = blocks.block_path(2)
    if damage == "flipped bytes":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        reason = "does not match its checksum"
    elif damage == "no checksum":  # killed between the checksum and the block: never trusted
        path.with_suffix(".sha256").unlink()
        reason = "no readable checksum"
    else:  # a whole, checksummed block of 3 rows where 2 belong
        blocks.save(2, _features(3), np.ones(3, bool), [""] * 3)
        reason = "holds 3 rows, expected 2"
    again = BlockDir(blocks.dir.parent / "x.h5", "key", 10, block_rows=4)
    assert again.done() == [0]
    err = capsys.readouterr().err
    assert f"discarding resume block {path} ({reason}" in err
    assert not path.exists() and not path.with_suffix(".sha256").exists()


def test_a_block_that_cannot_be_written_is_a_store_error_naming_it(blocks, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_blocks, "write_atomic", full)
    with pytest.raises(StoreError, match=r"cannot write .*block-000001.npz: No space left on "
                                         r"device \(finished blocks are kept for a resume\)"):
        blocks.save(1, _features(4), np.ones(4, bool), [""] * 4)
    assert blocks.done() == [0, 2]


def test_remove_deletes_the_folder(blocks):
    blocks.remove()
    assert not blocks.dir.exists()


def test_a_resumed_job_keeps_the_size_it_started_with(tmp_path):
    folder = tmp_path / "job.partial"
    job = {"key": "k", "job": "all", "rows": 100}
    assert resume_unit(folder, job, "block_rows", 16) == 16
    assert json.loads(job_meta(folder).read_text()) == {**job, "block_rows": 16}
    (folder / "block-000000.npz").write_bytes(b"kept")
    assert resume_unit(folder, job, "block_rows", 64) == 16  # another batch size asked for
    assert (folder / "block-000000.npz").exists()


@pytest.mark.parametrize("meta", ["another job", "unreadable"])
def test_a_folder_of_another_job_or_unreadable_is_emptied(tmp_path, capsys, meta):
    folder = tmp_path / "job.partial"
    job = {"key": "k", "job": "all", "rows": 100}
    resume_unit(folder, {**job, "rows": 90}, "block_rows", 16)
    if meta == "unreadable":
        job_meta(folder).write_text("{not json")
    (folder / "block-000000.npz").write_bytes(b"made for the other job")
    assert resume_unit(folder, job, "block_rows", 64) == 64
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json"]
    assert json.loads(job_meta(folder).read_text()) == {**job, "block_rows": 64}
    err = capsys.readouterr().err
    assert ("made for another job (90 rows to extract, 100 now)" if meta == "another job"
            else "meta.json: unreadable") in err
