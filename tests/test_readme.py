"""The README: at most 200 lines, its links lead to files that exist, and its "From Python"
example runs as written on the real Flowers-17 (against the session's Flowers-17 store, so its
featx.extract is a cache hit) and prints what the README shows. (tests/test_docs.py runs its
quickstart and From Python blocks on a tiny folder with random weights.)"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import traceback

import pytest
from realdata import FLOWERS17, REPO, keras_home_set, needs_shared, seeded_keras_home


def readme_block(marker: str, lang: str = "python") -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```{lang}\n(.*?)```", text, re.S)
    assert found, f"README has no {lang} block marked {marker}"
    return found.group(1)


def test_readme_is_a_way_in_of_at_most_200_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the rest to docs/"
    headings = [line for line in lines if line.startswith("## ")]
    for wanted in ("## Install", "## Two commands", "## Quickstart", "## From Python",
                   "## Documentation"):
        assert any(h.startswith(wanted) for h in headings), (wanted, headings)
    text = "\n".join(lines)
    assert "make docs" in text and "CHANGELOG.md" in text


def test_readme_links_lead_to_files_that_exist():
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10, local  # the docs pages of the "What else" table among them
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


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
    # the README's folder `flowers/` is the real Flowers-17 here
    code = re.sub(r"(?<![\w/])flowers/", f"{FLOWERS17}/", readme_block("from-python"))
    assert str(FLOWERS17) in code
    monkeypatch.setenv("FEATX_CACHE_DIR", flowers17.cache_dir)  # the session's store: a hit
    with keras_home_set(seeded_keras_home(tmp_path / "keras")):
        run = python_here(code)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    classifier, rank1 = lines[0].split()
    assert classifier == "logreg" and float(rank1) > 0.9, lines[0]  # measured: 0.947
    assert lines[1] == "['tulip']"  # a tulip photo (a test image) is called a tulip
    # what the README says it prints, on the same data, split and weights
    assert lines == readme_block("from-python-output", "text").splitlines()
    assert "extracted" not in run.stderr  # every feature came from the cache
