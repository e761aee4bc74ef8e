"""MkDocs hook: the reference pages, generated from the code at every build (never committed),
so that they cannot drift from it.

- ``reference/cli.md``: every command and subcommand of ``featx.cli.build_parser()``;
- ``reference/pipeline.md``: every field of the pipeline (the dataclasses of
  featx/core/config.py), its meaning read from the comments beside or above it in the source;
- ``reference/store.md`` and ``reference/cache-layout.md``: the docstrings of
  featx/store/__init__.py and featx/core/layout.py (the specification of each);
- ``reference/backbones.md``: ``featx.features.backbones.REGISTRY``;
- ``reference/python-api.md``: mkdocstrings directives for featx.api and ``featx.__all__``;
- ``changelog.md``: CHANGELOG.md.

A field without a comment in featx/core/config.py stops the build (ValueError naming it). A
page of docs/how-to/ missing from mkdocs.yml's nav is added to it (:func:`on_config`). The
page functions need neither MkDocs nor TensorFlow (tests/test_docs.py calls them).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import re
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# --- text helpers -------------------------------------------------------------------------

def _escape(text: str) -> str:
    """Plain text for Markdown (a table cell or a paragraph): what Markdown would read as
    markup (``<...>`` as HTML, ``*`` as emphasis, ``|`` as a cell break) is escaped; code spans
    in backticks are kept as they are."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        part = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = re.sub(r"([\\*_\[\]|])", r"\\\1", part)
    return "".join(parts)


def _code(text: str) -> str:
    """``text`` as an inline code span (in a table cell too: Python-Markdown's tables leave
    a ``|`` inside a code span alone)."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def rst_to_markdown(text: str) -> str:
    """A module docstring (reStructuredText as featx writes it) as Markdown: ``x`` and
    :role:`x` become code spans, and a paragraph ending in ``::`` introduces the indented
    literal block after it (which Markdown reads as code already)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return re.sub(r"::\n", ":\n", text)


def module_docstring(relative: str) -> str:
    """The docstring of a module of this checkout, read without importing it."""
    doc = ast.get_docstring(ast.parse((REPO / relative).read_text()))
    if not doc:
        raise ValueError(f"{relative} has no module docstring")
    return doc


# --- the command line ---------------------------------------------------------------------

def walk_commands(parser: argparse.ArgumentParser, help_text: str | None = None
                  ) -> Iterator[tuple[argparse.ArgumentParser, str | None]]:
    """``parser`` and every subcommand below it, depth first, in the order of ``--help``,
    each with the one-line help its parent gives it."""
    yield parser, help_text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases name the same parser
                    seen.add(id(sub))
                    yield from walk_commands(sub, helps.get(name))


def _anchor(prog: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prog.lower()).strip("-")


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=88)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _flag_default(action: argparse.Action, shorthands: dict[str, str], reads_pipeline: bool
                  ) -> str:
    """What a flag is when it is not given."""
    if isinstance(action, argparse._VersionAction):
        return ""
    if reads_pipeline and action.dest in shorthands and action.default is None:
        # the flag overrides a field of the pipeline the command reads
        field = shorthands[action.dest]
        section = field.split(".")[0] if "." in field else "top-level"
        return f"the pipeline's [{_code(field)}](pipeline.md#{section})"
    if action.default in (None, argparse.SUPPRESS, [], False) or action.nargs == 0:
        return "off" if action.nargs == 0 else ""
    return _code(str(action.default))


def _flag_help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": parser.prog}
    return _escape(text)  # the choices are in the value column


def cli_page() -> str:
    """Markdown of every command's usage, help and flags, from featx.cli.build_parser()."""
    from featx.cli import build_parser
    from featx.core.config import SHORTHANDS

    lines = ["# Command line", "",
             "Generated from `featx.cli.build_parser()` at every build of these pages. Flags "
             "that override a pipeline field default to the pipeline's value: see "
             "[Pipeline fields](pipeline.md). `featx COMMAND --help` prints the same.", ""]
    commands = list(walk_commands(build_parser()))
    lines += ["| command | what it does |", "|---|---|"]
    for parser, help_text in commands[1:]:
        lines.append(f"| [{_code(parser.prog)}](#{_anchor(parser.prog)}) | "
                     f"{_escape(help_text or '')} |")
    lines.append("")
    formatter = argparse.HelpFormatter(prog="featx")
    for parser, help_text in commands:
        lines += [f"## {parser.prog} {{#{_anchor(parser.prog)}}}", ""]
        for text in (help_text, parser.description):
            if text:
                lines += [_escape(text), ""]
        lines += ["```text", _usage(parser), "```", ""]
        rows = []
        reads_pipeline = any(a.dest == "pipeline" for a in parser._actions)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            names = ", ".join(action.option_strings) or (action.metavar or action.dest)
            value = ""
            if action.option_strings and action.nargs != 0:
                value = formatter._format_args(
                    action, formatter._get_default_metavar_for_optional(action))
            default = _flag_default(action, SHORTHANDS, reads_pipeline)
            rows.append(f"| {_code(str(names))} | {_code(value) if value else ''} | "
                        f"{default} | {_flag_help(action, parser)} |")
        if rows:
            lines += ["| flag | value | default | help |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


# --- the pipeline fields ------------------------------------------------------------------

@dataclasses.dataclass
class FieldDoc:
    """One pipeline field as the reference shows it."""

    section: str  # "" for the top-level fields
    name: str
    type: str
    default: Any
    allowed: str
    meaning: str
    flag: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def source_comments(source: str) -> dict[str, dict[str, str]]:
    """The comments of each dataclass field in ``source``: class name -> field name -> the
    comment lines right above the field (no blank line between) and those on its own lines,
    joined into one text."""
    standalone: dict[int, str] = {}
    trailing: dict[int, str] = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            text = tok.string.lstrip("#").strip()
            (standalone if lines[row - 1].lstrip().startswith("#") else trailing)[row] = text
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = out.setdefault(node.name, {})
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, row = [], stmt.lineno - 1
            while row in standalone:
                above.insert(0, standalone[row])
                row -= 1
            beside = [trailing[r] for r in range(stmt.lineno, stmt.end_lineno + 1)
                      if r in trailing]
            fields[stmt.target.id] = " ".join(t for t in above + beside if t)
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _allowed(spec: dataclasses.Field, dotted: str, list_fields: set[str]) -> str:
    meta = spec.metadata
    parts = []
    if "one_of" in meta:
        values = ", ".join(_code(_toml(v)) for v in meta["one_of"])
        is_list = (spec.default_factory is not dataclasses.MISSING
                   and isinstance(spec.default_factory(), list))
        parts.append(f"{'each ' if is_list else ''}one of {values}")
    if "within" in meta:
        low, high = meta["within"]
        parts.append(f"at least {low}" if high is None else f"{low} to {high}")
    if meta.get("file_name"):
        parts.append("a plain file name: no `/`, `\\`, control character, `.` or `..`")
    if dotted in list_fields:
        parts.append("also a TOML list (stored comma-separated)")
    return "; ".join(parts)


def pipeline_fields() -> list[FieldDoc]:
    """Every field of a pipeline, top-level ones first, then each section in declaration
    order. Raises ValueError for a field with no comment in featx/core/config.py."""
    from featx.core import config as config_module

    comments = source_comments((REPO / "featx/core/config.py").read_text())
    flags = {field: "--" + flag.replace("_", "-")
             for flag, field in config_module.SHORTHANDS.items()}
    lists = set(getattr(config_module, "COMMA_LISTS", ()))
    config = config_module.Config()
    top, sections = [], []
    for spec in dataclasses.fields(config):
        if dataclasses.is_dataclass(getattr(config, spec.name)):
            sections.append(spec.name)
        else:
            top.append(("", type(config).__name__, config, spec))
    rows = list(top)
    for section in sections:
        value = getattr(config, section)
        rows += [(section, type(value).__name__, value, spec)
                 for spec in dataclasses.fields(value)]
    out = []
    for section, owner, instance, spec in rows:
        dotted = f"{section}.{spec.name}" if section else spec.name
        meaning = comments.get(owner, {}).get(spec.name, "")
        if not meaning:
            raise ValueError(f"featx/core/config.py: {owner}.{spec.name} ({dotted}) has no "
                             "comment to say what it means: add one beside or above it")
        out.append(FieldDoc(section, spec.name, str(spec.type), getattr(instance, spec.name),
                            _allowed(spec, dotted, lists), meaning, flags.get(dotted, "")))
    return out


def _section_docs() -> dict[str, str]:
    """Each section's class docstring in featx/core/config.py, where it has one (a dataclass
    without one gets its signature as ``__doc__``: not a description)."""
    from featx.core.config import Config

    tree = ast.parse((REPO / "featx/core/config.py").read_text())
    written = {node.name: ast.get_docstring(node) or "" for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef)}
    config = Config()
    return {f.name: written.get(type(getattr(config, f.name)).__name__, "")
            for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))}


def pipeline_page() -> str:
    """Markdown of every pipeline field: section, field, type, default, allowed values, flag
    and meaning."""
    fields = pipeline_fields()
    docs = _section_docs()
    lines = ["# Pipeline fields", "",
             "Generated from the declarations in `featx/core/config.py` (the dataclasses, "
             "their `one_of` / `within` metadata and the comments beside each field) at every "
             "build of these pages.", "",
             "A pipeline is a TOML file (`pipelines/*.toml`). Every field has a default; any "
             "field can be set on the command line with `--set section.field=value` (the value "
             "read as TOML where it can be), or from Python with `set=[\"section.field=value\"]`"
             "; the common ones also have a flag of their own (the *flag* column).", ""]
    for section in dict.fromkeys(f.section for f in fields):
        title = f"[{section}]" if section else "Top level"
        anchor = section or "top-level"
        lines += [f"## {_escape(title)} {{#{anchor}}}", ""]
        doc = " ".join(docs.get(section, "").split())
        if doc:
            lines += [_escape(rst_to_markdown(doc)), ""]
        lines += ["| field | type | default | allowed | flag | meaning |",
                  "|---|---|---|---|---|---|"]
        for f in (f for f in fields if f.section == section):
            lines.append(f"| {_code(f.dotted)} | {_code(f.type)} | {_code(_toml(f.default))} | "
                         f"{f.allowed} | {_code(f.flag) if f.flag else ''} | "
                         f"{_escape(f.meaning)} |")
        lines.append("")
    return "\n".join(lines)


# --- the store, the cache, the Python API, the changelog -----------------------------------

def store_page() -> str:
    return "\n".join([
        "# Feature store format", "",
        "The docstring of `featx/store/__init__.py`, the specification of the store, included "
        "at every build of these pages. How the cache uses it (keys, checks, reuse, resume, "
        "updates): [The feature cache](../explanation/cache.md).", "",
        rst_to_markdown(module_docstring("featx/store/__init__.py")), ""])


def layout_page() -> str:
    return "\n".join([
        "# Cache layout", "",
        "The docstring of `featx/core/layout.py`, where every file and folder name in the "
        "cache folder is made and parsed, included at every build of these pages. The cache "
        "folder is `data/cache/` unless `--cache-dir` (`cache_dir`) or `$FEATX_CACHE_DIR` says "
        "otherwise.", "",
        rst_to_markdown(module_docstring("featx/core/layout.py")), ""])


def backbones_page() -> str:
    """Every backbone featx knows (featx.features.backbones.REGISTRY, what ``featx backbones``
    prints): native input size and preprocessing."""
    from featx.features.backbones import REGISTRY

    lines = ["# Backbones", "",
             "Generated from `featx.features.backbones.REGISTRY` (what `featx backbones` "
             "prints) at every build of these pages. `--backbone NAME` (`backbone.name`) "
             "picks one; `featx layers NAME` lists its layers.", "",
             "Each carries its native input size (`backbone.input_size = 0`; another size from "
             "32 to 1024 pixels works) and its own preprocessing: `caffe` (BGR, the ImageNet "
             "mean subtracted), `tf` (scaled to [-1, 1]), `torch` (scaled to [0, 1], then the "
             "ImageNet mean and standard deviation) or `none` (the model preprocesses inside). "
             "Images are read with Pillow (EXIF rotation applied, alpha composited on white, "
             "JPEGs decoded at a reduced DCT scale when much larger than the input) and "
             "resized to the input size (`backbone.resize`).", "",
             "| backbone | input size | preprocessing | keras.applications module |",
             "|---|---:|---|---|"]
    for spec in REGISTRY.values():
        lines.append(f"| {_code(spec.name)} | {spec.input_size} | {_code(spec.preprocess)} | "
                     f"{_code(spec.module)} |")
    return "\n".join([*lines, ""])


def public_names() -> dict[str, str]:
    """featx's public names (``featx.__all__``) -> the module each is defined in."""
    import featx

    where = getattr(featx, "_PUBLIC", {})
    return {name: where[name] for name in featx.__all__ if name in where}


def api_page() -> str:
    """mkdocstrings directives: featx.api's docstring, then every public name of featx."""
    lines = ["# Python API", "",
             "From the docstrings (mkdocstrings), for `featx.api` and every name in "
             "`featx.__all__`; `import featx` then `featx.NAME`.", "",
             "::: featx.api", "    options:", "      members: false",
             "      show_root_heading: false", ""]
    for name, module in public_names().items():
        lines += [f"::: {module}.{name}", "    options:", "      show_root_heading: true",
                  "      show_root_full_path: false", "      heading_level: 2"]
        lines.append("")
    return "\n".join(lines)


def changelog_page() -> str:
    return (REPO / "CHANGELOG.md").read_text()


PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_page,
    "reference/pipeline.md": pipeline_page,
    "reference/backbones.md": backbones_page,
    "reference/store.md": store_page,
    "reference/cache-layout.md": layout_page,
    "reference/python-api.md": api_page,
    "changelog.md": changelog_page,
}


def _nav_pages(nav) -> Iterator[str]:
    for item in nav or []:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            yield from _nav_pages(value)
        else:
            yield value


def on_config(config):
    """MkDocs: a how-to page under docs/how-to/ that mkdocs.yml's nav does not list yet is
    added at the end of "How-to guides", titled by its first heading (pages written while
    the nav is edited elsewhere are still found; a page elsewhere missing from the nav stays
    a warning, an error under --strict)."""
    listed = set(_nav_pages(config["nav"]))
    section = next((item for item in config["nav"] or [] if isinstance(item, dict)
                    and "How-to guides" in item), None)
    if section is None:
        return config
    for path in sorted((Path(config["docs_dir"]) / "how-to").glob("*.md")):
        uri = f"how-to/{path.name}"
        if uri not in listed:
            title = next((line[2:].strip() for line in path.read_text().splitlines()
                          if line.startswith("# ")), path.stem)
            section["How-to guides"].append({title: uri})
    return config


def on_files(files, config):
    """MkDocs: add the generated pages to the site's files, before the navigation is built."""
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
