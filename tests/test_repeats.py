"""Accuracy measured honestly: repeated splits, paired comparisons, and the levers (resize
policy, flip averaging, feature normalisation) that may move the score."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import result_lines, write_synthetic_store
from PIL import Image

from featx.cli import main
from featx.core.config import Config, ConfigError
from featx.data.dataset import TEST, stratified_split
from featx.data.images import PAD_COLOUR, fit_image
from featx.learn import modelfile
from featx.learn.classification import classify, fit_and_score, read_splits, resplit
from featx.learn.learners import normalizer
from featx.store.read import FeatureStore

SPLIT = {"val": 0.0, "test": 0.25, "seed": 42}


def synthetic(tmp_path, name: str, signal: float, n_per_class: int = 40, d: int = 16,
              seed: int = 0):
    """A plain store of 4 classes; ``signal`` scales how far apart the class means are (0:
    labels carry nothing the features show)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class)
    x = rng.normal(size=(len(y), d)) + signal * np.eye(4, d)[y]
    split = stratified_split(y, SPLIT["val"], SPLIT["test"], SPLIT["seed"])
    paths = [f"c{c}/img{i:03d}.png" for i, c in enumerate(y)]
    path = write_synthetic_store(tmp_path / f"{name}.h5", x.astype(np.float32), y, paths,
                                 split, ["a", "b", "c", "d"], split_attr=SPLIT)
    return path


def config(tmp_path, out: str, **classify) -> Config:
    return Config.from_dict({"dataset": dict(SPLIT), "out": str(tmp_path / out),
                             "classify": {"classifiers": ["logreg"], "cv": 2, "n_jobs": 1,
                                          **classify}})


def test_a_grid_edge_warning_is_said_once_over_the_repeats(tmp_path, monkeypatch, caplog):
    """The learner warns about its grid's edge after each grid search; over 4 splits the
    same line is said once (it was said 4 times)."""
    import logging

    from featx.learn import learners

    calls = []

    def edge(name, *args, **kwargs):
        calls.append(name)
        logging.getLogger(learners.__name__).warning("%s: C=1 is the largest value tried", name)
        return []

    monkeypatch.setattr(learners, "warn_at_edges", edge)
    store = synthetic(tmp_path, "s", signal=1.0)
    with caplog.at_level(logging.WARNING, logger="featx"):
        classify(config(tmp_path, "out", repeats=4), store)
    said = [r for r in caplog.records if "largest value tried" in r.getMessage()]
    assert len(calls) == 4 and len(said) == 1


def test_repeats_report_mean_and_std_over_seeded_splits(tmp_path):
    store = synthetic(tmp_path, "s", signal=1.0)
    with result_lines() as lines:
        [result] = classify(config(tmp_path, "out", repeats=5), store)
    rep = result["repeats"]
    assert rep["seeds"] == [42, 43, 44, 45, 46] and len(rep["rank1"]) == 5
    assert result["rank1"] == pytest.approx(np.mean(rep["rank1"]))
    assert result["rank1_std"] == pytest.approx(np.std(rep["rank1"], ddof=1))
    assert len(set(rep["rank1"])) > 1  # different splits, different scores
    assert "±" in lines[0] and "over 5 splits" in lines[0]
    saved = json.loads(next((tmp_path / "out").rglob("*-logreg.json")).read_text())
    assert saved["repeats"] == rep
    # the first split is the store's own (dataset.seed); the others differ from it
    with FeatureStore(store) as s:
        labels, ok, split, paths = s.labels, s.ok, s.split, s.paths
    c = config(tmp_path, "x")
    data = read_splits(c, store)
    first = resplit(data, c, 42, labels, ok, paths, None)
    np.testing.assert_array_equal(first.rows[TEST], np.flatnonzero(split == TEST))
    other = resplit(data, c, 43, labels, ok, paths, None)
    assert set(other.rows[TEST]) != set(first.rows[TEST])
    assert np.bincount(labels[other.rows[TEST]]).tolist() == [10, 10, 10, 10]  # stratified


def test_paired_comparison_of_identical_runs_is_zero(tmp_path, capsys):
    store = synthetic(tmp_path, "s", signal=1.0)
    classify(config(tmp_path, "a", repeats=4), store)
    classify(config(tmp_path, "b", repeats=4), store)
    capsys.readouterr()
    assert main(["runs", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    cells = row.split()
    assert cells[0] == "logreg" and cells[1] == "4"
    assert float(cells[4]) == 0.0 and float(cells[5]) == 0.0


def test_paired_comparison_finds_a_difference_made_by_construction(tmp_path):
    from featx.report.runs import compare

    good, bad = synthetic(tmp_path, "good", signal=4.0), synthetic(tmp_path, "bad", signal=0.0)
    classify(config(tmp_path, "good", repeats=5), good)
    classify(config(tmp_path, "bad", repeats=5), bad)
    [row] = compare(tmp_path / "good", tmp_path / "bad")
    assert row["splits"] == 5 and row["a"] > 0.8 and row["b"] < 0.45  # chance: 0.25
    assert row["difference"] > 5 * row["standard_error"] > 0


def test_repeats_need_plain_features(tmp_path):
    store = synthetic(tmp_path, "s", signal=1.0)
    with pytest.raises(ConfigError, match="classify.repeats re-splits plain features"):
        classify(config(tmp_path, "o", repeats=3, train_features="augmented"), store)


@pytest.mark.parametrize("kind", ["l2", "power", "pca_whiten"])
def test_normalisation_is_part_of_the_saved_model(tmp_path, kind):
    store = synthetic(tmp_path, "s", signal=4.0)
    [result] = classify(config(tmp_path, "o", normalize=kind), store)
    model_path = next((tmp_path / "o").rglob("*.skops"))
    model = modelfile.load(model_path)["model"]
    assert model.steps[0][0] == "normalize"
    with FeatureStore(store) as s:
        x = s.features()
    step = normalizer(kind).fit(x)
    z = step.transform(x)
    if kind != "pca_whiten":
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    else:
        np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0, rtol=1e-3)
    assert result["rank1"] > 0.8
    np.testing.assert_array_equal(model.predict(x), model.predict(x.copy()))


def test_resize_policies():
    # a wide image: red left quarter, green middle, blue right quarter
    pixels = np.zeros((100, 400, 3), np.uint8)
    pixels[:, :100] = (255, 0, 0)
    pixels[:, 100:300] = (0, 255, 0)
    pixels[:, 300:] = (0, 0, 255)
    img = Image.fromarray(pixels)
    squash = fit_image(img, 64, "squash")
    crop = fit_image(img, 64, "crop")
    pad = fit_image(img, 64, "pad")
    assert squash.shape == crop.shape == pad.shape == (64, 64, 3)
    assert squash[32, 2, 0] > 200 and squash[32, 61, 2] > 200  # every part, squeezed
    assert (crop[:, :, 1] > 200).all()  # only the centre (green) is kept
    np.testing.assert_array_equal(pad[0, 32], PAD_COLOUR)  # bands above and below
    assert pad[32, 2, 0] > 200 and pad[32, 61, 2] > 200  # the whole image, in proportion


def test_flip_averaging_is_the_mean_of_an_image_and_its_mirror(tiny_store):
    from featx.core.config import BackboneConfig
    from featx.features.backbones import Backbone

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    plain = Backbone(BackboneConfig(weights="none", input_size=32), seed=1)
    flip = Backbone(BackboneConfig(weights="none", input_size=32, flip=True), seed=1)
    a = np.asarray(plain.features(images))
    b = np.asarray(plain.features(images[:, :, ::-1]))
    both = np.asarray(flip.batched(4)(images, np.ones(3, bool)))
    scale = np.abs(a).max()
    assert scale > 0 and np.abs(a - b).max() > 1e-3 * scale  # the mirror differs
    np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-4, atol=1e-4 * scale)
    assert "flip" in flip.describe() and "flip" not in plain.describe()


def test_repeats_with_an_ensemble_report_it_over_the_splits_too(tmp_path):
    store = synthetic(tmp_path, "s", signal=1.0)
    results = classify(config(tmp_path, "o", repeats=3, ensemble=True,
                              classifiers=["logreg", "knn"]), store)
    assert [r["classifier"] for r in results] == ["logreg", "knn", "ensemble(logreg+knn)"]
    for r in results:
        assert r["repeats"]["seeds"] == [42, 43, 44]
        assert r["rank1"] == pytest.approx(np.mean(r["repeats"]["rank1"]))
    # the ensemble's first split is the one without repeats
    [_, _, single] = classify(config(tmp_path, "p", ensemble=True, classifiers=["logreg", "knn"]),
                              store)
    assert results[2]["repeats"]["rank1"][0] == single["rank1"]


def test_two_result_files_are_paired_whatever_their_learners(tmp_path):
    from featx.report.runs import compare

    store = synthetic(tmp_path, "s", signal=1.0)
    [a] = classify(config(tmp_path, "a", repeats=3), store)
    [b] = classify(config(tmp_path, "b", repeats=3, classifiers=["knn"]), store)
    [row] = compare(next((tmp_path / "a").rglob("*-logreg.json")),
                    next((tmp_path / "b").rglob("*-knn.json")))
    assert row["classifier"] == "logreg vs knn" and row["splits"] == 3
    expected = np.subtract(a["repeats"]["rank1"], b["repeats"]["rank1"]).mean()
    assert row["difference"] == pytest.approx(expected)


# --- a repeated run's reports say what each number shows (issue 26, item 3) ------------------

def _saved(folder):
    json_path = next(folder.rglob("*-logreg.json"))
    return (json.loads(json_path.read_text()), json_path.with_suffix(".html").read_text(),
            json_path)


def test_a_repeated_report_shows_mean_sd_each_split_and_the_summed_matrix(tmp_path):
    from featx.report.charts import chart_title, png_bytes, recall_figure

    store = synthetic(tmp_path, "s", signal=1.0)
    c = config(tmp_path, "out", repeats=5)
    classify(c, store)
    saved, page, json_path = _saved(tmp_path / "out")
    # every split fitted and scored again, here: the matrix is their sum, not split 1's
    with FeatureStore(store) as s:
        labels, ok, paths, x = s.labels, s.ok, s.paths, s.features()
    data = read_splits(c, store)
    each = [next(fit_and_score(c, resplit(data, c, seed, labels, ok, paths, x)))[2]
            for seed in [42, 43, 44, 45, 46]]
    summed = np.sum([r["confusion"] for r in each], axis=0)
    np.testing.assert_array_equal(saved["confusion"], summed)
    assert not np.array_equal(saved["confusion"], each[0]["confusion"])
    assert saved["splits"] == 5
    assert [(s["seed"], s["rank1"], s["best_params"]) for s in saved["per_split"]] == [
        (seed, r["rank1"], r["best_params"]) for seed, r in zip(range(42, 47), each)]
    assert saved["rank1"] == pytest.approx(np.mean([r["rank1"] for r in each]))
    recall = {name: v["recall"] for name, v in saved["per_class"].items()}
    assert list(recall.values()) == pytest.approx(np.diag(summed) / summed.sum(axis=1))
    assert saved["scope"]["rank1"] == "mean ± sd over 5 splits (seeds 42–46)"
    assert saved["scope"]["confusion"] == "summed over 5 splits (seeds 42–46)"
    assert saved["scope"]["model"] == "split 1 of 5 (seed 42)"
    # the page: the headline with its sd and split count, a row per split, the sum labelled
    sd = np.std([r["rank1"] for r in each], ddof=1)
    assert f"<b>rank-1 {saved['rank1']:.3f} ± {sd:.3f} over 5 splits</b>" in page
    for seed, r in zip(range(42, 47), each):
        assert f"<td class=n>{seed}</td><td class=n>{r['rank1']:.3f}</td>" in page
    assert "Confusion matrix: summed over 5 splits (seeds 42–46)</h2>" in page
    assert "Per-class recall: summed over 5 splits (seeds 42–46)</h2>" in page
    assert "Chosen parameters, split 1 of 5 (seed 42)</th>" in page
    # the recall chart: bars and the overall line from the same predictions, on one axis
    fig = recall_figure(saved["per_class"], chart_title(saved), saved["scope"]["per_class"])
    [ax] = fig.axes
    bars = sorted(p.get_width() for p in ax.patches)
    assert bars == pytest.approx(sorted(recall.values()))
    [line] = ax.lines
    overall = np.trace(summed) / summed.sum()  # every split has as many test images
    assert line.get_xdata() == pytest.approx([overall, overall])
    assert overall == pytest.approx(saved["rank1"]) and bars[0] <= overall <= bars[-1]
    assert png_bytes(fig) == json_path.with_name(json_path.stem + "-recall.png").read_bytes()


def test_one_split_says_which(tmp_path):
    store = synthetic(tmp_path, "s", signal=1.0)
    [result] = classify(config(tmp_path, "out"), store)
    saved, page, _ = _saved(tmp_path / "out")
    assert saved["splits"] == 1 and saved["scope"]["rank1"] == "one split (seed 42)"
    assert [s["seed"] for s in saved["per_split"]] == [42]
    assert saved["per_split"][0]["rank1"] == saved["rank1"]
    assert "On one split (seed 42): 40 test images." in page
    assert "Confusion matrix: one split (seed 42)</h2>" in page
    assert "Each split" not in page and "±" not in page
