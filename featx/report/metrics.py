"""What a classifier's predictions score: rank-k, per-class recall, confusions, the
mistakes worth looking at, and the summary of repeated splits."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, top_k_accuracy_score

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
    confusion = confusion_matrix(y_true, predicted, labels=np.arange(len(label_names)))
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
        "per_class": class_scores(confusion, label_names),
        "confusion": confusion.tolist(),
        "confused_pairs": pairs,
        **errors,
    }


def class_scores(confusion: Any, label_names: list[str]) -> dict[str, dict[str, Any]]:
    """Per class (rows of ``confusion``, shape (C, C), true x predicted): precision, recall,
    F1 (0 where undefined) and support (its test images)."""
    m = np.asarray(confusion, dtype=np.int64)
    tp, support, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * tp, support + predicted)  # 2tp / (2tp + fp + fn)
    return {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                   "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)}


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


SCORES = ("rank1", "rank5")  # a mean over repeated splits, with its sd
CLASSES = ("confusion", "per_class", "confused_pairs")  # summed over repeated splits
FIRST = ("best_params", "cv_score", "fit_seconds", "misclassified", "model")  # split 1's


def seeds_text(seeds: list[int]) -> str:
    """``seeds`` for a label: "seed 42", "seeds 42-46" (consecutive), "seeds 3, 9, 4"."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def scope(seeds: list[int]) -> dict[str, str]:
    """What each part of a result shows, by its key: the one split, the mean ± sd over the
    splits, the sum over them, or the first split (whose model is the one saved)."""
    if len(seeds) == 1:
        one = f"one split ({seeds_text(seeds)})"
        return {k: one for k in (*SCORES, *CLASSES, *FIRST)} | {"n_test": one}
    r, over = len(seeds), f"{len(seeds)} splits ({seeds_text(seeds)})"
    first = f"split 1 of {r} ({seeds_text(seeds[:1])})"
    return ({k: f"mean ± sd over {over}" for k in SCORES}
            | {k: f"summed over {over}" for k in CLASSES}
            | {k: first for k in FIRST} | {"n_test": f"each of the {r} splits"})


def one_split(result: dict[str, Any], seed: int) -> dict[str, Any]:
    """What a result of one split adds to say so: ``splits`` 1, ``per_split`` (its one
    row, as :func:`repeat_summary` gives one per split) and ``scope``."""
    return {"splits": 1, "per_split": [_split_row(1, seed, result)], "scope": scope([seed])}


def _split_row(i: int, seed: int, r: dict[str, Any]) -> dict[str, Any]:
    return {"split": i, "seed": seed, "rank1": r["rank1"], "rank5": r["rank5"],
            "n_test": r["n_test"], "best_params": r.get("best_params"),
            "cv_score": r.get("cv_score")}


def repeat_summary(seeds: list[int], results: list[dict[str, Any]]) -> dict[str, Any]:
    """What R repeated splits (``classify.repeats``; ``results`` in ``seeds`` order, each
    :func:`evaluate`'s keys and best_params/cv_score) say together, to merge over the first
    split's result.

    Returns
    -------
    dict
        ``rank1``/``rank5``: the mean over the splits, ``rank1_std``/``rank5_std`` their
        standard deviation (ddof 1; None where rank-5 does not apply); ``repeats``: the
        seeds and each split's rank-1/rank-5 lists (as before); ``splits``: R;
        ``per_split``: one row per split (split, seed, rank1, rank5, n_test, best_params,
        cv_score); ``confusion`` (C, C) summed over the splits and ``per_class`` and
        ``confused_pairs`` from that sum (examples: each split's own, first split first);
        ``scope``: what each key shows (:func:`scope`).
    """
    out: dict[str, Any] = {"repeats": {"seeds": list(seeds)}}
    for k in SCORES:
        values = [r[k] for r in results]
        out["repeats"][k] = values
        if any(v is None for v in values):
            out[k], out[f"{k}_std"] = None, None
        else:
            out[k] = float(np.mean(values))
            out[f"{k}_std"] = float(np.std(values, ddof=1))
    names = list(results[0]["per_class"])
    confusion = np.sum([np.asarray(r["confusion"], dtype=np.int64) for r in results], axis=0)
    pairs = confused_pairs(confusion, names)
    for pair in pairs:
        cell = (pair["true_index"], pair["predicted_index"])
        found = [e for r in results for p in r.get("confused_pairs", [])
                 if (p["true_index"], p["predicted_index"]) == cell
                 for e in p.get("examples", [])]
        if found:
            pair["examples"] = list(dict.fromkeys(found))[:N_EXAMPLES]
    return {**out, "splits": len(seeds),
            "per_split": [_split_row(i, s, r)
                          for i, (s, r) in enumerate(zip(seeds, results), start=1)],
            "confusion": confusion.tolist(), "per_class": class_scores(confusion, names),
            "confused_pairs": pairs, "scope": scope(seeds)}
