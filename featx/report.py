"""Evaluation and reports: rank-1/rank-5, per-class scores, the confusion matrix and the
most-confused class pairs; written as JSON (everything), Markdown, a self-contained HTML page
and two PNG charts (confusion matrix, per-class recall)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from featx.escape import chart_text, markdown_cell
from featx.files import write_atomic
from featx.pages import picture, png_uri, render

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


def _params(result: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('__')[-1]}={v}" for k, v in result["best_params"].items())


def summary_line(name: str, result: dict[str, Any]) -> str:
    params = _params(result)
    rank5 = _num(result["rank5"], na="n/a")  # n/a: k at or above the number of classes
    if result.get("repeats"):  # mean ± standard deviation over the splits
        n = len(result["repeats"]["seeds"])
        rank1 = f"{result['rank1']:.3f} ± {result['rank1_std']:.3f}"
        if result["rank5"] is not None:
            rank5 = f"{rank5} ± {result['rank5_std']:.3f}"
        return (f"{name:<12} rank-1 {rank1}  rank-5 {rank5}  over {n} splits "
                f"(first split: {_params(result)}; fit {_num(result.get('fit_seconds'), 1)}s; "
                f"{result['n_train']} train / {result['n_test']} test)")
    return (f"{name:<12} rank-1 {result['rank1']:.3f}  rank-5 {rank5}  "
            f"({params}; cv {_num(result.get('cv_score'))}; "
            f"fit {_num(result.get('fit_seconds'), 1)}s; "
            f"{result['n_train']} train / {result['n_test']} test)")


def report_paths(stem: Path, monitor: bool = False) -> dict[str, Path]:
    """The files :func:`write_reports` writes, by kind: json, md, html, confusion, recall,
    and (``monitor``: a fine-tuning's result) monitor."""
    stem = Path(stem)
    paths = {"json": beside(stem, ".json"), "md": beside(stem, ".md"),
             "html": beside(stem, ".html"), "confusion": beside(stem, "-confusion.png"),
             "recall": beside(stem, "-recall.png")}
    if monitor:
        paths["monitor"] = beside(stem, "-monitor.png")
    return paths


def write_reports(result: dict[str, Any], stem: Path) -> dict[str, Path]:
    """Write ``stem.json`` (everything), ``stem.md``, ``stem.html`` (self-contained: the
    charts are embedded) and the charts ``stem-confusion.png`` and ``stem-recall.png``, each
    atomically, the JSON last (`featx runs` lists a result once its JSON is there).
    Returns the paths by kind: json, md, html, confusion, recall."""
    paths = report_paths(stem, monitor=bool(result.get("history")))
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    names = list(result["per_class"])
    pngs = {"confusion": confusion_png(result["confusion"], names, _title(result)),
            "recall": recall_png(result["per_class"], _title(result), result.get("rank1"))}
    if result.get("history"):  # a fine-tuning: its training monitor
        pngs["monitor"] = monitor_png(result["history"], result.get("kept_epochs", {}),
                                      result.get("pipeline", ""))
    for kind, png in pngs.items():
        write_atomic(paths[kind], png)
    write_atomic(paths["md"], markdown(result, {k: paths[k].name for k in pngs}))
    write_atomic(paths["html"], html_report(result, pngs))
    write_atomic(paths["json"], json.dumps(result, indent=2, sort_keys=True))
    return paths


def beside(stem: Path, suffix: str) -> Path:
    # not with_suffix: a pipeline name may contain dots
    return stem.with_name(stem.name + suffix)


def _title(r: dict[str, Any]) -> str:
    b = r.get("backbone", {})
    return (f"{r.get('pipeline', '')}: {r.get('classifier', '')} on {b.get('backbone', '?')} "
            f"({b.get('pooling', '?')})")


def _num(x: Any, digits: int = 3, na: str = "-") -> str:
    return na if x is None else f"{x:.{digits}f}"


def _pairs(r: dict[str, Any]) -> list[dict[str, Any]]:
    # results written by other code may carry only the matrix
    if "confused_pairs" in r:
        return r["confused_pairs"][:TOP_PAIRS]
    return confused_pairs(r["confusion"], list(r["per_class"]))


# --- charts ------------------------------------------------------------------------------

def confusion_png(confusion: Any, names: list[str], title: str = "") -> bytes:
    """The confusion matrix as a PNG: counts in the cells (blank for 0), colours normalised
    per true class (row) so small classes read like large ones, class names on both axes."""
    from matplotlib.figure import Figure

    m = np.asarray(confusion, dtype=np.int64)
    n = len(names)
    names, title = [chart_text(x) for x in names], chart_text(title)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    cell = float(np.clip(22 / max(n, 1), 0.12, 0.5))  # inches: cells shrink for many classes
    side = 2.5 + cell * n
    fig = Figure(figsize=(side + 1.5, side + 0.6), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("fraction of the true class")
    font = 10 if n <= 20 else 7 if n <= 40 else 5
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    # faint cell borders: a count far from the diagonal is read against its row and column
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\ncounts in cells (blank: 0, red: errors), colour: fraction of "
                 "the row", fontsize=10)
    if n <= 60:  # beyond that the digits cannot be read
        for t, p in zip(*np.nonzero(m)):
            colour = "white" if norm[t, p] > 0.5 else "black" if t == p else "#c0392b"
            ax.text(p, t, str(m[t, p]), ha="center", va="center", fontsize=font,
                    color=colour, fontweight="normal" if t == p else "bold")
    return png_bytes(fig)


PHASE_COLOURS = {"warmup": "#eef4fb", "finetune": "#fbf1e6", "refit warmup": "#eef8ee",
                 "refit finetune": "#f6eef8"}


def monitor_png(history: list[dict[str, Any]], kept: dict[str, int], title: str = "") -> bytes:
    """The training monitor: loss and accuracy per epoch, training and validation, one x axis
    across the phases (shaded and named), the epoch each phase kept marked with a star on the
    validation loss (a phase that kept its starting weights: a star at its start)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    x = np.arange(1, len(history) + 1)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(x, [r[metric] for r in history], "-o", ms=3, label=f"train {metric}")
        val = [r.get(f"val_{metric}", np.nan) for r in history]
        ax.plot(x, val, "-s", ms=3, label=f"validation {metric}")
        ax.set_xlabel("epoch (all phases)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    phases = list(dict.fromkeys(r["phase"] for r in history))
    for phase in phases:
        where = [i for i, r in enumerate(history) if r["phase"] == phase]
        first, last = where[0] + 0.5, where[-1] + 1.5
        for ax in (loss_ax, acc_ax):
            ax.axvspan(first, last, color=PHASE_COLOURS.get(phase, "#f2f2f2"), zorder=0)
        loss_ax.annotate(phase, (first + 0.1, 1.0), xycoords=("data", "axes fraction"),
                         va="top", fontsize=8, color="#555555")
        k = kept.get(phase)
        if k and "val_loss" in history[where[0]]:
            row = where[0] + k - 1
            loss_ax.plot(row + 1, history[row]["val_loss"], "*", ms=14, color="#c0392b",
                         zorder=5, label="kept epoch" if phase == phases[0] else None)
        elif k == 0 and "val_loss" in history[where[0]]:
            loss_ax.plot(first, history[where[0]]["val_loss"], "*", ms=14, color="#c0392b",
                         mfc="none", zorder=5)
    loss_ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"{chart_text(title)}: training monitor" if title else "training monitor",
                 fontsize=10)
    return png_bytes(fig)


def recall_png(per_class: dict[str, dict[str, Any]], title: str = "",
               rank1: float | None = None) -> bytes:
    """Per-class accuracy (recall) as horizontal bars, worst class on top."""
    from matplotlib.figure import Figure

    items = sorted(per_class.items(), key=lambda kv: (kv[1]["recall"], kv[0]))
    names = [chart_text(k) for k, _ in items]
    recall = [v["recall"] for _, v in items]
    n = len(names)
    bar = float(np.clip(12 / max(n, 1), 0.1, 0.35))
    fig = Figure(figsize=(7, max(3.0, 1.5 + bar * n)), layout="constrained")
    ax = fig.add_subplot()
    font = 9 if n <= 30 else 6
    ax.barh(range(n), recall, color=[_bar_colour(r) for r in recall])
    ax.set_yticks(range(n), names, fontsize=font)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("recall (fraction of the class's test images classified correctly)")
    for i, r in enumerate(recall):
        ax.text(r + 0.01, i, f"{r:.2f}", va="center", fontsize=font)
    subtitle = "per-class accuracy (recall)"
    if rank1 is not None:  # in the title, not a legend: a legend would hide bars
        ax.axvline(rank1, color="grey", linestyle="--", linewidth=1)
        subtitle += f"; dashed line: overall rank-1 {rank1:.3f}"
    ax.set_title(f"{chart_text(title)}\n{subtitle}", fontsize=10)
    return png_bytes(fig)


def _bar_colour(recall: float) -> str:
    return "#2b8cbe" if recall >= 0.9 else "#fdae61" if recall >= 0.7 else "#d7191c"


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes."""
    # a plain Figure saves through Agg by itself: no pyplot, no global backend state
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _gallery(r: dict[str, Any]) -> dict[str, Any] | None:
    # The misclassified test images, worst first, as thumbnails (a result written by other
    # code may have none: then no section).
    rows = r.get("misclassified")
    if rows is None:
        return None
    # Relative paths only under the folder the run named: not against the working folder.
    root = Path(r["root"]) if r.get("root") else None
    return {"n": r.get("n_misclassified", len(rows)),
            "kind": "probability" if r.get("scores") == "probabilities" else "score",
            "rows": [(row, picture(root / row["path"] if root else None)) for row in rows]}


# --- Markdown and HTML ----------------------------------------------------------------------

def _settings(r: dict[str, Any]) -> list[tuple[str, str]]:
    b = r.get("backbone", {})
    rows = [("pipeline", r.get("pipeline")), ("classifier", r.get("classifier")),
            ("dataset", f"{r.get('dataset')} ({r.get('n_train')} train, {r.get('n_test')} "
                        "test images)")]
    rows += [(f"backbone.{k}", v) for k, v in b.items()]
    rows += [("feature store", r.get("store")), ("key", r.get("key")),
             ("best parameters", ", ".join(f"{k.split('__')[-1]}={v}"
                                           for k, v in (r.get("best_params") or {}).items())),
             ("cross-validated accuracy", _num(r.get("cv_score"))),
             ("fit time", f"{_num(r.get('fit_seconds'), 1)} s")]
    return [(k, "" if v is None else str(v)) for k, v in rows]


def markdown(r: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The Markdown report; ``images`` maps confusion/recall to PNG file names beside it."""
    m = markdown_cell
    lines = [f"# {m(r['pipeline'])}: {m(r['classifier'])}", ""]
    lines += [f"- {k}: {m(v)}" for k, v in _settings(r)]
    lines += ["", f"**rank-1 {r['rank1']:.3f} · rank-5 {_num(r['rank5'])}**", ""]
    if images:
        lines += [f"![confusion matrix]({images['confusion']})", "",
                  f"![per-class recall]({images['recall']})", ""]
        if "monitor" in images:
            lines += [f"![training monitor]({images['monitor']})", ""]
    lines += ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, s in r["per_class"].items():
        lines.append(f"| {m(name)} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} "
                     f"| {s['support']} |")
    pairs = _pairs(r)
    lines += ["", f"## Most-confused pairs (top {TOP_PAIRS})", ""]
    if pairs:
        lines += ["| true | predicted | count | examples |", "|---|---|---:|---|"]
        for p in pairs:
            examples = ", ".join(m(e) for e in p.get("examples", []))
            lines.append(f"| {m(p['true'])} | {m(p['predicted'])} | {p['count']} | {examples} |")
    else:
        lines.append("No test image was misclassified.")
    rows = r.get("misclassified")
    if rows:
        n = r.get("n_misclassified", len(rows))
        lines += ["", f"## Misclassified test images ({n}, worst first)", "",
                  "| image | true | predicted | score |", "|---|---|---|---:|"]
        lines += [f"| {m(x['path'])} | {m(x['true'])} | {m(x['predicted'])} | {x['score']:.3f} |"
                  for x in rows]
        if n > len(rows):
            lines.append(f"\n... and {n - len(rows)} more.")
    lines += ["", "Full confusion matrix (rows: true, columns: predicted): `confusion` in the "
              "JSON result.", ""]
    return "\n".join(lines)


CHARTS = (("confusion", "confusion matrix"), ("recall", "per-class recall"),
          ("monitor", "training monitor"))  # in page order: kind, alt text (and heading)


def html_report(r: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """One self-contained HTML page (templates/report.html): the charts are embedded as
    base64 data URIs."""
    per_class = [(name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                  s["support"]) for name, s in r["per_class"].items()]
    return render("report.html", title=f"{r['pipeline']}: {r['classifier']}", r=r,
                  rank5=_num(r["rank5"]), settings=_settings(r), per_class=per_class,
                  charts=[{"alt": alt, "uri": png_uri(pngs[kind])} for kind, alt in CHARTS
                          if kind in pngs],
                  top_pairs=TOP_PAIRS, pairs=_pairs(r), gallery=_gallery(r))
