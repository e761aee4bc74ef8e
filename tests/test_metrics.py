"""featx.report.metrics, on what the hand-worked cases of tests/test_report.py leave out:
columns that are not classes 0..C-1, the gallery's cap and ties, and repeated splits."""

from __future__ import annotations

import numpy as np
import pytest

from featx.report.metrics import evaluate, misclassified, rank_k, repeat_summary


def test_rank_k_reads_the_columns_as_the_classifiers_classes():
    """A classifier that saw classes 1, 3 and 4 only: column j scores classes[j]."""
    classes = np.array([1, 3, 4])
    scores = np.array([[0.1, 0.7, 0.2],   # 3 first, 4 second
                       [0.6, 0.1, 0.3],   # 1 first, 4 second
                       [0.2, 0.3, 0.5]])  # 4 first, 3 second
    y = np.array([3, 4, 1])
    assert rank_k(y, scores, classes, 1) == pytest.approx(1 / 3)
    assert rank_k(y, scores, classes, 2) == pytest.approx(2 / 3)
    binary = np.array([[0.2, 0.8], [0.9, 0.1]])  # columns: classes 5 and 7
    assert rank_k(np.array([7, 7]), binary, np.array([5, 7]), 1) == 0.5


def test_the_gallery_is_capped_worst_first_ties_in_row_order():
    y = np.zeros(6, int)
    scores = np.tile([0.1, 0.9], (6, 1))  # every row wrong, all equally sure
    scores[4] = [0.05, 0.95]  # the worst
    got = misclassified(y, scores, np.arange(2), ["a", "b"], [f"{i}.jpg" for i in range(6)],
                        cap=3)
    assert [m["path"] for m in got["misclassified"]] == ["4.jpg", "0.jpg", "1.jpg"]
    assert got["n_misclassified"] == 6  # all of them counted, 3 shown


def test_a_true_class_the_classifier_never_saw_has_no_true_score():
    classes = np.array([0, 2])  # class 1 had no training images
    scores = np.array([[0.3, 0.7], [0.6, 0.4]])
    got = misclassified(np.array([1, 0]), scores, classes, ["a", "b", "c"], ["x.jpg", "y.jpg"])
    assert got["misclassified"] == [{"path": "x.jpg", "true": "b", "predicted": "c",
                                     "score": 0.7, "true_score": None}]
    assert got["n_misclassified"] == 1  # y.jpg is right
    assert misclassified(np.array([1]), scores[:1], classes, ["a", "b", "c"], None) == {}


def _split(seed: int, n_classes: int) -> dict:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), 5)
    scores = rng.normal(size=(len(y), n_classes))
    scores[np.arange(len(y)), y] += 1.0
    return evaluate(y, scores, np.arange(n_classes), [f"c{i}" for i in range(n_classes)])


def test_repeated_splits_are_the_mean_and_sample_sd_of_the_splits():
    results = [_split(seed, 7) for seed in (1, 2, 3)]
    got = repeat_summary([1, 2, 3], results)
    rank1 = [r["rank1"] for r in results]
    assert got["rank1"] == pytest.approx(np.mean(rank1))
    assert got["rank1_std"] == pytest.approx(np.std(rank1, ddof=1))
    assert got["repeats"] == {"seeds": [1, 2, 3], "rank1": rank1,
                              "rank5": [r["rank5"] for r in results]}
    assert len(set(rank1)) > 1  # the splits differ: a standard deviation of 0 proves nothing


def test_rank5_of_three_classes_stays_not_applicable_over_the_splits():
    got = repeat_summary([1, 2], [_split(1, 3), _split(2, 3)])
    assert got["rank5"] is None and got["rank5_std"] is None
    assert got["rank1"] is not None and got["rank1_std"] is not None
