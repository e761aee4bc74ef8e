"""A corpus of awkward and broken files (helpers.make_corpus): each is read correctly or
skipped with its path and reason; nothing crashes and nothing already extracted is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import BROKEN, REPO, featx_command, make_corpus, one_error_line, small_config

from featx.features.extraction import ExtractError, extract
from featx.store.read import FeatureStore

# How the image reader reads each file of the corpus: tests/test_images.py.


def test_broken_files_are_the_corpus_skips(tmp_path):
    expect = make_corpus(tmp_path)
    assert set(BROKEN) == {p for p, o in expect.items() if o == "skip"}


def test_extract_records_every_skip_and_keeps_the_rest(tmp_path):
    expect = make_corpus(tmp_path / "data")
    result = extract(small_config(tmp_path / "data", tmp_path / "cache"), progress=False)
    skipped = dict(result.skipped)
    assert set(skipped) == set(BROKEN) == {p for p, o in expect.items() if o == "skip"}
    for rel, (kind, message) in BROKEN.items():  # "<error type>: <what the decoder said>"
        assert skipped[rel].startswith(f"{kind.__name__}: "), skipped[rel]
        assert message in skipped[rel], skipped[rel]
    with h5py.File(result.path, "r") as f:
        paths = [p.decode() for p in f["paths"][:]]
        ok = f["ok"][:]
        assert sorted(paths) == sorted(expect)
        for path, flag in zip(paths, ok):
            assert flag == (expect[path] == "ok"), path
        assert np.abs(f["features"][:][~ok]).max() == 0  # no garbage in skipped rows
        assert np.abs(f["features"][:][ok]).sum(axis=1).min() > 0
        assert len(f["skipped"]) == len(skipped)
    with FeatureStore(result.path) as store:
        assert dict(store.skipped) == skipped  # the reasons are recorded in the store


def test_strict_turns_skips_into_an_error_naming_the_file(tmp_path):
    expect = make_corpus(tmp_path / "data")
    with pytest.raises(ExtractError) as err:
        extract(small_config(tmp_path / "data", tmp_path / "cache", strict=True), progress=False)
    assert any(p.split("/")[-1] in str(err.value) for p, o in expect.items() if o == "skip")
    assert not list((tmp_path / "cache").glob("*.h5"))  # nothing finished is claimed


def test_cache_folder_that_is_a_file_gives_one_line_error(tmp_path, capsys):
    from featx.cli import main

    make_corpus(tmp_path / "data")
    (tmp_path / "cache").write_text("not a folder")
    code = main(["extract", "--data", str(tmp_path / "data"), "--weights", "none",
                 "--input-size", "32", "--cache-dir", str(tmp_path / "cache" / "sub"),
                 "--no-progress"])
    assert code == 2
    one_error_line(capsys.readouterr().err, tmp_path / "cache" / "sub")


def test_full_disk_gives_one_line_error_and_keeps_blocks(tmp_path, capsys, monkeypatch):
    import errno

    from featx.cli import main
    from featx.store import blocks as store_blocks

    make_corpus(tmp_path / "data")
    real_save = store_blocks.BlockDir.save
    calls = []

    def save_then_fill(self, index, *a):
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.block_path(index)))
        calls.append(index)
        return real_save(self, index, *a)

    monkeypatch.setattr(store_blocks.BlockDir, "save", save_then_fill)
    args = ["extract", "--data", str(tmp_path / "data"), "--weights", "none", "--input-size",
            "32", "--batch-size", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(args) == 2
    (partial,) = (tmp_path / "cache").glob("*.partial")
    line = one_error_line(capsys.readouterr().err, partial / "block-000001.npz")
    assert "No space left on device" in line
    assert len(list((tmp_path / "cache").glob("*.partial/block-*.npz"))) == 1
    monkeypatch.setattr(store_blocks.BlockDir, "save", real_save)
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err


def _as_nobody(command: list[str]) -> list[str]:
    """``command`` as an unprivileged user: root (as the suite runs in CI) writes anywhere."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


@pytest.fixture
def open_tmp():
    """A temporary folder that any user may enter (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="featx-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_cache_folder_without_write_permission_gives_one_line_error(open_tmp):
    data, cache, home = open_tmp / "data", open_tmp / "cache", open_tmp / "home"
    make_corpus(data)
    for folder in (data, *data.rglob("*")):
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    cache.mkdir(mode=0o555)
    cache.chmod(0o555)  # readable, not writable (mkdir's mode is masked by the umask)
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    env = dict(os.environ, HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("FEATX_CACHE_DIR", None)
    probe = subprocess.run(_as_nobody(featx_command("--help")), cwd=REPO, env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"featx does not run as an unprivileged user here: {probe.stderr[-500:]}")
    done = subprocess.run(_as_nobody(featx_command(
        "extract", "--data", data, "--weights", "none", "--input-size", "32",
        "--cache-dir", cache, "--no-progress")), cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr, str(cache))  # the cache folder, named
    assert "Permission denied" in line
    assert done.stdout == "" and list(cache.iterdir()) == []


