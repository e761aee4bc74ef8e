"""The one configuration object every stage reads.

A pipeline file (``pipelines/*.toml``) fills a :class:`Config`; command-line flags override
any field with ``--set section.field=value``. Each stage reads only its own section.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featx.core.errors import ConfigError
from featx.core.log import plural

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CACHE_DIR = "data/cache"
# Command-line flag (and featx.features.extraction keyword) -> config field: each is a shorthand for
# --set field=value.
SHORTHANDS = {
    "data": "dataset.root", "manifest": "dataset.manifest", "backbone": "backbone.name",
    "weights": "backbone.weights", "layer": "backbone.layer", "pooling": "backbone.pooling",
    "input_size": "backbone.input_size", "batch_size": "extract.batch_size",
    "runtime": "backbone.runtime",
    "cache_dir": "cache_dir", "out": "out", "classifiers": "classify.classifiers",
    "n_jobs": "classify.n_jobs", "engine": "extract.engine", "address": "ray_address",
    # on/off flags: None when absent, so that the pipeline's value stands
    "strict": "extract.strict", "quick": "classify.quick", "consolidate": "extract.consolidate",
    "mlflow": "classify.mlflow", "repeats": "classify.repeats",
    "name": "classify.run_name",
}

# The allowed values of the text settings with a fixed set of them. Each field names its own
# (``one_of`` below, next to the field) and is checked as it is set, so that a typo fails
# before any image is read; the modules that act on a setting import its tuple from here.
HASHES = ("stat", "content")
# avg | max | flatten | none pool a map (a CNN's, or a transformer's patch tokens laid out as
# their grid); mean is avg (the transformers' word); cls (the class token) and cls+mean (both
# side by side) read a KerasHub transformer's tokens (featx/features/hub.py)
POOLINGS = ("avg", "max", "flatten", "none", "mean", "cls", "cls+mean")
PRECISIONS = ("float32", "mixed_float16", "int8")
# Who runs the frozen forward pass (featx/features/runtime.py): TensorFlow, OpenVINO (CPU, pip
# install
# featx[openvino]) or auto (OpenVINO when it is installed and no GPU is in use).
RUNTIMES = ("tensorflow", "openvino", "auto")
RESIZE_POLICIES = ("squash", "crop", "pad")
NORMALIZATIONS = ("none", "l2", "power", "pca_whiten")
COMPRESSIONS = ("lzf", "gzip", "none")
FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")
TENCROP_MODES = ("off", "mean", "keep")
ENGINES = ("local", "ray")
TRAIN_FEATURES = ("plain", "augmented", "tencrop")
TEST_FEATURES = ("plain", "tencrop")
CLASS_WEIGHTS = ("", "balanced")
COMBINE_MODES = ("fuse", "ensemble")
OPTIMIZERS = ("adam", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")
CLASSIFIERS = ("logreg", "linear_svm", "rbf_svm", "knn", "sgd")  # featx.learn.learners.LEARNERS
# `featx cache export --format` (featx.store.export.FORMATS: the files each writes); declared here
# so that the CLI offers them without importing the exporter and its numpy and h5py
EXPORT_FORMATS = ("npy", "npz", "parquet")


def one_of(default: str, allowed: tuple[str, ...]) -> Any:
    """A text field that takes only ``allowed`` values."""
    return field(default=default, metadata={"one_of": allowed})


def within(default: int | float, low: int | float | None = None,
           high: int | float | None = None) -> Any:
    """A number field bounded by ``low`` and ``high`` (inclusive; None: unbounded)."""
    return field(default=default, metadata={"within": (low, high)})


def file_name(default: str) -> Any:
    """A text field that names files (``<name>-<classifier>.json``): one plain name, never a
    path (no separator, not "." or "..")."""
    return field(default=default, metadata={"file_name": True})


# Text fields that also take a TOML list (stored comma-separated).
COMMA_LISTS = {"backbone.layer"}


@dataclass(frozen=True)
class AugmentParams:
    """The Keras augmentation layers' settings (featx/data/augment.py; all of them go into the
    store's settings key). Built from the [extract] section by featx.features.variants."""

    flip: str = "horizontal"  # RandomFlip mode
    rotation: float = 0.05  # RandomRotation factor (fraction of a full turn)
    zoom: float = 0.1  # RandomZoom height and width factor
    translation: float = 0.1  # RandomTranslation height and width factor
    contrast: float = 0.2  # RandomContrast factor


@dataclass
class DatasetConfig:
    root: str = ""  # folder with one sub-folder per class
    manifest: str = ""  # or a CSV of path,label (paths relative to the CSV or root)
    name: str = ""  # defaults to the folder (or CSV) name
    val: float = 0.0  # fraction of each class held out for validation
    test: float = 0.25  # fraction of each class held out for the final test
    seed: int = 42  # seeds the split (and random weights); classify.repeats counts up from it
    # how an unchanged image is recognised: stat (size, mtime) | content (SHA-256)
    hash: str = one_of("stat", HASHES)
    # a class left with no test (or validation) image: a warning instead of an error
    allow_missing_test: bool = False
    # keep copies on one side of the split (featx/data/groups.py): images with the same bytes,
    # and images whose features have a cosine similarity >= duplicate_threshold, go to train,
    # val or test together (false: the split of featx <= 0.6, duplicates anywhere)
    group_duplicates: bool = True
    # the cosine similarity from which two images are near duplicates (featx audit's default)
    duplicate_threshold: float = within(0.95, 0.5, 1.0)


@dataclass
class BackboneConfig:
    # the network: a keras.applications model, or hub:<preset> (featx backbones lists them)
    name: str = "MobileNetV2"
    weights: str = "imagenet"  # "imagenet", a path to a weights file, or "none" (random, seeded)
    # empty: the model's last convolutional output; several: "a,b" or a TOML list, each
    # pooled and concatenated in order (featx layers NAME lists them)
    layer: str = ""
    # how a layer's output becomes one vector (each value: POOLINGS); none keeps the spatial
    # map (one layer only)
    pooling: str = one_of("avg", POOLINGS)
    input_size: int = within(0, 0)  # 0: the backbone's native size (it checks its own range)
    # float32 | mixed_float16 (float16 compute, float32 weights; for GPUs with tensor cores,
    # slower on CPUs) | int8 (OpenVINO's model quantised by NNCF, calibrated on a sample of the
    # dataset's images; runtime openvino or auto, CPU; its own store). Features are stored as
    # float32 either way.
    precision: str = one_of("float32", PRECISIONS)
    # precision int8: how many of the dataset's images calibrate the model (a sample seeded
    # by dataset.seed; all of them where the dataset has fewer)
    calibration_images: int = within(300, 1, 100000)
    # How an image becomes input_size x input_size (featx.data.images.fit_image): squash (resize,
    # ignoring the aspect ratio) | crop (short side to input_size, centre crop) | pad (long
    # side to input_size, padded with ImageNet's mean colour)
    resize: str = one_of("squash", RESIZE_POLICIES)
    # Also read each image mirrored left-right and average the two features (twice the work)
    flip: bool = False
    # tensorflow | openvino (the same TensorFlow model converted once and run by OpenVINO's CPU
    # plugin, float32: features equal TensorFlow's within 1e-4 relative, so the store's key
    # leaves it out; precision int8 runs it quantised) | auto (openvino when installed and
    # TensorFlow sees no GPU, or when precision is int8)
    runtime: str = one_of("tensorflow", RUNTIMES)


@dataclass
class ExtractConfig:
    batch_size: int = within(32, 1, 4096)  # images per pass through the frozen backbone
    compression: str = one_of("lzf", COMPRESSIONS)  # the store's HDF5 compression filter
    strict: bool = False  # an unreadable image is an error instead of a recorded skip
    # Variant stores (featx/features/variants.py), each its own cache entry beside the plain one:
    # K > 0: K augmented passes over the training images (own store)
    augment: int = within(0, 0, 1000)
    augment_seed: int = 0  # with the image's path, seeds its passes
    augment_flip: str = one_of("horizontal", FLIPS)  # RandomFlip mode
    augment_rotation: float = 0.05  # RandomRotation factor (fraction of a turn)
    augment_zoom: float = 0.1  # RandomZoom factor
    augment_translation: float = 0.1  # RandomTranslation factor (height and width)
    augment_contrast: float = 0.2  # RandomContrast factor
    # off | mean (10 crops averaged per image) | keep (a row per crop)
    tencrop: str = one_of("off", TENCROP_MODES)
    # local | ray (a Ray cluster at ray_address: featx/features/distributed.py, pip install
    # featx[ray])
    engine: str = one_of("local", ENGINES)
    shard_rows: int = within(4096, 1)  # ray: rows per shard file (the unit of resume)
    consolidate: bool = False  # ray: copy the shards into one file instead of a virtual dataset


@dataclass
class ClassifyConfig:
    # the learners fitted and scored, each grid-searched (featx.learn.learners)
    classifiers: list[str] = field(default_factory=lambda: ["logreg", "linear_svm"],
                                   metadata={"one_of": CLASSIFIERS})
    cv: int = within(3, 2)  # folds for the grid search when there is no validation split
    n_jobs: int = -1  # grid-search processes (-1: every core)
    seed: int = 0  # the folds' shuffling and the learners' own randomness
    # Where the rows come from: plain | augmented (plain + the augmented passes) | tencrop;
    # validation rows come from the test side.
    train_features: str = one_of("plain", TRAIN_FEATURES)
    test_features: str = one_of("plain", TEST_FEATURES)  # the rows scored: plain | tencrop
    # "balanced": classes weighted by their inverse frequency
    class_weight: str = one_of("", CLASS_WEIGHTS)
    quick: bool = False  # a first look: each learner's reduced grid and 2 folds
    # Before the learner: none | l2 (unit length) | power (signed square root, then l2) |
    # pca_whiten (PCA to 99% of the variance, whitened); in the saved model too
    normalize: str = one_of("none", NORMALIZATIONS)
    # R > 1: R stratified splits (seeds dataset.seed .. + R - 1) of the same features, the grid
    # search re-run on each; rank-1/rank-5 reported as mean and standard deviation
    repeats: int = within(1, 1, 100)
    ensemble: bool = False  # also report the average of the classifiers' probabilities
    # ray: the grid search's jobs on the Ray cluster (joblib)
    engine: str = one_of("local", ENGINES)
    # MLflow logging (featx/learn/tracking.py, pip install featx[mlflow]): "" off, "on" a local
    # store under the cache folder, or a tracking URI
    mlflow: str = ""
    # a name for the run, recorded in its results (featx runs shows it, --compare takes it);
    # not a setting: it leaves the run folder's settings hash as it is (featx.core.runinfo)
    run_name: str = ""


@dataclass
class CombineConfig:
    """Several pipelines' stores of the same dataset, used together (featx/learn/combine.py)."""
    pipelines: list[str] = field(default_factory=list)  # paths relative to the pipeline file
    # fuse: features side by side | ensemble: probabilities averaged
    mode: str = one_of("fuse", COMBINE_MODES)


@dataclass
class FinetuneConfig:
    """``featx finetune``: a new head on the backbone, warmed up, then the top layers trained."""
    warmup_epochs: int = within(30, 0)  # phase 1: the base frozen, only the head trained
    warmup_optimizer: str = one_of("adam", OPTIMIZERS)  # phase 1's optimizer
    warmup_lr: float = 1e-3  # phase 1's learning rate
    epochs: int = within(20, 0)  # phase 2: the top `unfreeze` layers trained too (0: no phase 2)
    unfreeze: int = within(38, 0)  # top layers trained in phase 2 (BatchNorm stays frozen)
    lr: float = 1e-4  # phase 2: SGD with momentum 0.9
    dropout: float = 0.2  # before the dense softmax
    batch_size: int = within(32, 1, 4096)  # images per training step
    patience: int = within(5, 0)  # epochs without a lower validation loss before a phase stops
    augment: bool = True  # train on each training image and its mirror image
    # K > 0: also K random crops of each training image (area 50-100%, aspect 3/4-4/3,
    # mirrored at random), their frozen activations computed once like the rest
    crops: int = within(0, 0, 32)
    # phase 2's learning rate: constant | cosine (decays to 0 over `epochs` epochs)
    schedule: str = one_of("constant", LR_SCHEDULES)
    # after early stopping, train again from the start on train + validation rows for the
    # epochs each phase kept (no validation rows left to stop on)
    refit: bool = False
    holdout: float = 0.15  # per-class share of training rows for early stopping if dataset.val=0
    # the head's initial weights, each epoch's row order and dropout masks, the random crops
    seed: int = 0


@dataclass
class Config:
    name: str = file_name("featx")  # the result files' prefix
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    cache_dir: str = ""  # empty: $FEATX_CACHE_DIR, else data/cache
    out: str = ""  # empty: results go beside the feature store
    ray_address: str = ""  # engine = "ray": cluster address; empty: $RAY_ADDRESS or a local one

    def __post_init__(self) -> None:
        # Which fields were set, and where (a pipeline file, --set, a flag, a keyword): what
        # the user said, told apart from defaults (featx.features.plan.settle). Not a field:
        # it is no part of the settings a store or a result records.
        self.given: dict[str, str] = {}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
        """Read a pipeline TOML file (or start from defaults) and apply ``section.field=value``."""
        data: dict[str, Any] = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"pipeline file not found: {p}")
            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{p}: not valid TOML: {e}") from None
        config = cls.from_dict(data, source=str(path or "defaults"))
        if path:  # member pipelines are named relative to the file that names them
            config.combine.pipelines = [str(Path(path).parent / m)
                                        for m in config.combine.pipelines]
        for item in overrides:
            config.set(item)
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "dict") -> Config:
        config = cls()
        for key, value in data.items():
            if isinstance(value, dict):
                for sub_key, sub_value in value.items():
                    config.assign(f"{key}.{sub_key}", sub_value, source)
            else:
                config.assign(key, value, source)
        return config

    def set(self, assignment: str) -> None:
        """Apply one ``section.field=value`` override (the value is parsed as TOML if it can be)."""
        if "=" not in assignment:
            raise ConfigError(f"override {assignment!r} is not of the form section.field=value")
        key, raw = assignment.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        self.assign(key.strip(), value, "command line")

    def assign(self, dotted: str, value: Any, source: str) -> None:
        target: Any = self
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
                sections = [f.name for f in dataclasses.fields(target)
                            if dataclasses.is_dataclass(getattr(target, f.name))]
                raise ConfigError(f"{source}: unknown section {part!r} in {dotted!r} "
                                  f"(valid sections: {', '.join(sections)})")
            target = getattr(target, part)
        fields = {f.name: f for f in dataclasses.fields(target)}
        name = parts[-1]
        if name not in fields or dataclasses.is_dataclass(getattr(target, name)):
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown field {dotted!r} (valid here: {valid})")
        current = getattr(target, name)
        value = _coerce(value, current, dotted, source)
        _check_value(fields[name], dotted, value, source)
        setattr(target, name, value)
        self.given[".".join(parts)] = source

    def members(self) -> list[Config]:
        """The member pipelines of a [combine] pipeline (featx/learn/combine.py), each with this
        pipeline's dataset, classify section and cache."""
        c = self.combine
        if len(c.pipelines) < 2:
            raise ConfigError(f"combine.pipelines names {plural(len(c.pipelines), 'pipeline')}: "
                              "combining needs at least two")
        out = []
        for path in c.pipelines:
            member = Config.load(path)
            if member.combine.pipelines:
                raise ConfigError(f"{path}: a member pipeline cannot itself have a [combine] "
                                  "section")
            member.dataset = copy.deepcopy(self.dataset)
            member.classify = copy.deepcopy(self.classify)
            member.cache_dir = self.cache_dir
            out.append(member)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self, fields: Iterable[str]) -> str:
        """The ``fields`` (dotted names, e.g. ``backbone.weights``) as a pipeline file that
        :meth:`load` reads back to the same values; fields in declaration order."""
        wanted = set(fields)
        top, sections = [], []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not dataclasses.is_dataclass(value):
                if f.name in wanted:
                    top.append(f"{f.name} = {_toml_value(value)}")
                continue
            lines = [f"{g.name} = {_toml_value(getattr(value, g.name))}"
                     for g in dataclasses.fields(value) if f"{f.name}.{g.name}" in wanted]
            if lines:
                sections.append("\n".join([f"[{f.name}]", *lines]))
        return "\n\n".join(["\n".join(top)] * bool(top) + sections) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        """Write the fields set so far (:attr:`given`) as a new pipeline file ``path``
        (``featx init``); an existing file is left as it is (ConfigError)."""
        p = Path(path)
        text = self.to_toml(self.given)
        try:
            with p.open("x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:
            raise ConfigError(f"{p} exists already: a new pipeline file never replaces one "
                              "(choose another name, or remove it)") from None
        return p

    @property
    def cache_path(self) -> Path:
        return cache_path(self.cache_dir)


def cache_path(cache_dir: str = "") -> Path:
    """The cache folder: ``cache_dir``, else $FEATX_CACHE_DIR, else data/cache."""
    return Path(cache_dir or os.environ.get("FEATX_CACHE_DIR") or DEFAULT_CACHE_DIR)



def _check_value(spec: dataclasses.Field, dotted: str, value: Any, source: str) -> None:
    """The field's own allowed values (``one_of``; a list of them: not empty), bounds
    (``within``) and plain file names (``file_name``)."""
    allowed = spec.metadata.get("one_of")
    if allowed and value == []:  # a run of no classifiers would write an empty run folder
        raise ConfigError(f"{source}: {dotted} is empty: name at least one of "
                          f"{', '.join(repr(c) for c in allowed)}")
    if spec.metadata.get("file_name") and not _plain_name(value):
        raise ConfigError(f"{source}: {dotted} = {value!r} is not a plain file name (it "
                          "starts the result files' names): use no '/', '\\' or control "
                          "character, and not '', '.' or '..'")
    for v in (value if isinstance(value, list) else [value]) if allowed else []:
        if v not in allowed:
            valid = ", ".join(repr(c) for c in allowed)
            raise ConfigError(f"{source}: {dotted} = {v!r} is not one of {valid}")
    low, high = spec.metadata.get("within", (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(f"{source}: {dotted} = {value} is out of range ({bounds})")


def _toml_value(value: Any) -> str:
    """A TOML literal of a field's value (bool, int, float, str or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # Python's repr of a float is TOML's (inf, nan, 1e-05 included)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # a basic string: quote, backslash and the control characters TOML forbids, escaped
    escaped = "".join(f"\\{c}" if c in '"\\' else f"\\u{ord(c):04x}"
                      if ord(c) < 0x20 or ord(c) == 0x7F else c for c in str(value))
    try:
        escaped.encode("utf-8")
    except UnicodeEncodeError:  # an undecodable file name (surrogate escapes)
        raise ConfigError(f"{value!r} cannot be written to a pipeline file (not UTF-8)") \
            from None
    return f'"{escaped}"'


def _plain_name(text: str) -> bool:
    return text not in ("", ".", "..") and all(c.isprintable() and c not in "/\\"
                                               for c in text)


def _coerce(value: Any, current: Any, dotted: str, source: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes"):
            return True
        if str(value).lower() in ("0", "false", "no"):
            return False
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif isinstance(current, float):
        if not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                pass
    elif isinstance(current, list):
        if isinstance(value, list):
            return [str(v) for v in value]
        return [v.strip() for v in str(value).split(",") if v.strip()]
    elif isinstance(current, str):
        if isinstance(value, list) and dotted in COMMA_LISTS:
            return ",".join(str(v).strip() for v in value)
        return str(value)
    raise ConfigError(f"{source}: {dotted} = {value!r} is not a {type(current).__name__}")
