"""The charts of a result, as PNG bytes (matplotlib's Agg backend)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from featx.core.escape import chart_text


def chart_title(r: dict[str, Any]) -> str:
    b = r.get("backbone", {})
    return (f"{r.get('pipeline', '')}: {r.get('classifier', '')} on {b.get('backbone', '?')} "
            f"({b.get('pooling', '?')})")


def confusion_png(confusion: Any, names: list[str], title: str = "", scope: str = "") -> bytes:
    """The confusion matrix (C, C) as a PNG: counts in the cells (blank for 0), colours
    normalised per true class (row) so small classes read like large ones, class names on
    both axes; ``scope`` (which split, or summed over which splits) under the title."""
    from matplotlib.figure import Figure

    m = np.asarray(confusion, dtype=np.int64)
    n = len(names)
    names, title = [chart_text(x) for x in names], chart_text(title)
    if scope:
        title += f"\n{chart_text(scope)}"
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
    across the phases (shaded, named above the axes), the epoch each phase kept marked with a
    star on the validation loss (a phase that kept its starting weights: a star at its start);
    the legend below the axes, where it covers no line and no phase name."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    x = np.arange(1, len(history) + 1)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(x, [r[metric] for r in history], "-o", ms=3, label="training")
        val = [r.get(f"val_{metric}", np.nan) for r in history]
        ax.plot(x, val, "-s", ms=3, label="validation (held-out rows)")
        ax.set_xlabel("epoch (all phases)", fontsize=10)
        ax.set_ylabel(metric, fontsize=10)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
    phases = list(dict.fromkeys(r["phase"] for r in history))
    for n, phase in enumerate(phases):
        where = [i for i, r in enumerate(history) if r["phase"] == phase]
        first, last = where[0] + 0.5, where[-1] + 1.5
        for ax in (loss_ax, acc_ax):
            ax.axvspan(first, last, color=PHASE_COLOURS.get(phase, "#f2f2f2"), zorder=0)
            # above the axes, in two rows: short phases' names do not run into each other
            ax.annotate(phase, (first, 1.02 + 0.08 * (n % 2)), xycoords=("data", "axes fraction"),
                        va="bottom", fontsize=10, color="#555555", annotation_clip=False)
        k = kept.get(phase)
        if k and "val_loss" in history[where[0]]:
            row = where[0] + k - 1
            loss_ax.plot(row + 1, history[row]["val_loss"], "*", ms=14, color="#c0392b",
                         zorder=5, label="kept epoch" if phase == phases[0] else None)
        elif k == 0 and "val_loss" in history[where[0]]:
            loss_ax.plot(first, history[where[0]]["val_loss"], "*", ms=14, color="#c0392b",
                         mfc="none", zorder=5)
    handles, labels = loss_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=10)
    fig.suptitle(f"{chart_text(title)}: training monitor" if title else "training monitor",
                 fontsize=11)
    return png_bytes(fig)


# Recall bands of the per-class chart, best first: (lowest recall, bar colour, its name,
# meaning). The reports' legends are drawn from this list, so they cannot disagree.
RECALL_BANDS = ((0.9, "#2b8cbe", "blue", "0.90 or more"),
                (0.7, "#fdae61", "orange", "0.70 to under 0.90"),
                (0.0, "#d7191c", "red", "under 0.70: worth a look"))


def overall_recall(per_class: dict[str, dict[str, Any]]) -> float | None:
    """The accuracy of the predictions the per-class scores come from: recall weighted by
    support (the rank-1 of those test images; of all splits' together for a sum over
    splits). None without support."""
    support = sum(v.get("support", 0) for v in per_class.values())
    if not support:
        return None
    return sum(v["recall"] * v["support"] for v in per_class.values()) / support


def recall_figure(per_class: dict[str, dict[str, Any]], title: str = "",
                  scope: str = "") -> Any:
    """Per-class accuracy (recall) as horizontal bars, worst class on top, coloured by
    :data:`RECALL_BANDS`, and a dashed line at :func:`overall_recall` on the same axis: the
    overall rank-1 of exactly these predictions. ``scope``: which split(s), in the title.
    Returns the matplotlib ``Figure`` (one axes: bars then the line)."""
    from matplotlib.figure import Figure

    items = sorted(per_class.items(), key=lambda kv: (kv[1]["recall"], kv[0]))
    names = [chart_text(k) for k, _ in items]
    recall = [v["recall"] for _, v in items]
    n = len(names)
    bar = float(np.clip(12 / max(n, 1), 0.1, 0.35))
    fig = Figure(figsize=(7, max(3.0, 1.5 + bar * n)), layout="constrained")
    ax = fig.add_subplot()
    font = 9 if n <= 30 else 6
    ax.barh(range(n), recall, color=[bar_colour(r) for r in recall])
    ax.set_yticks(range(n), names, fontsize=font)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("recall (fraction of the class's test images classified correctly)")
    for i, r in enumerate(recall):
        ax.text(r + 0.01, i, f"{r:.2f}", va="center", fontsize=font)
    subtitle = "per-class accuracy (recall)"
    if scope:
        subtitle += f", {chart_text(scope)}"
    overall = overall_recall(per_class)
    if overall is not None:  # in the title, not a legend: a legend would hide bars
        ax.axvline(overall, color="grey", linestyle="--", linewidth=1)
        subtitle += f"\ndashed line: overall rank-1 {overall:.3f}"
    ax.set_title(f"{chart_text(title)}\n{subtitle}", fontsize=10)
    return fig


def recall_png(per_class: dict[str, dict[str, Any]], title: str = "", scope: str = "") -> bytes:
    """:func:`recall_figure` as PNG bytes."""
    return png_bytes(recall_figure(per_class, title, scope))


def bar_colour(recall: float) -> str:
    """The colour of a recall bar (:data:`RECALL_BANDS`)."""
    return next(colour for low, colour, *_ in RECALL_BANDS if recall >= low)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes."""
    # a plain Figure saves through Agg by itself: no pyplot, no global backend state
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
