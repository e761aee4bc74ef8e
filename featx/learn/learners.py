"""Classifiers on cached features: scikit-learn estimators with a parallel grid search.

Every learner is a scikit-learn estimator (fit/predict, and predict_proba or
decision_function) so that anything scikit-learn offers composes with it. ``sgd`` is also
out-of-core: :func:`fit_store` trains it from the HDF5 store in buffers of bounded size, so
a store larger than memory can be trained on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import (
    GridSearchCV,
    ParameterGrid,
    PredefinedSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
)
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.class_weight import compute_class_weight

from featx.core.config import Config
from featx.core.errors import ClassifierError
from featx.store.read import FeatureStore

log = logging.getLogger(__name__)

# sgd holds at most this many bytes of features at a time (or one store chunk, if larger),
# as float64, the dtype SGDClassifier computes in.
BUFFER_BYTES = 64 << 20
SCALER_ROWS = 1024  # rows a StandardScaler.partial_fit call takes (its temporaries: 2x that)
QUICK_FOLDS = 2



def _per_feature(x: np.ndarray) -> np.ndarray:
    """Divide standardised features by sqrt(n_features): the RBF gamma then means the same
    for every backbone (gamma=1 is scikit-learn's "scale")."""
    return x / np.sqrt(x.shape[1])


class KNN(KNeighborsClassifier):
    """k nearest neighbours (cosine distance, votes weighted by 1/distance) whose class votes
    can be balanced (``class_weight="balanced"``: each class's votes divided by its share of
    the training rows). k is capped at the number of training rows."""

    def __init__(self, n_neighbors: int = 5, *, weights: str = "distance",
                 metric: str = "cosine", class_weight: str | None = None) -> None:
        super().__init__(n_neighbors=n_neighbors, weights=weights, metric=metric)
        self.class_weight = class_weight

    def fit(self, x, y):
        super().fit(x, y)
        self.encoded_ = np.searchsorted(self.classes_, np.asarray(y))
        self.vote_weight_ = np.ones(len(self.classes_))
        if self.class_weight == "balanced":
            self.vote_weight_ = compute_class_weight("balanced", classes=self.classes_, y=y)
        return self

    def predict_proba(self, x):
        dist, ind = self.kneighbors(x, n_neighbors=min(self.n_neighbors, self.n_samples_fit_))
        if self.weights == "distance":
            dist = np.maximum(dist, 0.0)  # cosine distances can round to -1e-16
            with np.errstate(divide="ignore"):
                w = 1.0 / dist
            exact = np.isinf(w)  # a training row at distance 0 takes the whole vote
            hit = exact.any(axis=1)
            w[hit] = exact[hit]
        else:
            w = np.ones_like(dist)
        votes = np.zeros((len(dist), len(self.classes_)))
        np.add.at(votes, (np.arange(len(dist))[:, None], self.encoded_[ind]), w)
        votes *= self.vote_weight_
        total = votes.sum(axis=1, keepdims=True)
        return votes / np.where(total > 0, total, 1.0)

    def predict(self, x):
        return self.classes_[np.argmax(self.predict_proba(x), axis=1)]


# A pass: a callable taking a numpy Generator and yielding (features, labels) buffers that
# together cover the training rows once, in a shuffled order. Each buffer is the learner's
# to change: StreamingSGD scales it in place.
Passes = Callable[[np.random.Generator], Iterator[tuple[np.ndarray, np.ndarray]]]


class StreamingSGD(ClassifierMixin, BaseEstimator):
    """Logistic regression by averaged SGD, fitted buffer by buffer: a first pass fits the
    StandardScaler (``partial_fit``), then ``epochs`` passes in shuffled order fit the
    ``SGDClassifier(loss="log_loss")``. Never more than one buffer of features in memory."""

    def __init__(self, alpha: float = 1e-3, epochs: int = 20, eta0: float = 0.01,
                 class_weight: str | None = None, random_state: int = 0) -> None:
        self.alpha = alpha
        self.epochs = epochs
        self.eta0 = eta0
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, x: np.ndarray, y: np.ndarray) -> StreamingSGD:
        x, y = np.asarray(x), np.asarray(y)
        step = buffer_rows(x.shape[1] if x.ndim > 1 else 1)

        def passes(rng: np.random.Generator):
            order = rng.permutation(len(x))
            for start in range(0, len(x), step):
                rows = order[start:start + step]
                yield x[rows].astype(np.float64), y[rows]

        return self.fit_passes(passes, y)

    def fit_passes(self, passes: Passes, y_all: np.ndarray) -> StreamingSGD:
        """Fit from ``passes`` (see :data:`Passes`); ``y_all``: every training label (labels
        are small: they give the classes and the balanced class weights)."""
        rng = np.random.default_rng(self.random_state)
        self.classes_ = np.unique(y_all)
        weights = None
        if self.class_weight == "balanced":  # partial_fit takes a dict, not "balanced"
            w = compute_class_weight("balanced", classes=self.classes_, y=y_all)
            weights = dict(zip(self.classes_.tolist(), w))
        self.scaler_ = StandardScaler()
        for xb, _ in passes(rng):
            # in slices: its variance update makes two float64 temporaries of what it is given
            for start in range(0, len(xb), SCALER_ROWS):
                self.scaler_.partial_fit(xb[start:start + SCALER_ROWS])
            del xb  # before the next buffer is read
        # Constant step with averaging (ASGD): on CNN features it reached logreg's accuracy
        # where the "optimal" schedule stalled 2-4 points below.
        self.sgd_ = SGDClassifier(loss="log_loss", alpha=self.alpha, learning_rate="constant",
                                  eta0=self.eta0, average=True, shuffle=False,
                                  class_weight=weights, random_state=self.random_state)
        for _ in range(self.epochs):
            for xb, yb in passes(rng):
                # scaled in place: partial_fit then uses the float64 buffer as it is (no copy)
                xb = self.scaler_.transform(xb, copy=False)
                self.sgd_.partial_fit(xb, yb, classes=self.classes_)
                del xb, yb
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return self.sgd_.decision_function(self.scaler_.transform(x))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.sgd_.predict_proba(self.scaler_.transform(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.sgd_.predict(self.scaler_.transform(x))


def buffer_rows(row_size: int) -> int:
    """Rows of ``row_size`` features in a float64 buffer of BUFFER_BYTES."""
    return max(1, BUFFER_BYTES // (8 * max(row_size, 1)))


@dataclass(frozen=True)
class Learner:
    make: Callable[[int, str | None], BaseEstimator]  # (seed, class_weight) -> estimator
    grid: dict[str, list[Any]]
    quick_grid: dict[str, list[Any]]  # classify.quick: a first look
    streaming: bool = False  # can be trained from the store in bounded memory (fit_store)


def _scaled(clf: BaseEstimator, *steps) -> Pipeline:
    # CNN activations vary in scale across channels: standardising lets one grid fit all
    # backbones and keeps lbfgs / liblinear / libsvm converging quickly.
    return Pipeline([("scale", StandardScaler()), *steps, ("clf", clf)])


LEARNERS: dict[str, Learner] = {
    "logreg": Learner(
        lambda seed, cw=None: _scaled(LogisticRegression(max_iter=3000, class_weight=cw,
                                                         random_state=seed)),
        {"clf__C": [0.001, 0.01, 0.1, 1.0]}, {"clf__C": [0.01, 0.1]}),
    "linear_svm": Learner(
        lambda seed, cw=None: _scaled(LinearSVC(max_iter=5000, class_weight=cw,
                                                random_state=seed)),
        # Larger C never won on CNN features here and costs 20x the fit time.
        {"clf__C": [0.0001, 0.001, 0.01]}, {"clf__C": [0.0001, 0.001]}),
    "rbf_svm": Learner(
        lambda seed, cw=None: _scaled(SVC(kernel="rbf", class_weight=cw, random_state=seed),
                                      ("unit", FunctionTransformer(_per_feature))),
        # gamma in units of scikit-learn's "scale" (see _per_feature); 0.3 won on Flowers-17.
        {"clf__C": [1.0, 10.0, 100.0], "clf__gamma": [0.1, 0.3, 1.0]},
        {"clf__C": [10.0], "clf__gamma": [0.3, 1.0]}),
    "knn": Learner(
        lambda seed, cw=None: KNN(class_weight=cw),
        {"n_neighbors": [1, 5, 10, 20]}, {"n_neighbors": [5, 10]}),
    "sgd": Learner(
        lambda seed, cw=None: StreamingSGD(class_weight=cw, random_state=seed),
        {"alpha": [1e-4, 1e-3, 1e-2]}, {"alpha": [1e-3, 1e-2]}, streaming=True),
}


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    """"Power" normalisation: sign(x) * sqrt(|x|), which evens out bursty activations."""
    return np.sign(x) * np.sqrt(np.abs(x))


def normalizer(kind: str) -> BaseEstimator | None:
    """The step ``classify.normalize`` puts before a learner (None for "none")."""
    if kind == "none":
        return None
    if kind == "l2":
        return Normalizer()
    if kind == "power":
        return Pipeline([("sqrt", FunctionTransformer(signed_sqrt)), ("l2", Normalizer())])
    if kind == "pca_whiten":  # 99% of the variance, each component scaled to unit variance
        return PCA(n_components=0.99, whiten=True, svd_solver="full")
    raise ClassifierError(f"unknown normalisation {kind!r}")


def get_learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise ClassifierError(f"unknown classifier {name!r}; valid: {', '.join(LEARNERS)}")
    return LEARNERS[name]


def _class_weight(value: str) -> str | None:
    if value not in ("", "balanced"):
        raise ClassifierError(f'classify.class_weight must be "" or "balanced", not {value!r}')
    return value or None


@dataclass
class FitResult:
    name: str
    model: BaseEstimator  # refitted on all training (and validation) rows
    best_params: dict[str, Any]
    cv_score: float
    fit_seconds: float


def _folds(y: np.ndarray, cv: int, seed: int, groups: np.ndarray | None = None
           ) -> StratifiedKFold | StratifiedGroupKFold:
    if groups is not None:  # count images, not rows
        _, first = np.unique(groups, return_index=True)
        per_class = np.bincount(y[first], minlength=int(y.max()) + 1) if len(y) else []
    else:
        per_class = np.bincount(y) if len(y) else []
    smallest = int(np.min(per_class)) if len(per_class) else 0
    if smallest < 2:
        raise ClassifierError("a class has fewer than 2 training images: "
                              "cross-validation needs at least 2 per class")
    if groups is not None:
        return StratifiedGroupKFold(n_splits=min(cv, smallest), shuffle=True,
                                    random_state=seed)
    return StratifiedKFold(n_splits=min(cv, smallest), shuffle=True, random_state=seed)


def fit(name: str, x_train: np.ndarray, y_train: np.ndarray,
        x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
        cv: int = 3, n_jobs: int = 1, seed: int = 0, class_weight: str = "",
        quick: bool = False, groups: np.ndarray | None = None,
        normalize: str = "none") -> FitResult:
    """Grid-search the learner's parameters on the training rows (validation split if given,
    else stratified k-fold; ``quick``: the reduced grid and 2 folds), in ``n_jobs`` processes,
    and refit the best model on training + validation rows. ``groups`` (one id per training
    row, e.g. the image path) keeps rows of one image in one fold: augmented passes or crops
    of a held-out image must not be trained on."""
    learner = get_learner(name)
    if x_val is not None and len(x_val):
        x = np.concatenate([x_train, x_val])
        y = np.concatenate([y_train, y_val])
        folds = PredefinedSplit(np.r_[np.full(len(x_train), -1), np.zeros(len(x_val))])
    else:
        x, y = x_train, y_train
        folds = _folds(y, QUICK_FOLDS if quick else cv, seed, groups)
    grid = learner.quick_grid if quick else learner.grid
    estimator = learner.make(seed, _class_weight(class_weight))
    step = normalizer(normalize)
    if step is not None:  # part of the model: predict normalises new features the same way
        estimator = Pipeline([("normalize", step), ("model", estimator)])
        grid = {f"model__{k}": v for k, v in grid.items()}
    search = GridSearchCV(estimator, grid, cv=folds,
                          n_jobs=n_jobs, scoring="accuracy", refit=True, error_score="raise")
    t0 = time.perf_counter()
    search.fit(x, y, groups=groups if not isinstance(folds, PredefinedSplit) else None)
    warn_at_edges(name, grid, search.cv_results_["params"],
                  search.cv_results_["mean_test_score"], quick)
    return FitResult(name, search.best_estimator_, dict(search.best_params_),
                     float(search.best_score_), time.perf_counter() - t0)


def warn_at_edges(name: str, grid: dict[str, list[Any]], params: list[dict[str, Any]],
                  scores: np.ndarray, quick: bool = False) -> list[str]:
    """Log (and return) a warning for each numeric parameter of ``grid`` (two values or
    more) whose best-scoring candidates all lie at one end of it: the best value may lie
    beyond what was tried. ``params`` and ``scores`` (one mean score each, (n,)): every
    candidate of the grid search. Not where a candidate inside the grid scores as well: on
    small data ties are common, and they go to the first, often the smallest, value."""
    scores = np.asarray(scores, np.float64)
    top = [p for p, s in zip(params, scores) if np.isclose(s, scores.max(), rtol=1e-9, atol=0)]
    said = []
    for key, values in grid.items():
        if len(values) < 2 or not all(_number(v) for v in values):
            continue
        ordered, chosen, short = sorted(values), {p[key] for p in top}, key.split("__")[-1]
        for at, end, up in ((0, "smallest", False), (-1, "largest", True)):
            edge = ordered[at]
            if chosen != {edge}:
                continue
            line = (f"{name}: {short}={_shown(edge)} is the {end} value tried "
                    f"({', '.join(map(_shown, ordered))}); ")
            full = sorted(get_learner(name).grid.get(key.removeprefix("model__"), [edge]))
            beyond = _beyond(ordered, up)
            if quick and (full[-1] > edge if up else full[0] < edge):
                line += (f"the full grid (classify.quick = false) tries {short} "
                         f"{'up' if up else 'down'} to {_shown(full[at])}")
            elif beyond:
                line += (f"try {short} in {', '.join(map(_shown, beyond))}: no setting "
                         "changes the grid, edit LEARNERS in featx/learn/learners.py")
            else:  # nothing valid lies past it (1 neighbour)
                continue
            log.warning("%s", line)
            said.append(line)
    return said


def _shown(value: float) -> str:
    """A grid value to 3 significant digits, as a person would write it (1000, 0.0111)."""
    return f"{float(f'{value:.3g}'):g}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _beyond(ordered: list[Any], up: bool) -> list[Any]:
    """Three values from a grid's largest (``up``) or smallest value outwards, that value
    among them, by the grid's own step there (a ratio where the values are positive), in
    ascending order; of an integer grid, whole numbers of at least 1. Empty where fewer
    than two are left."""
    a, b = (ordered[-2], ordered[-1]) if up else (ordered[1], ordered[0])
    if a > 0 and b > 0:
        values = [b * (b / a) ** i for i in range(3)]
    else:
        values = [b + (b - a) * i for i in range(3)]
    if all(isinstance(v, (int, np.integer)) for v in ordered):
        values = list(dict.fromkeys(int(round(v)) for v in values if round(v) >= 1))
    return sorted(values) if len(values) > 1 else []


# ------------------------------------------------------------------------- out of core

def store_passes(store: FeatureStore, rows: np.ndarray, labels: np.ndarray,
                 max_rows: int | None = None) -> Passes:
    """Passes over ``rows`` of an open store: its chunks in a shuffled order, gathered into
    buffers of at most ``max_rows`` rows (or one chunk) whose rows are shuffled."""
    row_size = int(np.prod(store.feature_shape))
    max_rows = max_rows or buffer_rows(row_size)
    block = store.rows_per_read
    rows = np.sort(np.asarray(rows))
    groups = np.split(rows, np.flatnonzero(np.diff(rows // block)) + 1) if len(rows) else []

    def passes(rng: np.random.Generator):
        order, start = rng.permutation(len(groups)), 0
        while start < len(order):
            take, n = [], 0
            while start < len(order) and (not n or n + len(groups[order[start]]) <= max_rows):
                take.append(groups[order[start]])
                n += len(take[-1])
                start += 1
            # Chunks are written straight to their shuffled places in one float64 buffer (the
            # dtype SGDClassifier computes in): one buffer-sized array, not a list of chunks,
            # their concatenation, its shuffled copy and a float64 copy.
            x = np.empty((n, row_size), np.float64)
            y = np.empty(n, labels.dtype)
            place, at = rng.permutation(n), 0
            for g in take:
                for sel, block in store.iter_chunks(g):
                    to = place[at:at + len(sel)]
                    x[to] = block.reshape(len(sel), -1)
                    y[to] = labels[sel]
                    at += len(sel)
            yield x, y
            x = y = None  # released before the next buffer is allocated

    return passes


def store_apply(fn: Callable[[np.ndarray], np.ndarray], store_path: str | Path,
                rows: np.ndarray) -> np.ndarray:
    """``fn`` applied to the features of ``rows`` chunk by chunk; output rows in the order of
    ``rows`` as given."""
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    parts = []
    with FeatureStore(store_path) as store:
        for sel, block in store.iter_chunks(rows[order]):
            parts.append(fn(block.reshape(len(sel), -1)))
    got = np.concatenate(parts)
    out = np.empty_like(got)
    out[order] = got
    return out


def _fit_stream(name: str, store_path: str | Path, labels: np.ndarray, rows: np.ndarray,
                params: dict[str, Any], seed: int, class_weight: str | None) -> BaseEstimator:
    """``labels``: the store's whole labels column (indexed by row)."""
    model = get_learner(name).make(seed, class_weight).set_params(**params)
    with FeatureStore(store_path) as store:
        return model.fit_passes(store_passes(store, rows, labels), labels[rows])


def _score_stream(name: str, store_path: str | Path, labels: np.ndarray,
                  fit_rows: np.ndarray, held_rows: np.ndarray, params: dict[str, Any],
                  seed: int, class_weight: str | None) -> float:
    model = _fit_stream(name, store_path, labels, fit_rows, params, seed, class_weight)
    predicted = store_apply(model.predict, store_path, held_rows)
    return float(np.mean(predicted == labels[held_rows]))


def fit_store(name: str, store_path: str | Path, train_rows: np.ndarray,
              val_rows: np.ndarray | None = None, cv: int = 3, n_jobs: int = 1,
              seed: int = 0, class_weight: str = "", quick: bool = False) -> FitResult:
    """:func:`fit` for a streaming learner, reading the features of the store's rows buffer
    by buffer (never all at once): the same grid search, one job per (parameters, fold)."""
    learner = get_learner(name)
    if not learner.streaming:
        raise ClassifierError(f"{name} cannot be trained from the store in bounded memory")
    cw = _class_weight(class_weight)
    train_rows = np.asarray(train_rows)
    with FeatureStore(store_path) as store:
        labels = store.labels
    if val_rows is not None and len(val_rows):
        folds = [(train_rows, np.asarray(val_rows))]
        all_rows = np.concatenate([train_rows, val_rows])
    else:
        split = _folds(labels[train_rows], QUICK_FOLDS if quick else cv, seed)
        folds = [(train_rows[a], train_rows[b])
                 for a, b in split.split(train_rows, labels[train_rows])]
        all_rows = train_rows
    candidates = list(ParameterGrid(learner.quick_grid if quick else learner.grid))
    t0 = time.perf_counter()
    scores = Parallel(n_jobs=n_jobs)(
        delayed(_score_stream)(name, store_path, labels, fit_rows, held, params, seed, cw)
        for params in candidates for fit_rows, held in folds)
    means = np.asarray(scores).reshape(len(candidates), len(folds)).mean(axis=1)
    best = int(np.argmax(means))  # first of equals, as GridSearchCV
    warn_at_edges(name, learner.quick_grid if quick else learner.grid, candidates, means, quick)
    model = _fit_stream(name, store_path, labels, all_rows, candidates[best], seed, cw)
    return FitResult(name, model, dict(candidates[best]), float(means[best]),
                     time.perf_counter() - t0)


# ------------------------------------------------------------------------------- scores

def class_scores(model: BaseEstimator, x: np.ndarray) -> np.ndarray:
    """(n, n_classes) scores, columns in ``model.classes_`` order: probabilities where the
    model has them, otherwise decision values."""
    if hasattr(model, "predict_proba"):
        try:
            return model.predict_proba(x)
        except AttributeError:  # e.g. a pipeline whose last step has no predict_proba
            pass
    scores = model.decision_function(x)
    if scores.ndim == 1:  # binary: one margin for the positive class
        scores = np.column_stack([-scores, scores])
    return scores


def with_probabilities(model: BaseEstimator, x: np.ndarray, y: np.ndarray, cv: int = 3,
                       seed: int = 0, n_jobs: int = 1) -> BaseEstimator:
    """``model`` itself if it has predict_proba; else the same estimator (same parameters,
    refitted on x, y) with sigmoid (Platt) calibration learned on cross-validated decision
    values, so that its scores are probabilities comparable with the other learners'."""
    if hasattr(model, "predict_proba"):
        return model
    calibrated = CalibratedClassifierCV(clone(model), method="sigmoid",
                                        cv=_folds(y, cv, seed), ensemble=False, n_jobs=n_jobs)
    return calibrated.fit(x, y)


class ProbabilityAverage(ClassifierMixin, BaseEstimator):
    """An ensemble of fitted classifiers (same classes): the mean of their predict_proba."""

    def __init__(self, members: list[BaseEstimator]) -> None:
        self.members = members

    @property
    def classes_(self) -> np.ndarray:
        return self.members[0].classes_

    def fit(self, x, y):  # the members come fitted
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.predict_proba(x) for m in self.members], axis=0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(x), axis=1)]


@contextlib.contextmanager
def search_backend(config: Config) -> Iterator[None]:
    """Where the grid search's joblib jobs run: here (``classify.engine = "local"``) or on
    the Ray cluster at ``ray_address`` (``"ray"``, through ``ray.util.joblib``)."""
    if config.classify.engine == "local":
        yield
        return
    from featx.core.rayutil import connected

    with connected(config.ray_address, ClassifierError):
        import joblib
        from ray.util.joblib import register_ray

        register_ray()
        with joblib.parallel_backend("ray"):
            yield
