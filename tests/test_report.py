"""Metrics and reports on small cases worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featx.report import evaluate, markdown, rank_k, summary_line, write_reports

CLASSES3 = np.array([0, 1, 2])
# true class:         0                 1                 2                 0
Y3 = np.array([0, 1, 2, 0])
SCORES3 = np.array([
    [0.6, 0.3, 0.1],  # true 0 ranked 1st
    [0.2, 0.7, 0.1],  # true 1 ranked 1st
    [0.5, 0.3, 0.2],  # true 2 ranked 3rd
    [0.3, 0.5, 0.2],  # true 0 ranked 2nd
])


@pytest.mark.parametrize("k, expected", [(1, 0.5), (2, 0.75), (3, 1.0)])
def test_rank_k_by_hand(k, expected):
    assert rank_k(Y3, SCORES3, CLASSES3, k) == pytest.approx(expected)


@pytest.mark.parametrize("k", [5, 100])
def test_k_larger_than_the_number_of_classes_counts_every_row(k):
    assert rank_k(Y3, SCORES3, CLASSES3, k) == pytest.approx(1.0)


BINARY_Y = np.array([0, 1, 1, 0])
P1 = np.array([0.2, 0.8, 0.4, 0.6])  # argmax predicts 0, 1, 0, 1: two right


def test_binary_probabilities():
    scores = np.column_stack([1 - P1, P1])
    assert rank_k(BINARY_Y, scores, np.array([0, 1]), 1) == pytest.approx(0.5)
    assert rank_k(BINARY_Y, scores, np.array([0, 1]), 5) == pytest.approx(1.0)


@pytest.mark.parametrize("case", ["margins", "unnormalised"])
def test_binary_rank1_is_the_argmax_accuracy(case):
    """Rank-1 counts the rows whose true class has the highest score, whatever the scale:
    class_scores gives a binary LinearSVC's margins as columns (-m, m)."""
    if case == "margins":
        margins = np.array([0.3, 0.8, 0.6, 0.2])  # all positive, all below 1
        y, scores = np.array([1, 1, 1, 1]), np.column_stack([-margins, margins])
    else:
        y, scores = np.array([0, 1, 0]), np.array([[0.9, 0.8], [0.1, 0.3], [2.0, 1.5]])
    expected = float(np.mean(np.argmax(scores, axis=1) == y))
    assert expected == 1.0
    assert rank_k(y, scores, np.array([0, 1]), 1) == pytest.approx(expected)


def test_evaluate_by_hand():
    names = ["ant", "bee", "cow"]
    r = evaluate(Y3, SCORES3, CLASSES3, names)
    assert r["rank1"] == pytest.approx(0.5) and r["rank5"] == pytest.approx(1.0)
    assert r["n_test"] == 4
    # predicted 0, 1, 0, 1 for true 0, 1, 2, 0
    assert r["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    pc = r["per_class"]
    assert list(pc) == names
    assert pc["ant"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert pc["bee"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3,
                                       "support": 1})
    assert pc["cow"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    json.dumps(r)  # plain Python types only: it goes into the JSON report


def test_evaluate_binary_by_hand():
    r = evaluate(BINARY_Y, np.column_stack([1 - P1, P1]), np.array([0, 1]), ["no", "yes"])
    assert r["rank1"] == pytest.approx(0.5) and r["rank5"] == pytest.approx(1.0)
    assert r["confusion"] == [[1, 1], [1, 1]]
    assert r["per_class"]["yes"]["precision"] == pytest.approx(0.5)


def test_rank1_agrees_with_the_confusion_matrix():
    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 7):
        y = rng.integers(0, n_classes, 50)
        scores = rng.normal(size=(50, n_classes))
        r = evaluate(y, scores, np.arange(n_classes), [f"c{i}" for i in range(n_classes)])
        confusion = np.array(r["confusion"])
        assert confusion.sum() == 50
        assert r["rank1"] == pytest.approx(np.trace(confusion) / 50), n_classes


def _result():
    r = evaluate(Y3, SCORES3, CLASSES3, ["ant", "bee", "cow"])
    r.update({"pipeline": "tiny", "classifier": "logreg", "dataset": "animals",
              "store": "/x/y.h5", "key": "abc123", "best_params": {"clf__C": 0.1},
              "cv_score": 0.625, "fit_seconds": 1.25, "n_train": 12,
              "backbone": {"backbone": "MobileNetV2", "weights": "none", "layer": "(last conv)",
                           "pooling": "avg", "input_size": 32}})
    return r


def test_summary_line():
    line = summary_line("logreg", _result())
    assert "logreg" in line and "rank-1 0.500" in line and "rank-5 1.000" in line
    assert "C=0.1" in line and "12 train / 4 test" in line


def test_write_reports(tmp_path):
    result = _result()
    json_path, md_path = write_reports(result, tmp_path / "out" / "tiny-logreg")
    assert json_path.name == "tiny-logreg.json" and md_path.name == "tiny-logreg.md"
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    text = md_path.read_text()
    assert text == markdown(result)
    assert "rank-1 0.500" in text and "rank-5 1.000" in text and "MobileNetV2" in text
    assert all(f"| {name} |" in text for name in ("ant", "bee", "cow"))
