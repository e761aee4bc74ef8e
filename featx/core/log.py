"""featx's messages go through ``logging`` (logger ``featx``), never straight to stderr.

One handler, on the ``featx`` logger, writes them to the stderr of the moment as
``featx: ...`` lines (``featx: warning: ...`` from warnings up). Used as a library, featx
shows warnings only, and its progress lines during a call of featx.api with ``progress``
(the default); the command line shows its progress lines too (``-q``: warnings only,
``-v``: debug lines and TensorFlow's own start-up lines). What a command outputs is logged
to :data:`RESULTS`, which the command line prints on stdout. Reconfigure it as any logger:
``logging.getLogger("featx")``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from featx.core.escape import terminal

LOGGER = logging.getLogger("featx")


class _Stderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        prefix = "featx: warning: " if record.levelno >= logging.WARNING else "featx: "
        try:  # names from the data (paths, classes) never drive the terminal
            text = "\n".join(terminal(line) for line in record.getMessage().split("\n"))
            sys.stderr.write(f"{prefix}{text}\n")  # sys.stderr when emitted
        except Exception:  # a closed stream must not break the work that logs
            self.handleError(record)


HANDLER = _Stderr(logging.WARNING)
LOGGER.addHandler(HANDLER)
LOGGER.setLevel(logging.DEBUG)
LOGGER.propagate = False  # one line per message, whatever the root logger does

# What a command outputs (classify's summary lines, sweep's table, fine-tune's result), at
# INFO: the command line prints these bare on stdout (results_to); a library caller sees
# them as featx: lines when it shows featx's progress lines (featx.classify's progress).
RESULTS = logging.getLogger("featx.results")


def set_level(level: int) -> int:
    """Show featx's messages from ``level`` up; returns the level it replaces."""
    old = HANDLER.level
    HANDLER.setLevel(level)
    return old


@contextlib.contextmanager
def shown(level: int) -> Iterator[None]:
    """featx's messages from ``level`` up inside the block (never fewer than already shown:
    a caller's own set_level stays in force)."""
    old = set_level(min(level, HANDLER.level))
    try:
        yield
    finally:
        set_level(old)


@contextlib.contextmanager
def results_to(handler: logging.Handler) -> Iterator[None]:
    """:data:`RESULTS`' lines to ``handler`` only, inside the block (the command line's
    stdout), not as featx: lines on stderr as well."""
    RESULTS.addHandler(handler)
    RESULTS.propagate = False
    try:
        yield
    finally:
        RESULTS.removeHandler(handler)
        RESULTS.propagate = True


@contextlib.contextmanager
def _stderr_fd_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null: what C++ code writes there before TensorFlow's own
    logging starts ignores TF_CPP_MIN_LOG_LEVEL ("oneDNN custom operations are on",
    "Could not find cuda drivers", "failed call to cuInit" on every CPU-only start)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> Any:
    """``tensorflow``, imported (and its devices found) without its start-up lines unless
    featx's messages are at debug level (``featx -v``)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet = HANDLER.level > logging.DEBUG
    with _stderr_fd_silenced() if quiet else contextlib.nullcontext():
        import tensorflow as tf

        tf.config.list_physical_devices()  # where cuInit complains on a machine with no GPU
    return tf
