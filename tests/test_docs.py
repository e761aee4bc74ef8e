"""The documentation runs as written and cannot drift from the code.

- The tutorial's commands and code (docs/tutorial.md) and the README's quickstart and From
  Python blocks run, in order, on a tiny folder of generated images, and each prints lines
  of the form the page shows.
- The reference pages docs/hooks.py generates name every command, flag and pipeline field,
  each field with its meaning; the site builds with ``mkdocs build --strict``.

What the tests change between a page and what they run, and nothing else (substitute,
TEST_FLAGS, PYTHON_KEYWORDS): the pages name a folder ``flowers/`` of real photographs, the
default cache ``data/cache/`` and the pipeline file ``flowers.toml`` that ``featx init
flowers/`` writes into the current folder; the tests give ``<tmp>/flowers/``, 17 classes
named as Flowers-17's of 6 generated JPEGs each (and every image the page names), a cache in
``<tmp>/cache/`` ($FEATX_CACHE_DIR) and ``<tmp>/flowers.toml``, and ask for random weights at
32 px (no download).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from helpers import REPO, featx_here

# Flags appended to the commands that build a backbone: random weights at 32 px, a low layer
# (24 features: logistic regression on the 1,280 of the last layer, random and separable on
# ~70 images, takes minutes to converge), small batches (so that the rate is timed), one
# grid-search process, no progress bar. featx init writes where the page's command would,
# in the tests' folder instead of the repository (the commands run from the repository root).
BACKBONE = ["--weights", "none", "--input-size", "32", "--layer", "block_2_add"]
TEST_FLAGS = {
    "extract": [*BACKBONE, "--batch-size", "8", "--no-progress"],
    "classify": [*BACKBONE, "--n-jobs", "1", "--no-progress"],
    "init": ["-o", "flowers.toml"],
}
# The same for the Python API: keyword arguments put first in these calls.
PYTHON_KEYWORDS = 'weights="none", input_size=32, layer="block_2_add", batch_size=8, n_jobs=1, '
PYTHON_CALLS = ("featx.extract(", "featx.classify(")
FLOWERS17_CLASSES = ["bluebell", "buttercup", "coltsfoot", "cowslip", "crocus", "daffodil",
                     "daisy", "dandelion", "fritillary", "iris", "lilyvalley", "pansy",
                     "snowdrop", "sunflower", "tigerlily", "tulip", "windflower"]


def load_hooks():
    """docs/hooks.py, the MkDocs hook that generates the reference pages."""
    if "featx_docs_hooks" not in sys.modules:  # (its dataclass needs its module registered)
        spec = importlib.util.spec_from_file_location("featx_docs_hooks",
                                                      REPO / "docs" / "hooks.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["featx_docs_hooks"]


# --- running a page -----------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    kind: str  # "command" or "python"
    text: str  # the command line, or the code
    expected: list[str]  # lines of output the page shows for it
    where: str  # for failure messages


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", text, re.S | re.M)]


def steps_of(text: str, where: str) -> list[Step]:
    """The featx commands of the ``console`` and ``bash`` blocks (in console blocks, lines
    after a command are its output) and the ``python`` blocks, each with the ``text`` block
    right after it as its output."""
    steps: list[Step] = []
    blocks = fenced_blocks(text)
    for i, (lang, body) in enumerate(blocks):
        if lang == "python":
            after = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
            expected = after[1].splitlines() if after[0] == "text" else []
            steps.append(Step("python", body, expected, f"{where}, python block {i}"))
        elif lang in ("console", "bash"):
            lines = iter(body.splitlines())
            for line in lines:
                if lang == "console" and not line.startswith("$ "):
                    if steps and steps[-1].kind == "command":
                        steps[-1].expected.append(line)
                    continue
                line = line.removeprefix("$ ")
                while line.rstrip().endswith("\\"):
                    line = line.rstrip()[:-1] + " " + next(lines).strip()
                argv = shlex.split(line, comments=True)
                if argv and argv[0] == "featx":
                    steps.append(Step("command", line, [], f"{where}: {line}"))
                elif lang == "console":  # another program: its output is not checked
                    steps.append(Step("other", line, [], where))
    return [s for s in steps if s.kind != "other"]


def substitute(text: str, tmp: Path) -> str:
    """The tests' folders for the page's: data/cache/ -> <tmp>/cache/, flowers/ ->
    <tmp>/flowers/, flowers.toml (featx init's file) -> <tmp>/flowers.toml."""
    text = text.replace("data/cache/", f"{tmp}/cache/")
    text = re.sub(r"(?<![\w/.-])flowers\.toml\b", f"{tmp}/flowers.toml", text)
    return re.sub(r"(?<![\w/.-])flowers/", f"{tmp}/flowers/", text)


def line_pattern(line: str, seen: dict[str, str]) -> str:
    """A regular expression for the lines of the form of ``line``: its numbers any numbers,
    its class names any class name, runs of spaces any spaces, ``<name>`` any text (the same
    as where the page used ``<name>`` before, ``seen``), the rest as written."""
    classes = "|".join(FLOWERS17_CLASSES)
    token = re.compile(rf"<(\w+)>|\d+(?:[.,]\d+)*|\s+|\b(?:{classes})\b")
    out, pos, named = [], 0, set()
    for m in token.finditer(line):
        out.append(re.escape(line[pos:m.start()]))
        pos = m.end()
        text = m.group(0)
        if m.group(1):
            name = m.group(1)
            if name in seen:
                out.append(re.escape(seen[name]))
            elif name in named:
                out.append(f"(?P={name})")
            else:
                named.add(name)
                out.append(rf"(?P<{name}>\S+?)")
        elif text[0].isdigit():
            out.append(r"\d+(?:[.,]\d+)*")
        elif text.isspace():
            out.append(r"\s+")
        else:
            out.append(rf"(?:{classes})")
    out.append(re.escape(line[pos:]))
    return "".join(out)


def check_output(step: Step, output: str, tmp: Path, seen: dict[str, str]) -> None:
    """Every line the page shows for ``step`` matches a line of ``output``; the values of
    its ``<name>`` placeholders are kept in ``seen`` for the commands after it."""
    actual = [line.rstrip() for line in output.splitlines()]
    for shown in step.expected:
        pattern = line_pattern(substitute(shown.rstrip(), tmp), seen)
        match = next((m for m in (re.fullmatch(pattern, a) for a in actual) if m), None)
        assert match, (f"{step.where}\nshows:   {shown}\nno line of the form; got:\n"
                       + "\n".join(actual))
        seen.update({k: v for k, v in match.groupdict().items() if v is not None})


def run_command(step: Step, tmp: Path, seen: dict[str, str]) -> None:
    argv = [substitute(a, tmp) for a in shlex.split(step.text, comments=True)[1:]]
    for name, value in seen.items():
        argv = [a.replace(f"<{name}>", value) for a in argv]
    argv += [substitute(a, tmp) for a in TEST_FLAGS.get(argv[0], [])]
    done = featx_here(*argv)
    assert done.returncode == 0, f"{step.where}\nfeatx {shlex.join(argv)}\n{done.stderr}"
    check_output(step, done.stdout + "\n" + done.stderr, tmp, seen)


def run_python(step: Step, tmp: Path, namespace: dict) -> None:
    code = step.text
    for call in PYTHON_CALLS:
        code = code.replace(call, call + PYTHON_KEYWORDS)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(tmp), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            exec(compile(code, step.where, "exec"), namespace)
        except Exception:
            pytest.fail(f"{step.where} raised:\n{traceback.format_exc()}\n{err.getvalue()}")
    printed = out.getvalue().splitlines()
    assert len(printed) == len(step.expected), (step.where, printed, step.expected)
    for shown, line in zip(step.expected, printed):  # in order, one line each
        check_output(Step("python", "", [shown], step.where), line, tmp, {})


def run_page(text: str, where: str, tmp: Path) -> list[Step]:
    """Every step of ``text``, in order; returns them (for the tests to check their count)."""
    steps = steps_of(text, where)
    seen: dict[str, str] = {}
    namespace: dict = {"__name__": "__main__"}
    for step in steps:
        if step.kind == "command":
            run_command(step, tmp, seen)
        else:
            run_python(step, tmp, namespace)
    return steps


@pytest.fixture
def flowers(tmp_path, image_file, monkeypatch) -> Path:
    """``<tmp>/flowers/``: Flowers-17's class names, 6 small JPEGs each; the cache in
    ``<tmp>/cache`` ($FEATX_CACHE_DIR)."""
    for k, name in enumerate(FLOWERS17_CLASSES):
        for i in range(6):
            image_file(tmp_path / "flowers" / name / f"image_{80 * k + i + 1:04d}.jpg", "JPEG",
                       size=(48, 40), colour=((37 * k) % 256, (91 * k) % 256, (53 * i) % 256),
                       seed=10 * k + i)
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "flowers"


def add_named_images(text: str, flowers: Path, image_file) -> None:
    """The images the page names (``flowers/tulip/image_0561.jpg``) exist in the tiny folder."""
    for name, file in set(re.findall(r"flowers/(\w+)/(image_\d+\.jpg)", text)):
        image_file(flowers / name / file, "JPEG", size=(48, 40), seed=int(file[6:10]))


def section(text: str, heading: str) -> str:
    """The README's section under ``## heading...``, up to the next ``## ``."""
    found = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found, f"README has no section '## {heading}'"
    return found.group(1)


# --- the pages' commands and code ---------------------------------------------------------

@pytest.mark.slow
def test_tutorial_runs_as_written(flowers, image_file):
    text = (REPO / "docs" / "tutorial.md").read_text()
    add_named_images(text, flowers, image_file)
    steps = run_page(text, "docs/tutorial.md", flowers.parent)
    # extract twice, classify, predict, runs, init, classify -p; one python block
    assert [s.kind for s in steps].count("command") >= 7, [s.text for s in steps]
    assert "featx init flowers/" in [s.text for s in steps]
    # featx init's file, in the tests' folder (not the repository), read back by classify -p
    assert "root = " in (flowers.parent / "flowers.toml").read_text()
    assert not (REPO / "flowers.toml").exists()
    assert [s.kind for s in steps].count("python") >= 1
    assert sum(len(s.expected) for s in steps) >= 10  # the output it shows was checked


@pytest.mark.slow
def test_readme_quickstart_and_python_run_as_written(flowers, image_file):
    text = (REPO / "README.md").read_text()
    page = section(text, "Quickstart") + section(text, "From Python")
    add_named_images(page, flowers, image_file)
    steps = run_page(page, "README.md", flowers.parent)
    commands = [s.text for s in steps if s.kind == "command"]
    assert commands[:2] == ["featx extract --data flowers/", "featx classify --data flowers/"]
    assert any("-p pipelines/" in c for c in commands)  # saved settings
    (python,) = [s for s in steps if s.kind == "python"]
    for name in ("featx.extract(", "store.split(", "featx.classify(", "featx.load_model("):
        assert name in python.text
    assert python.expected, "the From Python block shows what it prints"


def test_page_runner_checks_the_form_of_the_output(tmp_path):
    """The checks above can fail: a line of another form, a placeholder that changed."""
    step = Step("command", "featx x", ["featx: cache hit: data/cache/s-<key>.h5 (1360 rows)"],
                "here")
    seen: dict[str, str] = {}
    check_output(step, f"featx: cache hit: {tmp_path}/cache/s-abc1.h5 (24 rows)", tmp_path, seen)
    assert seen == {"key": "abc1"}
    with pytest.raises(AssertionError, match="no line of the form"):
        check_output(step, f"featx: cache hit: {tmp_path}/cache/s-ffff.h5 (24 rows)",
                     tmp_path, seen)  # another key than before
    with pytest.raises(AssertionError, match="no line of the form"):
        check_output(Step("command", "", ["logreg  rank-1 0.947"], "here"),
                     "logreg  rank-1 n/a", tmp_path, {})
    # featx init's file goes where the tests' folders are; other pipeline files stay
    assert substitute("featx classify -p flowers.toml -p pipelines/flowers17.toml", tmp_path) \
        == f"featx classify -p {tmp_path}/flowers.toml -p pipelines/flowers17.toml"
    found = steps_of("```console\n$ featx a \\\n  --b c\nout 1\n$ ls\nx\n```\n"
                     "```python\nprint(1)\n```\n```text\n1\n```\n", "p")
    assert [(s.kind, s.text, s.expected) for s in found] == [
        ("command", "featx a  --b c", ["out 1"]), ("python", "print(1)\n", ["1"])]


# --- the generated reference --------------------------------------------------------------

def all_commands(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from all_commands(sub)


def test_cli_reference_names_every_command_and_flag():
    from featx.cli import build_parser

    page = load_hooks().cli_page()
    commands = list(all_commands(build_parser()))
    assert any(p.prog == "featx cache ls" for p in commands)  # nested subcommands walked
    for parser in commands:
        assert re.search(rf"^## {re.escape(parser.prog)} \{{#", page, re.M), parser.prog
        body = page.split(f"## {parser.prog} {{#", 1)[1].split("\n## ", 1)[0]
        assert f"usage: {parser.prog}" in body
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in body or f", {flag}" in body, (parser.prog, flag)


def config_fields() -> list[str]:
    from featx.core.config import Config

    config, out = Config(), []
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            out += [f"{spec.name}.{f.name}" for f in dataclasses.fields(value)]
        else:
            out.append(spec.name)
    return out


def test_pipeline_reference_names_every_field_with_its_meaning():
    page = load_hooks().pipeline_page()
    fields = config_fields()
    assert "finetune.refit" in fields and "cache_dir" in fields
    for dotted in fields:
        rows = [r for r in page.splitlines() if r.startswith(f"| `{dotted}` |")]
        assert len(rows) == 1, dotted
        cells = [c.strip() for c in rows[0].strip("|").split(" | ")]
        field, type_, default, allowed, flag, meaning = cells
        assert type_ and default, rows[0]
        assert len(meaning) > 3, f"{dotted} has no meaning: {rows[0]}"
    assert "| `backbone.pooling` | `str` | `\"avg\"` | one of `\"avg\"`, `\"max\"`" in page
    assert "| `--pooling` |" in page  # the flag that sets it


def test_field_meanings_are_the_comments_beside_or_above_each_field():
    hooks = load_hooks()
    source = ("class A:\n"
              "    x: int = 1  # beside\n"
              "    # above, line one\n"
              "    # line two\n"
              "    y: list[str] = field(\n"
              "        default_factory=list)  # and beside\n"
              "    # a comment with a blank line after it\n\n"
              "    z: str = ''\n")
    assert hooks.source_comments(source) == {
        "A": {"x": "beside", "y": "above, line one line two and beside", "z": ""}}


def test_store_layout_and_api_pages_come_from_the_code():
    import ast

    import featx

    hooks = load_hooks()
    for relative, page in (("featx/store/__init__.py", hooks.store_page()),
                           ("featx/core/layout.py", hooks.layout_page())):
        doc = ast.get_docstring(ast.parse((REPO / relative).read_text()))
        assert hooks.rst_to_markdown(doc) in page, relative
    assert "features     float32 (N, ...)" in hooks.store_page()
    api = hooks.api_page()
    for name in featx.__all__:
        if name != "__version__":
            assert re.search(rf"^::: featx\.[\w.]+\.{name}$", api, re.M), name
    assert "featx.api.extract" in api and "featx.features.transformer.FeatureExtractor" in api


def test_how_to_pages_missing_from_the_nav_are_added_to_it(tmp_path):
    (tmp_path / "how-to").mkdir()
    (tmp_path / "how-to" / "listed.md").write_text("# Listed\n")
    (tmp_path / "how-to" / "new-page.md").write_text("Intro\n# A new page\n")
    nav = [{"Home": "index.md"}, {"How-to guides": [{"Listed": "how-to/listed.md"}]}]
    config = load_hooks().on_config({"nav": nav, "docs_dir": str(tmp_path)})
    assert config["nav"][1] == {"How-to guides": [{"Listed": "how-to/listed.md"},
                                                  {"A new page": "how-to/new-page.md"}]}
    assert config["nav"][0] == {"Home": "index.md"}


# --- the site -----------------------------------------------------------------------------

def test_docs_site_builds_strict_with_the_generated_reference(tmp_path):  # 5-10 s
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed "
                            "(pip install -e '.[docs]')")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    hooks = load_hooks()
    assert not [u for u in hooks.PAGES if (REPO / "docs" / u).exists()], \
        "a generated page is never a file in docs/"
    cli = (site / "reference" / "cli.html").read_text()
    from featx.cli import build_parser

    for parser in all_commands(build_parser()):
        assert f'id="{hooks._anchor(parser.prog)}"' in cli, parser.prog
    pipeline = (site / "reference" / "pipeline.html").read_text()
    for dotted in config_fields():
        assert f"<code>{dotted}</code>" in pipeline, dotted
    assert "3. Extract the features" in (site / "tutorial.html").read_text()
    for page in ("index", "reference/python-api", "reference/store", "benchmarks/accuracy",
                 "how-to/own-images", "changelog"):
        assert (site / f"{page}.html").is_file(), page
    for page in site.rglob("*.html"):  # the pages fetch nothing: no fonts, scripts, styles
        fetched = re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="(https?://[^"]*)"',
                             page.read_text())
        assert not fetched, (page.relative_to(site), fetched)


def test_every_make_target_the_docs_give_args_passes_them_on():
    """`make X ARGS="..."` in the README, the docs, the benchmarks or the Makefile's own
    comments: target X's recipe hands $(ARGS) to its command (`make bench` dropped them,
    so `make bench ARGS="--only int8"` ran the whole benchmark)."""
    makefile = (REPO / "Makefile").read_text()
    recipes = dict(re.findall(r"^([a-z][\w-]*):[^\n=]*\n((?:\t[^\n]*\n)+)", makefile, re.M))
    texts = [REPO / "README.md", REPO / "Makefile", *(REPO / "docs").rglob("*.md"),
             *(REPO / "benchmarks").glob("*.py")]
    named = {m for path in texts for m in re.findall(r"make ([a-z][\w-]*) ARGS=",
                                                     path.read_text())}
    assert {"bench", "bench-scale"} <= named
    dropped = sorted(t for t in named if "$(ARGS)" not in recipes.get(t, ""))
    assert not dropped, dropped
