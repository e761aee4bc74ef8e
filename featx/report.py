"""Evaluation and reports: rank-1/rank-5, per-class scores, confusion matrix, JSON + Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score


def rank_k(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores (columns ordered as
    ``classes``). With k at or above the number of classes every row counts."""
    n_classes = scores.shape[1]
    if k >= n_classes:
        return 1.0
    if n_classes == 2:  # scikit-learn would threshold binary scores, not compare columns
        return float(np.mean(classes[np.argmax(scores, axis=1)] == y_true))
    return float(top_k_accuracy_score(y_true, scores, k=k, labels=classes))


def evaluate(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             label_names: list[str]) -> dict[str, Any]:
    """Rank-1, rank-5, per-class precision/recall/F1 and the confusion matrix."""
    predicted = classes[np.argmax(scores, axis=1)]
    labels = np.arange(len(label_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0)
    return {
        "rank1": rank_k(y_true, scores, classes, 1),
        "rank5": rank_k(y_true, scores, classes, 5),
        "n_test": int(len(y_true)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                             "support": int(s)}
                      for name, p, r, f, s in zip(label_names, precision, recall, f1, support)},
        "confusion": confusion_matrix(y_true, predicted, labels=labels).tolist(),
    }


def summary_line(name: str, result: dict[str, Any]) -> str:
    params = ", ".join(f"{k.split('__')[-1]}={v}" for k, v in result["best_params"].items())
    return (f"{name:<12} rank-1 {result['rank1']:.3f}  rank-5 {result['rank5']:.3f}  "
            f"({params}; cv {result['cv_score']:.3f}; fit {result['fit_seconds']:.1f}s; "
            f"{result['n_train']} train / {result['n_test']} test)")


def write_reports(result: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """Write ``stem.json`` (everything) and ``stem.md`` (short, human)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2, sort_keys=True))
    md_path.write_text(markdown(result))
    return json_path, md_path


def markdown(r: dict[str, Any]) -> str:
    b = r["backbone"]
    lines = [
        f"# {r['pipeline']}: {r['classifier']}",
        "",
        f"- dataset: {r['dataset']} ({r['n_train']} train, {r['n_test']} test images)",
        f"- backbone: {b['backbone']} ({b['weights']}), layer {b['layer']}, "
        f"pooling {b['pooling']}, input {b['input_size']}",
        f"- feature store: `{r['store']}` (key {r['key']})",
        f"- best parameters: {r['best_params']} (cross-validated accuracy {r['cv_score']:.3f})",
        f"- fit time: {r['fit_seconds']:.1f} s",
        "",
        f"**rank-1 {r['rank1']:.3f} · rank-5 {r['rank5']:.3f}**",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in r["per_class"].items():
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} "
                     f"| {s['support']} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted), in the JSON result.", ""]
    return "\n".join(lines)
