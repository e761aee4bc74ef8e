"""Quiet by default: featx's own lines on the command line, warnings only as a library, and
none of TensorFlow's start-up lines unless asked (-v)."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import featx
from featx.cli import main
from featx.learn.classification import classify
from featx.store.blocks import warn

REPO = Path(__file__).resolve().parents[1]
TF_LINES = ("oneDNN custom operations", "cuda drivers", "cuInit", "absl::InitializeLog")


def test_library_shows_warnings_not_progress(capsys):
    log = logging.getLogger("featx.features.extraction")
    log.info("resuming: 1 of 2 blocks")
    warn("a block was damaged")
    err = capsys.readouterr().err
    assert "resuming" not in err and "featx: warning: a block was damaged" in err


def test_command_line_shows_progress_lines_unless_quiet(tiny_store, capsys, tmp_path):
    args = ["extract", "--data", str(tiny_store.root), "--cache-dir", str(tmp_path),
            "--weights", "none", "--input-size", "32", "--batch-size", "8", "--no-progress"]
    logging.getLogger("featx.features.extraction").info("before main: not shown")
    main(args)
    assert "resuming" not in capsys.readouterr().err
    logging.getLogger("featx.x").info("after main: the library level is back")
    assert capsys.readouterr().err == ""
    assert main(["-q", "classify", *args[1:]]) == 0
    quiet = capsys.readouterr()
    assert "results in" not in quiet.err
    assert [line.split()[:2] for line in quiet.out.splitlines()] == [  # -q: the output stays
        ["logreg", "rank-1"], ["linear_svm", "rank-1"]]
    assert main(["classify", *args[1:]]) == 0
    shown = capsys.readouterr()
    assert "featx: results in" in shown.err
    assert "rank-1" in shown.out and "rank-1" not in shown.err  # the output once, on stdout


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


def test_only_the_command_line_prints():
    # the library returns its results and logs its lines: no print, no echo=print, no stdout
    found = []
    for path in (REPO / "featx").rglob("*.py"):
        if path.relative_to(REPO / "featx").as_posix() == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print" \
                    or isinstance(node, ast.arg) and node.arg == "echo" \
                    or isinstance(node, ast.Attribute) and node.attr == "stdout" \
                    and getattr(node.value, "id", "") == "sys":
                found.append(f"{path.name}:{node.lineno}")
    assert not found


def test_a_classify_run_prints_nothing(tiny_store, make_config, tmp_path, capsys):
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path),
                         classify={"classifiers": ["logreg"]})
    classify(config, tiny_store.path)
    library = capsys.readouterr()
    assert library.out == "" and library.err == ""  # as a library: warnings only
    (result,) = featx.classify(config, store=tiny_store.path)
    api = capsys.readouterr()  # the API shows its progress lines on stderr by default
    assert api.out == ""
    (line,) = [x for x in api.err.splitlines() if x.startswith("featx: logreg ")]
    assert f"rank-1 {result.rank1:.3f}" in line and "featx: results in" in api.err
    featx.classify(config, store=tiny_store.path, progress=False)
    assert capsys.readouterr() == ("", "")
