"""The classify runner: feature store -> classifiers -> reports and saved models.

Three seams, each owned by one concern: ``load_splits`` (which features train and test),
``fit_learner`` (how a classifier is fitted on them) and ``save_model`` (what is kept to
predict later).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import Config, ConfigError
from featx.core.errors import StoreError
from featx.core.layout import runs_dir
from featx.core.log import RESULTS, plural, said_once
from featx.core.runinfo import Run
from featx.data.dataset import TEST, TRAIN, VAL, dataset_root
from featx.data.groups import grouped_split, grouping_identity, split_record
from featx.learn import learners, modelfile
from featx.learn.tracking import ARTIFACTS, ON, log_results, require, tracking_uri
from featx.report.metrics import evaluate, one_split, repeat_summary
from featx.report.results import report_paths, summary_line, write_reports
from featx.store.read import FeatureStore, StoredGroups

log = logging.getLogger(__name__)

BACKBONE_ATTRS = ("backbone", "weights", "weights_id", "layer", "pooling", "input_size",
                  "preprocess", "resize", "combine")  # combine: featx.learn.combine's members


def results_dir(config: Config, store: Path) -> Path:
    """Where run folders go: ``--out``, else a folder beside the store."""
    return Path(config.out) if config.out else runs_dir(store)


def open_run(config: Config, store: Path) -> Run:
    """A new run folder under :func:`results_dir`, named by its start time and a hash of the
    classify settings: no run overwrites another."""
    return Run.open(results_dir(config, store), dataclasses.asdict(config.classify))


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
    seed: int | None = None  # the split's seed (None: the pipeline's dataset.seed)
    # the store's duplicate groups (None: it records none), its exact duplicate rows, whether
    # its splits keep the groups together, and what this split does with them
    # (:func:`duplicates_record`)
    groups: StoredGroups | None = field(default=None, repr=False)
    exact: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64), repr=False)
    grouped: bool = False
    duplicates: dict[str, Any] | None = None

    @property
    def backbone(self) -> dict[str, Any]:
        return {k: self.attrs[k] for k in BACKBONE_ATTRS if k in self.attrs}


def load_splits(config: Config, store_path: Path) -> Splits:
    """The readable rows of each split, features in memory. ``classify.train_features`` and
    ``classify.test_features`` take the training rows, or the validation and test rows, from
    a variant store instead (featx/features/variants.py): "augmented" trains on the plain rows plus
    every augmented pass; "tencrop" gives one row per crop or per image as it was extracted
    (validation and test rows always one per image, the mean of its crops)."""
    c = config.classify
    source = {TRAIN: c.train_features, VAL: c.test_features, TEST: c.test_features}
    with FeatureStore(store_path) as store:
        data = _index(store, config)
        # Plain features only where plain rows are kept ("augmented" keeps them, plus passes).
        data.x = {s: store.features(data.rows[s]) for s, variant in source.items()
                  if variant in ("plain", "augmented")}
    if all(variant == "plain" for variant in source.values()):
        return data
    from featx.features.plan import find_store
    from featx.features.variants import check, read_rows

    check(config)
    variant_paths = {}
    for variant in dict.fromkeys(v for v in source.values() if v != "plain"):
        p = find_store(config, variant)
        with FeatureStore(p.path) as store:
            _check_split(store, config)
        variant_paths[variant] = p.path
    for s, variant in source.items():
        if variant == "plain":
            continue
        got = read_rows(variant_paths[variant], (s,), data.label_names, average=s != TRAIN)
        if variant == "augmented":  # the plain rows and every pass of them
            data.x[s] = np.concatenate([data.x[s], got.x])
            data.y[s] = np.concatenate([data.y[s], got.y])
            data.paths[s] = data.paths[s] + got.paths
        else:
            data.x[s], data.y[s], data.paths[s] = got.x, got.y, got.paths
    data.rows = {}  # rows from several stores: the features exist only in memory
    return data


def index_splits(config: Config, store_path: Path) -> Splits:
    """What :func:`load_splits` gives, less the features (``x`` is empty): for learners that
    stream them from the store."""
    with FeatureStore(store_path) as store:
        return _index(store, config)


def _index(store: FeatureStore, config: Config) -> Splits:
    # The readable rows of each split of an open store: labels, paths and row numbers.
    _check_split(store, config)
    labels, split, ok, all_paths = store.labels, store.split, store.ok, store.paths
    rows = {s: np.flatnonzero((split == s) & ok) for s in (TRAIN, VAL, TEST)}
    if not ok.any():
        raise StoreError(f"{store.path}: none of its {len(ok)} images could be read "
                         f"(featx cache info {store.attrs.get('key', '')} lists why)")
    if not (split == TEST).any():
        raise StoreError(f"{store.path}: the split has no test rows (dataset.test = 0?)")
    if not len(rows[TEST]):
        raise StoreError(f"{store.path}: none of the test images could be read "
                         f"(featx cache info {store.attrs.get('key', '')} lists why)")
    names = store.label_names
    if len(names) < 2:
        raise StoreError(f"{store.path}: the dataset has one class ({names[0]!r}); "
                         "classifying needs at least two class folders")
    untested = np.flatnonzero(np.bincount(labels[rows[TEST]], minlength=len(names)) == 0)
    if len(untested):  # a store given by path was never checked as its dataset was read
        said = (f"{store.path}: {plural(len(untested), 'class', 'classes')} with no readable "
                f"test image in this split ({', '.join(repr(names[c]) for c in untested)})")
        if not config.dataset.allow_missing_test:
            raise StoreError(f"{said}: its rank-1 would say nothing about them; add images, or "
                             "set dataset.allow_missing_test = true to go on without")
        log.warning("%s (dataset.allow_missing_test = true)", said)
    if not len(rows[VAL]):  # the grid search cross-validates on the training rows
        counts = np.bincount(labels[rows[TRAIN]], minlength=len(names))
        few = [f"{names[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
        if few:
            raise StoreError(f"{store.path}: class {', '.join(few)} has fewer than 2 readable "
                             "training images; cross-validation needs 2 per class (add images "
                             "or lower dataset.test)")
    found, exact, grouped = store.groups, store.duplicate_rows, store.grouping["duplicates"]
    return Splits(store.path, store.attrs, store.label_names, {},
                  {s: labels[r] for s, r in rows.items()},
                  {s: [all_paths[i] for i in r] for s, r in rows.items()}, rows,
                  config.dataset.seed, found, exact, grouped,
                  duplicates_record(config, split, labels, names, found, exact, grouped))


def duplicates_record(config: Config, split: np.ndarray, labels: np.ndarray,
                      label_names: list[str], found: StoredGroups | None, exact: np.ndarray,
                      grouped: bool) -> dict[str, Any]:
    """What a split (int (N,) of every store row; ``labels`` int (N,)) does with the
    store's duplicates (featx.data.groups.split_record): whether it keeps them together
    (``grouped``), the groups ``found`` and the pairs of them (``exact`` duplicate rows and
    near duplicates at the threshold) that cross it; those None where the store records
    no groups (made before featx 0.7)."""
    d = config.dataset
    if found is None:
        return split_record(labels, split, label_names, d.val, d.test, grouped)
    return split_record(labels, split, label_names, d.val, d.test, grouped, found.groups,
                        np.concatenate([exact, found.pairs]), found.threshold,
                        found.info.get("method"))


def read_splits(config: Config, store_path: Path) -> Splits:
    """Features in memory unless every classifier streams them from the store."""
    if _plain(config) and all(learners.get_learner(n).streaming
                              for n in config.classify.classifiers):
        return index_splits(config, store_path)
    return load_splits(config, store_path)


def _plain(config: Config) -> bool:
    # Augmented / 10-crop rows are chosen by load_splits, in memory: only plain rows stream.
    c = config.classify
    return c.train_features == "plain" and c.test_features == "plain"


def _streams(name: str, data: Splits) -> bool:
    # A streaming learner reads the store itself. Only plain rows have store rows: features
    # from variant stores (load_splits) or fused ones (featx.learn.combine) exist only in memory.
    return learners.get_learner(name).streaming and bool(data.rows)


def fit_learner(name: str, data: Splits, config: Config) -> learners.FitResult:
    c = config.classify
    opts = {"cv": c.cv, "n_jobs": c.n_jobs, "seed": c.seed, "class_weight": c.class_weight,
            "quick": c.quick}
    with learners.search_backend(config):  # classify.engine = "ray": the search's jobs on Ray
        if _streams(name, data):
            return learners.fit_store(name, data.store, data.rows[TRAIN], data.rows[VAL],
                                      **opts)
        paths = data.paths[TRAIN]
        # Several rows per image (augmented passes, kept crops): fold by image.
        groups = np.asarray(paths, dtype=object) if len(set(paths)) < len(paths) else None
        return learners.fit(name, data.x[TRAIN], data.y[TRAIN], data.x[VAL], data.y[VAL],
                            groups=groups, normalize=c.normalize, **opts)


def scores_on_test(fitted: learners.FitResult, data: Splits) -> np.ndarray:
    """Class scores of the test rows (probabilities or decision values)."""
    if _streams(fitted.name, data):
        return learners.store_apply(lambda x: learners.class_scores(fitted.model, x),
                                    data.store, data.rows[TEST])
    return learners.class_scores(fitted.model, data.x[TEST])


def probabilities_on_test(fitted: learners.FitResult, data: Splits, config: Config,
                          scores: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """The model with predict_proba (calibrated if it has none, see
    classify.with_probabilities) and its test-row probabilities. ``scores``: the test rows'
    :func:`scores_on_test`, if already computed (they are the probabilities of a model with
    predict_proba; every streaming learner has it)."""
    if hasattr(fitted.model, "predict_proba"):
        return fitted.model, scores if scores is not None else scores_on_test(fitted, data)
    c = config.classify
    x = np.concatenate([data.x[TRAIN], data.x[VAL]])
    y = np.concatenate([data.y[TRAIN], data.y[VAL]])
    model = learners.with_probabilities(fitted.model, x, y, cv=c.cv, seed=c.seed,
                                        n_jobs=c.n_jobs)
    return model, model.predict_proba(data.x[TEST])


def make_result(config: Config, data: Splits, fitted: learners.FitResult,
                scores: np.ndarray) -> dict[str, Any]:
    # The dataset folder the report shows images from: the one the user names now (checked
    # against the store), never the store's recorded one, which may since hold other images.
    root = dataset_root(config.dataset)
    result = {
        "pipeline": config.name, "classifier": fitted.name, "dataset": data.attrs["dataset"],
        "store": str(data.store), "key": data.attrs["key"], "backbone": data.backbone,
        "root": str(root) if root else None,
        "best_params": fitted.best_params, "cv_score": fitted.cv_score,
        "fit_seconds": fitted.fit_seconds,
        "n_train": int(len(data.y[TRAIN]) + len(data.y[VAL])),
        **evaluate(data.y[TEST], scores, fitted.model.classes_, data.label_names,
                   paths=data.paths[TEST]),
    }
    weights = weights_file(data.attrs)
    if weights:
        result["weights_file"] = weights
    if data.duplicates is not None:
        result["duplicates"] = data.duplicates
    seed = config.dataset.seed if data.seed is None else data.seed
    return {**result, **one_split(result, seed)}


def weights_file(attrs: dict[str, Any]) -> str | None:
    """The name of the weights file a store's features were extracted with (its pipeline,
    recorded in the store), or None (ImageNet or random weights, or not recorded)."""
    if attrs.get("weights") != "file":
        return None
    pipeline = attrs.get("pipeline") or {}
    try:  # FeatureStore.attrs gives it parsed; a raw attribute is its JSON text
        weights = (json.loads(pipeline) if isinstance(pipeline, str) else pipeline
                   )["backbone"]["weights"]
    except (ValueError, KeyError, TypeError):
        return None
    return Path(weights).name if weights else None


def average(name: str, fitted: list[learners.FitResult], probabilities: list[np.ndarray],
            models: list[Any], labels: list[str], seconds: float = 0.0
            ) -> tuple[learners.FitResult, np.ndarray]:
    """The ensemble of fitted classifiers: the mean of their test probabilities, and a model
    that predicts the same way (best parameters prefixed with each member's label)."""
    classes = models[0].classes_
    for f, m in zip(fitted, models):
        if not np.array_equal(m.classes_, classes):
            raise learners.ClassifierError(f"{f.name} was trained on other classes")
    params = {f"{label}.{k.split('__')[-1]}": v
              for label, f in zip(labels, fitted) for k, v in f.best_params.items()}
    result = learners.FitResult(name, learners.ProbabilityAverage(models), params,
                                float(np.mean([f.cv_score for f in fitted])),
                                sum(f.fit_seconds for f in fitted) + seconds)
    return result, np.mean(probabilities, axis=0)


def save_model(path: Path, fitted: learners.FitResult, data: Splits, config: Config) -> Path:
    """The model and what predicting needs, as a skops file (featx.learn.modelfile)."""
    # featx predict rebuilds the backbone from the pipeline that extracted the store
    # ("extracted_by"; "pipeline" is this run's, which `classify --store` need not match) and
    # refuses it unless it gives the same settings_key and feature_shape.
    return modelfile.save(path, {
        "model": fitted.model, "label_names": list(data.label_names),
        "classifier": fitted.name, "backbone": data.backbone, "key": data.attrs["key"],
        "settings_key": data.attrs.get("settings_key"),
        "feature_shape": data.attrs.get("feature_shape"),
        "pipeline": json.loads(config.to_json()),
        "extracted_by": data.attrs.get("pipeline")})


def classify(config: Config, store_path: Path | None = None) -> list[dict[str, Any]]:
    """Fit every classifier the config names on the store's training rows and report on its
    test rows (with ``classify.ensemble``, also their average). Returns one result dict per
    classifier; each one's summary line is logged to :data:`featx.core.log.RESULTS` as soon as it
    is written (``featx classify`` prints them). A pipeline with a ``[combine]`` section runs
    featx.learn.combine instead."""
    if config.combine.pipelines:  # featx.api.run_classify sends these to featx.learn.combine
        raise ConfigError(f"pipeline {config.name!r} has a [combine] section: classify it "
                          "with featx.classify or featx.learn.combine.classify_combined")
    from featx.features.plan import check_store_matches, find_store

    if store_path is None:
        store_path = find_store(config).path
    else:
        check_store_matches(config, store_path)
    check_ensemble(config)
    if tracking_uri(config.classify.mlflow, config.cache_path):
        require()  # before the fits, not after
    c = config.classify
    if c.normalize != "none" and any(learners.get_learner(n).streaming for n in c.classifiers):
        raise ConfigError(f"classify.normalize = {c.normalize!r} applies to in-memory "
                          "learners; sgd streams the store's features as they are")
    if c.repeats > 1 and not _plain(config):
        raise ConfigError("classify.repeats re-splits plain features: set train_features and "
                          "test_features to \"plain\" (variant stores follow one split)")
    data = read_splits(config, store_path)
    say_duplicates(data.duplicates)
    run = open_run(config, store_path)
    if c.repeats > 1:
        results = repeat_and_report(config, data, run)
    else:
        results = fit_and_report(config, data, run)
    log.info("results in %s/", run.dir)
    track(config, results)
    return results


def track(config: Config, results: list[dict[str, Any]]) -> None:
    """With ``classify.mlflow``: one MLflow run per result, nested under one for the command
    (featx.learn.tracking)."""
    uri = tracking_uri(config.classify.mlflow, config.cache_path)
    if uri is None:
        return
    local = config.classify.mlflow.strip().lower() in ON  # the default store: artifacts beside
    ids = log_results(uri, config.name, results,
                      config.cache_path / ARTIFACTS if local else None)
    log.info("%s (one per classifier, nested in one for the command) in %s (experiment %r)",
             plural(len(ids), "MLflow run"), uri, config.name)


def fit_and_score(config: Config, data: Splits
                  ) -> Iterator[tuple[str, learners.FitResult, dict[str, Any]]]:
    """(name, fitted, result) of each classifier (and with ``classify.ensemble`` their
    average, named "ensemble") fitted on ``data``'s training rows and scored on its test
    rows, one at a time as each is done."""
    fits, scored = [], []
    for name in config.classify.classifiers:
        fitted = fit_learner(name, data, config)
        scores = scores_on_test(fitted, data)
        fits.append(fitted)
        scored.append(scores)
        yield name, fitted, make_result(config, data, fitted, scores)
    if config.classify.ensemble:
        t0 = time.perf_counter()
        models, probabilities = zip(*(probabilities_on_test(f, data, config, s)
                                      for f, s in zip(fits, scored)))
        fitted, proba = average(ensemble_name(config.classify.classifiers), fits,
                                list(probabilities), list(models),
                                config.classify.classifiers, time.perf_counter() - t0)
        yield "ensemble", fitted, make_result(config, data, fitted, proba)


def fit_and_report(config: Config, data: Splits, run: Run,
                   save_models: bool = True) -> list[dict[str, Any]]:
    """:func:`fit_and_score`, each result reported (with its model) into the run's folder as
    soon as it is done."""
    return [report(result, fitted, data, config, run, name, save_models)
            for name, fitted, result in fit_and_score(config, data)]


def split_seeds(config: Config) -> list[int]:
    """The seeds of ``classify.repeats`` splits: dataset.seed, dataset.seed + 1, ..."""
    return [config.dataset.seed + r for r in range(config.classify.repeats)]


def resplit(data: Splits, config: Config, seed: int, labels: np.ndarray, ok: np.ndarray,
            paths: list[str], features: np.ndarray | None) -> Splits:
    """``data`` (a plain store's) split again, as ``featx extract`` would with ``seed``:
    the same stratified split of every store row (``labels``), each of the store's duplicate
    groups on one side where its split keeps them together (featx.data.groups.grouped_split),
    its readable (``ok``) rows kept. ``features``: every store row's (None: the learners
    stream them)."""
    d = config.dataset
    groups = data.groups.groups if data.grouped and data.groups is not None else None
    split = grouped_split(labels, groups, d.val, d.test, seed)  # no groups: stratified_split
    rows = {s: np.flatnonzero((split == s) & ok) for s in (TRAIN, VAL, TEST)}
    return Splits(data.store, data.attrs, data.label_names,
                  {s: features[r] for s, r in rows.items()} if features is not None else {},
                  {s: labels[r] for s, r in rows.items()},
                  {s: [paths[i] for i in r] for s, r in rows.items()}, rows, seed,
                  data.groups, data.exact, data.grouped,
                  duplicates_record(config, split, labels, data.label_names, data.groups,
                                    data.exact, data.grouped))


def repeat_and_report(config: Config, data: Splits, run: Run) -> list[dict[str, Any]]:
    """``classify.repeats`` splits of the same features, the grid search re-run on each. Each
    classifier's result merges :func:`featx.report.metrics.repeat_summary` over its first
    split's: rank-1 and rank-5 the mean ± sd over the splits, the confusion matrix and
    per-class scores summed over them, every split's seed, scores and chosen parameters
    (``per_split``; ``repeats`` for ``featx runs --compare``); the model, its parameters and
    the misclassified images are the first split's (seed dataset.seed). ``scope`` says which
    key shows what."""
    with FeatureStore(data.store) as store:
        labels, ok, paths = store.labels, store.ok, store.paths
        features = store.features() if data.x else None  # in memory, as read_splits chose
    seeds = split_seeds(config)
    first = resplit(data, config, seeds[0], labels, ok, paths, features)
    with said_once(logging.getLogger(learners.__name__)):  # a grid's edge: once, not R times
        kept = list(fit_and_score(config, first))  # reported, with their models
        scored = [[result for _, _, result in kept]]
        for seed in seeds[1:]:  # only the scores of the other splits are kept
            part = resplit(data, config, seed, labels, ok, paths, features)
            scored.append([result for _, _, result in fit_and_score(config, part)])
    return [report({**result, **repeat_summary(seeds, [s[i] for s in scored])}, fitted,
                   first, config, run, name)
            for i, (name, fitted, result) in enumerate(kept)]


def report(result: dict[str, Any], fitted: learners.FitResult, data: Splits, config: Config,
           run: Run, name: str, save: bool = True) -> dict[str, Any]:
    """Save the model (``save``) and write the reports of ``<run>/<pipeline>-<name>``."""
    stem = run.file(f"{config.name}-{name}")
    model = save_model(stem.with_name(stem.name + modelfile.SUFFIX), fitted, data, config) \
        if save else None
    return write_result(result, run, stem, model)


def ensemble_name(classifiers: list[str]) -> str:
    return f"ensemble({'+'.join(classifiers)})"


def check_ensemble(config: Config) -> None:
    c = config.classify
    if c.ensemble and len(c.classifiers) < 2:
        raise learners.ClassifierError("classify.ensemble averages several classifiers: "
                                       "name at least two in classify.classifiers")


def write_result(result: dict[str, Any], run: Run, stem: Path,
                 model: Path | None = None) -> dict[str, Any]:
    """The reports of ``result`` at ``stem``, with what the run records (its settings,
    versions, machine, the files written; ``model``: the model file, already written); the
    JSON last, so that a run killed before it leaves no result that `featx runs` lists.
    ``stem`` is kept inside the run folder whatever the pipeline's name. The summary line
    goes to :data:`featx.core.log.RESULTS` once the files are written."""
    stem = run.file(os.path.relpath(stem, run.dir))
    files = [*report_paths(stem).values(), *([model] if model else [])]
    result = run.record(result, files)
    if model:
        result["model"] = model.name  # beside the JSON
    write_reports(result, stem)
    RESULTS.info("%s", summary_line(result["classifier"], result))
    return result


def load_model(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """A saved classifier bundle: model, label_names, backbone settings, key
    (featx.learn.modelfile.load: a pickle only with ``trust``)."""
    return modelfile.load(path, trust=trust)


def _check_split(store: FeatureStore, config: Config) -> None:
    recorded = store.attrs.get("split", {})
    d = config.dataset
    asked = {"val": d.val, "test": d.test, "seed": d.seed}
    if recorded and {k: recorded.get(k) for k in asked} != asked:
        raise StoreError(f"{store.path}: split {recorded} differs from the pipeline's {asked}; "
                         "run `featx extract` (make features) again to re-split "
                         "(no features are recomputed)")
    grouping, wanted = store.grouping, grouping_identity(d)
    # A store that records no grouping (made before featx 0.7, or by other code) is read as it
    # is, its split ungrouped, and said to be (say_duplicates); one that records the other
    # grouping is refused: never the other split, silently.
    if "grouping" in store.file.attrs and grouping != wanted:
        raise StoreError(f"{store.path}: its split {_grouping_words(grouping)}, the "
                         f"pipeline's {_grouping_words(wanted)}: run `featx extract` again to "
                         "re-split (no features are recomputed)")


def _grouping_words(grouping: dict[str, Any]) -> str:
    if grouping["duplicates"]:
        return ("keeps duplicates together (dataset.duplicate_threshold = "
                f"{grouping['threshold']})")
    return "does not keep duplicates together (dataset.group_duplicates = false)"


def say_duplicates(record: dict[str, Any] | None) -> None:
    """Log what the split does with the store's duplicates (:func:`duplicates_record`): the
    groups kept together, or, where it does not group them, a warning of the pairs that cross
    it (a test image whose copy is trained on inflates the score)."""
    if record is None:
        return
    most_off = record["most_off"]
    shares = "every class's test and validation images as stratified" if not most_off else \
        f"a class's test or validation images at most {plural(most_off, 'image')} off its share"
    if record["grouped"] and record["groups"] == 0:
        log.info("no copies among the images (the same bytes, or features at cosine >= %s): "
                 "the split is the plain stratified one", record["threshold"])
    elif record["grouped"] and record["groups"] is not None:
        log.info("the split keeps %s (%s) together: the same bytes, or features at cosine >= "
                 "%s (dataset.group_duplicates); %s", plural(record["groups"], "duplicate group"),
                 plural(record["images"], "image"), record["threshold"], shares)
    elif record["crossing_pairs"] is None:
        log.info("the split does not keep duplicates together and the store records none "
                 "(made before featx 0.7): `featx extract` finds them and re-splits (no "
                 "features are recomputed), `featx audit` lists them")
    elif record["crossing_pairs"]:
        log.warning("%s %s the split (dataset.group_duplicates = false): a test image whose "
                    "copy is trained on inflates the scores; `featx audit` lists them",
                    plural(record["crossing_pairs"], "duplicate pair"),
                    "crosses" if record["crossing_pairs"] == 1 else "cross")
    else:
        log.info("no duplicate pair crosses the split (same bytes, or features at cosine >= %s)",
                 record["threshold"])
