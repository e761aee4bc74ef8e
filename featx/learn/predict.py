"""Predict with a saved model: images -> the same frozen backbone -> classifier -> top-k labels.

A bundle saved by ``featx classify`` (``<run folder>/<pipeline>-<classifier>.skops``, see
featx.learn.modelfile) records the classifier, the label names, the pipeline and the feature
settings key. ``Predictor.load`` rebuilds the backbone from the recorded pipeline and
refuses to predict when the features it would compute are not the ones the classifier was
trained on (other weights, layer, pooling, input size, preprocessing or resize policy): a
classifier on the wrong features still returns confident, meaningless labels.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from featx.core.config import BackboneConfig, Config, cache_path
from featx.core.errors import DatasetError, FeatxError, ModelFileError, UsageError
from featx.core.escape import spreadsheet_cell, terminal
from featx.core.layout import OPENVINO_DIR, converted_model_dir
from featx.core.log import plural
from featx.data.dataset import IMAGE_EXTENSIONS
from featx.data.images import ReadErrors, Views, read_batches
from featx.features.backbones import Backbone, BackboneError, keras_home
from featx.features.runtime import Calibration, cached_int8_models, model_key, openvino_version
from featx.features.variants import Variant
from featx.learn import modelfile
from featx.learn.learners import class_scores
from featx.store.keys import store_key

log = logging.getLogger(__name__)

CSV_HEADER = ("path", "rank", "label", "score", "error")
TENCROP = Variant("tencrop", views=10)  # its reader: the 10 crops of the tencrop store



@dataclass
class Prediction:
    """The top labels of one image, best first, or why it could not be read."""

    path: str
    labels: list[tuple[str, float]]  # (label, score), best first; empty when unreadable
    error: str = ""


def image_files(inputs: Iterable[str | Path]) -> list[str]:
    """Files as given, folders expanded recursively to their image files (sorted; hidden
    files and folders skipped). A file is kept whatever its name: if it is not an image,
    its line says so."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*")
                          if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                          and not any(part.startswith(".")
                                      for part in p.relative_to(path).parts))
        else:
            out.append(str(path))
    return out


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """A saved classifier with the backbone that computes its features."""

    def __init__(self, bundle: dict[str, Any], backbone: Backbone, source: str = "model") -> None:
        self.source = source
        self.model = bundle["model"]
        self.label_names: list[str] = list(bundle["label_names"])
        self.classes = [self.label_names[int(c)] for c in self.model.classes_]
        self.classifier = bundle.get("classifier") or type(self.model).__name__
        self.backbone = backbone
        self.feature_shape = tuple(bundle.get("feature_shape") or ())
        # Pipelines whose last step has no predict_proba hide it (hasattr is False).
        self.probabilities = hasattr(self.model, "predict_proba")
        # A model evaluated on 10-crop features (classify.test_features) predicts on them too.
        classify = bundle["pipeline"].get("classify", {})
        self.tencrop = classify.get("test_features", "plain") == "tencrop"
        _check_settings(bundle, backbone, source)

    @classmethod
    def load(cls, path: str | Path, weights: str | None = None,
             trust: bool = False) -> Predictor:
        """Read a bundle (a model file, or the best one of a run folder) and rebuild its
        backbone; ``weights`` replaces the recorded weights location (the file must be the
        same weights, by content). A pickle/joblib file loads only with ``trust``."""
        path = model_file(path)
        bundle = modelfile.load(path, trust=trust)
        if not isinstance(bundle, dict) or not {"model", "label_names", "pipeline"} <= set(bundle):
            raise ModelFileError(f"{path}: not a featx model bundle (no model, label_names "
                               "and pipeline)")
        if not hasattr(bundle["model"], "classes_"):
            raise ModelFileError(f"{path}: not a featx model bundle (its model is a "
                               f"{type(bundle['model']).__name__}, not a fitted classifier)")
        # The pipeline that extracted the training features, where recorded.
        pipeline = bundle.get("extracted_by") or bundle["pipeline"]
        section = dict(pipeline.get("backbone", {}))
        if weights is not None:
            section["weights"] = str(weights)
        known = {f.name for f in dataclasses.fields(BackboneConfig)}
        config = BackboneConfig(**{k: v for k, v in section.items() if k in known})
        int8 = config.precision == "int8"
        if config.runtime == "openvino" and openvino_version() is None and not int8:
            # the runtime changes no feature beyond 1e-4 relative: a model extracted with
            # OpenVINO predicts with TensorFlow where OpenVINO is not installed (int8: only
            # OpenVINO runs it, and the Backbone says what to install)
            config = dataclasses.replace(config, runtime="tensorflow")
        recorded = config.weights.strip()
        # a file, or a KerasHub preset folder (featx/features/hub.py)
        if weights is None and recorded.lower() not in ("imagenet", "pretrained", "none", "") \
                and not Path(recorded).expanduser().exists():
            raise ModelFileError(f"{path}: the weights file it was trained with is not at "
                               f"{recorded}; give --weights PATH (the same file)")
        try:
            # Extraction seeds random weights with the dataset seed: the same seed, the same net.
            # An int8 model is in the extraction's cache folder.
            backbone = Backbone(config, seed=int(pipeline.get("dataset", {}).get("seed", 0)),
                                cache_dir=cache_path(str(pipeline.get("cache_dir") or ""))
                                if int8 else None)
            if int8:
                int8_model(backbone, bundle, pipeline, path)
        except BackboneError as e:
            raise ModelFileError(f"{path}: {e}") from None
        return cls(bundle, backbone, source=str(path))

    @property
    def calibration(self) -> str:
        """What the scores are, for the output header."""
        if self.probabilities:
            return "probabilities"
        return (f"softmax of decision values ({self.classifier} has no predict_proba; "
                "not calibrated probabilities)")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, n_classes) scores summing to 1, columns in ``self.classes`` order."""
        x = np.asarray(features, np.float32).reshape(len(features), -1)
        width = int(np.prod(self.feature_shape)) if self.feature_shape else \
            getattr(self.model, "n_features_in_", x.shape[1])
        if x.shape[1] != width:
            raise ModelFileError(f"{self.source}: features of width {x.shape[1]}, but the model "
                               f"was trained on width {width} (shape {list(self.feature_shape)}):"
                               " other backbone, layer, pooling or input size")
        scores = class_scores(self.model, x)
        return scores if self.probabilities else softmax(scores)

    def features(self, paths: Sequence[str], batch_size: int = 32
                 ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Features of the images (rows of zeros where unreadable), ok flags and the reasons
        for unreadable files by row: read and computed exactly as extraction does."""
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, not {batch_size}")
        size = self.backbone.input_size
        views = Views()
        if self.tencrop:  # 10-crop views read as the tencrop store reads them
            views = TENCROP.reader(size, list(paths))
        batch = max(1, min(batch_size, len(paths) * views.count))
        forward = self.backbone.batched(batch)  # padded to one traced shape, as extraction
        errors = ReadErrors()
        feats, oks = [], []
        for _, images, ok in read_batches(list(paths), size, batch, errors, views=views,
                                          resize=self.backbone.resize):
            feats.append(forward(images, ok).reshape(len(images), -1))
            oks.append(ok)
        if not feats:
            return np.zeros((0, 0), np.float32), np.zeros(0, bool), {}
        x, ok = np.concatenate(feats), np.concatenate(oks)
        if views.count > 1:  # the mean of each image's crops, as the 10-crop store holds
            x = x.reshape(len(paths), views.count, -1).mean(axis=1)
            ok = ok.reshape(len(paths), views.count).all(axis=1)
        return x, ok, dict(errors.reasons)

    def top_k(self, paths: Sequence[str], k: int = 5, batch_size: int = 32) -> list[Prediction]:
        """The ``k`` best labels of every image, in input order; unreadable ones carry the
        reason instead."""
        if k < 1:
            raise UsageError(f"--top must be at least 1, not {k}")
        if not paths:
            return []
        x, ok, reasons = self.features(paths, batch_size)
        out = [Prediction(p, [], reasons.get(i, "unreadable")) for i, p in enumerate(paths)]
        good = np.flatnonzero(ok)
        if len(good):
            proba = self.predict_proba(x[good])
            k = min(k, proba.shape[1])
            best = np.argsort(-proba, axis=1, kind="stable")[:, :k]
            for row, i in enumerate(good):
                out[i] = Prediction(paths[i], [(self.classes[j], float(proba[row, j]))
                                               for j in best[row]])
        return out


def model_file(path: str | Path) -> Path:
    """``path`` if it is a file; in a run folder, the model of its best rank-1 result (said on
    stderr when there are several). A result names a model file inside its run folder: one
    that resolves outside it (``..``, an absolute path, a symbolic link) is refused."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelFileError(f"no saved model at {path} (featx classify writes a run folder "
                           f"holding <pipeline>-<classifier>{modelfile.SUFFIX})")
    candidates = []
    for result in sorted(path.glob("*.json")):
        try:
            data = json.loads(result.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("model"):
            model = path / str(data["model"])
            if model.resolve().parent != path.resolve():
                raise ModelFileError(f"{result}: its model {str(data['model'])!r} resolves to "
                                   f"{model.resolve()}, outside the run folder {path}: "
                                   "refused (a run folder names only files inside it)")
            if not model.is_file():
                continue
            rank1 = data.get("rank1")
            candidates.append((rank1 if isinstance(rank1, (int, float)) else -1.0, model))
    if not candidates:
        raise ModelFileError(f"{path}: a folder with no saved model (a featx classify run "
                           f"folder holds <pipeline>-<classifier>{modelfile.SUFFIX} and its "
                           "JSON)")
    rank1, best = min(candidates, key=lambda c: (-c[0], c[1].name))  # equals: by name
    if len(candidates) > 1:
        log.info("%s: %d models; using %s (best rank-1 %.3f); give a model file to use "
                 "another", path, len(candidates), best.name, rank1)
    return best


def int8_model(backbone: Backbone, bundle: dict[str, Any], pipeline: dict[str, Any],
               source: Path) -> None:
    """precision int8: attach to ``backbone`` the calibration of the int8 model that the
    classifier of ``bundle`` was trained on, and pin that model's batch size (its one input
    shape; ``int8_batch``): its features come from that very model, never from float32 nor
    from another calibration (the bundle's settings key holds the calibration's identity).

    That model is the cache folder's where it keeps it (found by the calibration it records;
    no dataset read), else it is quantised again on the sample of the dataset ``pipeline``
    (the extraction's) names, where that dataset gives the same sample; else a one-line
    ModelFileError saying what is missing and how to get it."""
    from featx.features.plan import calibrate, data_now, feature_settings

    want = bundle.get("settings_key")
    batch = int((pipeline.get("extract") or {}).get("batch_size") or 0)
    name, cache = backbone.spec.name, backbone.cache_dir

    def trained_on(calibration: Calibration) -> bool:  # the features the classifier knows?
        backbone.calibration = calibration
        return store_key(feature_settings(backbone)) == want

    # the extraction's batch size first: the very model its rows came from
    for folder, size, identity in sorted(cached_int8_models(cache, name),
                                         key=lambda found: found[1] != batch):
        key = model_key(backbone.describe(), size, identity)
        if trained_on(Calibration((), backbone.seed, "", recorded=identity)) and \
                folder == converted_model_dir(cache, name, size, key, precision="int8"):
            backbone.int8_batch = size
            log.debug("%s: its int8 model is %s", source, folder)
            return
    data = pipeline.get("dataset") or {}
    root = data.get("root") or "its dataset"
    try:
        config = Config.from_dict(pipeline, source=str(source))
        calibrate(backbone, config, data_now(config))
        why = "" if trained_on(backbone.calibration) else \
            "gives another sample now (images were added, removed or changed)"
    except (FeatxError, OSError) as e:  # no dataset here, or not the pipeline of this featx
        why = f"cannot be read ({' '.join(str(e).split())})"
    if not why:
        backbone.int8_batch = batch or None
        log.info("%s: its int8 model is not in %s: quantising it again on the sample of %s "
                 "it was calibrated on", source, cache, root)
        return
    backbone.calibration = None
    raise ModelFileError(
        f"{source}: it was trained on features of {name}'s int8 model calibrated on a "
        f"sample of {root} (seed {data.get('seed', '?')}), but {cache / OPENVINO_DIR} keeps "
        f"no such model and that dataset {why}: restore the dataset (predict then quantises "
        "the model again) or the cache folder, or train the model on float32 features")


def _check_settings(bundle: dict[str, Any], backbone: Backbone, source: str) -> None:
    """Refuse a backbone whose features differ from those the model was trained on."""
    from featx.features.plan import feature_settings

    recorded = bundle.get("backbone") or {}
    settings = feature_settings(backbone)
    if recorded.get("weights_id") and recorded["weights_id"] != backbone.weights_id:
        where = backbone.weights_path or backbone.weights_kind
        advice = "give --weights the same weights file"
        if recorded.get("weights") == "none":
            advice = 'it was trained with random weights (weights="none"): leave --weights out'
        elif recorded.get("weights") == "imagenet":  # identified by Keras version, not content
            advice = ('it was trained with weights="imagenet": leave --weights out and put '
                      f"the file Keras downloads into {keras_home() / 'models'}/")
        raise ModelFileError(
            f"{source}: the weights {where} ({backbone.weights_id}) are not the ones the model "
            f"was trained with ({recorded['weights_id']}); {advice}")
    differ = [f"{k}={recorded[k]!r} (now {settings[k]!r})" for k in settings
              if k in recorded and recorded[k] != settings[k]]
    key = bundle.get("settings_key")
    if differ or (key and key != store_key(settings)):
        detail = "; ".join(differ) or f"settings key {key} (now {store_key(settings)})"
        raise ModelFileError(f"{source}: these features would differ from the ones the model was "
                           f"trained on: {detail}")


def write_table(predictions: Sequence[Prediction], predictor: Predictor, out: TextIO) -> None:
    """One line per image: its path, then label and score, best first. For a terminal:
    class names and paths come from folder names, their control characters escaped."""
    t = terminal
    out.write(f"# {t(predictor.source)}: {t(predictor.classifier)} on "
              f"{predictor.backbone.spec.name}; scores: {predictor.calibration}\n")
    for p in predictions:
        if p.error:
            out.write(f"{t(p.path)}  unreadable: {t(p.error)}\n")
        else:
            out.write(t(p.path) + "  " + "  ".join(f"{t(lb)} {s:.3f}" for lb, s in p.labels)
                      + "\n")


def write_csv(predictions: Sequence[Prediction], out: TextIO) -> None:
    """path, rank, label, score: one row per label (rank 1 is best); an unreadable image has
    one row with its reason in ``error``."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_HEADER)
    c = spreadsheet_cell  # paths and labels come from folder names: never formulas
    for p in predictions:
        if p.error:
            w.writerow([c(p.path), "", "", "", c(p.error)])
        for rank, (label, score) in enumerate(p.labels, 1):
            w.writerow([c(p.path), rank, c(label), f"{score:.6f}", ""])


def run(model: str, inputs: Sequence[str], out: TextIO, top: int = 5,
        csv_file: str | None = None, weights: str | None = None, batch_size: int = 32,
        trust: bool = False) -> int:
    """``featx predict``: the table on ``out`` (the command line's stdout), or the CSV there
    with ``csv_file="-"``, or both the table and a CSV file. ``model``: a model file or a
    run folder."""
    predictor = Predictor.load(model, weights, trust=trust)
    paths = image_files(inputs)
    if not paths:
        raise DatasetError(f"no image files in {', '.join(map(str, inputs))} "
                           f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    predictions = predictor.top_k(paths, top, batch_size)
    if csv_file == "-":
        log.info("scores are %s", predictor.calibration)
        write_csv(predictions, out)
    else:
        write_table(predictions, predictor, out)
        if csv_file:
            with open(csv_file, "w", newline="") as f:
                write_csv(predictions, f)
    bad = sum(bool(p.error) for p in predictions)
    if bad:
        log.warning("%d of %s unreadable", bad, plural(len(predictions), "image"))
    return 0
