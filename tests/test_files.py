"""featx.core.files: files written whole or not at all, short hashes, checksum listings and
installed versions."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from featx.core.files import (
    atomic_file,
    checksum_problems,
    file_sha256,
    installed_version,
    short_hash,
    write_atomic,
    write_checksums,
)


def test_an_atomic_file_appears_whole_when_the_block_ends(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".result.json.")
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the end
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_an_atomic_file_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_write_atomic_takes_text_and_bytes(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "ünï") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_bytes() == "ünï".encode()
    write_atomic(tmp_path / "a.txt", b"\x00\xff")
    assert (tmp_path / "a.txt").read_bytes() == b"\x00\xff"


def test_short_hash_is_the_start_of_the_sha256(tmp_path):
    digest = hashlib.sha256("ünï".encode()).hexdigest()
    assert short_hash("ünï") == digest[:16] and short_hash("ünï".encode(), 8) == digest[:8]
    path = tmp_path / "big"
    data = np.random.default_rng(0).bytes(3 << 20)  # read in pieces of 1 MiB
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


@pytest.fixture
def folder(tmp_path):
    """Two files and their checksum listing beside them."""
    (tmp_path / "model.xml").write_text("<xml/>")
    (tmp_path / "model.bin").write_bytes(b"\x01\x02")
    write_checksums(tmp_path, tmp_path / "sha256.json")
    return tmp_path


def test_checksums_list_every_file_but_the_listing(folder):
    sums = json.loads((folder / "sha256.json").read_text())
    assert sorted(sums) == ["model.bin", "model.xml"]
    assert sums["model.bin"] == hashlib.sha256(b"\x01\x02").hexdigest()
    assert checksum_problems(folder, folder / "sha256.json", "model.xml") == []


def test_a_changed_or_missing_file_is_a_problem_naming_it(folder):
    (folder / "model.bin").write_bytes(b"\x01\x03")
    (folder / "model.xml").unlink()
    problems = checksum_problems(folder, folder / "sha256.json", "model.xml")
    assert problems[0] == f"{folder / 'model.bin'} does not match the checksum recorded when " \
                          "written"
    assert problems[1].startswith(f"{folder / 'model.xml'}: unreadable (")
    assert len(problems) == 2


@pytest.mark.parametrize("listing", ["missing", "not JSON", "a list", "without the model"])
def test_a_listing_that_cannot_be_read_or_lacks_the_required_file_is_a_problem(folder,
                                                                              listing):
    path = folder / "sha256.json"
    if listing == "missing":
        path.unlink()
    else:
        path.write_text({"not JSON": "{", "a list": "[]",
                         "without the model": '{"model.bin": "0"}'}[listing])
    (problem,) = checksum_problems(folder, path, "model.xml")
    assert problem.startswith(f"{path}: no readable checksums (")


def test_installed_version_is_the_first_distribution_installed():
    assert installed_version("numpy") == np.__version__
    assert installed_version("no-such-distribution-x", "numpy") == np.__version__
    assert installed_version("no-such-distribution-x") is None
    assert installed_version() is None
