"""``featx runs``: one table of every classification result (the ``*.json`` that
``write_reports`` writes), to compare backbones, layers, poolings and classifiers."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from featx.errors import RunsError
from featx.escape import spreadsheet_cell

# column -> (header, where in the result JSON); rank and time columns are numbers.
COLUMNS = {
    "dataset": ("dataset", ("dataset",)),
    "backbone": ("backbone", ("backbone", "backbone")),
    "layer": ("layer", ("backbone", "layer")),
    "pooling": ("pooling", ("backbone", "pooling")),
    "classifier": ("classifier", ("classifier",)),
    "pipeline": ("pipeline", ("pipeline",)),
    "rank1": ("rank-1", ("rank1",)),
    "rank5": ("rank-5", ("rank5",)),
    "fit_seconds": ("fit_seconds", ("fit_seconds",)),
}
NUMERIC = {"rank1", "rank5", "fit_seconds"}
# "best first": higher accuracy, shorter fit, names alphabetically
DESCENDING = {"rank1", "rank5"}
REQUIRED = ("classifier", "rank1")  # a JSON without these is not a run result



def find_results(cache_dir: Path, dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Every ``*.json`` in ``<cache_dir>/**/*.runs/`` and under each of ``dirs`` (a folder,
    searched recursively, or a JSON file), each once."""
    found: list[Path] = []
    if Path(cache_dir).is_dir():
        found += sorted(p for p in Path(cache_dir).glob("**/*.runs/*.json") if p.is_file())
    for d in map(Path, dirs):
        if d.is_file():
            found.append(d)
        elif d.is_dir():
            found += sorted(p for p in d.rglob("*.json") if p.is_file())
        else:
            raise RunsError(f"no such folder or file: {d}")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def load_runs(paths: Iterable[Path],
              warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
              ) -> list[dict[str, Any]]:
    """One row per result file (the COLUMNS plus ``path``); anything that is not a readable
    result is skipped with a warning."""
    rows = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            warn(f"featx: warning: {path}: not readable JSON ({e})")
            continue
        if not isinstance(data, dict) or any(k not in data for k in REQUIRED):
            warn(f"featx: warning: {path}: not a run result (no {' or '.join(REQUIRED)})")
            continue
        row = {"path": str(path)}
        for column, (_, keys) in COLUMNS.items():
            value: Any = data
            for k in keys:
                value = value.get(k) if isinstance(value, dict) else None
            if column in NUMERIC and not isinstance(value, (int, float)):
                value = None
            row[column] = value
        rows.append(row)
    return rows


def sort_runs(rows: list[dict[str, Any]], column: str = "rank1") -> list[dict[str, Any]]:
    """Best first by ``column`` (a key of COLUMNS or its header); rows without a value go
    last."""
    column = {h: c for c, (h, _) in COLUMNS.items()}.get(column, column)
    if column not in COLUMNS:
        raise RunsError(f"cannot sort by {column!r}; columns: {', '.join(COLUMNS)}")
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]
    key = (lambda r: r[column]) if column in NUMERIC else (lambda r: str(r[column]).lower())
    return sorted(present, key=key, reverse=column in DESCENDING) + missing


def filter_runs(rows: list[dict[str, Any]], dataset: str | None) -> list[dict[str, Any]]:
    return rows if dataset is None else [r for r in rows if r["dataset"] == dataset]


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("rank1", "rank5"):
        return f"{value:.3f}"
    if column == "fit_seconds":
        return f"{value:.1f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table, columns aligned (numbers to the right)."""
    cells = [[_cell(c, r[c]) for c in COLUMNS] for r in rows]
    headers = [h for h, _ in COLUMNS.values()]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if c in NUMERIC else v.ljust(w)
                         for c, v, w in zip(COLUMNS, values, widths)).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The same rows as CSV, with full-precision numbers and the result file's path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, "path"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()
