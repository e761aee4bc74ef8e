"""``featx runs``: one table of every classification result (the ``*.json`` that
``write_reports`` writes, one run folder per ``featx classify``), to compare backbones,
layers, poolings, classifiers and classify settings; the best rank-1 of each dataset
marked. A run is named by its folder (its id: start time and settings hash), by the name
given to ``featx classify --name``, or as ``latest``, ``latest~1``, ...: see :func:`resolve`."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.errors import ResultsError, UsageError
from featx.core.escape import spreadsheet_cell, terminal
from featx.core.log import plural

log = logging.getLogger(__name__)

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
    # when and with which classify settings (recorded since featx 0.2.0)
    "started": ("started", ("started",)),
    "quick": ("quick", ("classify", "quick")),
    "class_weight": ("class_weight", ("classify", "class_weight")),
    "cv": ("cv", ("classify", "cv")),
    "train_features": ("train_features", ("classify", "train_features")),
    "test_features": ("test_features", ("classify", "test_features")),
    # classify.repeats: the standard deviation of rank-1 and its value on each split
    "rank1_std": ("rank-1 sd", ("rank1_std",)),
    "splits": ("rank-1 by split", ("repeats", "rank1")),
    # which run: the name given to it (featx classify --name) and its folder's name
    "name": ("name", ("classify", "run_name")),
    "run": ("run", ("run",)),
}
NUMERIC = {"rank1", "rank5", "fit_seconds", "cv"}
# "best first": higher accuracy, shorter fit, newest, names alphabetically
DESCENDING = {"rank1", "rank5", "started"}
REQUIRED = ("classifier", "rank1")  # a JSON without these is not a run result
# `featx runs` without --wide: what tells runs apart and compares them, in WIDTH columns
BRIEF = {"started": "when", "run": "run", "dataset": "dataset", "backbone": "backbone",
         "classifier": "classifier", "rank1": "rank-1", "fit_seconds": "fit s"}
WIDTH = 100
# a run folder's name: <UTC start>-<settings hash>[-<n>]; the part after the start is its
# short id
RUN_ID = re.compile(r"\d{8}-\d{6}-(?P<short>.+)")
LATEST = re.compile(r"latest(?:~(?P<back>\d+))?")


def find_results(cache_dir: Path, dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Every ``*.json`` under ``<cache_dir>/**/*.runs/`` (run folders, or results written
    flat before featx 0.2.0) and under each of ``dirs`` (a folder, searched recursively, or a
    JSON file), each once."""
    found: list[Path] = []
    if Path(cache_dir).is_dir():
        found += sorted(p for p in Path(cache_dir).glob("**/*.runs/**/*.json") if p.is_file())
    for d in map(Path, dirs):
        if d.is_file():
            found.append(d)
        elif d.is_dir():
            found += sorted(p for p in d.rglob("*.json") if p.is_file())
        else:
            raise UsageError(f"no such folder or file: {d}")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def load_runs(paths: Iterable[Path],
              warn: Callable[[str], None] = log.warning
              ) -> list[dict[str, Any]]:
    """One row per result file (the COLUMNS plus ``path``); anything that is not a readable
    result is skipped with a warning."""
    rows = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            warn(f"{path}: not readable JSON ({e})")
            continue
        if not isinstance(data, dict) or any(k not in data for k in REQUIRED):
            warn(f"{path}: not a run result (no {' or '.join(REQUIRED)})")
            continue
        row = {"path": str(path)}
        for column, (_, keys) in COLUMNS.items():
            value: Any = data
            for k in keys:
                value = value.get(k) if isinstance(value, dict) else None
            if column in NUMERIC and not isinstance(value, (int, float)):
                value = None
            if column == "name" and not value:  # "": no name given
                value = None
            row[column] = value
        rows.append(row)
    return rows


def _column(name: str, doing: str) -> str:
    # a key of COLUMNS, or its header
    column = {h: c for c, (h, _) in COLUMNS.items()}.get(name, name)
    if column not in COLUMNS:
        raise UsageError(f"cannot {doing} {name!r}; columns: {', '.join(COLUMNS)}")
    return column


def sort_runs(rows: list[dict[str, Any]], column: str = "rank1") -> list[dict[str, Any]]:
    """Best first by ``column`` (a key of COLUMNS or its header); rows without a value go
    last."""
    column = _column(column, "sort by")
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]
    key = (lambda r: r[column]) if column in NUMERIC else (lambda r: str(r[column]).lower())
    return sorted(present, key=key, reverse=column in DESCENDING) + missing


def filter_runs(rows: list[dict[str, Any]], dataset: str | None = None,
                where: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The rows of ``dataset`` (None: every dataset) matching every ``column=value`` of
    ``where``: the value as the table prints it or as recorded (``quick=yes``,
    ``quick=true``, ``class_weight=balanced``, ``cv=3``), case-insensitively."""
    tests = []
    for condition in where:
        name, eq, wanted = condition.partition("=")
        if not eq:
            raise UsageError(f"--where {condition!r} is not of the form column=value")
        tests.append((_column(name.strip().lower(), "filter on"), wanted.strip().lower()))
    if dataset is not None:
        tests.append(("dataset", dataset.lower()))
    return [r for r in rows
            if all(wanted in {_cell(c, r[c]).lower(), str(r[c]).lower()} for c, wanted in tests)]


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the newest run (the run folder with the latest ``started``)."""
    dated = [r for r in rows if r["started"]]
    if not dated:
        return []
    newest = Path(max(dated, key=lambda r: r["started"])["path"]).parent
    return [r for r in rows if Path(r["path"]).parent == newest]


def mark_best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``best`` on the row with the highest rank-1 of each dataset (the first of equals)."""
    best: dict[Any, dict[str, Any]] = {}
    for r in rows:
        r["best"] = False
        if r["rank1"] is not None and (r["dataset"] not in best
                                       or r["rank1"] > best[r["dataset"]]["rank1"]):
            best[r["dataset"]] = r
    for r in best.values():
        r["best"] = True
    return rows


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in ("rank1", "rank5", "rank1_std"):
        return f"{value:.3f}"
    if column == "splits":
        return "/".join(f"{v:.3f}" for v in value)
    if column == "fit_seconds":
        return f"{value:.1f}"
    if column == "started":  # ISO time, to the second
        return str(value)[:19].replace("T", " ")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column == "class_weight" and value == "":
        return "none"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for a terminal (control characters in names escaped), columns
    aligned (numbers to the right); ``best`` last, on the best rank-1 of each dataset (see
    :func:`mark_best`)."""
    columns = [*COLUMNS, "best"]
    cells = [[terminal(_cell(c, r[c])) for c in COLUMNS] + ["best" if r.get("best") else ""]
             for r in rows]
    headers = [h for h, _ in COLUMNS.values()] + ["best"]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if c in NUMERIC else v.ljust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut in the middle (``resnet…_out``): the
    start and the end of a name are what tell names apart."""
    if len(text) <= width:
        return text
    if width < 3:
        return text[:width]
    head = width // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def short_id(run: str | None) -> str | None:
    """The short id of a run folder's name: its settings hash (and ``-<n>``), the part
    after the start time (which the ``when`` column shows)."""
    if not run:
        return None
    m = RUN_ID.fullmatch(run)
    return m["short"] if m else run


def brief_cells(row: dict[str, Any]) -> dict[str, str]:
    """A row's cells in the columns of :data:`BRIEF` (and ``best``), unshortened: start time
    to the minute, the run's name or else its short id, rank-1 with its standard deviation
    over repeated splits where there is one."""
    rank1 = _cell("rank1", row["rank1"])
    if row.get("rank1_std") is not None:
        rank1 += f" ± {row['rank1_std']:.3f}"
    return {"started": _cell("started", row["started"])[:16], "run":
            row.get("name") or short_id(row.get("run")) or "-",
            **{c: _cell(c, row[c]) for c in ("dataset", "backbone", "classifier")},
            "rank1": rank1, "fit_seconds": _cell("fit_seconds", row["fit_seconds"]),
            "best": "best" if row.get("best") else ""}


def brief_table(rows: list[dict[str, Any]], width: int = WIDTH) -> str:
    """The table ``featx runs`` prints: the columns of :data:`BRIEF` and ``best``, in at most
    ``width`` characters a line. Names too long for it are cut in the middle (the longest
    first); numbers never are."""
    columns = [*BRIEF, "best"]
    headers = [*BRIEF.values(), "best"]
    cells = [[terminal(c) for c in brief_cells(r).values()] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    texts = [i for i, c in enumerate(columns) if c in ("run", "dataset", "backbone",
                                                        "classifier")]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        i = max(texts, key=lambda i: widths[i])
        if widths[i] <= max(len(headers[i]), 5):
            break
        widths[i] -= 1
    right = {"rank1", "fit_seconds"}

    def line(values: list[str]) -> str:
        return "  ".join(shorten(v, w).rjust(w) if c in right else shorten(v, w).ljust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def collect(cache_dir: str | Path, dirs: Iterable[str | Path] = (), dataset: str | None = None,
            where: Iterable[str] = (), newest: bool = False,
            sort: str = "rank1") -> list[dict[str, Any]]:
    """What ``featx runs`` lists: the results found (:func:`find_results`), those of
    ``dataset`` matching ``where`` (:func:`filter_runs`), with ``newest`` those of the newest
    run only, the best of each dataset marked, sorted by ``sort``."""
    rows = filter_runs(load_runs(find_results(Path(cache_dir), dirs)), dataset, where)
    if newest:
        rows = latest(rows)
    return sort_runs(mark_best(rows), sort)


def _run_key(row: dict[str, Any]) -> str:
    # a run: its folder; a result written flat (before featx 0.2.0, no run recorded): itself
    return str(Path(row["path"]).parent) if row.get("run") else row["path"]


def count_runs(rows: list[dict[str, Any]]) -> int:
    """How many runs ``rows`` (results) come from."""
    return len({_run_key(r) for r in rows})


def run_folders(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of ``rows`` that recorded their folder, newest first: for each, ``id`` (its
    folder's name), ``name`` (or None), ``started``, ``dataset`` and ``folder`` (Path)."""
    found: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("run"):
            found.setdefault(_run_key(r), {"id": r["run"], "name": r.get("name"),
                                           "started": r["started"], "dataset": r["dataset"],
                                           "folder": Path(r["path"]).parent})
    return sorted(found.values(), key=lambda f: str(f["started"] or ""), reverse=True)


def _listed(found: list[dict[str, Any]], most: int = 6) -> str:
    """Runs as one line: ``name (id)`` or ``id``, newest first, at most ``most`` of them."""
    names = [terminal(f"{f['name']} ({f['id']})" if f["name"] else f["id"])
             for f in found[:most]]
    more = f" and {len(found) - most} more" if len(found) > most else ""
    return (", ".join(names) or "none") + more


def resolve(reference: str | Path, rows: list[dict[str, Any]]) -> Path:
    """The run folder (or result file) that ``reference`` names, looked for in this order: a
    folder or file that exists; ``latest`` (the newest run of ``rows``) or ``latest~N`` (the
    N-th before it); the name of one run (``featx classify --name``); a unique prefix of a
    run's id (its folder's name) or of its short id (:func:`short_id`). Anything else, or a
    name or prefix that several runs share, is a UsageError listing the candidates."""
    text = str(reference)
    if not text.strip():
        raise UsageError("an empty run reference: give a run folder, a name, an id, or latest")
    if Path(text).exists():
        return Path(text)
    found = run_folders(rows)
    m = LATEST.fullmatch(text)
    if m:
        back = int(m["back"] or 0)
        dated = [f for f in found if f["started"]]
        if back >= len(dated):
            raise UsageError(f"no run {text}: {plural(len(dated), 'run')} listed "
                             f"({_listed(dated)})")
        return dated[back]["folder"]
    matches = [f for f in found if f["name"] == text] or [
        f for f in found if f["id"].startswith(text) or short_id(f["id"]).startswith(text)]
    if len(matches) == 1:
        return matches[0]["folder"]
    if matches:
        raise UsageError(f"run {terminal(text)!r} is ambiguous: {plural(len(matches), 'run')} "
                         f"match ({_listed(matches)}); give more of the id")
    raise UsageError(f"no run {terminal(text)!r} (no such folder or file, run name or id); "
                     f"runs listed: {_listed(found)}")


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The same rows as CSV, with full-precision numbers and the result file's path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, "best", "path"],
                            lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: spreadsheet_cell(v) for k, v in {"best": False, **r}.items()}
                     for r in rows)
    return buffer.getvalue()


def _repeated(target: str | Path) -> dict[str, dict[str, Any]]:
    """classifier -> its result with ``repeats``, from a run folder or a result file."""
    target = Path(target)
    if not target.exists():
        raise UsageError(f"no such folder or file: {target}")
    out = {}
    for path in [target] if target.is_file() else sorted(target.rglob("*.json")):
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and result.get("repeats") and "classifier" in result:
            out[result["classifier"]] = result
    if not out:
        raise ResultsError(f"{target}: no result made with classify.repeats > 1 (featx classify "
                        "--repeats R)")
    return out


def compare(a: str | Path, b: str | Path, metric: str = "rank1") -> list[dict[str, Any]]:
    """Paired comparison of two repeated runs: for every classifier in both, the splits
    (seeds) they share, the mean of ``metric``(A) - ``metric``(B) over them and its standard
    error (standard deviation of the differences, ddof 1, over sqrt(n)). Pairing removes the
    split-to-split spread both runs share, which is most of it. Two single results (e.g. two
    result files) are paired whatever their learners: an ensemble against a logreg."""
    runs_a, runs_b = _repeated(a), _repeated(b)
    pairs = [(name, runs_a[name], runs_b[name]) for name in sorted(runs_a.keys() & runs_b.keys())]
    if not pairs and len(runs_a) == len(runs_b) == 1:  # two results: whatever their learners
        (na, ra), (nb, rb) = *runs_a.items(), *runs_b.items()
        pairs = [(f"{na} vs {nb}", ra, rb)]
    rows = []
    for name, result_a, result_b in pairs:
        ra, rb = result_a["repeats"], result_b["repeats"]
        va, vb = dict(zip(ra["seeds"], ra[metric])), dict(zip(rb["seeds"], rb[metric]))
        seeds = sorted(va.keys() & vb.keys())
        if not seeds or any(va[s] is None or vb[s] is None for s in seeds):
            continue
        diff = np.asarray([va[s] - vb[s] for s in seeds])
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        rows.append({"classifier": name, "splits": len(seeds),
                     "a": float(np.mean([va[s] for s in seeds])),
                     "b": float(np.mean([vb[s] for s in seeds])),
                     "difference": float(diff.mean()), "standard_error": se})
    if not rows:
        raise ResultsError(f"{a} and {b} share no classifier and split (seed) to compare")
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    names = [terminal(r["classifier"]) for r in rows]
    w = max(12, *(len(n) for n in names))
    lines = [f"{'classifier':<{w}} {'splits':>6} {'A':>7} {'B':>7} {'A - B':>8} {'s.e.':>7}"]
    for name, r in zip(names, rows):
        lines.append(f"{name:<{w}} {r['splits']:>6} {r['a']:>7.4f} {r['b']:>7.4f} "
                     f"{r['difference']:>+8.4f} {r['standard_error']:>7.4f}")
    return "\n".join(lines)
