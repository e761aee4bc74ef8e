"""Count the processes that import TensorFlow (``make test-tf-count``).

With this folder on ``PYTHONPATH`` and ``FEATX_TF_COUNT`` naming a file, every Python process
that imports ``tensorflow`` appends a line to that file when the import begins: its pid and
its command line and the test that started it (``PYTEST_CURRENT_TEST``, inherited), each cut
to 200 characters, so a count can be traced to the tests behind it.
Each such process pays TensorFlow's start-up (~5 CPU-seconds) before doing anything else.

A meta-path finder that only looks at the name: it never imports TensorFlow itself, answers
None (the import goes on as usual) and takes itself off ``sys.meta_path`` after the first hit.
Without ``FEATX_TF_COUNT`` nothing is installed. Another ``sitecustomize`` further on the
path (this one shadows it) is still run.
"""

from __future__ import annotations

import os
import sys


class _TensorFlowImports:
    def __init__(self, target: str) -> None:
        self.target = target

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":  # `import tensorflow.x` imports `tensorflow` first
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            try:  # one short O_APPEND write: lines from concurrent processes never mix
                fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    command = " ".join(sys.argv)[:200]
                    test = os.environ.get("PYTEST_CURRENT_TEST", "-")[:200]
                    line = f"{os.getpid()} {command} [{test}]".replace("\n", " ")
                    os.write(fd, f"{line}\n".encode())
                finally:
                    os.close(fd)
            except OSError:  # never break the process being counted (nor write to its stderr)
                pass
        return None

    def invalidate_caches(self) -> None:
        pass


def _run_the_shadowed_one() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    from importlib.util import module_from_spec

    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if os.environ.get("FEATX_TF_COUNT") and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _TensorFlowImports(os.environ["FEATX_TF_COUNT"]))
_run_the_shadowed_one()
