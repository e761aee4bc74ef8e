"""The classify runner: feature store -> classifiers -> reports and saved models.

Three seams, each owned by one concern: ``load_splits`` (which features train and test),
``fit_learner`` (how a classifier is fitted on them) and ``save_model`` (what is kept to
predict later).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from featx import classify as learners
from featx.config import Config
from featx.dataset import TEST, TRAIN, VAL
from featx.report import evaluate, summary_line, write_reports
from featx.store import FeatureStore, StoreError

BACKBONE_ATTRS = ("backbone", "weights", "weights_id", "layer", "pooling", "input_size",
                  "preprocess", "resize")


def results_dir(config: Config, store: Path) -> Path:
    """Where results and models go: ``--out``, else a folder beside the store."""
    return Path(config.out) if config.out else store.with_name(store.stem + ".runs")


@dataclass
class Splits:
    """Features, labels and image paths of the train, val and test rows of one store."""
    store: Path
    attrs: dict[str, Any]
    label_names: list[str]
    x: dict[int, np.ndarray]
    y: dict[int, np.ndarray]
    paths: dict[int, list[str]]
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # row numbers in the store

    @property
    def backbone(self) -> dict[str, Any]:
        return {k: self.attrs[k] for k in BACKBONE_ATTRS if k in self.attrs}


def load_splits(config: Config, store_path: Path) -> Splits:
    """The readable rows of each split, features in memory."""
    with FeatureStore(store_path) as store:
        _check_split(store, config)
        attrs = store.attrs
        labels, split, ok = store.labels, store.split, store.ok
        all_paths = store.paths
        rows = {s: np.flatnonzero((split == s) & ok) for s in (TRAIN, VAL, TEST)}
        if not len(rows[TEST]):
            raise StoreError(f"{store_path}: the split has no test rows (dataset.test = 0?)")
        x = {s: store.features(r) for s, r in rows.items()}
        names = store.label_names
    return Splits(store_path, attrs, names, x, {s: labels[r] for s, r in rows.items()},
                  {s: [all_paths[i] for i in r] for s, r in rows.items()}, rows)


def fit_learner(name: str, data: Splits, config: Config) -> learners.FitResult:
    c = config.classify
    return learners.fit(name, data.x[TRAIN], data.y[TRAIN], data.x[VAL], data.y[VAL], cv=c.cv,
                        n_jobs=c.n_jobs, seed=c.seed)


def save_model(path: Path, fitted: learners.FitResult, data: Splits, config: Config) -> None:
    # featx predict rebuilds the backbone from the pipeline that extracted the store
    # ("extracted_by"; "pipeline" is this run's, which `classify --store` need not match) and
    # refuses it unless it gives the same settings_key and feature_shape.
    joblib.dump({"model": fitted.model, "label_names": data.label_names,
                 "classifier": fitted.name, "backbone": data.backbone, "key": data.attrs["key"],
                 "settings_key": data.attrs.get("settings_key"),
                 "feature_shape": data.attrs.get("feature_shape"),
                 "pipeline": json.loads(config.to_json()),
                 "extracted_by": data.attrs.get("pipeline")}, path)


def classify(config: Config, store_path: Path | None = None,
             echo=print) -> list[dict[str, Any]]:
    """Fit every classifier the config names on the store's training rows and report on its
    test rows. Returns one result dict per classifier."""
    if store_path is None:
        from featx.extract import locate_store

        store_path = locate_store(config)
    data = load_splits(config, store_path)
    out_dir = results_dir(config, store_path)
    results = []
    for name in config.classify.classifiers:
        fitted = fit_learner(name, data, config)
        scores = learners.class_scores(fitted.model, data.x[TEST])
        result = {
            "pipeline": config.name, "classifier": name, "dataset": data.attrs["dataset"],
            "store": str(store_path), "key": data.attrs["key"], "backbone": data.backbone,
            "best_params": fitted.best_params, "cv_score": fitted.cv_score,
            "fit_seconds": fitted.fit_seconds,
            "n_train": int(len(data.y[TRAIN]) + len(data.y[VAL])),
            **evaluate(data.y[TEST], scores, fitted.model.classes_, data.label_names,
                       paths=data.paths[TEST]),
        }
        stem = out_dir / f"{config.name}-{name}"
        write_reports(result, stem)
        save_model(stem.with_suffix(".joblib"), fitted, data, config)
        echo(summary_line(name, result))
        results.append(result)
    print(f"featx: results in {out_dir}/", file=sys.stderr)
    return results


def load_model(path: str | Path) -> dict[str, Any]:
    """A saved classifier bundle: model, label_names, backbone settings, key."""
    return joblib.load(path)


def _check_split(store: FeatureStore, config: Config) -> None:
    recorded = store.attrs.get("split", {})
    d = config.dataset
    asked = {"val": d.val, "test": d.test, "seed": d.seed}
    if recorded and {k: recorded.get(k) for k in asked} != asked:
        raise StoreError(f"{store.path}: split {recorded} differs from the pipeline's {asked}; "
                         "run `featx extract` (make features) again to re-split "
                         "(no features are recomputed)")
