"""Quiet by default: featx's own lines on the command line, warnings only as a library, and
none of TensorFlow's start-up lines unless asked (-v)."""

from __future__ import annotations

import ast
import logging
import os
import re
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
# the prefixes of TensorFlow's C++ log lines (I0000 00:00:... port.cc:153] ...)
TF_PREFIXES = ("I0000 ", "E0000 ", "W0000 ")


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


@pytest.mark.slow
def test_finetune_shows_no_tensorflow_start_up_lines(tiny_root, tmp_path):
    """Keras imports TensorFlow before featx does in a fine-tuning: its lines are silenced
    all the same (featx.core.log.console, the one place every command starts from)."""
    done = subprocess.run(
        [sys.executable, "-m", "featx.cli", "finetune", "--data", str(tiny_root[0]),
         "--cache-dir", str(tmp_path), "--weights", "none", "--input-size", "32",
         "--set", "finetune.epochs=1", "--set", "finetune.warmup_epochs=1", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})  # a user's
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finetune     rank-1" in done.stdout
    tf = [line for line in done.stderr.splitlines()
          if line.startswith(TF_PREFIXES) or any(t in line for t in TF_LINES)]
    assert not tf, tf
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"featx: results in {next(tmp_path.glob('*-finetune.runs/*'))}/"]


def _fake_library(folder: Path, name: str) -> None:
    """A library that, like MLflow and Ray, gives its logger a handler and the INFO level
    when imported, and logs INFO and WARNING lines when used."""
    (folder / f"{name}.py").write_text(
        "import logging, sys\n"
        f"log = logging.getLogger({name!r})\n"
        "handler = logging.StreamHandler(sys.stderr)\n"
        "handler.setFormatter(logging.Formatter('%(name)s %(levelname)s %(message)s'))\n"
        "log.handlers = [handler]\n"
        "log.setLevel(logging.INFO)\n"
        "log.propagate = False\n"
        "def work():\n"
        "    log.info('connected')\n"
        "    log.warning('disk almost full')\n")


def test_other_libraries_log_warnings_only_unless_verbose(tmp_path, monkeypatch, capsys):
    from featx.core import log

    for name in ("fake_lib_a", "fake_lib_b"):
        _fake_library(tmp_path, name)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(log, "THIRD_PARTY", (*log.THIRD_PARTY, "fake_lib_a", "fake_lib_b"))
    import fake_lib_a  # imported before the command: its level is set when it starts

    with log.console(logging.INFO):
        import fake_lib_b  # imported during the command: set again after its import

        fake_lib_a.work()
        fake_lib_b.work()
    err = capsys.readouterr().err
    assert "connected" not in err
    assert err.count("disk almost full") == 2
    # afterwards each library's logger is as the library set it
    assert logging.getLogger("fake_lib_a").level == logging.INFO
    assert logging.getLogger("fake_lib_b").level == logging.INFO
    with log.console(logging.DEBUG):  # -v: every line
        fake_lib_b.work()
    assert "fake_lib_b INFO connected" in capsys.readouterr().err


def test_plural():
    from featx.core.log import plural

    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert plural(1, "entry", "entries") == "1 entry" and plural(3, "entry", "entries") == \
        "3 entries"


def test_no_message_writes_a_plural_as_s_in_brackets():
    """Counts take their plural form through featx.core.log.plural: no "{n} image(s)" in an
    f-string, no "%d image(s)" in a log call."""
    after_count = re.compile(r"^ [\w -]*[A-Za-z]\(s\)")  # the text right after {n}
    percent = re.compile(r"%[ds] [\w -]*[A-Za-z]\(s\)")
    found = []
    for path in sorted((REPO / "featx").rglob("*.py")):
        where = path.relative_to(REPO / "featx").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                found += [f"{where}:{node.lineno}" for before, text in
                          zip(node.values, node.values[1:])
                          if isinstance(before, ast.FormattedValue)
                          and isinstance(text, ast.Constant) and after_count.match(text.value)]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and percent.search(node.value):
                found.append(f"{where}:{node.lineno}")
    assert found == []


def test_cache_ls_counts_in_the_plural_form(tiny_store, tmp_path):
    import shutil

    from helpers import featx_here

    shutil.copy(tiny_store.path, tmp_path / tiny_store.path.name)
    done = featx_here("cache", "ls", "--cache-dir", tmp_path)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == f"1 entry in {tmp_path}"
    empty = featx_here("cache", "ls", "--cache-dir", tmp_path / "none")
    assert empty.stdout.splitlines()[-1] == f"0 entries in {tmp_path / 'none'}"


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
