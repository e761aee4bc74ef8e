"""Quiet by default: featx's own lines on the command line, warnings only as a library, and
none of TensorFlow's start-up lines unless asked (-v)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from featx.cli import main
from featx.store import warn

REPO = Path(__file__).resolve().parents[1]
TF_LINES = ("oneDNN custom operations", "cuda drivers", "cuInit", "absl::InitializeLog")


def test_library_shows_warnings_not_progress(capsys):
    log = logging.getLogger("featx.extraction")
    log.info("resuming: 1 of 2 blocks")
    warn("a block was damaged")
    err = capsys.readouterr().err
    assert "resuming" not in err and "featx: warning: a block was damaged" in err


def test_command_line_shows_progress_lines_unless_quiet(tiny_store, capsys, tmp_path):
    args = ["extract", "--data", str(tiny_store.root), "--cache-dir", str(tmp_path),
            "--weights", "none", "--input-size", "32", "--batch-size", "8", "--no-progress"]
    logging.getLogger("featx.extraction").info("before main: not shown")
    main(args)
    assert "resuming" not in capsys.readouterr().err
    logging.getLogger("featx.x").info("after main: the library level is back")
    assert capsys.readouterr().err == ""
    assert main(["-q", "classify", *args[1:]]) == 0
    assert "results in" not in capsys.readouterr().err
    assert main(["classify", *args[1:]]) == 0
    assert "featx: results in" in capsys.readouterr().err


@pytest.mark.slow
def test_no_tensorflow_start_up_lines_unless_verbose(tiny_store, tmp_path):
    def run(*flags):
        return subprocess.run(
            [sys.executable, "-m", "featx.cli", *flags, "extract", "--data",
             str(tiny_store.root), "--cache-dir", str(tmp_path / flags[0] if flags else tmp_path),
             "--weights", "none", "--input-size", "32", "--no-progress"],
            cwd=REPO, capture_output=True, text=True, timeout=300)

    quiet = run()
    assert quiet.returncode == 0 and "featx: extracted" in quiet.stdout
    assert not [line for line in quiet.stderr.splitlines() if any(t in line for t in TF_LINES)]
    verbose = run("-v")
    assert verbose.returncode == 0
    assert any(t in verbose.stderr for t in TF_LINES)  # the lines exist; -v shows them
