"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def assert_close(actual, expected, rtol: float = 1e-4) -> None:
    """Features equal relative to their scale. Random-weight features are tiny (~1e-12), so
    an absolute tolerance would pass anything, zeros or rows in the wrong order included."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0, "expected features are all zero: the comparison would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@contextlib.contextmanager
def result_lines() -> Iterator[list[str]]:
    """The lines featx logs to featx.core.log.RESULTS inside the block (what the command line
    prints on stdout: classify's summary lines, sweep's table), collected in a list."""
    from featx.core.log import RESULTS

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    RESULTS.addHandler(handler)
    try:
        yield lines
    finally:
        RESULTS.removeHandler(handler)


def one_error_line(err: str, path: str | os.PathLike | None = None) -> str:
    """The only non-blank line of ``err``: a ``featx: error:`` line (no traceback, no
    warnings before it), naming ``path`` exactly where one is given."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("featx: error:"), lines[0]
    if path is not None:
        assert str(path) in lines[0], (str(path), lines[0])
    return lines[0]


def featx_command(*args: str | os.PathLike) -> list[str]:
    """``featx ARGS`` as a fresh process running this checkout's code (run it with
    ``cwd=REPO``: ``-m`` puts the working folder first on the path)."""
    return [sys.executable, "-m", "featx.cli", *map(str, args)]


def featx_here(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    """``featx ARGS`` run in this process (``featx.cli.main``) from the repository root, its
    exit status and output as ``subprocess.run`` of a fresh process gives them, without the
    ~5 CPU-seconds of a fresh interpreter importing TensorFlow. Use a fresh process only
    where that is what is tested: a kill or a crash, a signal, another user, start-up or
    import-time behaviour."""
    from featx.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors (2), --help (0)
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
    return subprocess.CompletedProcess(["featx", *argv], code, out.getvalue(), err.getvalue())


def tiny_args(root: str | os.PathLike, cache: str | os.PathLike, *more: str) -> list[str]:
    """The command-line twin of conftest.tiny_config: random-weight MobileNetV2 at 32 px,
    batches of 8, no progress bar."""
    return ["--data", str(root), "--cache-dir", str(cache), "--backbone", "MobileNetV2",
            "--weights", "none", "--input-size", "32", "--batch-size", "8", "--no-progress",
            *more]
