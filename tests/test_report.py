"""Metrics and reports on small cases worked out by hand."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from helpers import classify_result
from PIL import Image

from featx.report.metrics import (
    N_EXAMPLES,
    TOP_PAIRS,
    confused_pairs,
    evaluate,
    rank_k,
    repeat_summary,
)
from featx.report.results import markdown, summary_line, write_reports

CLASSES3 = np.array([0, 1, 2])
# true class:         0                 1                 2                 0
Y3 = np.array([0, 1, 2, 0])
SCORES3 = np.array([
    [0.6, 0.3, 0.1],  # true 0 ranked 1st
    [0.2, 0.7, 0.1],  # true 1 ranked 1st
    [0.5, 0.3, 0.2],  # true 2 ranked 3rd
    [0.3, 0.5, 0.2],  # true 0 ranked 2nd
])


@pytest.mark.parametrize("k, expected", [(1, 0.5), (2, 0.75)])
def test_rank_k_by_hand(k, expected):
    assert rank_k(Y3, SCORES3, CLASSES3, k) == pytest.approx(expected)


@pytest.mark.parametrize("k", [3, 5, 100])
def test_k_at_or_above_the_number_of_classes_is_not_applicable(k):
    """Every row would count: 1.000 by definition, not a result (issue 12)."""
    assert rank_k(Y3, SCORES3, CLASSES3, k) is None


def test_rank5_is_a_number_with_more_than_five_classes():
    rng = np.random.default_rng(1)
    y, scores = rng.integers(0, 6, 40), rng.normal(size=(40, 6))
    expected = np.mean([t in np.argsort(-s)[:5] for t, s in zip(y, scores)])
    assert expected < 1.0
    assert rank_k(y, scores, np.arange(6), 5) == pytest.approx(expected)


def test_evaluate_reports_rank5_apart_from_rank1_with_seven_classes():
    """Rows whose true class is ranked 1st, 3rd, 5th and 6th of 7: rank-1 0.25, rank-5 0.75."""
    order = [[0, 1, 2, 3, 4, 5, 6], [1, 2, 0, 3, 4, 5, 6], [1, 2, 3, 4, 0, 5, 6],
             [1, 2, 3, 4, 5, 0, 6]]  # classes, best first; the true class is 0
    scores = np.zeros((4, 7))
    for row, ranked in enumerate(order):
        scores[row, ranked] = np.linspace(0.4, 0.01, 7)
    y = np.zeros(4, int)
    r = evaluate(y, scores, np.arange(7), [f"c{i}" for i in range(7)])
    assert r["rank1"] == pytest.approx(0.25) and r["rank5"] == pytest.approx(0.75)
    assert "rank-1 0.250  rank-5 0.750" in summary_line("logreg", {
        **r, "best_params": {}, "n_train": 1})


BINARY_Y = np.array([0, 1, 1, 0])
P1 = np.array([0.2, 0.8, 0.4, 0.6])  # argmax predicts 0, 1, 0, 1: two right


def test_binary_probabilities():
    scores = np.column_stack([1 - P1, P1])
    assert rank_k(BINARY_Y, scores, np.array([0, 1]), 1) == pytest.approx(0.5)
    assert rank_k(BINARY_Y, scores, np.array([0, 1]), 5) is None


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
    assert r["rank1"] == pytest.approx(0.5) and r["rank5"] is None
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
    assert r["rank1"] == pytest.approx(0.5) and r["rank5"] is None
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
    return classify_result(Y3, SCORES3, ["ant", "bee", "cow"])  # helpers.RESULT_FIELDS


def test_summary_line():
    line = summary_line("logreg", _result())
    assert "logreg" in line and "rank-1 0.500" in line and "rank-5 n/a" in line
    assert "C=0.1" in line and "12 train / 4 test" in line
    assert "rank-5 0.750" in summary_line("logreg", {**_result(), "rank5": 0.75})


def test_rank5_not_applicable_is_null_and_a_dash_in_every_report(tmp_path):
    paths = write_reports(_result(), tmp_path / "three-classes")
    assert json.loads(paths["json"].read_text())["rank5"] is None
    assert "rank-5 -**" in paths["md"].read_text()
    assert "rank-5 -</p>" in paths["html"].read_text()


def test_write_reports(tmp_path):
    result = _result()
    paths = write_reports(result, tmp_path / "out" / "tiny-logreg")
    assert {k: p.name for k, p in paths.items()} == {
        "json": "tiny-logreg.json", "md": "tiny-logreg.md", "html": "tiny-logreg.html",
        "confusion": "tiny-logreg-confusion.png", "recall": "tiny-logreg-recall.png"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(result))
    text = paths["md"].read_text()
    assert text == markdown(result, {"confusion": "tiny-logreg-confusion.png",
                                     "recall": "tiny-logreg-recall.png"})
    assert "rank-1 0.500" in text and "rank-5 -" in text and "MobileNetV2" in text
    assert all(f"| {name} |" in text for name in ("ant", "bee", "cow"))
    assert "![confusion matrix](tiny-logreg-confusion.png)" in text
    assert "| cow | ant | 1 |" in text and "| ant | bee | 1 |" in text  # the two errors


# --- confused pairs and example paths ------------------------------------------------------

def test_confused_pairs_by_hand():
    names = ["a", "b", "c", "d"]
    confusion = [[5, 2, 0, 1],
                 [4, 6, 0, 0],
                 [0, 2, 7, 0],
                 [0, 0, 1, 9]]
    pairs = confused_pairs(confusion, names)
    # largest first; the two 2s in row-then-column order; the diagonal never counts
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("b", "a", 4), ("a", "b", 2), ("c", "b", 2), ("a", "d", 1), ("d", "c", 1)]
    assert confused_pairs(confusion, names, top=2) == pairs[:2]
    assert confused_pairs(np.diag([3, 4]), ["x", "y"]) == []


def test_only_the_top_pairs_are_kept():
    n = 8
    confusion = np.ones((n, n), int) + np.diag([10] * n)  # 56 off-diagonal cells
    pairs = confused_pairs(confusion, [f"c{i}" for i in range(n)])
    assert len(pairs) == TOP_PAIRS == 10


def test_evaluate_records_example_paths_from_the_right_cells():
    rng = np.random.default_rng(1)
    n_classes, n = 4, 120
    y = rng.integers(0, n_classes, n)
    scores = rng.normal(size=(n, n_classes))
    predicted = np.argmax(scores, axis=1)
    # the path names its own true and predicted class, so each example can be checked
    paths = [f"c{t}/img{i:03d}-as-{p}.jpg" for i, (t, p) in enumerate(zip(y, predicted))]
    r = evaluate(y, scores, np.arange(n_classes), [f"k{i}" for i in range(n_classes)], paths)
    confusion = np.array(r["confusion"])
    assert r["confused_pairs"], "random scores make errors"
    for pair in r["confused_pairs"]:
        t, p = pair["true_index"], pair["predicted_index"]
        assert (pair["true"], pair["predicted"]) == (f"k{t}", f"k{p}") and t != p
        assert pair["count"] == confusion[t, p]
        assert len(pair["examples"]) == min(N_EXAMPLES, pair["count"])
        for example in pair["examples"]:
            assert re.fullmatch(rf"c{t}/img\d+-as-{p}\.jpg", example), example
    json.dumps(r)


def test_evaluate_without_paths_has_pairs_but_no_examples():
    r = evaluate(Y3, SCORES3, CLASSES3, ["ant", "bee", "cow"])
    assert [(p["true"], p["predicted"]) for p in r["confused_pairs"]] == [("ant", "bee"),
                                                                          ("cow", "ant")]
    assert all("examples" not in p for p in r["confused_pairs"])
    with pytest.raises(ValueError, match="3 paths for 4"):
        evaluate(Y3, SCORES3, CLASSES3, ["ant", "bee", "cow"], ["a", "b", "c"])


# --- charts and HTML -------------------------------------------------------------------------

def _many_classes_result(n_classes=17, seed=0):
    """A result as classify writes it, over many classes, with example paths."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), 20)
    scores = rng.normal(size=(len(y), n_classes))
    scores[np.arange(len(y)), y] += 2.0  # mostly right, some errors
    names = [f"flower_{i:02d}" for i in range(n_classes)]
    r = evaluate(y, scores, np.arange(n_classes), names,
                 [f"{names[t]}/image_{i:04d}.jpg" for i, t in enumerate(y)])
    r.update(_result() | {k: r[k] for k in r})
    return r


def test_pngs_are_valid_and_grow_with_the_classes(tmp_path):
    small = write_reports(_result(), tmp_path / "small")
    big = write_reports(_many_classes_result(), tmp_path / "big")
    for paths in (small, big):
        for kind in ("confusion", "recall"):
            with Image.open(paths[kind]) as img:
                img.verify()  # a complete, uncorrupted PNG
            with Image.open(paths[kind]) as img:
                assert img.format == "PNG"
                assert 400 <= img.width <= 4000 and 300 <= img.height <= 4000, img.size
    with Image.open(small["confusion"]) as s, Image.open(big["confusion"]) as b:
        # 17 classes get larger cells in total, not squeezed labels
        assert b.width > s.width and b.height > s.height
    with Image.open(small["recall"]) as s, Image.open(big["recall"]) as b:
        assert b.height > s.height


def test_html_is_self_contained(tmp_path):
    result = _many_classes_result()
    paths = write_reports(result, tmp_path / "run")
    page = paths["html"].read_text()
    sources = re.findall(r"""src=['"]([^'"]*)['"]""", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "<link" not in page
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {paths["confusion"].read_bytes(), paths["recall"].read_bytes()}
    assert "rank-1 " + f"{result['rank1']:.3f}" in page
    for name, s in result["per_class"].items():
        assert f"<td>{name}</td><td class=n>{s['precision']:.3f}</td>" in page
    for pair in result["confused_pairs"][:TOP_PAIRS]:
        assert f"<td>{pair['true']}</td><td>{pair['predicted']}</td>" in page
        assert all(f"<code>{e}</code>" in page for e in pair["examples"])
    assert "C=0.1" in page and "backbone.pooling" in page


def test_html_escapes_names(tmp_path):
    r = _result()
    r["per_class"] = {"<b>ant</b>" if k == "ant" else k: v for k, v in r["per_class"].items()}
    page = write_reports(r, tmp_path / "run")["html"].read_text()
    assert "&lt;b&gt;ant&lt;/b&gt;" in page and "<b>ant</b>" not in page


def test_reports_from_other_code_with_only_the_documented_keys(tmp_path):
    """Fine-tuning and ensembles write results without confused_pairs (and maybe without a
    cross-validation score): the pairs come from the matrix."""
    r = _result()
    del r["confused_pairs"]
    r["cv_score"] = None
    paths = write_reports(r, tmp_path / "finetune.v2-head")  # a dot in the stem is kept
    assert paths["md"].name == "finetune.v2-head.md"
    text = paths["md"].read_text()
    assert "| cow | ant | 1 |" in text and "| ant | bee | 1 |" in text
    assert "cv -" in summary_line("head", r)


# --- the gallery of misclassified test images -----------------------------------------------

def test_misclassified_worst_first_by_hand():
    y = np.array([0, 1, 2, 0, 1])
    scores = np.array([
        [0.8, 0.1, 0.1],  # right
        [0.6, 0.3, 0.1],  # 1 -> 0 at 0.6
        [0.1, 0.9, 0.0],  # 2 -> 1 at 0.9: the worst
        [0.2, 0.7, 0.1],  # 0 -> 1 at 0.7
        [0.1, 0.8, 0.1],  # right
    ])
    r = evaluate(y, scores, CLASSES3, ["ant", "bee", "cow"], [f"f{i}.jpg" for i in range(5)])
    assert r["n_misclassified"] == 3 and r["scores"] == "probabilities"
    assert [(m["path"], m["true"], m["predicted"]) for m in r["misclassified"]] == [
        ("f2.jpg", "cow", "bee"), ("f3.jpg", "ant", "bee"), ("f1.jpg", "bee", "ant")]
    assert [m["score"] for m in r["misclassified"]] == [0.9, 0.7, 0.6]
    assert [m["true_score"] for m in r["misclassified"]] == [0.0, 0.2, 0.3]
    margins = evaluate(y, scores * 5 - 1, CLASSES3, ["ant", "bee", "cow"], list("abcde"))
    assert margins["scores"] == "decision values"
    assert "misclassified" not in evaluate(y, scores, CLASSES3, ["ant", "bee", "cow"])


def test_html_gallery_shows_the_worst_errors_as_thumbnails(tmp_path, image_file):
    from featx.report.metrics import misclassified

    root = tmp_path / "data"
    names = ["ant", '<b>x</b> & "y"', "cow"]
    y = np.array([0, 1, 2, 0])
    scores = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.9, 0.0], [0.3, 0.1, 0.6]])
    paths = [f"c{t}/img{i}.png" for i, t in enumerate(y)]
    for i, p in enumerate(paths):
        if i != 1:  # img1's file is missing
            image_file(root / p, size=(60 + 10 * i, 40))
    r = _result()
    r["per_class"] = {n: v for n, v in zip(names, r["per_class"].values())}
    r.update(misclassified(y, scores, CLASSES3, names, paths, cap=3), root=str(root))
    html_page = write_reports(r, tmp_path / "run")["html"].read_text()
    gallery = html_page.split("Misclassified test images (4)</h2>", 1)[1]
    jpegs = re.findall(r"src='data:image/jpeg;base64,([^']*)'", gallery)
    # all four wrong: img2 (0.9), img0 (0.7), img1 (0.6, missing); img3 (0.6) past the cap
    assert len(jpegs) == 2
    for data, rel in zip(jpegs, ["c2/img2.png", "c0/img0.png"]):
        with Image.open(__import__("io").BytesIO(base64.b64decode(data))) as thumb:
            with Image.open(root / rel) as original:
                assert thumb.size == original.size  # smaller than 128: kept as it is
    assert gallery.index("c2/img2.png") < gallery.index("c0/img0.png") < gallery.index(
        "c1/img1.png")
    assert "img3" not in gallery
    assert f"href='{(root / 'c2/img2.png').resolve().as_uri()}'" in gallery
    assert "not readable:" in gallery and "and 1 more" in gallery
    assert "predicted <b>&lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot;</b>" in gallery
    assert "<b>x</b>" not in html_page


# --- repeated splits, the recall chart and the settings in words (issue 26) -----------------

# A second split of the same three classes: predicted 2, 1, 2, 0 for true 0, 1, 2, 0.
Y3B = np.array([0, 1, 2, 0])
SCORES3B = np.array([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])


def _two_splits():
    names = ["ant", "bee", "cow"]
    a = evaluate(Y3, SCORES3, CLASSES3, names, ["a0", "a1", "a2", "a3"])
    b = evaluate(Y3B, SCORES3B, CLASSES3, names, ["b0", "b1", "b2", "b3"])
    a.update(best_params={"clf__C": 0.1}, cv_score=0.6)
    b.update(best_params={"clf__C": 1.0}, cv_score=0.7)
    return a, b


def test_repeat_summary_sums_the_splits_by_hand():
    a, b = _two_splits()
    r = repeat_summary([7, 8], [a, b])
    assert a["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert b["confusion"] == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    assert r["confusion"] == [[2, 1, 1], [0, 2, 0], [1, 0, 1]]
    assert r["rank1"] == pytest.approx(0.625) and r["splits"] == 2
    assert r["rank1_std"] == pytest.approx(np.std([0.5, 0.75], ddof=1))
    pc = r["per_class"]
    assert pc["ant"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7,
                                       "support": 4})
    assert pc["bee"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8,
                                       "support": 2})
    assert pc["cow"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                       "support": 2})
    assert [(p["true"], p["predicted"], p["count"], p["examples"])
            for p in r["confused_pairs"]] == [("ant", "bee", 1, ["a3"]),
                                              ("ant", "cow", 1, ["b0"]),
                                              ("cow", "ant", 1, ["a2"])]
    assert r["per_split"] == [
        {"split": 1, "seed": 7, "rank1": 0.5, "rank5": None, "n_test": 4,
         "best_params": {"clf__C": 0.1}, "cv_score": 0.6},
        {"split": 2, "seed": 8, "rank1": 0.75, "rank5": None, "n_test": 4,
         "best_params": {"clf__C": 1.0}, "cv_score": 0.7}]
    assert r["scope"]["rank1"] == "mean ± sd over 2 splits (seeds 7–8)"
    assert r["scope"]["per_class"] == "summed over 2 splits (seeds 7–8)"
    assert r["scope"]["best_params"] == r["scope"]["misclassified"] == "split 1 of 2 (seed 7)"
    json.dumps(r)


@pytest.mark.parametrize("summed", [False, True])
def test_the_recall_line_is_the_overall_rank1_on_the_bars_axis(summed):
    from featx.report.charts import recall_figure

    a, b = _two_splits()
    r = repeat_summary([7, 8], [a, b]) if summed else a
    fig = recall_figure(r["per_class"], "t", "scope")
    [ax] = fig.axes  # the bars and the line share one axis
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == pytest.approx(sorted(v["recall"] for v in r["per_class"].values()))
    [line] = ax.lines
    # rank-1 of one split: 0.5; of the two together: 5 right of 8 (the mean, 0.625)
    expected = 0.625 if summed else 0.5
    assert r["rank1"] == pytest.approx(expected)
    assert line.get_xdata() == pytest.approx([expected, expected])
    assert f"overall rank-1 {expected:.3f}" in ax.get_title()


def test_the_recall_colours_are_explained_on_the_page(tmp_path):
    from matplotlib.colors import to_hex

    from featx.report.charts import RECALL_BANDS, bar_colour, recall_figure

    (best, good, *_), (low, middle, *_), (_, worst, *_) = RECALL_BANDS
    assert (best, low) == (0.9, 0.7)
    assert [bar_colour(x) for x in (1.0, 0.9, 0.899, 0.7, 0.699, 0.0)] == [
        good, good, middle, middle, worst, worst]
    r = _result()
    ax = recall_figure(r["per_class"]).axes[0]
    assert sorted((p.get_width(), to_hex(p.get_facecolor())) for p in ax.patches) == [
        (0.0, worst), (0.5, worst), (1.0, good)]
    page = write_reports(r, tmp_path / "run")["html"].read_text()
    legend = page.split("<div class=legend>", 1)[1].split("</div>", 1)[0]
    for _, colour, _, meaning in RECALL_BANDS:
        assert f"background:{colour}'></span>recall {meaning}</span>" in legend
    assert "0.90 or more" in legend and "under 0.70" in legend
    assert "overall rank-1" in legend
    md = (tmp_path / "run.md").read_text()
    assert "Bars: blue 0.90 or more; orange 0.70 to under 0.90; red under 0.70" in md


SHA = "71e4c0de" + "5a" * 28


def test_settings_in_words_and_the_raw_names_below(tmp_path):
    r = _result()
    r["backbone"] = {"backbone": "MobileNetV2", "weights": "file", "weights_id": f"sha256:{SHA}",
                     "layer": "(last conv)", "pooling": "avg", "input_size": 224,
                     "preprocess": "tf", "resize": "pil-draft+exif+rgb-on-white+bilinear-pad"}
    r["weights_file"] = "mobilenet_v2.h5"
    page = write_reports(r, tmp_path / "run")["html"].read_text()
    words, raw = page.split("<details>", 1)
    words = words.split("<h2>Settings</h2>", 1)[1]
    for label, value in [("Backbone", "MobileNetV2"),
                         ("Weights", "file mobilenet_v2.h5 (sha256 71e4c0de…)"),
                         ("Layer", "the last convolutional block"),
                         ("Pooling", "global average"), ("Input size", "224 × 224 pixels"),
                         ("Pixel scaling", "scaled to [-1, 1]"),
                         ("Image reading", "long side to the input size, padded to a square; "
                                           "EXIF rotation applied, transparency on white, "
                                           "bilinear"),
                         ("Chosen parameters", "C=0.1")]:
        assert f"<th>{label}</th><td>{value}</td>" in words, label
    assert "backbone." not in words and SHA not in words and "pil-draft" not in words
    raw = raw.split("</details>", 1)[0]
    assert f"<th>backbone.weights_id</th><td>sha256:{SHA}</td>" in raw
    assert "<th>backbone.resize</th><td>pil-draft+exif+rgb-on-white+bilinear-pad</td>" in raw
    assert "<th>best_params</th><td>clf__C=0.1</td>" in raw


def test_weights_and_reading_in_words():
    from featx.report.results import reading, weights_text

    assert weights_text({"weights": "imagenet", "weights_id": "keras-imagenet:x"}) == "imagenet"
    assert weights_text({"weights": "none", "weights_id": "random:seed=3"}) == "random (seed 3)"
    assert weights_text({"weights": "file", "weights_id": f"sha256:{SHA}"}) == (
        "file (sha256 71e4c0de…)")
    assert reading("pil-draft+exif+rgb-on-white+bilinear-crop").startswith(
        "short side to the input size, centre cropped")
    # a reading policy featx does not know is shown as it is, not described wrongly
    assert reading("pil+other-squash") == "pil+other-squash"
