"""The out-of-core learner: sgd trained from an HDF5 store buffer by buffer, never holding
all training features at once."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import blobs, write_synthetic_store
from realdata import needs_shared, store_of
from sklearn.linear_model import SGDClassifier

from featx.core.config import Config
from featx.data.dataset import TEST, TRAIN
from featx.learn import learners
from featx.learn.classification import classify
from featx.learn.learners import StreamingSGD, fit_store, get_learner, store_apply, store_passes
from featx.store.read import FeatureStore

# 300 rows of 3 well separated classes in 8 dimensions (float32, as a store holds them).
SEPARATED = {"n": 300, "d": 8, "spread": 4.0, "dtype": np.float32}


@pytest.fixture()
def chunked_store(tmp_path):
    """300 rows of 3 separable classes, in class order (as a real store: sorted paths), in
    HDF5 chunks of 16 rows; a quarter of each class is test."""
    x, y = blobs(3, **SEPARATED)
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    split = np.where(np.arange(len(y)) % 4 == 0, TEST, TRAIN).astype(np.int8)
    paths = [f"c{c}/img{i:03d}.png" for i, c in enumerate(y)]
    path = write_synthetic_store(tmp_path / "synthetic.h5", x, y, paths, split,
                                 ["a", "b", "c"], chunk_rows=16)
    with FeatureStore(path) as store:
        assert store.file["features"].chunks[0] == 16  # many chunks: 19
    return path, x, y, split


class Spy:
    """Counts chunk reads and records the largest buffer sgd ever got."""

    def __init__(self, monkeypatch):
        self.reads = 0
        self.largest_read = 0
        self.largest_buffer = 0
        self.buffers = 0
        iter_chunks = FeatureStore.iter_chunks
        partial_fit = SGDClassifier.partial_fit

        def counting_iter(store, rows=None):
            for sel, block in iter_chunks(store, rows):
                self.reads += 1
                self.largest_read = max(self.largest_read, len(sel))
                yield sel, block

        def counting_fit(clf, x, y, **kw):
            self.buffers += 1
            self.largest_buffer = max(self.largest_buffer, len(x))
            return partial_fit(clf, x, y, **kw)

        def no_bulk_read(store, rows=None):
            raise AssertionError("all features were loaded at once")

        monkeypatch.setattr(FeatureStore, "iter_chunks", counting_iter)
        monkeypatch.setattr(FeatureStore, "features", no_bulk_read)
        monkeypatch.setattr(SGDClassifier, "partial_fit", counting_fit)


def test_sgd_streams_from_a_store_of_many_chunks(chunked_store, monkeypatch):
    path, x, y, split = chunked_store
    monkeypatch.setattr(learners, "BUFFER_BYTES", 100 * 8 * x.shape[1])  # 100-row buffers
    spy = Spy(monkeypatch)
    train, test = np.flatnonzero(split == TRAIN), np.flatnonzero(split == TEST)
    result = fit_store("sgd", path, train, cv=2, n_jobs=1, seed=0)
    assert spy.largest_buffer <= 100 < len(train)  # never all training rows at once
    assert spy.largest_read <= 64  # iter_chunks reads 4 chunks of 16 rows at a time
    epochs = StreamingSGD().epochs
    blocks = -(-len(x) // 64)
    fits = len(get_learner("sgd").grid["alpha"]) * 2 + 1  # (alphas x folds) + the refit
    assert spy.buffers >= fits * epochs * 2
    assert spy.reads >= fits * (epochs + 1) * blocks  # every block read again each pass
    assert result.best_params["alpha"] in get_learner("sgd").grid["alpha"]
    assert 0.9 <= result.cv_score <= 1.0
    predicted = store_apply(result.model.predict, path, test)
    assert (predicted == y[test]).mean() > 0.95


def test_store_passes_cover_every_row_once_in_shuffled_buffers(chunked_store):
    path, x, y, split = chunked_store
    rows = np.flatnonzero(split == TRAIN)
    with FeatureStore(path) as store:
        passes = store_passes(store, rows, store.labels, max_rows=100)
        got = [list(passes(np.random.default_rng(seed))) for seed in (0, 1)]
    for buffers in got:
        assert all(len(bx) <= 100 for bx, _ in buffers) and len(buffers) >= 3
        seen_x = np.concatenate([bx for bx, _ in buffers])
        seen_y = np.concatenate([by for _, by in buffers])
        # the same rows, each once, with its own label
        order = np.lexsort(seen_x.T[::-1])
        expected = np.lexsort(x[rows].T[::-1])
        np.testing.assert_array_equal(seen_x[order], x[rows][expected])
        np.testing.assert_array_equal(seen_y[order], y[rows][expected])
    first = np.concatenate([bx for bx, _ in got[0]])
    second = np.concatenate([bx for bx, _ in got[1]])
    assert not np.array_equal(first, second)  # each pass its own order
    assert not np.array_equal(first, x[rows])  # not the store's (class-sorted) order


def test_store_apply_keeps_the_order_of_the_rows_given(chunked_store):
    path, x, _, _ = chunked_store
    rows = np.array([250, 3, 77, 16, 15, 299, 0])
    np.testing.assert_array_equal(store_apply(lambda b: b[:, :2] * 2, path, rows),
                                  x[rows, :2] * 2)


def test_sgd_uses_the_validation_split_when_there_is_one(chunked_store):
    path, x, y, split = chunked_store
    train = np.flatnonzero(split == TRAIN)
    val, fit_rows = train[::5], np.setdiff1d(train, train[::5])
    result = fit_store("sgd", path, fit_rows, val, n_jobs=1)
    assert result.model.scaler_.n_samples_seen_ == len(train)  # refitted on train + val


def test_classify_with_sgd_alone_never_loads_the_features(chunked_store, monkeypatch, tmp_path):
    path, x, y, split = chunked_store
    monkeypatch.setattr(learners, "BUFFER_BYTES", 100 * 8 * x.shape[1])  # 100-row buffers
    spy = Spy(monkeypatch)
    config = Config.from_dict({"name": "stream", "out": str(tmp_path / "out"),
                               "dataset": {"test": 0.25, "seed": 42},
                               "classify": {"classifiers": ["sgd"], "cv": 2, "n_jobs": 1}})
    [result] = classify(config, path)
    assert spy.largest_buffer <= 100
    assert result["classifier"] == "sgd" and result["n_test"] == int((split == TEST).sum())
    assert result["rank1"] > 0.95 and result["best_params"]["alpha"] > 0
    assert (tmp_path / "out" / result["run"] / "stream-sgd.json").is_file()


def test_sgd_on_arrays_matches_the_grid_and_predicts(monkeypatch):
    x, y = blobs(3, seed=3, **SEPARATED)
    result = learners.fit("sgd", x, y, cv=2)
    x_new, y_new = blobs(3, seed=4, **SEPARATED)
    assert (result.model.predict(x_new) == y_new).mean() > 0.95
    proba = result.model.predict_proba(x_new)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (result.model.classes_[proba.argmax(axis=1)] == result.model.predict(x_new)).all()


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_flowers17_sgd_within_two_points_of_logreg(flowers17, flowers17_logreg, tmp_path):
    """The out-of-core learner on real features: rank-1 within 0.02 of logistic regression
    (fitted once a session, see realdata.py)."""
    config = copy.deepcopy(flowers17)
    config.out = str(tmp_path)
    config.classify.classifiers = ["sgd"]
    (sgd,) = classify(config)
    logreg, _ = flowers17_logreg
    assert logreg["rank1"] >= 0.92 and logreg["n_test"] == sgd["n_test"] == 340
    assert sgd["rank1"] >= logreg["rank1"] - 0.02, sgd["rank1"]
    assert sgd["rank5"] >= 0.98
    assert store_of(flowers17).is_file()
