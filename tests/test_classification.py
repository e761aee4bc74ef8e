"""Classifiers on the cached features: the classify runner, its files, and the learners."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import blobs as _blobs  # n_classes, n=60, d=5: 3 apart
from helpers import result_lines
from sklearn.metrics import confusion_matrix

from featx.core.config import ConfigError
from featx.core.errors import StoreError
from featx.data.dataset import TEST, TRAIN
from featx.learn import learners
from featx.learn.classification import classify, load_model, results_dir
from featx.learn.learners import ClassifierError, class_scores, fit, get_learner
from featx.store.read import FeatureStore


@pytest.fixture(scope="module")
def classified(tiny_store, tmp_path_factory, make_config):
    out = tmp_path_factory.mktemp("results")
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out))
    with result_lines() as lines:
        results = classify(config)
    return config, out, results, lines


@pytest.fixture(scope="module")
def test_rows(tiny_store):
    with FeatureStore(tiny_store.path) as store:
        split, ok = store.split, store.ok
        rows = np.flatnonzero((split == TEST) & ok)
        train = np.flatnonzero((split == TRAIN) & ok)
        return (store.features(rows), store.labels[rows], store.features(train),
                store.labels[train], store.label_names)


def test_both_learners_report_ranks(classified, test_rows):
    config, out, results, lines = classified
    x_test, y_test, x_train, y_train, names = test_rows
    assert [r["classifier"] for r in results] == ["logreg", "linear_svm"]
    for r in results:
        assert 0.0 <= r["rank1"] <= 1.0 and r["rank5"] is None  # 3 classes: rank-5 n/a
        assert r["n_test"] == len(y_test) > 0 and r["n_train"] == len(y_train)
        assert set(r["per_class"]) == set(names)
        assert np.array(r["confusion"]).sum() == len(y_test)
        assert r["backbone"]["backbone"] == "MobileNetV2" and r["backbone"]["input_size"] == 32
        # one split, and which: every number of the result is of the store's own split
        seed = config.dataset.seed
        assert r["splits"] == 1 and r["scope"]["rank1"] == f"one split (seed {seed})"
        assert r["per_split"] == [{"split": 1, "seed": seed, "rank1": r["rank1"],
                                   "rank5": None, "n_test": r["n_test"],
                                   "best_params": r["best_params"], "cv_score": r["cv_score"]}]
        assert "weights_file" not in r  # random weights: no file to name
    assert len(lines) == 2
    for line, r in zip(lines, results):
        assert r["classifier"] in line and "rank-1" in line and "rank-5" in line


def test_reports_and_models_are_written(classified, tiny_store, test_rows):
    config, out, results, _ = classified
    x_test, y_test, x_train, y_train, names = test_rows
    with FeatureStore(tiny_store.path) as store:
        attrs = store.attrs
    for r in results:
        stem = out / r["run"] / f"{config.name}-{r['classifier']}"
        saved = json.loads(stem.with_suffix(".json").read_text())
        assert saved == json.loads(json.dumps(r))
        md = stem.with_suffix(".md").read_text()
        assert f"rank-1 {r['rank1']:.3f}" in md and r["classifier"] in md
        assert all(name in md for name in names)

        bundle = load_model(stem.with_suffix(".skops"))
        assert bundle["label_names"] == names
        assert bundle["key"] == attrs["key"] == tiny_store.key
        for k in ("backbone", "weights_id", "layer", "pooling", "input_size", "preprocess"):
            assert bundle["backbone"][k] == attrs[k], k
        predicted = bundle["model"].predict(x_test)
        assert set(predicted) <= set(range(len(names)))
        # the saved model is the one that was scored
        labels = list(range(len(names)))
        assert confusion_matrix(y_test, predicted, labels=labels).tolist() == r["confusion"]


def test_default_results_dir_is_beside_the_store(tmp_path, make_config):
    config = make_config(tmp_path, tmp_path)
    store = tmp_path / "cache" / "d-MobileNetV2-avg-0123.h5"
    assert results_dir(config, store) == tmp_path / "cache" / "d-MobileNetV2-avg-0123.runs"
    config.out = str(tmp_path / "elsewhere")
    assert results_dir(config, store) == tmp_path / "elsewhere"


def test_unknown_classifier_is_an_error(tiny_store, make_config, tmp_path):
    with pytest.raises(ConfigError) as e:  # refused with the config, before any store is read
        make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path),
                    classify={"classifiers": ["random_forest"]})
    assert "random_forest" in str(e.value)
    assert all(name in str(e.value) for name in learners.LEARNERS)
    with pytest.raises(ClassifierError):
        get_learner("svm")


def test_classify_without_a_store_says_to_extract(tiny_store, make_config, tmp_path):
    config = make_config(tiny_store.root, tmp_path / "empty-cache", out=str(tmp_path))
    with pytest.raises(StoreError, match="featx extract"):
        classify(config)


def test_classify_refuses_a_store_split_differently(tiny_store, make_config, tmp_path):
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path),
                         dataset={"test": 0.5})
    with pytest.raises(StoreError, match="split"):
        classify(config)
    assert not list(tmp_path.iterdir())  # nothing written


def test_classify_refuses_a_store_split_with_another_seed(tiny_store, make_config, tmp_path):
    """The same fractions, another seed: other images in the test split. (The store is given:
    random weights follow the seed, so a pipeline with another one locates no store.)"""
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path),
                         dataset={"seed": tiny_store.config.dataset.seed + 1})
    with pytest.raises(StoreError, match=r"split .*'seed': 43"):
        classify(config, tiny_store.path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_classify_refuses_a_store_grouped_otherwise(tiny_store, make_config, tmp_path):
    """dataset.group_duplicates and its threshold are part of the split: a store split with
    another is refused, naming the settings, and nothing is written."""
    for dataset, said in (({"duplicate_threshold": 0.9}, "dataset.duplicate_threshold = 0.9)"),
                          ({"group_duplicates": False}, "dataset.group_duplicates = false")):
        config = make_config(tiny_store.root, tiny_store.config.cache_dir,
                             out=str(tmp_path), dataset=dataset)
        with pytest.raises(StoreError, match="split keeps duplicates together") as e:
            classify(config, tiny_store.path)
        assert f"the pipeline's {'does not ' if 'false' in said else ''}keep" in str(e.value)
        assert said in str(e.value) and "featx extract" in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_store_made_before_grouping_classifies_with_its_split_said_ungrouped(
        tiny_store, make_config, tmp_path, caplog):
    """A store that records no grouping (featx 0.6 wrote none) is read as it is: its split
    is recorded as not grouped, the pairs crossing it as unknown, and said so."""
    import logging
    import shutil

    import h5py

    cache = tmp_path / "cache"
    cache.mkdir()
    old = cache / tiny_store.path.name
    shutil.copy2(tiny_store.path, old)
    with h5py.File(old, "r+") as f:
        for name in ("groups", "near_pairs", "near_similarity"):
            del f[name]
        for name in ("groups", "groups_sha256", "grouping"):
            del f.attrs[name]
    config = make_config(tiny_store.root, cache, out=str(tmp_path / "out"),
                         classify={"classifiers": ["logreg"]})
    with caplog.at_level(logging.INFO, logger="featx"):
        (result,) = classify(config, old)
    record = result["duplicates"]
    assert not record["grouped"] and record["crossing_pairs"] is None
    assert record["groups"] is None and set(record["per_class"]) == set(tiny_store.written)
    assert "made before featx 0.7" in caplog.text
    page = (tmp_path / "out" / result["run"] / "tiny-logreg.html").read_text()
    assert "near duplicates not searched" in page


def test_the_weights_file_is_named_from_the_store_that_used_it():
    from featx.learn.classification import weights_file

    pipeline = json.dumps({"backbone": {"weights": "/models/v2/mobilenet_v2_no_top.h5"}})
    assert weights_file({"weights": "file", "pipeline": pipeline}) == "mobilenet_v2_no_top.h5"
    parsed = json.loads(pipeline)  # as FeatureStore.attrs gives it
    assert weights_file({"weights": "file", "pipeline": parsed}) == "mobilenet_v2_no_top.h5"
    assert weights_file({"weights": "imagenet", "pipeline": pipeline}) is None
    assert weights_file({"weights": "file"}) is None  # a store that did not record it


# ---------------------------------------------------------------------------------- learners

def test_class_scores_use_decision_function_for_linear_svc():
    x, y = _blobs(3)
    model = fit("linear_svm", x, y, cv=2).model
    assert not hasattr(model, "predict_proba")
    scores = class_scores(model, x)
    np.testing.assert_array_equal(scores, model.decision_function(x))
    assert scores.shape == (len(x), 3)


def test_class_scores_for_binary_linear_svc_have_one_column_per_class():
    x, y = _blobs(2)
    model = fit("linear_svm", x, y, cv=2).model
    scores = class_scores(model, x)
    margin = model.decision_function(x)
    assert scores.shape == (len(x), 2)
    np.testing.assert_array_equal(scores[:, 1], margin)
    np.testing.assert_array_equal(scores[:, 0], -margin)
    np.testing.assert_array_equal(model.classes_[scores.argmax(axis=1)], model.predict(x))


def test_class_scores_use_probabilities_for_logreg():
    x, y = _blobs(3)
    model = fit("logreg", x, y, cv=2).model
    scores = class_scores(model, x)
    np.testing.assert_allclose(scores, model.predict_proba(x))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)


@pytest.mark.parametrize("name", sorted(learners.LEARNERS))
def test_fit_searches_c_and_learns(name):
    x, y = _blobs(3, n=90)
    result = fit(name, x, y, cv=3, seed=0)
    assert result.name == name
    assert set(result.best_params) == set(get_learner(name).grid)
    assert list(result.best_params.values())[0] in list(get_learner(name).grid.values())[0]
    assert 0.0 <= result.cv_score <= 1.0 and result.fit_seconds >= 0
    x_new, y_new = _blobs(3, n=90, seed=1)
    assert (result.model.predict(x_new) == y_new).mean() > 0.8  # separable blobs


def test_fit_with_a_validation_split_refits_on_train_and_val():
    x, y = _blobs(3, n=60)
    xv, yv = _blobs(3, n=30, seed=2)
    result = fit("logreg", x, y, xv, yv)
    assert result.model.named_steps["scale"].n_samples_seen_ == 90


def test_fit_needs_two_training_images_per_class_for_cross_validation():
    x, _ = _blobs(3, n=7)
    y = np.array([0, 0, 0, 1, 1, 1, 2])  # class 2 has a single training image
    with pytest.raises(ClassifierError, match="2"):
        fit("logreg", x, y)


# ------------------------------------------------------- more learners, weighting, quick, ensemble

def _imbalanced(seed=0, n_major=240, n_minor=24):
    """Two overlapping classes, one ten times as common as the other."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_major, int), np.ones(n_minor, int)]
    x = rng.normal(size=(len(y), 4))
    x[y == 1, 0] += 1.5
    return x, y


@pytest.mark.parametrize("name", sorted(learners.LEARNERS))
def test_every_learner_predicts_and_ranks(name):
    x, y = _blobs(6, n=180, d=8)
    result = fit(name, x, y, cv=2, seed=0)
    x_new, y_new = _blobs(6, n=120, d=8, seed=5)
    scores = class_scores(result.model, x_new)
    assert scores.shape == (len(x_new), 6)
    assert (result.model.classes_[scores.argmax(axis=1)] == result.model.predict(x_new)).all()
    from featx.report.metrics import rank_k

    rank1 = rank_k(y_new, scores, result.model.classes_, 1)
    rank5 = rank_k(y_new, scores, result.model.classes_, 5)
    assert 0.8 < rank1 <= rank5 and rank5 > 0.95


@pytest.mark.parametrize("name", sorted(learners.LEARNERS))
def test_balanced_class_weight_raises_minority_recall(name):
    x, y = _imbalanced()
    x_new, y_new = _imbalanced(seed=1)
    recall = {}
    for weight in ("", "balanced"):
        model = fit(name, x, y, cv=2, class_weight=weight).model
        recall[weight] = (model.predict(x_new)[y_new == 1] == 1).mean()
    assert recall["balanced"] > recall[""] + 0.05, recall


def test_class_weight_must_be_balanced_or_empty():
    x, y = _blobs(3)
    with pytest.raises(ClassifierError, match="class_weight"):
        fit("logreg", x, y, cv=2, class_weight="inverse")


@pytest.mark.parametrize("name", sorted(learners.LEARNERS))
def test_quick_mode_searches_the_reduced_grid_on_two_folds(name, monkeypatch):
    seen = {}

    class Spy(learners.GridSearchCV):
        def fit(self, x, y, **kw):
            seen["grid"], seen["folds"] = self.param_grid, self.cv.get_n_splits()
            return super().fit(x, y, **kw)

    monkeypatch.setattr(learners, "GridSearchCV", Spy)
    learner = get_learner(name)
    assert len(list(learners.ParameterGrid(learner.quick_grid))) \
        < len(list(learners.ParameterGrid(learner.grid)))
    x, y = _blobs(3, n=90)
    result = fit(name, x, y, cv=5, quick=True)
    assert seen == {"grid": learner.quick_grid, "folds": 2}
    assert all(result.best_params[k] in v for k, v in learner.quick_grid.items())
    fit(name, x, y, cv=5)
    assert seen == {"grid": learner.grid, "folds": 5}


def test_quick_flag_sets_the_config():
    from featx.cli import build_parser, config_from_args

    args = build_parser().parse_args(["classify", "--quick"])
    assert config_from_args(args).classify.quick is True
    args = build_parser().parse_args(["classify"])
    assert config_from_args(args).classify.quick is False


def test_ensemble_averages_the_classifiers_probabilities(tiny_store, make_config, tmp_path,
                                                         test_rows):
    x_test, y_test, *_ = test_rows
    names = ["logreg", "knn", "sgd"]
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path),
                         classify={"classifiers": names, "ensemble": True, "cv": 2})
    results = classify(config)
    assert [r["classifier"] for r in results] == [*names, "ensemble(logreg+knn+sgd)"]
    run = tmp_path / results[0]["run"]
    members = [load_model(run / f"tiny-{n}.skops")["model"] for n in names]
    manual = np.mean([m.predict_proba(x_test) for m in members], axis=0)
    ensemble = load_model(run / "tiny-ensemble.skops")["model"]
    np.testing.assert_allclose(ensemble.predict_proba(x_test), manual, rtol=1e-6)
    predicted = ensemble.classes_[manual.argmax(axis=1)]
    labels = list(range(3))
    assert results[-1]["confusion"] == confusion_matrix(y_test, predicted,
                                                        labels=labels).tolist()
    assert set(results[-1]["best_params"]) >= {"logreg.C", "knn.n_neighbors", "sgd.alpha"}
    assert (run / "tiny-ensemble.json").is_file()


def test_ensemble_calibrates_learners_without_probabilities():
    x, y = _blobs(3, n=90)
    model = fit("linear_svm", x, y, cv=2).model
    calibrated = learners.with_probabilities(model, x, y, cv=2)
    proba = calibrated.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    agree = (calibrated.classes_[proba.argmax(axis=1)] == model.predict(x)).mean()
    assert agree > 0.9
    logreg = fit("logreg", x, y, cv=2).model
    assert learners.with_probabilities(logreg, x, y) is logreg  # has its own


def test_ensemble_needs_two_classifiers(tiny_store, make_config, tmp_path):
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path),
                         classify={"classifiers": ["logreg"], "ensemble": True})
    with pytest.raises(ClassifierError, match="ensemble"):
        classify(config)


def test_rows_of_one_image_stay_in_one_fold():
    """Augmented passes are near-copies of their image: folded by row, the copies of a
    held-out image are trained on and cross-validation scores noise as perfect."""
    rng = np.random.default_rng(0)
    images, copies = 60, 4
    x_img = rng.normal(size=(images, 16))
    y_img = np.arange(images) % 3  # labels unrelated to the features
    x = np.repeat(x_img, copies, axis=0) + rng.normal(scale=1e-3, size=(images * copies, 16))
    y = np.repeat(y_img, copies)
    groups = np.repeat(np.array([f"img{i}.jpg" for i in range(images)], dtype=object), copies)
    leaked = fit("knn", x, y, cv=3, seed=0)
    grouped = fit("knn", x, y, cv=3, seed=0, groups=groups)
    assert leaked.cv_score > 0.9
    assert grouped.cv_score < 0.6  # chance is 1/3
