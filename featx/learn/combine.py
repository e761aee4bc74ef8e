"""Several pipelines' stores of one dataset used together: a ``[combine]`` section.

``pipelines`` names member pipeline files (relative to the pipeline that names them); each
member keeps its own backbone and extraction settings and takes the parent's dataset,
classify section and cache folder. ``mode = "fuse"`` puts the members' features side by side
(rows matched by image path) and fits each classifier on them; ``mode = "ensemble"`` fits each
classifier on every member's store and averages their test probabilities.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from featx.core.config import Config
from featx.core.errors import ConfigError, StoreError
from featx.core.runinfo import Run
from featx.data.dataset import TEST, TRAIN, VAL
from featx.learn.classification import (
    BACKBONE_ATTRS,
    Splits,
    average,
    check_ensemble,
    ensemble_name,
    fit_and_report,
    fit_learner,
    load_splits,
    make_result,
    open_run,
    probabilities_on_test,
    read_splits,
    track,
    write_result,
)

log = logging.getLogger(__name__)

SPLIT_NAMES = {TRAIN: "training", VAL: "validation", TEST: "test"}


def align(parts: list[Splits]) -> list[Splits]:
    """Every member's rows in the first member's order, split by split, matched by image
    path. A path that one member has and another lacks is an error naming both."""
    first = parts[0]
    out = [first]
    for part in parts[1:]:
        if part.label_names != first.label_names:
            raise StoreError(f"{part.store}: classes {part.label_names} differ from "
                             f"{first.store}: {first.label_names}")
        x, y, paths, rows = {}, {}, {}, {}
        for s in (TRAIN, VAL, TEST):
            if part.paths[s] == first.paths[s]:  # the normal case: already in order, no copy
                order = slice(None)
            else:
                index = {p: i for i, p in enumerate(part.paths[s])}
                _same_paths(first, part, s, index)
                order = np.array([index[p] for p in first.paths[s]], dtype=np.int64)
            if s in part.x:
                x[s] = part.x[s][order]
            y[s], paths[s] = part.y[s][order], first.paths[s]
            if part.rows:
                rows[s] = part.rows[s][order]
            if not np.array_equal(y[s], first.y[s]):
                bad = int(np.flatnonzero(y[s] != first.y[s])[0])
                raise StoreError(f"{paths[s][bad]}: labelled differently in {part.store} "
                                 f"and {first.store}")
        out.append(Splits(part.store, part.attrs, part.label_names, x, y, paths, rows))
    return out


def _same_paths(first: Splits, part: Splits, s: int, index: dict[str, int]) -> None:
    missing = [p for p in first.paths[s] if p not in index]
    extra = sorted(set(part.paths[s]) - set(first.paths[s]))
    if missing or extra:
        path, has, lacks = (missing[0], first, part) if missing else (extra[0], part, first)
        more = len(missing) + len(extra) - 1
        raise StoreError(f"{path}: a {SPLIT_NAMES[s]} image of {has.store} is missing from "
                         f"the store {lacks.store}" + (f" (and {more} more)" if more else "")
                         + "; extract every member of the same dataset (featx extract -p "
                         "<combine pipeline>)")


def combined_attrs(parts: list[Splits], labels: list[str], mode: str) -> dict[str, Any]:
    """The attributes a combined run reports: each backbone setting joined with "+", and
    ``combine`` naming the members."""
    attrs: dict[str, Any] = {k: " + ".join(str(p.attrs.get(k, "")) for p in parts)
                             for k in BACKBONE_ATTRS if k != "combine"}
    described = [f"{label} ({p.attrs.get('backbone')}, {p.attrs.get('pooling')})"
                 for label, p in zip(labels, parts)]
    attrs["combine"] = f"{mode}: " + " + ".join(described)
    attrs["dataset"] = parts[0].attrs["dataset"]
    attrs["key"] = "+".join(str(p.attrs["key"]) for p in parts)
    return attrs


def fuse(parts: list[Splits], labels: list[str]) -> Splits:
    """One training set: the members' features side by side, rows matched by path."""
    parts = align(parts)
    first = parts[0]
    x = {s: np.hstack([p.x[s] for p in parts]) for s in (TRAIN, VAL, TEST)}
    # No store rows: fused features live in memory only, so no learner streams them.
    return Splits(first.store, combined_attrs(parts, labels, "fuse"), first.label_names, x,
                  first.y, first.paths, {})


def classify_combined(config: Config) -> list[dict[str, Any]]:
    """Classify with a ``[combine]`` pipeline; results (JSON, Markdown, HTML) go beside the
    first member's store (or into ``--out``). Models are not saved: predicting would need
    every member's features."""
    from featx.features.plan import find_store

    check_ensemble(config)
    if config.classify.repeats > 1:  # refused, not ignored: the user asked for R splits
        raise ConfigError(f"classify.repeats = {config.classify.repeats}: a [combine] pipeline "
                          "is classified on one split; run it once per seed (--set "
                          "dataset.seed=S, after featx extract with the same seed) or repeat "
                          "its members")
    ms = config.members()
    labels = [m.name for m in ms]
    stores = [find_store(m).path for m in ms]
    if config.combine.mode == "fuse":
        data = fuse([load_splits(m, st) for m, st in zip(ms, stores)], labels)
        run = open_run(config, stores[0])
        results = fit_and_report(config, data, run, save_models=False)
    else:
        parts = align([read_splits(m, st) for m, st in zip(ms, stores)])
        run = open_run(config, stores[0])
        results = _ensemble(config, parts, labels, run)
    log.info("results in %s/", run.dir)
    track(config, results)
    return results


def _ensemble(config: Config, parts: list[Splits], labels: list[str], run: Run
              ) -> list[dict[str, Any]]:
    first = parts[0]
    report_on = Splits(first.store, combined_attrs(parts, labels, "ensemble"),
                       first.label_names, {}, first.y, first.paths, {})
    results, every = [], []
    for name in config.classify.classifiers:
        fits = [fit_learner(name, p, config) for p in parts]
        models, probabilities = zip(*(probabilities_on_test(f, p, config)
                                      for f, p in zip(fits, parts)))
        fitted, proba = average(name, fits, list(probabilities), list(models), labels)
        result = make_result(config, report_on, fitted, proba)
        results.append(write_result(result, run, run.dir / f"{config.name}-{name}"))
        every += [(f"{label}.{name}", f, m, p)
                  for label, f, m, p in zip(labels, fits, models, probabilities)]
    if config.classify.ensemble:
        names, fits, models, probabilities = zip(*every)
        fitted, proba = average(ensemble_name(config.classify.classifiers), list(fits),
                                list(probabilities), list(models), list(names))
        result = make_result(config, report_on, fitted, proba)
        results.append(write_result(result, run, run.dir / f"{config.name}-ensemble"))
    return results
