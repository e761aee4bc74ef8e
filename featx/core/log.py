"""featx's messages go through ``logging`` (logger ``featx``), never straight to stderr.

One handler, on the ``featx`` logger, writes them to the stderr of the moment as
``featx: ...`` lines (``featx: warning: ...`` from warnings up). Used as a library, featx
shows warnings only, and its progress lines during a call of featx.api with ``progress``
(the default); the command line shows its progress lines too (``-q``: warnings only,
``-v``: debug lines and TensorFlow's own start-up lines). What a command outputs is logged
to :data:`RESULTS`, which the command line prints on stdout. Reconfigure it as any logger:
``logging.getLogger("featx")``.

Every command runs inside :func:`console`: TensorFlow imported without its start-up lines
(whoever imports it first: featx, Keras, an augmentation) and the libraries featx uses
(MLflow, Ray, absl, h5py, ...) at warnings only, unless ``-v``. Counts in messages go
through :func:`plural` ("1 image", "2 images").
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys
from collections.abc import Iterator, Sequence
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


def _quiet() -> bool:
    return HANDLER.level > logging.DEBUG


def import_tensorflow() -> Any:
    """``tensorflow``, imported (and its devices found) without its start-up lines unless
    featx's messages are at debug level (``featx -v``)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with _stderr_fd_silenced() if _quiet() else contextlib.nullcontext():
        import tensorflow as tf

        tf.config.list_physical_devices()  # where cuInit complains on a machine with no GPU
    return tf


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` with ``word`` in the form the count takes: "1 image", "0 images", "3 images";
    ``words`` where the plural is not ``word + "s"`` (``plural(n, "entry", "entries")``)."""
    return f"{n} {word if n == 1 else words or word + 's'}"


# Loggers of the libraries featx uses that log INFO lines of their own (MLflow's run URLs,
# alembic's migrations, Ray's start-up, absl, TensorFlow's Python side): warnings only on
# the command line unless -v. Several set their level when imported (mlflow, ray), so the
# level is set again after such an import (_QuietImports).
THIRD_PARTY = ("absl", "alembic", "h5py", "keras", "matplotlib", "mlflow", "numexpr",
               "openvino", "PIL", "ray", "skops", "sqlalchemy", "tensorflow", "urllib3")


class _Retracing(logging.Filter):
    """TensorFlow's warning that a function was traced again (fine-tuning's last, smaller
    batch of each epoch does it on a small dataset): about featx's code, nothing a user can
    act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "tf.function retracing" not in str(record.msg)


RETRACING = _Retracing()


class _QuietImports(importlib.abc.MetaPathFinder):
    """While installed (:func:`console`), the first import of tensorflow, from wherever it
    comes, runs as :func:`import_tensorflow` runs it; a library of :data:`THIRD_PARTY`
    that sets its loggers' levels on import has them set back to ``level`` afterwards."""

    def __init__(self, level: int, loggers: Sequence[str]) -> None:
        self.level, self.loggers = level, tuple(loggers)
        self.saved: dict[str, int] = {}  # logger -> its level as set by others, for the exit
        self.applied: dict[str, int] = {}  # logger -> the level set here

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        top = name in self.loggers or name == "tensorflow"
        if not top or name in sys.modules:
            return None
        for finder in sys.meta_path:  # the spec the other finders give, its loader wrapped
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, self, name)
                return spec
        return None

    def set_levels(self) -> None:
        for name in self.loggers:
            logger = logging.getLogger(name)
            if logger.level != self.applied.get(name):  # set by its library since
                self.saved[name] = logger.level
            logger.setLevel(max(self.level, logger.level))
            self.applied[name] = logger.level

    def restore(self) -> None:
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)


class _Loader(importlib.abc.Loader):
    """A module's own loader, its execution wrapped (see :class:`_QuietImports`)."""

    def __init__(self, loader: Any, imports: _QuietImports, name: str) -> None:
        self.loader, self.imports, self.name = loader, imports, name

    def __getattr__(self, attribute: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self.loader, attribute)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module sees its own
        if self.name == "tensorflow" and _quiet():
            with _stderr_fd_silenced():
                self.loader.exec_module(module)
                module.config.list_physical_devices()  # cuInit's complaint, as in extract
        else:
            self.loader.exec_module(module)
        if self.name in self.imports.loggers:
            self.imports.set_levels()


@contextlib.contextmanager
def console(level: int) -> Iterator[None]:
    """A command's messages: featx's from ``level`` up; below debug level (no ``-v``)
    TensorFlow's start-up lines silenced (its C++ logging from warnings up, the lines it
    writes before that logging starts, from whichever import loads it first, and its
    retracing warnings) and the :data:`THIRD_PARTY` loggers at warnings. Everything is as it
    was after the block."""
    previous = set_level(level)
    imports = None
    env = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if _quiet():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        imports = _QuietImports(logging.WARNING, THIRD_PARTY)
        imports.set_levels()  # those already imported (and those not yet, until they set theirs)
        sys.meta_path.insert(0, imports)
        logging.getLogger("tensorflow").addFilter(RETRACING)
    try:
        yield
    finally:
        if imports is not None:
            sys.meta_path.remove(imports)
            imports.restore()
            logging.getLogger("tensorflow").removeFilter(RETRACING)
        if env is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        set_level(previous)


@contextlib.contextmanager
def said_once(logger: logging.Logger) -> Iterator[None]:
    """Inside the block, each message of ``logger`` once (a learner's warning about its grid
    is the same for every split of ``--repeats`` and every layer of a sweep)."""
    seen: set[str] = set()

    def first(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        new = message not in seen
        seen.add(message)
        return new

    logger.addFilter(first)
    try:
        yield
    finally:
        logger.removeFilter(first)
