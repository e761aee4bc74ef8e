"""Classifiers on cached features: scikit-learn estimators with a grid search over C.

Every learner is a scikit-learn ``Pipeline`` (fit/predict/predict_proba or decision_function)
so that anything scikit-learn offers composes with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC


@dataclass(frozen=True)
class Learner:
    make: Callable[[int], BaseEstimator]
    grid: dict[str, list[Any]]


LEARNERS: dict[str, Learner] = {
    # CNN activations vary in scale across channels: standardising lets one C grid fit all
    # backbones and keeps lbfgs / liblinear converging quickly.
    "logreg": Learner(
        lambda seed: Pipeline([("scale", StandardScaler()),
                               ("clf", LogisticRegression(max_iter=3000, random_state=seed))]),
        {"clf__C": [0.001, 0.01, 0.1, 1.0]}),
    "linear_svm": Learner(
        lambda seed: Pipeline([("scale", StandardScaler()),
                               ("clf", LinearSVC(max_iter=5000, random_state=seed))]),
        # Larger C never won on CNN features here and costs 20x the fit time.
        {"clf__C": [0.0001, 0.001, 0.01]}),
}


class ClassifierError(ValueError):
    pass


def get_learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise ClassifierError(f"unknown classifier {name!r}; valid: {', '.join(LEARNERS)}")
    return LEARNERS[name]


@dataclass
class FitResult:
    name: str
    model: BaseEstimator  # refitted on all training (and validation) rows
    best_params: dict[str, Any]
    cv_score: float
    fit_seconds: float


def fit(name: str, x_train: np.ndarray, y_train: np.ndarray,
        x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
        cv: int = 3, n_jobs: int = 1, seed: int = 0) -> FitResult:
    """Grid-search C on the training rows (validation split if given, else stratified k-fold)
    and refit the best model on training + validation rows."""
    learner = get_learner(name)
    if x_val is not None and len(x_val):
        x = np.concatenate([x_train, x_val])
        y = np.concatenate([y_train, y_val])
        folds = PredefinedSplit(np.r_[np.full(len(x_train), -1), np.zeros(len(x_val))])
    else:
        x, y = x_train, y_train
        smallest = int(np.bincount(y).min()) if len(y) else 0
        if smallest < 2:
            raise ClassifierError("a class has fewer than 2 training images: "
                                  "cross-validation needs at least 2 per class")
        folds = StratifiedKFold(n_splits=min(cv, smallest), shuffle=True, random_state=seed)
    search = GridSearchCV(learner.make(seed), learner.grid, cv=folds, n_jobs=n_jobs,
                          scoring="accuracy", refit=True, error_score="raise")
    t0 = time.perf_counter()
    search.fit(x, y)
    return FitResult(name, search.best_estimator_, dict(search.best_params_),
                     float(search.best_score_), time.perf_counter() - t0)


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
