"""What a classifier's predictions score: rank-k, per-class recall, confusions, the
mistakes worth looking at, and the summary of repeated splits."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

TOP_PAIRS = 10  # most-confused pairs shown in the reports


N_EXAMPLES = 3  # example test images recorded per confused pair


GALLERY = 100  # misclassified test images recorded (and shown), worst first


def rank_k(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray,
           k: int) -> float | None:
    """Fraction of rows whose true class is among the k highest scores (columns ordered as
    ``classes``). None (not applicable) with k at or above the number of classes: every row
    would count, a 1.000 true by definition that reads as a result."""
    n_classes = scores.shape[1]
    if k >= n_classes:
        return None
    if n_classes == 2:  # scikit-learn would threshold binary scores, not compare columns
        return float(np.mean(classes[np.argmax(scores, axis=1)] == y_true))
    return float(top_k_accuracy_score(y_true, scores, k=k, labels=classes))


def evaluate(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             label_names: list[str], paths: list[str] | None = None) -> dict[str, Any]:
    """Rank-1, rank-5, per-class precision/recall/F1, the confusion matrix and the
    most-confused pairs; with ``paths`` (one per test row) a few example images per pair."""
    predicted = classes[np.argmax(scores, axis=1)]
    labels = np.arange(len(label_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0)
    confusion = confusion_matrix(y_true, predicted, labels=labels)
    pairs = confused_pairs(confusion, label_names)
    if paths is not None:
        if len(paths) != len(y_true):
            raise ValueError(f"{len(paths)} paths for {len(y_true)} test rows")
        for pair in pairs:
            cell = (y_true == pair["true_index"]) & (predicted == pair["predicted_index"])
            pair["examples"] = [str(paths[i]) for i in np.flatnonzero(cell)[:N_EXAMPLES]]
    errors = misclassified(y_true, scores, classes, label_names, paths)
    return {
        "rank1": rank_k(y_true, scores, classes, 1),
        "rank5": rank_k(y_true, scores, classes, 5),
        "n_test": int(len(y_true)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                             "support": int(s)}
                      for name, p, r, f, s in zip(label_names, precision, recall, f1, support)},
        "confusion": confusion.tolist(),
        "confused_pairs": pairs,
        **errors,
    }


def misclassified(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                  label_names: list[str], paths: list[str] | None,
                  cap: int = GALLERY) -> dict[str, Any]:
    """The misclassified test rows, worst first (highest score for the wrong class), at most
    ``cap`` of them.

    Parameters
    ----------
    y_true : ndarray of shape (n,), class indices
    scores : ndarray of shape (n, n_classes), columns in ``classes`` order
    classes : ndarray of shape (n_classes,)
    label_names : list of str, class names by index
    paths : list of n str, or None (then nothing is recorded)

    Returns
    -------
    dict
        ``misclassified``: list of {path, true, predicted, score, true_score} (at most
        ``cap``), ``n_misclassified``: how many in all, ``scores``: "probabilities" or
        "decision values". Empty without ``paths``.
    """
    if paths is None:
        return {}
    best = np.argmax(scores, axis=1)
    true_col = {int(c): j for j, c in enumerate(classes)}
    wrong = np.flatnonzero(classes[best] != y_true)
    top = scores[wrong, best[wrong]]
    order = wrong[np.lexsort((wrong, -top))]  # worst first; ties in row order
    rows = [{"path": str(paths[i]), "true": label_names[int(y_true[i])],
             "predicted": label_names[int(classes[best[i]])],
             "score": float(scores[i, best[i]]),
             "true_score": (float(scores[i, true_col[int(y_true[i])]])
                            if int(y_true[i]) in true_col else None)}
            for i in order[:cap]]
    proba = bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1, atol=1e-3))
    return {"misclassified": rows, "n_misclassified": int(len(wrong)),
            "scores": "probabilities" if proba else "decision values"}


def confused_pairs(confusion: Any, label_names: list[str],
                   top: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The ``top`` off-diagonal cells with the most test images, largest first (ties in
    row-then-column order): true -> predicted, count."""
    m = np.asarray(confusion, dtype=np.int64)
    off = [(int(m[t, p]), t, p) for t in range(len(m)) for p in range(len(m))
           if t != p and m[t, p] > 0]
    off.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": label_names[t], "predicted": label_names[p], "count": n,
             "true_index": t, "predicted_index": p} for n, t, p in off[:top]]


def repeat_summary(seeds: list[int], results: list[dict[str, Any]]) -> dict[str, Any]:
    """rank-1/rank-5 of repeated splits (``classify.repeats``) as the mean and standard
    deviation (ddof 1) over the splits, and each split's seed and scores under ``repeats``."""
    out: dict[str, Any] = {"repeats": {"seeds": list(seeds)}}
    for k in ("rank1", "rank5"):
        values = [r[k] for r in results]
        out["repeats"][k] = values
        if any(v is None for v in values):
            out[k], out[f"{k}_std"] = None, None
        else:
            out[k] = float(np.mean(values))
            out[f"{k}_std"] = float(np.std(values, ddof=1))
    return out
