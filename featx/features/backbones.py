"""Backbones: a registry over ``keras.applications``, each entry carrying its own input size
and preprocessing, built frozen as a feature extractor (layer + pooling); ``hub:<preset>``
names a KerasHub backbone instead (featx/features/hub.py, imported only for those names).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import POOLINGS, PRECISIONS, BackboneConfig, cache_path
from featx.core.errors import BackboneError
from featx.core.files import file_sha256
from featx.core.log import import_tensorflow
from featx.features.hub import HubModel, is_hub, parse_name
from featx.features.runtime import Calibration, check_runtime, or_tensorflow, resolve_runtime

BLOCK_ENDS = r"_(add|out)$"  # MobileNetV2 block_N_add, ResNet convN_blockM_out, EfficientNet


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # class name in keras.applications
    module: str  # keras.applications sub-module holding its preprocess_input
    input_size: int  # native square input size
    preprocess: str  # caffe (BGR, mean-subtracted) | tf ([-1, 1]) | torch ([0,1], mean/std) | none
    # The layers that end a block (regular expression on layer names), for stage_ends; a
    # backbone whose names match none (VGG, MobileNet, Xception's counter-numbered adds)
    # falls back to the last layer at each spatial size.
    blocks: str = BLOCK_ENDS


# Backbones whose blocks end under other names than *_add / *_out.
BLOCK_NAMES = {"InceptionV3": r"^mixed\d+$", "DenseNet121": r"^pool\d_pool$",
               "DenseNet169": r"^pool\d_pool$", "DenseNet201": r"^pool\d_pool$"}


def _specs() -> dict[str, BackboneSpec]:
    table: list[tuple[str, str, int, str]] = [
        ("VGG16", "vgg16", 224, "caffe"),
        ("VGG19", "vgg19", 224, "caffe"),
        ("ResNet50", "resnet", 224, "caffe"),
        ("ResNet101", "resnet", 224, "caffe"),
        ("ResNet152", "resnet", 224, "caffe"),
        ("ResNet50V2", "resnet_v2", 224, "tf"),
        ("ResNet101V2", "resnet_v2", 224, "tf"),
        ("ResNet152V2", "resnet_v2", 224, "tf"),
        ("InceptionV3", "inception_v3", 299, "tf"),
        ("Xception", "xception", 299, "tf"),
        ("InceptionResNetV2", "inception_resnet_v2", 299, "tf"),
        ("MobileNet", "mobilenet", 224, "tf"),
        ("MobileNetV2", "mobilenet_v2", 224, "tf"),
        # These include their own rescaling/normalisation layers: feed raw 0-255 pixels.
        ("MobileNetV3Small", "mobilenet_v3", 224, "none"),
        ("MobileNetV3Large", "mobilenet_v3", 224, "none"),
        ("DenseNet121", "densenet", 224, "torch"),
        ("DenseNet169", "densenet", 224, "torch"),
        ("DenseNet201", "densenet", 224, "torch"),
        ("ConvNeXtTiny", "convnext", 224, "none"),
    ]
    sizes = [224, 240, 260, 300, 380, 456, 528, 600]
    table += [(f"EfficientNetB{i}", "efficientnet", s, "none") for i, s in enumerate(sizes)]
    table += [(f"EfficientNetV2B{i}", "efficientnet_v2", s, "none")
              for i, s in enumerate([224, 240, 260, 300])]
    table += [("EfficientNetV2S", "efficientnet_v2", 384, "none")]
    return {name: BackboneSpec(name, module, size, pre, BLOCK_NAMES.get(name, BLOCK_ENDS))
            for name, module, size, pre in table}


REGISTRY: dict[str, BackboneSpec] = _specs()
# keras.applications refuses smaller inputs (the Inception stems shrink them below 1 pixel).
MIN_INPUT_SIZE = {"inception_v3": 75, "xception": 71, "inception_resnet_v2": 75}
# Past this the activations of one batch outgrow memory (an input of 100,000 pixels was
# killed at 22 GB here), and ImageNet CNNs were trained at 224-600 pixels.
MAX_INPUT_SIZE = 1024
# What a CNN's map takes ("mean" is "avg": the word transformers use for the same average).
MAP_POOLINGS = ("avg", "mean", "max", "flatten", "none")


def get_spec(name: str) -> BackboneSpec:
    """The registry entry of ``name``; for ``hub:<preset or folder>``, a spec carrying the
    name as given (no file is read: the preset's size is known once a Backbone reads it)."""
    if is_hub(name):
        parse_name(name)  # an unknown preset or a missing folder: one line now
        return BackboneSpec(name.strip(), "keras_hub", 0, "hub")
    if name in REGISTRY:
        return REGISTRY[name]
    folded = {k.lower(): v for k, v in REGISTRY.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise BackboneError(f"unknown backbone {name!r}; valid names: {', '.join(REGISTRY)}, "
                        "or hub:<preset> (KerasHub: featx backbones lists them)")


def keras_home() -> Path:
    """The folder Keras caches downloads in: Keras reads $KERAS_HOME once, at import."""
    try:
        import_tensorflow()
        from keras.src.backend.config import keras_home as home

        return Path(home())
    except ImportError:  # another Keras layout: its documented default
        return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


class Backbone:
    """A frozen ImageNet CNN read at one layer, with one pooling.

    ``features(images)`` maps a uint8 batch (N, S, S, 3) of RGB pixels, already resized to
    ``input_size``, to float32 features: preprocessing is part of the backbone, not the caller.
    ``batched`` runs it with the runtime ``config.runtime`` names (featx/features/runtime.py); an
    OpenVINO model converted from it is kept under ``cache_dir`` (default: featx's cache
    folder, $FEATX_CACHE_DIR or data/cache). A ``hub:`` name is a KerasHub backbone: then
    ``hub`` (featx.features.hub.HubModel) holds what differs, else it is None.
    """

    def __init__(self, config: BackboneConfig, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir else cache_path()
        self.seed = seed
        if config.pooling not in POOLINGS:
            raise BackboneError(f"unknown pooling {config.pooling!r}; valid: {', '.join(POOLINGS)}")
        if config.precision not in PRECISIONS:
            raise BackboneError(f"unknown precision {config.precision!r}; "
                                f"valid: {', '.join(PRECISIONS)}")
        check_runtime(config.runtime, config.precision)
        # precision int8: the images its model is calibrated on, a sample of the dataset's
        # (featx.features.plan attaches it: the store's key holds its identity)
        self.calibration: Calibration | None = None
        # precision int8 for a saved model (featx.learn.predict): the batch size of the cached
        # int8 model its head was trained on, the one model batched() then runs
        self.int8_batch: int | None = None
        # int8 is OpenVINO's quantisation of the float32 model: Keras builds that one
        self.hub = HubModel(self._built_config, seed) if is_hub(config.name) else None
        if self.hub is not None:
            self.spec = BackboneSpec(self.hub.label, "keras_hub", self.hub.files.native_size,
                                     "hub")
            self.hub.check_pooling(config.pooling)
        else:
            self.spec = get_spec(config.name)
            if config.pooling not in MAP_POOLINGS:
                raise BackboneError(f"pooling {config.pooling!r} reads a transformer's class "
                                    f"token: {self.spec.name} is a CNN "
                                    f"({', '.join(MAP_POOLINGS)})")
        self.input_size = config.input_size or self.spec.input_size
        low = MIN_INPUT_SIZE.get(self.spec.module, 32)
        if self.hub is not None:
            self.hub.check_size(self.input_size, MAX_INPUT_SIZE)
        elif not low <= self.input_size <= MAX_INPUT_SIZE:
            raise BackboneError(f"backbone.input_size = {self.input_size}: {self.spec.name} "
                                f"takes {low} to {MAX_INPUT_SIZE} pixels")
        self.layers = parse_layers(config.layer)
        if len(self.layers) > 1 and config.pooling == "none":
            raise BackboneError(f"backbone.layer names {len(self.layers)} layers: their maps "
                                "differ in size, so pooling \"none\" cannot join them; use "
                                "avg, max or flatten")
        self.weights_path: Path | None = None
        weights = config.weights.strip()
        if self.hub is not None:
            self.hub.check_layers(self.layers, config.pooling)
            self.weights_path = self.hub.weights_path
        elif weights.lower() not in ("imagenet", "none", ""):
            self.weights_path = Path(weights).expanduser()
            if not self.weights_path.is_file():
                raise BackboneError(f"weights file not found: {self.weights_path}")

    @property
    def _built_config(self) -> BackboneConfig:
        """The config Keras builds the model with (int8: the float32 model OpenVINO
        quantises)."""
        if self.config.precision != "int8":
            return self.config
        return dataclasses.replace(self.config, precision="float32")

    @property
    def calibration_identity(self) -> str:
        """precision int8: the identity of the images its model is calibrated on (part of
        the store's key); a BackboneError where no dataset was read to take them from."""
        if self.calibration is None:
            raise BackboneError(
                f"backbone.precision = \"int8\": {self.spec.name}'s int8 model is calibrated "
                "on a sample of the dataset's images, and none was taken here (`featx "
                "extract` and the commands reading its store take it from the dataset, "
                "featx predict and explain from a saved model's cached int8 model)")
        return self.calibration.identity

    @property
    def weights_kind(self) -> str:
        if self.hub is not None:
            return self.hub.weights_kind
        if self.weights_path:
            return "file"
        return "imagenet" if self.config.weights.lower() == "imagenet" else "none"

    @cached_property
    def weights_id(self) -> str:
        """What identifies the numbers the weights give: a content hash for a file (for a
        KerasHub preset: of its config, image converter and weight files)."""
        if self.hub is not None:
            return self.hub.weights_id()
        if self.weights_path:
            return f"sha256:{file_sha256(self.weights_path)}"
        if self.weights_kind == "imagenet":
            # The package metadata, not `import keras`: a cache hit must not load TensorFlow.
            return f"keras-imagenet:{self.spec.name}:keras-{importlib.metadata.version('keras')}"
        return f"random:seed={self.seed}"

    def describe(self) -> dict[str, Any]:
        """Everything about the backbone that changes the features (for the store and key)."""
        described = {
            "backbone": self.spec.name,
            "weights": self.weights_kind,
            "weights_id": self.weights_id,
            "layer": ",".join(self.layers) or "(last conv)",
            "pooling": self.config.pooling,
            "input_size": self.input_size,
            "preprocess": self.spec.preprocess,
        }
        if self.config.precision != "float32":  # float32 stores keep the keys they had
            described["precision"] = self.config.precision
        if self.config.flip:
            described["flip"] = "mean of the image and its mirror"
        if self.hub is not None:
            described.update(self.hub.describe(self.layers))
        return described

    @property
    def resize(self) -> str:
        """How images are fitted to ``input_size`` (featx.data.images.fit_image)."""
        return self.config.resize

    @cached_property
    def base(self):
        """The whole convolutional base as Keras builds it (include_top=False, the weights
        loaded), every layer in order; :attr:`model` reads its layers from it."""
        import_tensorflow()
        import keras

        if self.hub is not None:
            return self.hub.base()
        app = getattr(keras.applications, self.spec.name)
        shape = (self.input_size, self.input_size, 3)
        if self.weights_kind == "none":
            keras.utils.set_random_seed(self.seed)
        weights: str | None = {"imagenet": "imagenet", "none": None}.get(self.weights_kind)
        if self.weights_path:
            weights = str(self.weights_path)
        # Layers take the global dtype policy when they are built: set it only around the
        # build, so that other models in the process keep theirs.
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self._built_config.precision)
        try:
            base = app(include_top=False, weights=weights, input_shape=shape)
        except Exception as e:  # keras raises plain Exception on a failed download
            raise self._weights_error(e) from e
        finally:
            keras.config.set_dtype_policy(policy)
        return base

    @cached_property
    def model(self):
        """The frozen keras feature extractor (built on first use)."""
        base = self.base  # imports TensorFlow quietly first
        import keras

        names = [layer.name for layer in base.layers]
        for name in self.layers:
            if name not in names:
                raise BackboneError(
                    f"{self.spec.name} has no layer {name!r}; "
                    f"its last layers are: {', '.join(names[-12:])} "
                    f"(all {len(names)}: featx layers {self.spec.name})")
        names = self.layers or [base.layers[-1].name]
        pooled = [self._pool(base.get_layer(name).output, name) for name in names]
        # Several layers: each pooled, then joined in the order given.
        output = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate()(pooled)
        # a name scope in TensorFlow's graphs: no ":" (hub:...)
        model = keras.Model(base.input, output,
                            name="featx_" + re.sub(r"[^A-Za-z0-9_.]", "_", self.spec.name))
        model.trainable = False
        return model

    def _pool(self, output: Any, name: str) -> Any:
        """Layer ``name``'s output pooled as ``backbone.pooling`` says (a map: 4-D; a
        transformer's tokens: 3-D, featx.features.hub.HubModel.pool)."""
        import keras

        if self.hub is not None and len(output.shape) == 3:
            return self.hub.pool(output, name)
        if len(output.shape) != 4:
            return output
        pool = {"avg": keras.layers.GlobalAveragePooling2D,
                "mean": keras.layers.GlobalAveragePooling2D,
                "max": keras.layers.GlobalMaxPooling2D,
                "flatten": keras.layers.Flatten}.get(self.config.pooling)
        return output if pool is None else pool()(output)

    def _width(self, name: str, shape: tuple[int, ...]) -> int:
        """The columns that layer ``name`` (output ``shape``, no batch) takes, pooled."""
        if len(shape) == 3 and self.config.pooling in ("avg", "mean", "max"):
            return shape[-1]
        return int(np.prod(shape))

    def _weights_error(self, error: Exception) -> Exception:
        if self.weights_kind != "imagenet":
            return BackboneError(f"could not load {self.spec.name} weights "
                                 f"{self.weights_path or ''}: {error}")
        return BackboneError(
            f"could not get ImageNet weights for {self.spec.name}: {error}\n"
            f"  No network? Give a local no-top weights file instead:\n"
            f"    featx extract --weights /path/to/{self.spec.name.lower()}_no_top.h5 ...\n"
            f"    make features WEIGHTS=/path/to/file.h5 ...\n"
            f"  or put the file Keras downloads into {keras_home() / 'models'}/ "
            f"(set KERAS_HOME before starting Python to choose another folder), where "
            f"weights=\"imagenet\" finds it offline.")

    def layer_columns(self) -> list[tuple[str, int, int]]:
        """Where each layer read lies in a feature row: (layer name, first column, end
        column), in the order of ``backbone.layer`` (the last layer's name for ""). The
        columns of several layers are their pooled outputs side by side; pooling "none"
        reads one layer, all of its (h, w, c) values flattened."""
        if self.hub is not None and self.hub.files.transformer:
            return self.hub.columns(self.layers)
        out, start = [], 0
        for name in self.layers or [self.base.layers[-1].name]:
            shape = tuple(int(d) for d in self.base.get_layer(name).output.shape[1:])
            width = self._width(name, shape)
            out.append((name, start, start + width))
            start += width
        return out

    def depth(self, name: str) -> int:
        """The position of layer ``name`` in the base (0: the input)."""
        names = [layer.name for layer in self.base.layers]
        if name not in names:
            raise BackboneError(f"{self.spec.name} has no layer {name!r} (featx layers "
                                f"{self.spec.name} lists them)")
        return names.index(name)

    def stage_ends(self) -> list[str]:
        """The layer that ends each stage of the base, shallow to deep, and the last layer:
        the default layers of ``featx sweep``. A stage is a run of block outputs (layers
        named as ``spec.blocks`` says, e.g. MobileNetV2's ``block_N_add``) of one width; its
        last block ends it. Without such names: the last layer at each spatial size. A
        KerasHub transformer: about 12 evenly spaced blocks and ``final``."""
        if self.hub is not None and self.hub.files.transformer:
            return self.hub.stage_ends()
        return stage_ends([(layer.name, tuple(layer.output.shape[1:]),
                            type(layer).__name__) for layer in self.base.layers[1:]],
                          self.spec.blocks)

    def listed_layers(self) -> list[tuple[str, tuple]]:
        """(name, output shape without the batch) of each layer ``backbone.layer`` can name,
        in order (``featx layers``; a transformer's blocks: from its config, nothing built)."""
        if self.hub is not None and self.hub.files.transformer:
            return self.hub.listed_layers()
        return [(layer.name, tuple(layer.output.shape[1:])) for layer in self.base.layers
                if hasattr(layer, "output")]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.model.output.shape[1:])

    def preprocess(self, images):
        """uint8 or float RGB 0-255 -> what this model expects."""
        tf = import_tensorflow()
        import keras

        if self.hub is not None:
            return self.hub.preprocess(images)
        x = tf.cast(images, tf.float32)
        if self.spec.preprocess == "none":
            return x
        module = getattr(keras.applications, self.spec.module)
        return module.preprocess_input(x)

    def features(self, images):
        tf = import_tensorflow()

        def forward(x):  # float16 activations under mixed precision: stored as float32
            return tf.cast(self.model(self.preprocess(x), training=False), tf.float32)

        if not self.config.flip:
            return forward(images)
        # One pass over the batch and its mirror images, the two halves averaged.
        both = forward(tf.concat([images, tf.reverse(images, axis=[2])], axis=0))
        n = tf.shape(images)[0]
        return (both[:n] + both[n:]) / 2

    def compiled(self, batch_size: int):
        """``features`` as a ``tf.function`` for one fixed batch shape (traced once; callers
        pad the last batch). The model is built eagerly first: built inside the trace, its
        weights would be created in the graph and the loaded ones silently lost."""
        tf = import_tensorflow()

        self.model  # noqa: B018 - build now, outside the trace
        size = self.input_size
        spec = tf.TensorSpec((batch_size, size, size, 3), tf.uint8)
        return tf.function(self.features, input_signature=[spec])

    @cached_property
    def runtime(self) -> str:
        """``tensorflow`` or ``openvino``: who runs ``batched`` (``auto`` resolved here)."""
        return resolve_runtime(self.config.runtime, self.config.precision)

    def openvino(self, batch_size: int):
        """``compiled(batch_size)`` converted to OpenVINO (once per cache folder: a later
        call reads the converted model back without building the Keras model), as a
        callable (batch_size, S, S, 3) uint8 -> float32 features (batch_size, ...)."""
        from featx.features.runtime import (
            OpenVINOForward,
            calibration_batches,
            load_or_convert,
            load_or_quantize,
            model_key,
            thread_split,
        )

        # the float32 model (precision int8: the one it quantises, shared with float32 runs)
        described = {k: v for k, v in self.describe().items() if k != "precision"}

        def converted():
            return load_or_convert(lambda: self.compiled(batch_size), self.cache_dir,
                                   self.spec.name, batch_size, model_key(described, batch_size))

        if self.config.precision != "int8":
            return OpenVINOForward(converted(), thread_split())
        identity = self.calibration_identity
        calibration = self.calibration
        model = load_or_quantize(
            converted, lambda: calibration_batches(calibration, self.input_size, self.resize,
                                                   batch_size),
            self.cache_dir, self.spec.name, batch_size,
            model_key(self.describe(), batch_size, identity), identity)
        return OpenVINOForward(model, thread_split())

    def batched(self, batch_size: int):
        """The forward pass used everywhere: ``run(images, ok)`` pads a batch of at most
        ``batch_size`` images with zeros to the one traced shape, trims the output back to
        the batch and zeroes the rows of unreadable images (``ok`` False). It runs on
        ``self.runtime``."""
        forward = None
        if self.config.precision == "int8":  # OpenVINO's or none (runtime.load_or_quantize)
            batch_size = self.int8_batch or batch_size
            forward = self.openvino(batch_size)
        elif self.runtime == "openvino":
            forward = or_tensorflow(lambda: self.openvino(batch_size), self.spec.name)
            if forward is None:
                self.runtime = "tensorflow"  # what runs it, for the records
        if forward is None:
            compiled = self.compiled(batch_size)
            forward = lambda images: compiled(images).numpy()  # noqa: E731

        def run(images: np.ndarray, ok: np.ndarray) -> np.ndarray:
            n = len(images)
            if n > batch_size:  # more than the int8 model's batch (int8_batch): in turns
                return np.concatenate([run(images[i:i + batch_size], ok[i:i + batch_size])
                                       for i in range(0, n, batch_size)])
            if n < batch_size:
                images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]),
                                                          images.dtype)])
            features = forward(images)[:n]
            features[~ok] = 0.0
            return features

        return run


def compute_device() -> str:
    """Where TensorFlow places the model: the first GPU if it sees one (used with no flag)."""
    tf = import_tensorflow()

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    more = f" (+{len(gpus) - 1} more, unused)" if len(gpus) > 1 else ""
    return f"GPU:0 {name}{more}"


def parse_layers(layer: str) -> list[str]:
    """``backbone.layer`` as a list of names: "" (the last output), "name" or "a,b,..."."""
    names = [n.strip() for n in layer.split(",") if n.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BackboneError(f"backbone.layer names {', '.join(repeated)} more than once")
    return names


def list_layers(name: str, input_size: int = 0) -> list[tuple[str, tuple]]:
    """(layer name, output shape) of a backbone's layers (a CNN's convolutional base, a
    transformer's blocks), random weights."""
    backbone = Backbone(BackboneConfig(name=name, weights="none", pooling="none",
                                       input_size=input_size))
    return backbone.listed_layers()


def stage_ends(layers: list[tuple[str, tuple, str]], blocks: str = BLOCK_ENDS) -> list[str]:
    """See :meth:`Backbone.stage_ends`; ``layers``: (name, output shape without the batch,
    layer class name) of the base's layers after the input, in order."""
    maps = [(n, s, kind) for n, s, kind in layers if len(s) == 3]
    ends = [(n, s) for n, s, _ in maps if re.search(blocks, n)]
    if ends:  # the last block output of each run of one width
        picked = [n for (n, s), nxt in zip(ends, ends[1:] + [("", (0, 0, -1))])
                  if s[-1] != nxt[1][-1]]
    else:  # the last layer at each spatial size (padding only shifts the size by a pixel;
        # 3-channel maps are the image, rescaled or normalised inside the model)
        sized = [(n, s) for n, s, kind in maps if kind != "ZeroPadding2D" and s[-1] != 3]
        picked = [n for (n, s), nxt in zip(sized, sized[1:] + [("", (0, 0, 0))])
                  if s[:2] != nxt[1][:2]]
    last = layers[-1][0]
    return picked if picked and picked[-1] == last else [*picked, last]
