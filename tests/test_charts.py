"""featx.report.charts: what each chart draws, read from its matplotlib figure (texts, bar
colours, markers), and the PNG it becomes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from featx.report import charts
from featx.report.charts import chart_title, confusion_png, monitor_png, png_bytes, recall_png


@pytest.fixture
def drawn(monkeypatch) -> list[Figure]:
    """The figures the charts draw, kept instead of saved."""
    figures: list[Figure] = []
    monkeypatch.setattr(charts, "png_bytes", lambda fig, dpi=100: figures.append(fig) or b"")
    return figures


def test_a_figure_becomes_a_png_of_its_size_times_the_dpi():
    fig = Figure(figsize=(2, 1.5))
    fig.add_subplot().plot([0, 1], [1, 0])
    data = png_bytes(fig, dpi=50)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (100, 75)


def test_the_title_names_pipeline_classifier_backbone_and_pooling():
    r = {"pipeline": "f17", "classifier": "logreg",
         "backbone": {"backbone": "ResNet50", "pooling": "max"}}
    assert chart_title(r) == "f17: logreg on ResNet50 (max)"
    assert chart_title({}) == ":  on ? (?)"


def test_confusion_counts_in_the_cells_errors_in_red_zeros_blank(drawn):
    confusion_png([[5, 0, 1], [0, 3, 0], [2, 0, 4]], ["a", "$b$", "c"], "t")
    (fig,) = drawn
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert {k: t.get_text() for k, t in cells.items()} == {
        (0, 0): "5", (0, 2): "1", (1, 1): "3", (2, 0): "2", (2, 2): "4"}  # no text for 0
    assert to_hex(cells[(0, 2)].get_color()) == "#c0392b" and \
        cells[(0, 2)].get_fontweight() == "bold"
    assert cells[(1, 1)].get_color() == "white"  # the whole row on the diagonal: dark cell
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", r"\$b\$", "c"]


def test_beyond_60_classes_the_cells_hold_no_digits(drawn):
    for n in (60, 61):
        confusion_png(np.eye(n, dtype=int) * 3, [f"c{i}" for i in range(n)])
    assert [len(fig.axes[0].texts) for fig in drawn] == [60, 0]


def test_recall_bars_worst_class_on_top_coloured_by_band(drawn):
    per_class = {name: {"recall": r, "precision": 1.0, "f1": 1.0, "support": 10}
                 for name, r in (("iris", 0.95), ("rose", 0.5), ("tulip", 0.8), ("aster", 0.5))}
    recall_png(per_class, "t")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["aster", "rose", "tulip", "iris"]
    assert [to_hex(bar.get_facecolor()) for bar in ax.patches] == \
        ["#d7191c", "#d7191c", "#fdae61", "#2b8cbe"]
    assert [t.get_text() for t in ax.texts] == ["0.50", "0.50", "0.80", "0.95"]


def _history() -> list[dict]:
    return [{"phase": phase, "loss": 1.0 / e, "accuracy": 0.5 + e / 10,
             "val_loss": 1.5 / e + 0.01 * e, "val_accuracy": 0.4 + e / 10}
            for phase in ("warmup", "finetune") for e in (1, 2, 3)]


def test_the_monitor_stars_the_epoch_each_phase_kept(drawn):
    history = _history()
    monitor_png(history, {"warmup": 2, "finetune": 0}, "run")
    loss_ax = drawn[0].axes[0]
    stars = [line for line in loss_ax.lines if line.get_marker() == "*"]
    assert len(stars) == 2
    kept, start = stars
    # warmup kept its 2nd epoch (x 2); finetune its starting weights: at the phase's start
    assert (list(kept.get_xdata()), list(kept.get_ydata())) == ([2], [history[1]["val_loss"]])
    assert list(start.get_xdata()) == [3.5] and start.get_markerfacecolor() == "none"
    shown = [t.get_text() for ax in drawn[0].axes for t in ax.texts]
    assert "warmup" in shown and "finetune" in shown  # each phase named
    lines = [line for line in loss_ax.lines if isinstance(line, Line2D)
             and line.get_marker() != "*"]
    assert [list(line.get_ydata()) for line in lines] == \
        [[r["loss"] for r in history], [r["val_loss"] for r in history]]


def test_without_validation_nothing_is_starred(drawn):
    history = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in _history()]
    monitor_png(history, {"warmup": 2, "finetune": 1})
    assert not [line for line in drawn[0].axes[0].lines if line.get_marker() == "*"]
