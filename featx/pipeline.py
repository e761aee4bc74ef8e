"""The classify runner: feature store -> classifiers -> reports and saved models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from featx import classify as learners
from featx.config import Config
from featx.dataset import TEST, TRAIN, VAL
from featx.report import evaluate, summary_line, write_reports
from featx.store import FeatureStore, StoreError


def results_dir(config: Config, store: Path) -> Path:
    """Where results and models go: ``--out``, else a folder beside the store."""
    return Path(config.out) if config.out else store.with_name(store.stem + ".runs")


def classify(config: Config, store_path: Path | None = None,
             echo=print) -> list[dict[str, Any]]:
    """Fit every classifier the config names on the store's training rows and report on its
    test rows. Returns one result dict per classifier."""
    if store_path is None:
        from featx.extract import locate_store

        store_path = locate_store(config)
    with FeatureStore(store_path) as store:
        _check_split(store, config)
        attrs = store.attrs
        labels, split, ok = store.labels, store.split, store.ok
        names = store.label_names
        rows = {s: np.flatnonzero((split == s) & ok) for s in (TRAIN, VAL, TEST)}
        if not len(rows[TEST]):
            raise StoreError(f"{store_path}: the split has no test rows (dataset.test = 0?)")
        x = {s: store.features(r) for s, r in rows.items()}
        feature_shape = attrs.get("feature_shape")
    y = {s: labels[r] for s, r in rows.items()}
    out_dir = results_dir(config, store_path)
    backbone = {k: attrs[k] for k in ("backbone", "weights", "weights_id", "layer", "pooling",
                                      "input_size", "preprocess", "resize")}
    results = []
    for name in config.classify.classifiers:
        fitted = learners.fit(name, x[TRAIN], y[TRAIN], x[VAL], y[VAL], cv=config.classify.cv,
                              n_jobs=config.classify.n_jobs, seed=config.classify.seed)
        scores = learners.class_scores(fitted.model, x[TEST])
        result = {
            "pipeline": config.name, "classifier": name, "dataset": attrs["dataset"],
            "store": str(store_path), "key": attrs["key"], "backbone": backbone,
            "best_params": fitted.best_params, "cv_score": fitted.cv_score,
            "fit_seconds": fitted.fit_seconds, "n_train": int(len(rows[TRAIN]) + len(rows[VAL])),
            **evaluate(y[TEST], scores, fitted.model.classes_, names),
        }
        stem = out_dir / f"{config.name}-{name}"
        json_path, _ = write_reports(result, stem)
        joblib.dump({"model": fitted.model, "label_names": names, "backbone": backbone,
                     "key": attrs["key"], "feature_shape": feature_shape,
                     "pipeline": json.loads(config.to_json())}, stem.with_suffix(".joblib"))
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
