"""``featx runs``: every result JSON found, one table, sorted; bad files are warnings."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from helpers import one_error_line

from featx.cli import main
from featx.core.errors import UsageError
from featx.report.metrics import evaluate
from featx.report.results import write_reports
from featx.report.runs import COLUMNS, find_results, load_runs, sort_runs, table

# (dataset, backbone, layer, pooling, classifier, pipeline, rank1, rank5, fit seconds)
RUNS = [
    ("flowers17", "MobileNetV2", "(last conv)", "avg", "logreg", "f17", 0.947, 1.0, 13.6),
    ("flowers17", "MobileNetV2", "(last conv)", "avg", "linear_svm", "f17", 0.944, 0.994, 10.8),
    ("flowers17", "ResNet50", "conv4_block6_out", "max", "logreg", "f17r", 0.981, 1.0, 40.2),
    ("digits", "MobileNetV2", "(last conv)", "avg", "logreg", "demo", 0.902, 0.99, 2.5),
    ("flowers5", "EfficientNetB0", "top_activation", "flatten", "linear_svm", "f5", 0.75, 0.97,
     1.1),
]


def _result(run) -> dict:
    dataset, backbone, layer, pooling, classifier, pipeline, rank1, rank5, fit = run
    return {"pipeline": pipeline, "classifier": classifier, "dataset": dataset,
            "store": f"/cache/{dataset}.h5", "key": "k" + pipeline, "n_train": 30, "n_test": 10,
            "backbone": {"backbone": backbone, "weights": "imagenet", "layer": layer,
                         "pooling": pooling, "input_size": 224},
            "best_params": {"clf__C": 1.0}, "cv_score": 0.9, "fit_seconds": fit,
            "rank1": rank1, "rank5": rank5, "per_class": {}, "confusion": []}


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache folder with the RUNS' results beside two stores, one in a sub-folder."""
    cache = tmp_path / "cache"
    for i, run in enumerate(RUNS):
        folder = cache / ("nested" if i % 2 else "") / f"store{i % 3}.runs"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{run[5]}-{run[4]}.json").write_text(json.dumps(_result(run)))
    (cache / "store0.h5").write_bytes(b"")  # stores and other files are not results
    (cache / "notes.json").write_text("{}")  # outside *.runs/: not searched by default
    return cache


def _rows(out: str) -> list[list[str]]:
    """The table's cells: columns are two or more spaces apart (a value may hold one)."""
    lines = out.strip().splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [h for h, _ in COLUMNS.values()] + ["best"]
    return [re.split(r"\s{2,}", line) for line in lines[1:]]


def test_every_run_listed_best_rank1_first(cache, capsys):
    assert main(["runs", "--cache-dir", str(cache), "--wide"]) == 0
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    expected = sorted(RUNS, key=lambda r: -r[6])
    assert [(r[0], r[1], r[4], r[5]) for r in rows] == [(r[0], r[1], r[4], r[5])
                                                        for r in expected]
    assert [float(r[6]) for r in rows] == [r[6] for r in expected]
    assert rows[0][:8] == ["flowers17", "ResNet50", "conv4_block6_out", "max", "logreg",
                           "f17r", "0.981", "1.000"]
    assert rows[0][8] == "40.2"
    # the best rank-1 of each dataset, marked in the last column
    assert [(r[0], r[6]) for r in rows if r[-1] == "best"] == [
        ("flowers17", "0.981"), ("digits", "0.902"), ("flowers5", "0.750")]
    # five results written flat (no run folder recorded): each its own run
    assert "warning" not in captured.err and "5 results from 5 runs" in captured.err


@pytest.mark.parametrize("column, index, reverse", [
    ("fit_seconds", 8, False), ("rank5", 7, True), ("backbone", 1, False),
    ("dataset", 0, False), ("pooling", 3, False), ("layer", 2, False),
    ("classifier", 4, False), ("pipeline", 5, False)])
def test_sort_by_any_column(cache, capsys, column, index, reverse):
    assert main(["runs", "--cache-dir", str(cache), "--sort", column, "--wide"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert sorted((r[5], r[4]) for r in rows) == sorted((r[5], r[4]) for r in RUNS)
    key = float if index >= 6 else str.lower
    values = [key(r[index]) for r in rows]
    assert values == sorted((key(str(r[index])) for r in RUNS), reverse=reverse)


def test_sort_accepts_the_header_and_rejects_unknown_columns(cache, capsys):
    assert main(["runs", "--cache-dir", str(cache), "--sort", "rank-5"]) == 0
    capsys.readouterr()
    assert main(["runs", "--cache-dir", str(cache), "--sort", "speed"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "featx: error: cannot sort by 'speed'" in line and "fit_seconds" in line


def test_missing_values_sort_last():
    rows = load_runs([])  # no files: nothing
    assert rows == []
    a, b, c = ({c: None for c in COLUMNS} | {"path": p} for p in "abc")
    a["rank1"], c["rank1"] = 0.5, 0.9
    a["layer"], b["layer"] = "z", "a"
    assert [r["path"] for r in sort_runs([a, b, c])] == ["c", "a", "b"]
    assert [r["path"] for r in sort_runs([a, b, c], "layer")] == ["b", "a", "c"]
    assert "-" in table([b])  # a missing value prints as a dash, not None


def test_dataset_filter_and_csv(cache, capsys):
    assert main(["runs", "--cache-dir", str(cache), "--dataset", "flowers17", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = [r for r in RUNS if r[0] == "flowers17"]
    assert len(rows) == len(expected) == 3
    assert {r["dataset"] for r in rows} == {"flowers17"}
    assert [float(r["rank1"]) for r in rows] == sorted((r[6] for r in expected), reverse=True)
    assert all(Path(r["path"]).is_file() for r in rows)


def test_extra_folders_and_no_duplicates(cache, tmp_path, capsys):
    out = tmp_path / "my-out"
    out.mkdir()
    extra = RUNS[0][:4] + ("logreg", "extra", 0.5, 0.8, 1.0)
    (out / "extra-logreg.json").write_text(json.dumps(_result(extra)))
    found = find_results(cache, [out, cache / "store0.runs"])  # the second is found already
    assert len(found) == len(RUNS) + 1 == len({p.resolve() for p in found})
    assert main(["runs", "--cache-dir", str(cache), str(out), "--wide"]) == 0
    assert len(_rows(capsys.readouterr().out)) == len(RUNS) + 1
    with pytest.raises(UsageError, match="no such folder"):
        find_results(cache, [tmp_path / "missing"])


def test_malformed_and_foreign_json_are_warnings(cache, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "truncated.json").write_text('{"rank1": 0.9, "classifier": ')
    (out / "list.json").write_text("[1, 2]")
    (out / "bench.json").write_text('{"images_per_second": 60}')
    (out / "binary.json").write_bytes(b"\xff\xfe\x00")
    assert main(["runs", "--cache-dir", str(cache), str(out), "--wide"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 4
    for name in ("truncated", "list", "bench", "binary"):
        assert sum(f"{name}.json" in w for w in warnings) == 1, name
    assert len(_rows(captured.out)) == len(RUNS)


def test_empty_cache_is_an_empty_table(tmp_path, capsys):
    assert main(["runs", "--cache-dir", str(tmp_path / "nothing-here"), "--wide"]) == 0
    captured = capsys.readouterr()
    assert _rows(captured.out) == [] and "0 results from 0 runs" in captured.err


def test_reads_what_write_reports_writes(tmp_path, capsys):
    """Three classes: rank-5 is not applicable, a dash in the table (issue 12)."""
    import numpy as np

    y = np.array([0, 1, 2, 0])
    scores = np.eye(3)[[0, 1, 0, 0]]
    result = _result(RUNS[1]) | evaluate(y, scores, np.arange(3), ["a", "b", "c"])
    write_reports(result, tmp_path / "results" / "f17-linear_svm")
    assert main(["runs", "--cache-dir", str(tmp_path / "none"), str(tmp_path / "results"),
                 "--wide"]) == 0
    captured = capsys.readouterr()
    (row,) = _rows(captured.out)
    assert row == ["flowers17", "MobileNetV2", "(last conv)", "avg", "linear_svm", "f17",
                   "0.750", "-", "10.8", *["-"] * 10, "best"]  # no settings, name, run
    assert "warning" not in captured.err


def _settings_run(folder: Path, classifier: str, rank1: float, started: str, quick: bool,
                  class_weight: str = "") -> Path:
    """A result as featx classify writes it since 0.2.0: in a run folder, with its settings."""
    result = _result(("flowers17", "MobileNetV2", "(last conv)", "avg", classifier, "f17",
                      rank1, 0.99, 1.0))
    result.update({"started": started, "run": folder.name,
                   "classify": {"quick": quick, "class_weight": class_weight, "cv": 3,
                                "train_features": "plain", "test_features": "plain"}})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"f17-{classifier}.json"
    path.write_text(json.dumps(result))
    return path


@pytest.fixture
def settings_runs(tmp_path) -> Path:
    """Three runs of one store: a full one, a quick one, a balanced one (the newest)."""
    runs = tmp_path / "cache" / "flowers17-MobileNetV2-avg-0123.runs"
    _settings_run(runs / "20261130-080000-aaaa1111", "logreg", 0.94, "2026-11-30T08:00:00",
                  False)
    _settings_run(runs / "20261130-080000-aaaa1111", "linear_svm", 0.93,
                  "2026-11-30T08:00:00", False)
    _settings_run(runs / "20261130-090000-bbbb2222", "logreg", 0.91, "2026-11-30T09:00:00",
                  True)
    _settings_run(runs / "20261130-100000-cccc3333", "logreg", 0.95, "2026-11-30T10:00:00",
                  False, "balanced")
    return tmp_path / "cache"


def test_settings_columns_and_the_best_run(settings_runs, capsys):
    assert main(["runs", "--cache-dir", str(settings_runs), "--wide"]) == 0
    rows = _rows(capsys.readouterr().out)
    started, quick, weight, cv = (list(COLUMNS).index(c) for c in
                                  ("started", "quick", "class_weight", "cv"))
    assert [(r[4], r[started], r[quick], r[weight], r[cv]) for r in rows] == [
        ("logreg", "2026-11-30 10:00:00", "no", "balanced", "3"),
        ("logreg", "2026-11-30 08:00:00", "no", "none", "3"),
        ("linear_svm", "2026-11-30 08:00:00", "no", "none", "3"),
        ("logreg", "2026-11-30 09:00:00", "yes", "none", "3")]
    assert [r[-1] == "best" for r in rows] == [True, False, False, False]


@pytest.mark.parametrize("where, expected", [
    (["classifier=logreg"], ["0.950", "0.940", "0.910"]),
    (["quick=yes"], ["0.910"]), (["quick=true"], ["0.910"]),
    (["classifier=logreg", "class_weight=none"], ["0.940", "0.910"]),
    (["class-weight=balanced"], []), (["cv=3", "Classifier=LINEAR_SVM"], ["0.930"])])
def test_where_filters(settings_runs, capsys, where, expected):
    args = [a for w in where for a in ("--where", w)]
    code = main(["runs", "--cache-dir", str(settings_runs), "--wide", *args])
    if where == ["class-weight=balanced"]:  # not a column
        assert code == 2
        assert "cannot filter on 'class-weight'" in capsys.readouterr().err
        return
    assert code == 0
    assert [r[6] for r in _rows(capsys.readouterr().out)] == expected


def test_where_needs_an_equals_sign(settings_runs, capsys):
    assert main(["runs", "--cache-dir", str(settings_runs), "--where", "logreg"]) == 2
    assert "column=value" in capsys.readouterr().err


def test_latest_is_the_newest_run(settings_runs, capsys):
    assert main(["runs", "--cache-dir", str(settings_runs), "--latest", "--wide"]) == 0
    captured = capsys.readouterr()
    (row,) = _rows(captured.out)
    assert row[6] == "0.950" and row[-1] == "best"
    assert captured.err.splitlines() == ["1 result from 1 run"]
    # filtered first: the newest run with a linear_svm
    assert main(["runs", "--cache-dir", str(settings_runs), "--latest", "--wide",
                 "--where", "classifier=linear_svm"]) == 0
    assert [r[6] for r in _rows(capsys.readouterr().out)] == ["0.930"]
    assert main(["runs", "--cache-dir", str(settings_runs), "--latest", "--csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["best"] == "True" and "20261130-100000-cccc3333" in row["path"]


# --- runs --compare pairs splits by seed, not by position ------------------------------------

def _repeated(folder: Path, seeds: list[int], rank1: list[float]) -> Path:
    folder.mkdir(parents=True)
    result = {**_result(RUNS[0]), "rank1": float(sum(rank1) / len(rank1)),
              "repeats": {"seeds": seeds, "rank1": rank1, "rank5": [None] * len(seeds)}}
    (folder / "f17-logreg.json").write_text(json.dumps(result))
    return folder


@pytest.mark.parametrize("seeds_b, rank1_b, splits, difference, error", [
    # the same splits listed in another order: the same scores, no difference, no spread
    # (by position the differences would be -0.2, 0.1, 0.1: s.e. 0.1)
    ([44, 42, 43], [0.7, 0.5, 0.6], 3, 0.0, 0.0),
    # two splits shared (43, 44), not the first: differences 0.6 - 0.4 and 0.7 - 0.8
    ([43, 44, 45], [0.4, 0.8, 0.9], 2, 0.05, 0.15),
])
def test_compare_pairs_the_splits_by_seed(tmp_path, capsys, seeds_b, rank1_b, splits,
                                          difference, error):
    from featx.report.runs import compare

    a = _repeated(tmp_path / "a", [42, 43, 44], [0.5, 0.6, 0.7])
    b = _repeated(tmp_path / "b", seeds_b, rank1_b)
    [row] = compare(a, b)
    assert row["splits"] == splits
    assert row["difference"] == pytest.approx(difference, abs=1e-12)
    assert row["standard_error"] == pytest.approx(error, abs=1e-12)
    assert row["a"] - row["b"] == pytest.approx(difference, abs=1e-12)
    assert main(["runs", "--compare", str(a), str(b)]) == 0
    cells = capsys.readouterr().out.strip().splitlines()[1].split()
    assert int(cells[1]) == splits and float(cells[4]) == pytest.approx(difference, abs=1e-4)
    assert float(cells[5]) == pytest.approx(error, abs=1e-4)


# --- the default table fits 100 columns; runs have names, short ids, latest~N ---------------

BRIEF_HEADERS = ["when", "run", "dataset", "backbone", "classifier", "rank-1", "fit s", "best"]


def _run(parent: Path, run: str, started: str, name: str = "", rank1=(0.5, 0.6, 0.7),
         **changes) -> Path:
    """A result of ``featx classify --repeats 3 --name NAME`` in run folder ``run``."""
    folder = parent / run
    folder.mkdir(parents=True)
    result = {**_result(RUNS[0]), "run": run, "started": started, "rank1": sum(rank1) / 3,
              "rank1_std": 0.1, "classify": {"run_name": name, "quick": False},
              "repeats": {"seeds": [42, 43, 44], "rank1": list(rank1),
                          "rank5": [None] * 3}, **changes}
    (folder / f"f17-{result['classifier']}.json").write_text(json.dumps(result))
    return folder


def test_the_default_table_fits_100_columns_cutting_long_names_in_the_middle(tmp_path,
                                                                              capsys):
    runs = tmp_path / "cache" / "s.runs"
    long = {"dataset": "herbarium-2022-fungi-and-lichens-full", "classifier":
            "ensemble(logreg+linear_svm+rbf_svm+knn)",
            "backbone": {"backbone": "EfficientNetV2B0", "layer": "block6a_expand_activation",
                         "pooling": "avg"}}
    _run(runs, "20261130-080000-aaaa1111", "2026-11-30T08:00:00", "first-baseline-with-a-"
         "long-descriptive-name", **long)
    _run(runs, "20261130-090000-bbbb2222", "2026-11-30T09:00:00", rank1=(0.9, 0.9, 0.9))
    assert main(["runs", "--cache-dir", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert max(map(len, lines)) <= 100 and len(lines) == 3
    assert re.split(r"\s{2,}", lines[0]) == BRIEF_HEADERS
    best, named = (re.split(r"\s{2,}", line) for line in lines[1:])
    # the unnamed run shows its short id (the settings hash after the start time)
    assert best == ["2026-11-30 09:00", "bbbb2222", "flowers17", "MobileNetV2", "logreg",
                    "0.900 ± 0.100", "13.6", "best"]
    assert named[0] == "2026-11-30 08:00" and named[5:7] == ["0.600 ± 0.100", "13.6"]
    for cell, whole in zip(named[1:5], ("first-baseline-with-a-long-descriptive-name",
                                        long["dataset"], "EfficientNetV2B0",
                                        long["classifier"])):
        head, _, tail = cell.partition("…")
        assert whole.startswith(head) and whole.endswith(tail) and len(cell) < len(whole) or \
            cell == whole, (cell, whole)
    assert "…" in named[1] and "…" in named[4]  # the longest cut, both ends kept
    assert "2 results from 2 runs" in captured.err
    # --wide: every column, nothing cut
    assert main(["runs", "--cache-dir", str(tmp_path / "cache"), "--wide"]) == 0
    wide = capsys.readouterr().out
    header = re.split(r"\s{2,}", wide.splitlines()[0])
    assert header == [h for h, _ in COLUMNS.values()] + ["best"] and "name" in header
    assert "first-baseline-with-a-long-descriptive-name" in wide and long["classifier"] in wide
    assert "block6a_expand_activation" in wide and max(map(len, wide.splitlines())) > 100


def test_classify_name_is_recorded_and_listed(tiny_store, tmp_path, capsys):
    """featx classify --name: the name in the run's JSON; the same settings keep the same
    settings hash in the folder's name, named or not."""
    out = tmp_path / "out"
    args = ["classify", "--store", str(tiny_store.path), "--data", str(tiny_store.root),
            "--weights", "none", "--input-size", "32", "--classifiers", "logreg", "--quick",
            "--n-jobs", "1", "--out", str(out), "--no-progress"]
    assert main([*args, "--name", "baseline"]) == 0
    (named,) = out.iterdir()
    assert main(args) == 0
    (unnamed,) = set(out.iterdir()) - {named}
    assert named.name.split("-")[2] == unnamed.name.split("-")[2]  # <date>-<time>-<hash>
    record = json.loads((named / "featx-logreg.json").read_text())
    assert record["classify"]["run_name"] == "baseline" and record["run"] == named.name
    assert json.loads((unnamed / "featx-logreg.json").read_text())["classify"]["run_name"] == ""
    capsys.readouterr()
    assert main(["runs", "--cache-dir", str(tmp_path / "none"), str(out), "--sort",
                 "started"]) == 0
    captured = capsys.readouterr()
    shown = [re.split(r"\s{2,}", line)[1] for line in captured.out.splitlines()[1:]]
    assert shown == [unnamed.name.split("-", 2)[2], "baseline"]  # newest first
    assert "2 results from 2 runs" in captured.err
    assert main(["runs", "--cache-dir", str(tmp_path / "none"), str(out), "--where",
                 "name=baseline", "--csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert row["name"] == "baseline" and row["run"] == named.name


@pytest.fixture
def named_runs(tmp_path) -> Path:
    """Three repeated runs of one store, the first and the last with the same settings
    hash: "baseline" (oldest), an unnamed one, "tuned" (newest)."""
    runs = tmp_path / "cache" / "s.runs"
    _run(runs, "20261130-080000-aaaa1111", "2026-11-30T08:00:00", "baseline", (0.5, 0.6, 0.7))
    _run(runs, "20261130-090000-bbbb2222", "2026-11-30T09:00:00", "", (0.4, 0.6, 0.6))
    _run(runs, "20261130-100000-aaaa1111", "2026-11-30T10:00:00", "tuned", (0.6, 0.6, 0.9))
    return tmp_path / "cache"


@pytest.mark.parametrize("a, b, folders, difference", [
    ("baseline", "latest", ("080000-aaaa1111", "100000-aaaa1111"), -0.1),
    ("bbbb", "latest~2", ("090000-bbbb2222", "080000-aaaa1111"), -0.2 / 3),
    ("20261130-10", "latest~1", ("100000-aaaa1111", "090000-bbbb2222"), 0.5 / 3),
    ("tuned", "bbbb2222", ("100000-aaaa1111", "090000-bbbb2222"), 0.5 / 3),
])
def test_compare_takes_names_short_ids_and_latest(named_runs, capsys, a, b, folders,
                                                  difference):
    assert main(["runs", "--cache-dir", str(named_runs), "--compare", a, b]) == 0
    captured = capsys.readouterr()
    cells = captured.out.splitlines()[1].split()
    assert float(cells[4]) == pytest.approx(difference, abs=1e-4)
    (line,) = captured.err.splitlines()
    assert re.fullmatch(rf"1 pair: A = \S+/20261130-{folders[0]}, B = \S+/20261130-"
                        rf"{folders[1]}", line), line


@pytest.mark.parametrize("reference, message, candidates", [
    ("aaaa", "run 'aaaa' is ambiguous: 2 runs match", ["tuned (20261130-100000-aaaa1111)",
                                                       "baseline (20261130-080000-aaaa1111)"]),
    ("2026", "run '2026' is ambiguous: 3 runs match", ["20261130-090000-bbbb2222"]),
    ("nope", "no run 'nope' (no such folder or file, run name or id)",
     ["tuned (20261130-100000-aaaa1111)", "20261130-090000-bbbb2222",
      "baseline (20261130-080000-aaaa1111)"]),
    ("latest~3", "no run latest~3: 3 runs listed", ["baseline (20261130-080000-aaaa1111)"]),
])
def test_an_ambiguous_or_unknown_run_is_one_line_listing_the_candidates(
        named_runs, capsys, reference, message, candidates):
    assert main(["runs", "--cache-dir", str(named_runs), "--compare", "latest",
                 reference]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line and all(c in line for c in candidates), line


def test_latest_counts_among_the_runs_listed(named_runs, capsys):
    """--where narrows the runs that latest~N counts."""
    assert main(["runs", "--cache-dir", str(named_runs), "--where", "name=baseline",
                 "--compare", "latest", "latest"]) == 0
    assert capsys.readouterr().err.count("080000-aaaa1111") == 2
