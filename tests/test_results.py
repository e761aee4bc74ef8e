"""featx.report.results, on what tests/test_report.py leaves out: the files a result is
written to and in which order, a fine-tuning's monitor, repeated splits' summary line and
a gallery longer than it shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import classify_result

from featx.report import results
from featx.report.results import markdown, report_paths, summary_line, write_reports

Y = np.array([0, 1, 2, 0, 1, 2])
SCORES = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1],
                   [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]])  # rows 1, 3 and 5 wrong


def test_report_paths_keep_the_dots_of_the_stem(tmp_path):
    stem = tmp_path / "f17.v2-logreg"
    assert {k: p.name for k, p in report_paths(stem).items()} == {
        "json": "f17.v2-logreg.json", "md": "f17.v2-logreg.md", "html": "f17.v2-logreg.html",
        "confusion": "f17.v2-logreg-confusion.png", "recall": "f17.v2-logreg-recall.png"}
    assert report_paths(stem, monitor=True)["monitor"] == tmp_path / "f17.v2-logreg-monitor.png"
    assert all(p.parent == tmp_path for p in report_paths(stem, monitor=True).values())


def test_the_json_is_written_last(tmp_path, monkeypatch):
    """`featx runs` lists a result once its JSON is there: every other file first."""
    order = []
    write = results.write_atomic
    monkeypatch.setattr(results, "write_atomic",
                        lambda path, data: order.append(Path(path).name) or write(path, data))
    paths = write_reports(classify_result(Y, SCORES, ["a", "b", "c"]), tmp_path / "sub" / "r")
    assert sorted(order) == sorted(p.name for p in paths.values())
    assert order[-1] == "r.json"


def test_a_fine_tuning_gets_its_training_monitor(tmp_path):
    r = classify_result(Y, SCORES, ["a", "b", "c"], classifier="finetune",
                        history=[{"phase": "warmup", "loss": 1.0 / e, "accuracy": e / 4,
                                  "val_loss": 1.1 / e, "val_accuracy": e / 5}
                                 for e in (1, 2, 3)],
                        kept_epochs={"warmup": 3})
    paths = write_reports(r, tmp_path / "tiny-finetune")
    assert paths["monitor"].read_bytes().startswith(b"\x89PNG")
    assert "![training monitor](tiny-finetune-monitor.png)" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["kept_epochs"] == {"warmup": 3}
    plain = write_reports(classify_result(Y, SCORES, ["a", "b", "c"]), tmp_path / "plain")
    assert "monitor" not in plain and not (tmp_path / "plain-monitor.png").exists()


def test_the_summary_line_of_repeated_splits_is_mean_and_sd():
    r = classify_result(Y, SCORES, ["a", "b", "c"], n_test=6, rank1=0.9, rank1_std=0.02,
                        rank5=None, rank5_std=None, repeats={"seeds": [42, 43, 44]})
    line = summary_line("logreg", r)
    assert "rank-1 0.900 ± 0.020  rank-5 n/a  over 3 splits" in line
    assert "first split: C=0.1" in line and "12 train / 6 test" in line


@pytest.mark.parametrize("shown", [3, 2])
def test_a_gallery_longer_than_it_shows_says_how_many_more(shown):
    r = classify_result(Y, SCORES, ["a", "b", "c"], [f"{i}.png" for i in range(6)])
    assert r["n_misclassified"] == 3
    r["misclassified"] = r["misclassified"][:shown]
    text = markdown(r)
    assert "## Misclassified test images (3, worst first)" in text
    gallery = text.split("## Misclassified test images")[1].splitlines()
    assert [line.split(" | ")[0] for line in gallery if line.startswith("| ") and
            ".png" in line] == ["| 3.png", "| 1.png", "| 5.png"][:shown]  # worst first
    assert ("... and 1 more." in text) == (shown == 2)
