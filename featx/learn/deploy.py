"""Take a classifier out of featx: one model file that runs where featx does not.

``export_model`` builds one Keras model of what ``featx predict`` computes for a saved model
(featx.learn.predict): uint8 RGB images already at the backbone's input size (N, S, S, 3) ->
the backbone's own preprocessing -> the frozen backbone at the recorded layer(s) and pooling
(flip averaging where the features had it) -> the linear head as Dense layers -> the scores
``featx predict`` prints (N, n_classes), columns in the order of the ``labels`` the artifact
records. It is written through Keras' own ``Model.export`` as a SavedModel (TF Serving), ONNX,
OpenVINO IR or LiteRT (TFLite) file, or saved as a ``.keras`` file; LiteRT and OpenVINO can
be quantised to int8, calibrated on the model's own training images (and bias-corrected on
them: NNCF's for OpenVINO, :func:`_bias_corrected` for LiteRT). KerasHub backbones export
too (a .keras file of one that Keras cannot load again is refused: SigLIP's).

Resizing stays outside the model (the artifact's metadata says the size and the resize
policy): a consumer resizes with Pillow as featx does (featx.data.images), so the float
artifacts get featx's very pixels and give its scores.

The head: every step of a logistic regression, linear SVM or SGD model (and of
``classify.normalize``) is linear or one of a few elementwise functions, so it becomes
Dense layers and activations exactly as scikit-learn computes it: softmax for multinomial
logistic regression, the sigmoid as softmax([0, d]) for two classes, one-vs-rest sigmoids
normalised (SGD, Platt-calibrated SVMs in an ensemble) as softmax(-softplus(-d)); the
StandardScaler folded into the Dense weights (in float64, stored as float32). Heads that are
not linear (rbf_svm, knn) are refused.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.errors import DatasetError, DependencyError, ModelFileError, UsageError
from featx.core.log import import_tensorflow, plural
from featx.core.runinfo import versions
from featx.data.dataset import TRAIN
from featx.data.images import READ_POLICY, ReadErrors, read_batches, usable_cores
from featx.features.backbones import Backbone
from featx.learn import modelfile
from featx.learn.learners import ProbabilityAverage, StreamingSGD, signed_sqrt
from featx.learn.predict import Predictor

log = logging.getLogger(__name__)

# format -> what --out ends with ("": a folder)
FORMATS = {"keras": ".keras", "savedmodel": "", "onnx": ".onnx", "openvino": ".xml",
           "litert": ".tflite"}
INT8_FORMATS = ("litert", "openvino")
INSTALL_HINT = "pip install 'featx[export]'"
# The modules each format needs to be written ("import name": "package"); --int8 adds more.
NEEDS = {"onnx": {"tf2onnx": "tf2onnx", "onnx": "onnx"}, "openvino": {"openvino": "openvino"}}
NEEDS_INT8 = {"openvino": {"nncf": "nncf"}}
EXPORTABLE = "logreg, linear_svm, sgd and ensembles of them"
METADATA = "featx.json"  # its name inside a .keras or .tflite file and in assets.extra/
CALIBRATION_IMAGES = 300  # training images int8 is calibrated on (fewer if there are fewer)
BIAS_IMAGES = 100  # of those, LiteRT int8's bias correction measures its errors on
# How each format's int8 is made (the artifact's metadata says it; make bench-export shows it)
INT8_METHOD = {"litert": "LiteRT converter, int8 per channel, bias-corrected",
               "openvino": "NNCF, int8, full bias correction"}
TIMED_RUNS = 20  # single-image runs timed for the int8 speed line


@dataclass
class Exported:
    """What :func:`export_model` wrote."""

    path: Path  # the file (.xml for OpenVINO, its .bin beside it) or folder (SavedModel)
    format: str
    int8: bool
    bytes: int  # on disk, every file of it
    metadata: dict[str, Any]  # what the artifact records: labels, input, scores, backbone
    float_bytes: int = 0  # the float32 model's weights, for comparison with int8
    ms_per_image: float | None = None  # int8: median single-image time in its runtime
    files: list[Path] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])


# --------------------------------------------------------------------------- the head

@dataclass
class Linear:
    """x -> x @ w + b (float64 until it becomes a Dense layer)."""

    w: np.ndarray  # (n_in, n_out)
    b: np.ndarray  # (n_out,)


@dataclass
class Standardize:
    """x -> (x - mean) / scale, elementwise (a StandardScaler)."""

    mean: np.ndarray
    scale: np.ndarray


@dataclass
class Elementwise:
    """l2 (sklearn's Normalizer), signed_sqrt, softplus, negate, softmax."""

    name: str


@dataclass
class Average:
    """The mean of several heads' scores (featx's ProbabilityAverage)."""

    branches: list[list[Any]]


class NotLinear(Exception):
    """A step with no exact Dense/activation form (said as a UsageError by the caller)."""


def head_steps(model: Any) -> list[Any]:
    """The steps from a feature row (flattened) to what ``featx predict`` scores with
    ``model``: its probabilities where it has ``predict_proba``, else the softmax of its
    decision values (featx.learn.predict.Predictor.predict_proba)."""
    if hasattr(model, "predict_proba"):
        return _probabilities(model)
    d = _decision(model)
    return _fold([*d, *(_binary(-1.0) if _classes(model) == 2 else []), Elementwise("softmax")])


def _classes(model: Any) -> int:
    return len(model.classes_)


def _binary(negative: float) -> list[Any]:
    """One decision value d -> the two columns [negative * d, d]."""
    return [Linear(np.array([[negative, 1.0]]), np.zeros(2))]


def _probabilities(model: Any) -> list[Any]:
    """Steps giving ``model.predict_proba``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        *transforms, (_, last) = [s for s in model.steps if s[1] not in (None, "passthrough")]
        return _fold([*_transforms([t for _, t in transforms]), *_probabilities(last)])
    if isinstance(model, StreamingSGD):
        return _fold([*_transforms([model.scaler_]), *_probabilities(model.sgd_)])
    if isinstance(model, ProbabilityAverage):
        return [Average([_probabilities(m) for m in model.members])]
    if isinstance(model, LogisticRegression):
        d = _linear(model)
        if _classes(model) == 2:  # sigmoid(d) = softmax([0, d])[1]
            return _fold([d, *_binary(0.0), Elementwise("softmax")])
        return _fold([d, Elementwise("softmax")])
    if isinstance(model, SGDClassifier) and model.loss == "log_loss":
        d = _linear(model)
        if _classes(model) == 2:
            return _fold([d, *_binary(0.0), Elementwise("softmax")])
        # one-vs-rest sigmoids normalised to sum 1: sigmoid(d) / sum = softmax(-softplus(-d))
        return _fold([d, Linear(-np.eye(len(d.b)), np.zeros(len(d.b))),
                      Elementwise("softplus"), Elementwise("negate"), Elementwise("softmax")])
    if isinstance(model, CalibratedClassifierCV) and model.method == "sigmoid":
        return [Average([_calibrated(c) for c in model.calibrated_classifiers_])]
    raise NotLinear(type(model).__name__)


def _calibrated(calibrated: Any) -> list[Any]:
    """sklearn's _CalibratedClassifier (sigmoid): p_k = sigmoid(-(a_k d_k + b_k)) for each
    class, normalised to sum 1; for two classes p_1 from the one decision value, p_0 = 1 - p_1."""
    d = _decision(calibrated.estimator)
    a = np.array([float(c.a_) for c in calibrated.calibrators])
    b = np.array([float(c.b_) for c in calibrated.calibrators])
    if len(calibrated.classes) == 2:  # softmax([0, -(a d + b)])
        return _fold([*d, Linear(np.array([[0.0, -a[0]]]), np.array([0.0, -b[0]])),
                      Elementwise("softmax")])
    if not np.array_equal(calibrated.estimator.classes_, calibrated.classes):
        raise NotLinear("a calibrated model trained on a subset of its classes")
    # sigmoid(-z) / sum = softmax(-softplus(z)), z = a d + b
    return _fold([*d, Linear(np.diag(a), b), Elementwise("softplus"), Elementwise("negate"),
                  Elementwise("softmax")])


def _decision(model: Any) -> list[Any]:
    """Steps giving ``model.decision_function`` (one column for two classes)."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        *transforms, (_, last) = [s for s in model.steps if s[1] not in (None, "passthrough")]
        return _fold([*_transforms([t for _, t in transforms]), *_decision(last)])
    return [_linear(model)]


def _linear(model: Any) -> Linear:
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.svm import LinearSVC

    if not isinstance(model, (LogisticRegression, LinearSVC, SGDClassifier)):
        raise NotLinear(type(model).__name__)
    coef = np.asarray(model.coef_, np.float64)
    return Linear(coef.T, np.asarray(model.intercept_, np.float64).reshape(-1))


def _transforms(steps: Sequence[Any]) -> list[Any]:
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

    out: list[Any] = []
    for step in steps:
        if isinstance(step, Pipeline):
            out += _transforms([s for _, s in step.steps if s not in (None, "passthrough")])
        elif isinstance(step, StandardScaler):
            n = step.n_features_in_
            mean = step.mean_ if step.with_mean else np.zeros(n)
            scale = step.scale_ if step.with_std else np.ones(n)
            out.append(Standardize(np.asarray(mean, np.float64), np.asarray(scale, np.float64)))
        elif isinstance(step, Normalizer) and step.norm == "l2":
            out.append(Elementwise("l2"))
        elif isinstance(step, FunctionTransformer) and step.func is signed_sqrt \
                and step.inverse_func is None:
            out.append(Elementwise("signed_sqrt"))
        elif isinstance(step, PCA):
            components = np.asarray(step.components_, np.float64)
            scale = np.ones(len(components))
            if step.whiten:  # as sklearn: the variance clipped below at eps
                scale = np.sqrt(np.asarray(step.explained_variance_, np.float64))
                scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
            out.append(Linear(components.T / scale,
                              -(np.asarray(step.mean_, np.float64) @ components.T) / scale))
        else:
            raise NotLinear(type(step).__name__)
    return out


def _fold(steps: list[Any]) -> list[Any]:
    """Adjacent linear steps merged into one (fewer, larger Dense layers: the same maps)."""
    out: list[Any] = []
    for step in steps:
        prev = out[-1] if out else None
        if isinstance(step, Linear) and isinstance(prev, Linear):
            out[-1] = Linear(prev.w @ step.w, prev.b @ step.w + step.b)
        elif isinstance(step, Linear) and isinstance(prev, Standardize):
            w = step.w / prev.scale[:, None]
            out[-1] = Linear(w, step.b - prev.mean @ w)
        elif isinstance(step, Standardize) and isinstance(prev, Linear):
            out[-1] = Linear(prev.w / step.scale, (prev.b - step.mean) / step.scale)
        elif isinstance(step, Standardize) and isinstance(prev, Standardize):
            out[-1] = Standardize(prev.mean + step.mean * prev.scale, prev.scale * step.scale)
        else:
            out.append(step)
    return out


def head_layers(steps: list[Any], x: Any) -> Any:
    """The Keras tensor of ``steps`` applied to the features ``x`` (N, D): built-in layers
    and keras.ops only, so that the .keras file loads without featx."""
    import keras

    for step in steps:
        if isinstance(step, Standardize):  # alone (no Dense follows): as a diagonal one
            step = Linear(np.diag(1.0 / step.scale), -step.mean / step.scale)
        if isinstance(step, Linear):
            dense = keras.layers.Dense(step.w.shape[1])
            x = dense(x)
            dense.set_weights([step.w.astype(np.float32), step.b.astype(np.float32)])
        elif isinstance(step, Average):
            x = keras.layers.Average()([head_layers(b, x) for b in step.branches])
        elif step.name == "l2":
            x = keras.layers.UnitNormalization()(x)
        elif step.name == "signed_sqrt":
            x = keras.ops.sign(x) * keras.ops.sqrt(keras.ops.abs(x))
        elif step.name == "negate":
            x = keras.ops.negative(x)
        else:
            x = keras.layers.Activation(step.name)(x)
    return x


# ------------------------------------------------------------------------ the model

def preprocessing(backbone: Backbone, images: Any) -> Any:
    """The backbone's own preprocessing as layers: the uint8 Keras tensor ``images`` (N, S,
    S, 3) -> float32 what the network takes. Every ``keras.applications`` preprocessing is
    x -> x @ K + b per pixel (a scale and shift, a channel swap): K and b are read off the
    backbone's own function (featx.features.backbones.Backbone.preprocess), not restated."""
    import keras

    probe = np.zeros((4, 1, 1, 3), np.uint8)
    probe[1:, 0, 0] = 255 * np.eye(3, dtype=np.uint8)
    out = np.asarray(backbone.preprocess(probe), np.float64).reshape(4, 3)
    b, k = out[0], (out[1:] - out[0]) / 255.0
    diagonal = np.allclose(k, np.diag(np.diag(k)), atol=1e-12)
    if diagonal and np.ptp(np.diag(k)) < 1e-9 and np.ptp(b) < 1e-9:  # one scale, one shift
        return keras.layers.Rescaling(float(k[0, 0]), float(b[0]), name="preprocess")(images)
    x = keras.layers.Rescaling(1.0, name="to_float")(images)
    dense = keras.layers.Dense(3, name="preprocess")
    x = dense(x)
    dense.set_weights([k.astype(np.float32), b.astype(np.float32)])
    return x


def feature_layers(backbone: Backbone, images: Any) -> Any:
    """The Keras tensor of the backbone's features (N, D) of the uint8 Keras tensor
    ``images`` (N, S, S, 3), as :meth:`Backbone.features` computes them, flattened as
    ``featx predict`` flattens them."""
    import keras

    x = preprocessing(backbone, images)
    features = backbone.model(x)
    if backbone.config.flip:  # the image and its mirror, averaged
        features = keras.layers.Average()([features, backbone.model(keras.ops.flip(x, 2))])
    if len(features.shape) > 2:  # pooling "none": the map, flattened
        features = keras.layers.Flatten()(features)
    return features


def build_model(predictor: Predictor) -> Any:
    """One Keras model of ``predictor``: uint8 images (N, S, S, 3) -> scores (N, n_classes),
    the scores of :meth:`Predictor.predict_proba` on the features of those pixels."""
    import keras

    steps = head_steps(predictor.model)
    size = predictor.backbone.input_size
    images = keras.Input((size, size, 3), dtype="uint8", name="image")
    scores = head_layers(steps, feature_layers(predictor.backbone, images))
    model = keras.Model(images, scores, name=f"featx_{predictor.classifier}")
    model(np.zeros((1, size, size, 3), np.uint8))  # Keras' ONNX export wants a called model
    return model


def metadata(predictor: Predictor, fmt: str, int8: bool, calibration: int = 0
             ) -> dict[str, Any]:
    """What the artifact records beside its weights: the labels (the columns of its output),
    the input it takes and what its scores are."""
    backbone = predictor.backbone
    size = backbone.input_size
    return {
        "featx": versions()["featx"], "format": fmt, "int8": int8,
        "labels": list(predictor.classes),
        "classifier": predictor.classifier,
        "scores": predictor.calibration,
        "input": {"shape": [None, size, size, 3], "dtype": "uint8", "channels": "RGB",
                  "range": "0-255", "resize": backbone.resize, "read": READ_POLICY,
                  "note": "resize outside the model (featx.data.images.fit_image)"},
        "output": {"shape": [None, len(predictor.classes)], "dtype": "float32"},
        "backbone": backbone.describe(),
        "source": Path(predictor.source).name,
        **({"calibration_images": calibration, "int8_method": INT8_METHOD[fmt]} if int8
           else {}),
    }


# ----------------------------------------------------------------------- exporting

def export_model(model: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                 int8: bool = False, weights: str | None = None,
                 trust: bool = False) -> Exported:
    """Write the saved model ``model`` (a ``.skops`` file, or a run folder's best model) as
    one artifact of format ``fmt`` at ``out`` that runs without featx (see the module
    docstring). ``int8``: post-training integer quantisation (litert, openvino), calibrated
    on up to :data:`CALIBRATION_IMAGES` of the model's training images."""
    out = _check_request(fmt, out, int8)
    predictor = Predictor.load(model, weights, trust=trust)
    source = Path(predictor.source)
    if predictor.tencrop:
        raise UsageError(f"{source}: evaluated on 10-crop features (classify.test_features = "
                         "\"tencrop\"): one image is 10 passes averaged, which an exported "
                         "model of one pass would not give; export a model of plain features")
    try:
        head_steps(predictor.model)
    except NotLinear as e:
        raise UsageError(f"{source}: a {predictor.classifier} model cannot be exported: "
                         f"featx export-model exports linear heads only, {EXPORTABLE} "
                         f"({e} has no exact Dense form)") from None
    if predictor.backbone.config.precision != "float32":
        raise UsageError(f"{source}: its backbone ran in {predictor.backbone.config.precision}: "
                         "exported models are float32 (export a model of float32 features)")
    calibration = _calibration(predictor, trust) if int8 else None
    log.info("building %s on %s (%s)", predictor.classifier, predictor.backbone.spec.name,
             plural(len(predictor.classes), "class", "classes"))
    keras_model = build_model(predictor)
    meta = metadata(predictor, fmt, int8, 0 if calibration is None else len(calibration))
    float_bytes = 4 * int(keras_model.count_params())
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written in a folder beside ``out``, then moved into place: a failed export leaves
    # whatever was at ``out`` as it was.
    with tempfile.TemporaryDirectory(prefix=".featx-export-", dir=out.parent) as tmp:
        staged = Path(tmp) / (out.name if fmt != "savedmodel" else "savedmodel")
        t0 = time.perf_counter()
        WRITERS[fmt](keras_model, staged, meta, calibration)
        if fmt == "keras" and predictor.backbone.hub is not None:
            _check_reloads(staged, predictor)
        log.info("%s written in %.1fs", fmt, time.perf_counter() - t0)
        files = _place(staged, out)
    ms = _time_int8(fmt, out) if int8 else None
    return Exported(out, fmt, int8, sum(_size(f) for f in files), meta, float_bytes, ms, files)


def _check_request(fmt: str, out: str | os.PathLike, int8: bool) -> Path:
    """Refuse what cannot be done before anything is loaded or built."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise UsageError(f"--int8 is for {' and '.join(INT8_FORMATS)}, not {fmt}")
    out = Path(out)
    suffix = FORMATS[fmt]
    if suffix and out.suffix != suffix:
        raise UsageError(f"--out {str(out)!r}: {fmt} models are {suffix} files (e.g. "
                         f"{out.with_suffix(suffix).name})")
    if not suffix and out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"--out {str(out)!r}: already exists; a SavedModel is a new (or empty) "
                         "folder")
    if out.is_dir() and suffix:
        raise UsageError(f"--out {str(out)!r}: a folder; give the {suffix} file to write")
    needed = {**NEEDS.get(fmt, {}), **(NEEDS_INT8.get(fmt, {}) if int8 else {})}
    missing = [package for module, package in needed.items() if not _importable(module)]
    if missing:
        raise DependencyError(f"exporting to {fmt}{' int8' if int8 else ''} needs "
                              f"{', '.join(missing)}: {INSTALL_HINT}")
    return out


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _place(staged: Path, out: Path) -> list[Path]:
    """Move what was written into place (an OpenVINO .bin before its .xml)."""
    if staged.is_dir():
        if out.exists():  # an empty folder, checked before
            out.rmdir()
        os.replace(staged, out)
        return [out]
    placed = []
    bin_file = staged.with_suffix(".bin")
    if bin_file.exists():
        os.replace(bin_file, out.with_suffix(".bin"))
        placed.append(out.with_suffix(".bin"))
    os.replace(staged, out)
    return [out, *placed]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


@contextlib.contextmanager
def _quiet_converters():
    """Converters print progress and banners on stdout and stderr: only the command line
    prints, so they go nowhere (their errors still raise)."""
    from featx.core.log import _quiet, _stderr_fd_silenced

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their deprecations (np.object, tf2onnx) are theirs
        with _stderr_fd_silenced() if _quiet() else contextlib.nullcontext():
            yield


def _write_keras(model: Any, path: Path, meta: dict, calibration: np.ndarray | None) -> None:
    model.save(path)
    _drop_derived_arguments(path)
    with zipfile.ZipFile(path, "a") as z:  # Keras reads the files it knows and no others
        z.writestr(METADATA, json.dumps(meta, indent=1))


# Layers whose get_config writes arguments their __init__ refuses, so that the .keras file
# would not load again: those arguments (each follows from the others), by layer class.
# KerasHub 0.32's ViT: its patch and position counts follow from image and patch size, a
# block's key_dim is hidden_dim // num_heads.
DERIVED_ARGUMENTS = {"ViTPatchingAndEmbedding": ("num_patches", "num_positions"),
                     "ViTEncoderBlock": ("key_dim",)}


def _drop_derived_arguments(path: Path) -> None:
    """The .keras file at ``path`` with :data:`DERIVED_ARGUMENTS` left out of its config.json
    (rewritten only where there are some)."""
    def dropped(node: Any) -> Any:
        if isinstance(node, list):
            return [dropped(n) for n in node]
        if not isinstance(node, dict):
            return node
        extra = DERIVED_ARGUMENTS.get(node.get("class_name"), ()) \
            if isinstance(node.get("config"), dict) else ()
        out = {k: dropped(v) for k, v in node.items()}
        if extra:
            out["config"] = {k: v for k, v in out["config"].items() if k not in extra}
        return out

    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    fixed = dropped(config)
    if fixed == config:
        return
    rewritten = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(rewritten, "w") as new:
        for info in old.infolist():
            if info.filename == "config.json":
                new.writestr(info, json.dumps(fixed))
            else:
                with old.open(info) as src, new.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst)
    os.replace(rewritten, path)


def _check_reloads(path: Path, predictor: Predictor) -> None:
    """Refuse a .keras file of a KerasHub backbone that Keras cannot load again (measured:
    SigLIP's, keras_hub 0.32: its embedding layer's shape is set on the instance in
    featx.features.hub, which a file cannot carry), naming the formats that work."""
    import keras
    import keras_hub

    hub = predictor.backbone.hub
    try:
        with _quiet_converters():
            keras.saving.load_model(path)
    except Exception as e:  # Keras raises TypeError, ValueError ... from the layers' code
        log.debug("%s does not load again: %s", path, e)
        others = [f for f in FORMATS if f != "keras"]
        raise UsageError(
            f"{predictor.source}: a .keras file of its KerasHub backbone ({hub.label}, "
            f"{hub.files.family.removesuffix('Backbone')}) does not load again "
            f"({type(e).__name__} in keras_hub {keras_hub.__version__}): export "
            f"it as {', '.join(others[:-1])} or {others[-1]}") from None


def _write_savedmodel(model: Any, path: Path, meta: dict, calibration: np.ndarray | None
                      ) -> None:
    with _quiet_converters():
        model.export(str(path), format="tf_saved_model", verbose=False)
    extra = path / "assets.extra"  # beside the model, as TF Serving keeps extra files
    extra.mkdir()
    (extra / METADATA).write_text(json.dumps(meta, indent=1))


def _write_onnx(model: Any, path: Path, meta: dict, calibration: np.ndarray | None) -> None:
    import onnx

    _tensors_as_arrays(model)
    with _quiet_converters():
        model.export(str(path), format="onnx", verbose=False)
    proto = onnx.load(str(path))
    _erfc_as_erf(proto.graph)
    proto.metadata_props.add(key="featx", value=json.dumps(meta))
    onnx.save(proto, str(path))


def _tensors_as_arrays(model: Any) -> None:
    """Each tensor a layer of ``model`` keeps as an attribute made a NumPy array (the same
    numbers). The traced function captures such a tensor as an input, which tf2onnx leaves as
    an input of the ONNX graph for its caller to feed (KerasHub's ViT: its position ids, made
    in build()); an array is traced as a constant."""
    tf = import_tensorflow()

    for layer in model._flatten_layers(include_self=False):  # every layer, nested ones too
        for name, value in list(vars(layer).items()):
            if tf.is_tensor(value) and not isinstance(value, tf.Variable) and \
                    hasattr(value, "numpy"):
                setattr(layer, name, value.numpy())


def _erfc_as_erf(graph: Any) -> None:
    """tf2onnx (1.17) leaves TensorFlow's Erfc in the graph, an op ONNX has not: the exact
    GELU of KerasHub's ViT, DINOv2 and DINOv3 (0.5 x erfc(-x / sqrt 2)) made the file one
    that onnxruntime refuses. Each becomes erfc(x) = 1 - erf(x), in place."""
    from onnx import helper, numpy_helper

    nodes = list(graph.node)
    if not any(n.op_type == "Erfc" for n in nodes):
        return
    one = "featx_erfc_one"
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    del graph.node[:]
    for n in nodes:  # in order: the graph stays topologically sorted
        if n.op_type == "Erfc":
            erf = f"{n.output[0]}_erf"
            graph.node.extend([helper.make_node("Erf", [n.input[0]], [erf], name=f"{n.name}_erf"),
                               helper.make_node("Sub", [one, erf], list(n.output), name=n.name)])
        else:
            graph.node.append(n)


def _write_openvino(model: Any, path: Path, meta: dict, calibration: np.ndarray | None
                    ) -> None:
    import openvino as ov

    converted = path.with_name("converted.xml")
    with _quiet_converters():
        model.export(str(converted), format="openvino", verbose=False)
    ov_model = ov.Core().read_model(str(converted))
    if calibration is not None:
        import nncf

        log.info("quantising to int8 (NNCF, %s)", plural(len(calibration), "image"))
        # Full bias correction, not NNCF's fast one: on Flowers-17 (MobileNetV2, 300 images)
        # top-1 agreement with float on 200 test images went from 0.96 to 0.97.
        with _quiet_converters():
            ov_model = nncf.quantize(ov_model, nncf.Dataset([c[None] for c in calibration]),
                                     subset_size=len(calibration), fast_bias_correction=False)
    ov_model.set_rt_info(json.dumps(meta), ["featx"])
    # float32 weights as converted: save_model would halve them to float16 by default
    ov.save_model(ov_model, str(path), compress_to_fp16=False)


def _write_litert(model: Any, path: Path, meta: dict, calibration: np.ndarray | None) -> None:
    if calibration is None:
        with _quiet_converters():
            model.export(str(path), format="litert", verbose=False)
    else:
        log.info("quantising to int8 (LiteRT converter, %s; bias correction on %s)",
                 plural(len(calibration), "image"),
                 plural(min(BIAS_IMAGES, len(calibration)), "image"))
        with _quiet_converters():
            path.write_bytes(_litert_int8(model, calibration))
    # A zip archive appended to the flatbuffer (as TFLite's metadata tools attach label
    # files): the interpreter reads the flatbuffer, zipfile finds the archive at the end.
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(METADATA, json.dumps(meta, indent=1))
    with open(path, "ab") as f:
        f.write(archive.getvalue())


# LiteRT int8 is the converter's full-integer quantisation (int8 weights per output channel,
# int8 activations calibrated on the training images), then every layer's bias corrected for
# the mean error that quantising the layer adds (:func:`_bias_corrected`). Measured on
# Flowers-17 (MobileNetV2, logistic regression; 2026-12-06, commit 1c03262, 2-core CPU under
# load 5-9, TF 2.21's converter, LiteRT 2.3): top-1 agreement with featx predict on the 200
# test images / rank-1 on the 340 (float 0.947) / size / one image (interleaved, same load):
#   float32                                    1.000  0.947  8.97 MB  11.4 ms
#   int8, 300 calibration images               0.945  0.941  2.75 MB   5.9 ms
#   int8, all 1020 training images             0.965  0.941  2.75 MB   6.3 ms
#   int8 per-tensor (per-channel off)          0.315  0.329  2.34 MB
#   int16 activations, int8 weights            0.960  0.938  2.96 MB   248 ms
#   int8, head (Dense, softmax) in float32     0.945  0.941  2.82 MB
#   int8, first conv + first depthwise float   0.970  0.932  2.75 MB
#     ... and the head float, 1020 images      0.980  0.938  2.82 MB   7.0 ms
#   int8, every depthwise conv in float32      0.970  0.938  2.78 MB   8.9 ms
#   dynamic range (int8 weights only)          0.970  0.932  2.55 MB  30.6 ms
#   int8 + bias correction (chosen)            0.985  0.950  2.75 MB   6.4 ms
# Where the error came from: the int8 pooled features alone, through the float head, cost
# nothing (1.000); about 40% of their error was a per-channel mean, which bias correction
# (as NNCF's for OpenVINO) takes out at every layer, at no cost in size or speed.

def _litert_int8(model: Any, calibration: np.ndarray) -> bytes:
    """``model`` as a full-integer LiteRT flatbuffer, calibrated on ``calibration`` (n, S, S,
    3) uint8 and bias-corrected on :data:`BIAS_IMAGES` of them, evenly spaced."""
    import functools

    import keras

    tf = import_tensorflow()

    def representative():
        for image in calibration:
            yield [image[None]]

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8, name=model.inputs[0].name)
    with tempfile.TemporaryDirectory(prefix="featx-litert-") as saved:
        # the SavedModel and converter of Keras' own LiteRT export (keras.src.export.litert),
        # kept at hand: the debugger below needs the converter itself
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                             input_signature=[spec])
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        # Calibrates once, then gives the quantised model and its debug twin (each quantised
        # op beside its float32 twin on the same input).
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                              debug_dataset=representative)
        quantised = debugger.get_nondebug_quantized_model()
        debug = debugger.get_debug_quantized_model()
    take = np.unique(np.linspace(0, len(calibration) - 1, min(BIAS_IMAGES, len(calibration)))
                     .round().astype(int))
    return _bias_corrected(quantised, debug, calibration[take])


def _bias_corrected(quantised: bytes, debug: bytes, images: np.ndarray) -> bytes:
    """``quantised`` (a LiteRT flatbuffer) with the int32 bias of each convolution and dense
    layer less the mean error, per output channel, of its quantised output against float32 on
    the same input, over ``images`` (n, S, S, 3): the error rounding its weights adds is not
    zero-mean (the empirical bias correction of Nagel et al. 2019, NNCF's for OpenVINO). The
    errors come from ``debug``, the converter's debug model, where a NumericVerify op follows
    each quantised op with (its int8 output, the float32 op's output)."""
    from tensorflow.lite.tools import flatbuffer_utils as flatbuffers

    tf = import_tensorflow()
    graph = flatbuffers.read_model_from_bytearray(bytearray(debug))
    tensors = graph.subgraphs[0].tensors
    pairs = [op.inputs[:2] for op in graph.subgraphs[0].operators
             if graph.operatorCodes[op.opcodeIndex].customCode == b"NumericVerify"]
    interpreter = tf.lite.Interpreter(model_content=debug,
                                      experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    image_input = interpreter.get_input_details()[0]["index"]
    errors: dict[bytes, np.ndarray] = {}
    for image in images:
        interpreter.set_tensor(image_input, image[None])
        interpreter.invoke()
        for q, f in pairs:
            scale, zero = tensors[q].quantization.scale[0], tensors[q].quantization.zeroPoint[0]
            error = (interpreter.get_tensor(q).astype(np.float64) - zero) * scale \
                - interpreter.get_tensor(f)
            if error.ndim:
                name = tensors[f].name  # the name the op's output has in ``quantised``
                errors[name] = errors.get(name, 0) + error.reshape(-1, error.shape[-1]).mean(0)
    model = flatbuffers.read_model_from_bytearray(bytearray(quantised))
    tensors = model.subgraphs[0].tensors
    uses = collections.Counter(t.buffer for t in tensors)
    corrected = 0
    for op in model.subgraphs[0].operators:
        error = errors.get(tensors[op.outputs[0]].name) if op.outputs else None
        if error is None or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        bias = tensors[op.inputs[2]]
        buffer = model.buffers[bias.buffer]
        values = np.frombuffer(bytes(buffer.data), np.int32) \
            if bias.type == flatbuffers.schema_fb.TensorType.INT32 else None
        if values is None or len(values) != len(error):
            continue
        step = np.asarray(bias.quantization.scale, np.float64)  # input scale x weight scale
        with np.errstate(divide="ignore", invalid="ignore"):  # a dead channel's step is 0
            shift = np.round(error / len(images) / step)
        shift = np.where(np.isfinite(shift), shift, 0)
        if uses[bias.buffer] > 1:  # equal constants may share a buffer: a copy of its own
            buffer = flatbuffers.schema_fb.BufferT()
            model.buffers.append(buffer)
            bias.buffer = len(model.buffers) - 1
        limits = np.iinfo(np.int32)
        buffer.data = np.clip(values - shift, limits.min, limits.max).astype(np.int32) \
            .view(np.uint8)
        corrected += 1
    log.info("int8 bias correction: %s on %s", plural(corrected, "layer"),
             plural(len(images), "image"))
    return flatbuffers.convert_object_to_bytearray(model)


WRITERS: dict[str, Callable[[Any, Path, dict, np.ndarray | None], None]] = {
    "keras": _write_keras, "savedmodel": _write_savedmodel, "onnx": _write_onnx,
    "openvino": _write_openvino, "litert": _write_litert}


# ---------------------------------------------------------------------- calibration

def training_images(source: Path, trust: bool = False) -> tuple[Path, list[str]]:
    """The store the model at ``source`` was trained from (the one its result JSON names,
    else the one its pipeline locates) and the absolute paths of its readable training
    images, in store order."""
    from featx.store.read import FeatureStore

    store = _store_of(source, trust)
    with FeatureStore(store) as s:
        rows = np.flatnonzero((s.split == TRAIN) & s.ok)
        paths, root = s.paths, Path(str(s.attrs.get("root", "")))
    files = [str(root / paths[i]) for i in rows]
    missing = [f for f in files[:1] if not Path(f).is_file()]
    if not files or missing:
        raise DatasetError(f"--int8 calibrates on the model's training images: {store} names "
                           f"{plural(len(files), 'training image')} under {root}"
                           + (f", and {missing[0]} is not there" if missing else ""))
    return store, files


def _store_of(source: Path, trust: bool) -> Path:
    result = source.with_suffix(".json")  # classify's result JSON, beside the model
    with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
        store = Path(json.loads(result.read_text())["store"])
        if store.is_file():
            return store
    from featx.core.config import Config
    from featx.features.plan import find_store

    with warnings.catch_warnings():  # the version warnings were given when it was loaded
        warnings.simplefilter("ignore")
        bundle = modelfile.load(source, trust=trust)
    pipeline = bundle.get("extracted_by") or bundle["pipeline"]
    try:
        return find_store(Config.from_dict(pipeline, source=str(source))).path
    except Exception as e:  # the dataset or cache is not here
        raise DatasetError(f"--int8 calibrates on the model's training images, but no store "
                           f"of them was found for {source} ({e})") from None


def _calibration(predictor: Predictor, trust: bool) -> np.ndarray:
    """Up to CALIBRATION_IMAGES training images, evenly spaced over the store's training rows
    (so every class), read as extraction reads them: (n, S, S, 3) uint8."""
    store, files = training_images(Path(predictor.source), trust)
    take = np.unique(np.linspace(0, len(files) - 1, min(CALIBRATION_IMAGES, len(files)))
                     .round().astype(int))
    chosen = [files[i] for i in take]
    log.info("int8 calibration: %s of the %d training images of %s",
             plural(len(chosen), "image"), len(files), store)
    images, errors = _read(chosen, predictor.backbone.input_size, predictor.backbone.resize)
    if errors:
        i, reason = next(iter(sorted(errors.items())))
        raise DatasetError(f"int8 calibration: {chosen[i]} cannot be read ({reason})")
    return images


def _read(paths: Sequence[str], size: int, resize: str) -> tuple[np.ndarray, dict[int, str]]:
    errors = ReadErrors()
    batches = [b for _, b, _ in read_batches(list(paths), size, 32, errors, resize=resize)]
    return np.concatenate(batches), dict(errors.reasons)


# ----------------------------------------------------------------- running artifacts

def runner(path: str | os.PathLike, fmt: str, threads: int | None = None
           ) -> Callable[[np.ndarray], np.ndarray]:
    """The artifact at ``path`` loaded back in its own runtime (TensorFlow's SavedModel
    loader, Keras, onnxruntime, OpenVINO's CPU plugin in float32, the LiteRT interpreter):
    a function (N, S, S, 3) uint8 -> (N, n_classes) float32 scores."""
    path = str(path)
    threads = threads or usable_cores()
    if fmt == "keras":
        import keras

        model = keras.saving.load_model(path)
        return lambda x: np.asarray(model.predict_on_batch(x), np.float32)
    if fmt == "savedmodel":
        tf = import_tensorflow()
        serve = tf.saved_model.load(path).signatures["serving_default"]
        return lambda x: next(iter(serve(tf.constant(x)).values())).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    if fmt == "openvino":
        import openvino as ov

        # f32: left to itself OpenVINO computes in bfloat16 on CPUs that have it
        compiled = ov.Core().compile_model(path, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        return lambda x: np.asarray(compiled(x)[0], np.float32)
    if fmt == "litert":
        interpreter = litert_interpreter()(model_path=path, num_threads=threads)
        run = interpreter.get_signature_runner()
        return lambda x: next(iter(run(image=x).values()))
    raise UsageError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def litert_interpreter() -> Any:
    """The LiteRT interpreter class: ai_edge_litert's (``pip install ai-edge-litert``), else
    TensorFlow's deprecated tf.lite.Interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        return import_tensorflow().lite.Interpreter


def read_metadata(path: str | os.PathLike, fmt: str) -> dict[str, Any]:
    """What :func:`export_model` recorded in the artifact (labels, input, scores...)."""
    path = Path(path)
    try:
        if fmt in ("keras", "litert"):
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read(METADATA))
        if fmt == "savedmodel":
            return json.loads((path / "assets.extra" / METADATA).read_text())
        if fmt == "onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                     .metadata_props}
            return json.loads(props["featx"])
        if fmt == "openvino":
            import openvino as ov

            return json.loads(ov.Core().read_model(str(path)).get_rt_info(["featx"]).astype(str))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path}: no featx metadata in it ({type(e).__name__}: {e})"
                             ) from None
    raise UsageError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def median_ms(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
              runs: int = TIMED_RUNS) -> float:
    """Median milliseconds of ``run`` on ``images`` (one warm-up call first)."""
    run(images)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _time_int8(fmt: str, path: Path) -> float | None:
    """Single-image milliseconds of the int8 artifact in its runtime (median of TIMED_RUNS
    runs on one image), or None when the runtime cannot run it here. Timed in a fresh
    process: a runtime that fails on a model may abort its process (LiteRT 2.3's XNNPACK
    delegate does, on the degenerate scales of a random-weights model), and TensorFlow's
    threads here would share the cores with it."""
    import subprocess
    import sys

    code = ("import sys; from featx.learn.deploy import time_here; "
            "sys.stdout.write(f'{time_here(*sys.argv[1:])}\\n')")
    done = subprocess.run([sys.executable, "-c", code, str(path), fmt], capture_output=True,
                          text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        log.warning("%s: written, but its runtime could not run it here (exit %d: %s)",
                    path, done.returncode, last)
        return None


def time_here(path: str, fmt: str) -> float:
    """:func:`_time_int8`'s measurement, in the process that runs it."""
    run = runner(path, fmt)
    size = read_metadata(path, fmt)["input"]["shape"][1]
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), np.uint8)
    return median_ms(run, image)
