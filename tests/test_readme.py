"""The README's "From Python" example runs as written, on the real Flowers-17, against the
session's Flowers-17 store (so its featx.extract is a cache hit)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import traceback

import pytest
from realdata import FLOWERS17, REPO, keras_home_set, needs_shared, seeded_keras_home


def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"README has no block marked {marker}"
    return found.group(1)


def python_here(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` from the repository root, run in this process (whose TensorFlow has
    started already) in a namespace of its own: exit status and output as a fresh process
    gives them (1 and the traceback where it raises)."""
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
        except Exception:
            traceback.print_exc()
            status = 1
    return subprocess.CompletedProcess(["python", "-c", code], status, out.getvalue(),
                                       err.getvalue())


@pytest.mark.slow
@needs_shared
def test_from_python_example_runs(flowers17, tmp_path, monkeypatch):
    code = readme_block("from-python").replace("path/to/flowers17", str(FLOWERS17))
    code = code.replace('cache_dir="data/cache"', f"cache_dir={flowers17.cache_dir!r}")
    monkeypatch.setenv("FEATX_CACHE_DIR", flowers17.cache_dir)  # the session's store: a hit
    with keras_home_set(seeded_keras_home(tmp_path / "keras")):
        run = python_here(code)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    rank1 = float(lines[0].split()[1])
    assert rank1 > 0.9, lines[0]  # Flowers-17, MobileNetV2 features: 0.94-0.95
    assert lines[1].startswith("logreg 0.9")
    assert "('tulip'," in lines[2]  # the top-3 of a tulip photo holds tulip
    assert float(lines[3]) > 0.9  # daffodil vs tulip from cached features
    assert "extracted" not in run.stderr  # every feature came from the cache
