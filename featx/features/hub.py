"""KerasHub backbones (``backbone.name = "hub:<preset>"``): DINOv2, DINOv3, ViT, the CLIP and
SigLIP image towers and EfficientNet (V1 and timm's V2 ``efficientnet2_rw_*``), read frozen
like the ``keras.applications`` CNNs (featx/features/backbones.py).

Choices, and why:

- **Names.** ``hub:<preset>`` names a KerasHub preset (``featx backbones`` lists those of the
  families above) or a local preset folder (``hub:/path/to/folder``: what ``save_to_preset``
  writes, or a KerasHub download copied from its cache). A folder in the *name* gives the
  architecture (config.json) even where no weights are wanted: ``featx sweep`` and ``featx
  layers`` build the model with random weights to learn its shapes, which needs the config.
  The store's file names carry ``hub:<preset or folder name>``; the folder's path is no part
  of a store's key (a moved folder keeps its stores), its content is.
- **Weights.** ``imagenet`` or ``pretrained``: the preset's own weights (KerasHub's download,
  kept in its cache, $KAGGLEHUB_CACHE; read from there with no network once it is there, or
  the folder's own ``model.weights.h5``); ``none``: random, seeded, from the preset's config
  (a folder, or a preset KerasHub has downloaded before); a folder path: that preset folder's
  config and weights (an offline copy of the named preset, or a fine-tuned one of its
  class). Offline with none of these: one line saying how to give a folder.
- **The store key** covers the preset's config (config.json as parsed), its image converter's
  scale and offset, and the SHA-256 of its weight files (``model.weights.h5`` or the shards
  ``model.weights.json`` + ``model_*.weights.h5``; not metadata.json, whose save date changes
  with every save), and the name (``hub:<preset or folder name>``): two presets never share
  a store, and a downloaded preset and a copy of its folder under its name share theirs.
  Hashing reads the weight files once per backbone (about a second per GB).
- **Preprocessing** is the preset's own image converter (image_converter.json), less its
  resizing: featx's reader has already fitted each image to ``input_size`` (``backbone.
  resize``); the converter's ``scale`` and ``offset`` (per channel: its normalisation) are
  applied here, as ``x * scale + offset`` on 0-255 RGB. A folder without an image converter
  is refused: its preprocessing would be a guess.
- **Input size**: the converter's image size (else the config's). Settable (``input_size``,
  a multiple of the patch size) where the model interpolates its positions (DINOv2's
  position embeddings, DINOv3's rotary ones) and for the CNNs; ViT, CLIP and SigLIP learnt
  one position embedding per patch of their native size, so they read that size only.
- **Layers of a transformer**: ``block1`` ... ``blockN`` (1-based: ``blockN`` is the last;
  one spelling, checked before any image is read), the residual stream after that block,
  and ``final``, the model's output after its final norm (the default, ``layer = ""``).
  Several, comma-separated, are pooled each and joined, as for CNNs. CNNs (EfficientNet)
  keep Keras layer names. ``featx sweep``'s default layers: about 12 evenly spaced blocks,
  the last one, and ``final``.
- **Pooling of a transformer**: ``cls`` (the class token; SigLIP has none: its attention-
  pooling head, on ``final`` only), ``mean`` (of the patch tokens, register tokens left
  out; ``avg`` is the same), ``cls+mean`` (side by side, 2 x width), and on the patch
  tokens laid out as their (h, w) grid, as for a CNN's map: ``max``, ``flatten`` and
  ``none`` (the map itself). Built from Keras' own layers (Cropping1D, Reshape,
  GlobalAveragePooling2D ...), so that a mean-pooled transformer ends, like a CNN, in a
  pooling layer over a spatial map (the CAM of ``featx explain`` reads that map), and a
  saved model needs no custom layer. CNNs take avg | mean | max | flatten | none.
- **OpenVINO**: the whole traced function (converter, model, pooling) is converted as for
  keras.applications; the tiny ViT, DINOv2, DINOv3, CLIP and SigLIP of tests/test_hub.py all
  convert (features within 1e-6 of TensorFlow's). Where a conversion fails, the backbone runs
  with TensorFlow after one warning line naming it (featx.features.runtime.or_tensorflow).
- **The code**: featx.features.backbones.Backbone keeps featx's one interface; for a ``hub:``
  name it holds a :class:`HubModel` (``backbone.hub``) and asks it wherever KerasHub differs
  (a subclass would need this module to import backbones.py and backbones.py this one).

Nothing here imports TensorFlow, Keras or keras_hub at import time, and nothing does before
a model is built: a cache hit reads JSON and hashes files only (the built-in presets' table
is read from keras_hub's source files as data, not imported).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from featx.core.config import BackboneConfig
from featx.core.errors import BackboneError
from featx.core.files import file_sha256, short_hash

log = logging.getLogger(__name__)

HUB_PREFIX = "hub:"
INSTALL_HINT = "pip install 'featx[hub]'"
# KerasHub backbone class -> the folder of keras_hub/src/models holding its presets.
FAMILIES = {"DINOV2Backbone": "dinov2", "DINOV3Backbone": "dinov3", "ViTBackbone": "vit",
            "CLIPBackbone": "clip", "SigLIPBackbone": "siglip",
            "EfficientNetBackbone": "efficientnet"}
TRANSFORMERS = {"DINOV2Backbone", "DINOV3Backbone", "ViTBackbone", "CLIPBackbone",
                "SigLIPBackbone"}
# Position embeddings interpolated (DINOv2) or rotary (DINOv3): any multiple of the patch.
RESIZABLE = {"DINOV2Backbone", "DINOV3Backbone", "EfficientNetBackbone"}
PRETRAINED = ("imagenet", "pretrained")
TOKEN_POOLINGS = ("cls", "cls+mean")  # transformers only
SWEEP_POINTS = 12  # featx sweep's default: about this many blocks of a transformer
PRESET_NAME = re.compile(r"^[A-Za-z0-9_.]+$")  # no '-': store names are split on it
WEIGHT_FILES = ("model.weights.h5", "model.weights.json")
SHARDS = "model_*.weights.h5"


def is_hub(name: str) -> bool:
    return name.strip().lower().startswith(HUB_PREFIX)


# --- the built-in presets (no import of keras_hub) ---------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    family: str  # KerasHub backbone class
    params: int
    description: str
    handle: str  # kaggle://owner/model/framework/variation/version


def _models_dir() -> Path | None:
    spec = importlib.util.find_spec("keras_hub")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "src" / "models"


@cache
def builtin_presets() -> dict[str, Preset]:
    """The presets KerasHub knows for :data:`FAMILIES`, by name (empty without keras_hub). Read
    from its ``<family>_presets.py`` files as literals: importing keras_hub imports TensorFlow."""
    models = _models_dir()
    found: dict[str, Preset] = {}
    for family, folder in FAMILIES.items() if models else ():
        path = models / folder / f"{folder}_presets.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and \
                    any(getattr(t, "id", "") == "backbone_presets" for t in node.targets):
                try:
                    table = ast.literal_eval(node.value)
                except ValueError:  # not a plain literal in this version: skip the family
                    continue
                for name, entry in table.items():
                    meta = entry.get("metadata", {})
                    found[name] = Preset(name, family, int(meta.get("params", 0)),
                                         " ".join(str(meta.get("description", "")).split()),
                                         str(entry.get("kaggle_handle", "")))
    return found


def kagglehub_cache() -> Path:
    """Where KerasHub's downloads (through kagglehub) are kept: $KAGGLEHUB_CACHE, else
    ~/.cache/kagglehub (kagglehub's documented default)."""
    return Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")


def cached_folder(preset: Preset) -> Path | None:
    """The preset's folder in KerasHub's download cache, where its config is there."""
    handle = preset.handle.removeprefix("kaggle://").split("/")
    if len(handle) != 5:  # owner/model/framework/variation/version: a versioned handle
        return None
    folder = kagglehub_cache().joinpath("models", *handle)
    return folder if (folder / "config.json").is_file() else None


def download(preset: Preset) -> Path:
    """The preset's files, from KerasHub's cache or downloaded into it (all of them)."""
    folder = cached_folder(preset)
    if folder is not None and _weight_files(folder):
        return folder
    how = (f"No network? Copy the preset folder from a machine that has it "
           f"({kagglehub_cache() / 'models' / 'keras'}/...) and name it: --backbone "
           f"hub:/path/to/{preset.name} (or --weights /path/to/{preset.name})")
    try:
        import kagglehub
    except ImportError:
        raise BackboneError(f"hub:{preset.name} needs KerasHub: {INSTALL_HINT}") from None
    log.info("downloading the KerasHub preset %s (once; kept in %s)", preset.name,
             kagglehub_cache())
    try:
        got = Path(kagglehub.model_download(preset.handle.removeprefix("kaggle://")))
    except Exception as e:  # kagglehub raises many kinds on a failed download
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise BackboneError(f"could not download the KerasHub preset {preset.name} "
                            f"({reason}). {how}") from None
    if not (got / "config.json").is_file():
        raise BackboneError(f"the KerasHub preset {preset.name} downloaded to {got} has no "
                            f"config.json. {how}")
    return got


# --- a preset folder read as data ----------------------------------------------------------

def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BackboneError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise BackboneError(f"{path}: not a JSON object")
    return data


def _weight_files(folder: Path) -> list[Path]:
    files = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    return files + sorted(folder.glob(SHARDS))


@dataclass(frozen=True)
class PresetFiles:
    """A KerasHub preset folder as data: its backbone config and image converter."""

    folder: Path
    config: dict  # config.json: {"class_name", "config", ...}
    converter: dict  # image_converter.json's "config"

    @classmethod
    def read(cls, folder: Path) -> PresetFiles:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise BackboneError(f"KerasHub preset folder not found: {folder}")
        if not (folder / "config.json").is_file():
            raise BackboneError(f"{folder} is not a KerasHub preset folder (no config.json; "
                                "save_to_preset writes one)")
        config = _json(folder / "config.json")
        family = config.get("class_name")
        if family not in FAMILIES:
            raise BackboneError(f"{folder}: a {family} preset; featx reads the image "
                                f"backbones {', '.join(FAMILIES)}")
        if not (folder / "image_converter.json").is_file():
            raise BackboneError(f"{folder} has no image_converter.json: its preprocessing "
                                "is unknown (save the preset's ImageConverter there too)")
        converter = _json(folder / "image_converter.json").get("config", {})
        return cls(folder, config, converter)

    @property
    def family(self) -> str:
        return self.config["class_name"]

    @property
    def transformer(self) -> bool:
        return self.family in TRANSFORMERS

    @property
    def arch(self) -> dict:
        """The image tower's own config (CLIP and SigLIP nest it beside a text tower)."""
        inner = self.config.get("config", {})
        if self.family in ("CLIPBackbone", "SigLIPBackbone"):
            return inner.get("vision_encoder", {}).get("config", {})
        return inner

    @property
    def native_size(self) -> int:
        size = self.converter.get("image_size") or self.arch.get("image_shape") or \
            self.arch.get("input_shape") or [None]
        return int(size[0]) if size and size[0] else 224

    @property
    def patch(self) -> int:
        p = self.arch.get("patch_size", 1)
        return int(p[0] if isinstance(p, (list, tuple)) else p)

    @property
    def width(self) -> int | None:
        """The width of a token (transformers), else None (a CNN's: known once built)."""
        return int(self.arch["hidden_dim"]) if self.transformer else None

    @property
    def blocks(self) -> int:
        return int(self.arch.get("num_layers", 0)) if self.transformer else 0

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the class token and DINO's register tokens."""
        if self.family in ("DINOV2Backbone", "DINOV3Backbone"):
            return 1 + int(self.arch.get("num_register_tokens", 0))
        if self.family == "ViTBackbone":
            return int(bool(self.arch.get("use_class_token", True)))
        return int(self.family == "CLIPBackbone")

    def scale_offset(self) -> tuple[list[float], list[float]]:
        """Per channel (RGB): the converter's ``x * scale + offset`` on 0-255 pixels."""
        def per_channel(value: Any, default: float) -> list[float]:
            if value is None:
                return [default] * 3
            values = [float(v) for v in (value if isinstance(value, (list, tuple)) else
                                         [value])]
            return values * 3 if len(values) == 1 else values
        return (per_channel(self.converter.get("scale"), 1.0),
                per_channel(self.converter.get("offset"), 0.0))

    def weightsfile_sha256(self) -> dict[str, str]:
        files = _weight_files(self.folder)
        if not files:
            raise BackboneError(f"{self.folder} holds no weights (model.weights.h5)")
        return {f.name: file_sha256(f) for f in files}

    def describe_config(self) -> str:
        """A hash of the config as parsed (its "name" left out: a label)."""
        body = {k: v for k, v in self.config.get("config", {}).items() if k != "name"}
        return short_hash(json.dumps({"class": self.family, "config": body}, sort_keys=True))


# --- names --------------------------------------------------------------------------------

def parse_name(name: str) -> tuple[Preset | None, Path | None]:
    """``hub:<preset>`` or ``hub:<folder>``: (the built-in preset, None) or (None, folder)."""
    rest = name.strip()[len(HUB_PREFIX):].strip()
    if not rest:
        raise BackboneError(f"backbone {name!r} names no preset: hub:<preset> (featx "
                            "backbones lists them) or hub:/path/to/preset-folder")
    presets = builtin_presets()
    if rest in presets:
        return presets[rest], None
    folder = Path(rest).expanduser()
    if folder.is_dir():
        return None, folder
    if "/" in rest or os.sep in rest:
        raise BackboneError(f"KerasHub preset folder not found: {folder}")
    if not presets and importlib.util.find_spec("keras_hub") is None:
        raise BackboneError(f"{name} needs KerasHub: {INSTALL_HINT}")
    raise BackboneError(f"unknown KerasHub preset {rest!r} (featx backbones lists the "
                        f"{len(presets)} it knows; a folder of your own: hub:/path/to/it)")


def short_name(name: str) -> str:
    """``hub:<preset>``, or for a folder ``hub:<its name>`` (letters, digits, '_' and '.':
    the store's file name carries it)."""
    preset, folder = parse_name(name)
    label = preset.name if preset else re.sub(r"[^A-Za-z0-9_.]", "_", folder.resolve().name)
    return HUB_PREFIX + label


# --- what `featx backbones` lists ---------------------------------------------------------

@dataclass(frozen=True)
class Listed:
    name: str
    family: str
    input_size: str  # "?" where the config is not here
    width: str
    params: int
    cached: bool


def listing() -> list[Listed]:
    """Every built-in preset of :data:`FAMILIES`, with input size and feature width where its
    config is in KerasHub's cache (no download), else "?"."""
    rows = []
    for p in builtin_presets().values():
        folder = cached_folder(p)
        size = width = "?"
        if folder is not None:
            try:
                files = PresetFiles.read(folder)
                size = str(files.native_size)
                width = str(files.width) if files.width else "?"
            except BackboneError:
                pass
        rows.append(Listed(f"{HUB_PREFIX}{p.name}", p.family.removesuffix("Backbone"), size,
                           width, p.params, folder is not None))
    return rows


# --- the backbone -------------------------------------------------------------------------

class HubModel:
    """The KerasHub part of a featx.features.backbones.Backbone named ``hub:...``: the
    preset's files, what they allow (sizes, layers, poolings), and its Keras model. The
    Backbone keeps featx's interface and asks this for what differs from keras.applications.
    A transformer's ``base`` is its image tower rebuilt as one Keras model (KerasHub's layers
    and weights) whose layers ``block1`` ... ``blockN`` and ``final`` name the outputs."""

    def __init__(self, config: BackboneConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.preset, self.name_folder = parse_name(config.name)
        self.label = short_name(config.name)
        self.files, self.weights_path, self.load_weights = self._resolve()
        self.size = self.files.native_size  # the input size (check_size sets another)
        f = self.files
        if self.preset and self.preset.family != f.family:
            raise BackboneError(f"{f.folder} holds a {f.family} preset, not "
                                f"{self.preset.name} (a {self.preset.family})")

    def _resolve(self) -> tuple[PresetFiles, Path | None, bool]:
        """(the preset's files, the weights folder the user named, load its weights)."""
        weights = self.config.weights.strip()
        kind = weights.lower()
        if kind in PRETRAINED:
            folder = self.name_folder or download(self.preset)
            return PresetFiles.read(folder), None, True
        if kind in ("none", ""):
            folder = self.name_folder or (cached_folder(self.preset) if self.preset else None)
            if folder is None:
                raise BackboneError(
                    f"{self.label} with random weights needs the preset's config, which is "
                    "not here: download the preset once (weights \"pretrained\") or name a "
                    "local preset folder (hub:/path/to/it)")
            return PresetFiles.read(folder), None, False
        folder = Path(weights).expanduser()
        files = PresetFiles.read(folder)
        if self.name_folder is not None:
            named = PresetFiles.read(self.name_folder)
            if named.family != files.family:
                raise BackboneError(f"backbone.weights {folder} holds a {files.family} "
                                    f"preset, not a {named.family} like {self.name_folder}")
        return files, folder, True

    # --- checks, before any image is read ------------------------------------------------

    def check_size(self, size: int, largest: int) -> None:
        """Refuse an input size the model cannot read; keep it (``size``) if it can."""
        f = self.files
        if size != f.native_size and f.family not in RESIZABLE:
            raise BackboneError(
                f"backbone.input_size = {size}: {self.label} reads {f.native_size} px only "
                "(its position embeddings were learnt for that size; DINOv2 and DINOv3 take "
                "other sizes)")
        if not 32 <= size <= largest:
            raise BackboneError(f"backbone.input_size = {size}: {self.label} takes 32 to "
                                f"{largest} pixels")
        if f.transformer and size % f.patch:
            raise BackboneError(f"backbone.input_size = {size}: {self.label} cuts the image "
                                f"into {f.patch}-px patches; use a multiple of {f.patch} "
                                f"(its native size: {f.native_size})")
        self.size = size

    def check_pooling(self, pooling: str) -> None:
        f = self.files
        if pooling in TOKEN_POOLINGS and not f.transformer:
            raise BackboneError(f"pooling {pooling!r} reads a class token: {self.label} is a "
                                "CNN (avg, mean, max, flatten, none)")
        if pooling in TOKEN_POOLINGS and not f.prefix_tokens and f.family != "SigLIPBackbone":
            raise BackboneError(f"{self.label} has no class token: use mean, max, flatten "
                                "or none")

    def check_layers(self, layers: list[str], pooling: str) -> None:
        """A transformer's layers: ``block<i>`` (1 ... N) or ``final``; a CNN's are Keras
        layer names, checked when it is built."""
        if not self.files.transformer:
            return
        names = self.block_names()
        for layer in layers:
            if layer not in names:
                raise BackboneError(
                    f"{self.label} has no layer {layer!r}: its layers are block1 ... "
                    f"block{self.files.blocks} and final (featx layers {self.config.name})")
        if self.files.family == "SigLIPBackbone" and pooling in TOKEN_POOLINGS and \
                any(n != "final" for n in layers):
            raise BackboneError(f"{self.label}: SigLIP has no class token; pooling "
                                f"{pooling!r} reads its attention-pooling head, after the "
                                "final block: layer \"final\"")

    def block_names(self) -> list[str]:
        """``block1`` ... ``blockN`` and ``final`` (a transformer's layers, in order)."""
        return [f"block{i}" for i in range(1, self.files.blocks + 1)] + ["final"]

    # --- what identifies the features ----------------------------------------------------

    @property
    def weights_kind(self) -> str:
        return "preset" if self.load_weights else "none"

    def weights_id(self) -> str:
        """The SHA-256 of the preset's config, converter and weight files, or the seed."""
        if not self.load_weights:
            return f"random:seed={self.seed}"
        scale, offset = self.files.scale_offset()
        body = {"config": self.files.describe_config(), "scale": scale, "offset": offset,
                "weights": self.files.weightsfile_sha256()}
        return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def describe(self, layers: list[str]) -> dict[str, Any]:
        """What Backbone.describe adds or says otherwise for a KerasHub backbone."""
        scale, offset = self.files.scale_offset()
        return {"config": self.files.describe_config(),
                "layer": ",".join(layers) or ("final" if self.files.transformer
                                              else "(last layer)"),
                "preprocess": "x * " + _numbers(scale) + " + " + _numbers(offset)}

    # --- the model -----------------------------------------------------------------------

    @cached_property
    def hub_model(self) -> Any:
        """KerasHub's backbone as the preset builds it (weights loaded, or random), at
        ``size`` where the model takes other sizes."""
        from featx.core.log import import_tensorflow

        import_tensorflow()  # quietly, first
        import keras
        try:
            import keras_hub
        except ImportError:
            raise BackboneError(f"{self.label} needs KerasHub: {INSTALL_HINT}") from None
        f, size = self.files, self.size
        overrides: dict[str, Any] = {"dtype": self.config.precision}
        if f.family in RESIZABLE:
            key = "input_shape" if "input_shape" in f.arch else "image_shape"
            overrides[key] = (size, size, 3)
        if not self.load_weights:
            keras.utils.set_random_seed(self.seed)
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.config.precision)
        try:
            return keras_hub.models.Backbone.from_preset(
                str(f.folder), load_weights=self.load_weights, **overrides)
        except Exception as e:  # keras_hub raises ValueError, OSError, KeyError ...
            raise BackboneError(f"could not load the KerasHub preset {f.folder}: "
                                f"{' '.join(str(e).split())[:300]}") from e
        finally:
            keras.config.set_dtype_policy(policy)

    def base(self) -> Any:
        """A CNN: KerasHub's backbone itself. A transformer: its image tower rebuilt as one
        Keras model (the same layers and weights) whose ``block<i>`` layers pass each
        block's output on and name it, ending in ``final``. TensorFlow is imported first."""
        hub, size = self.hub_model, self.size
        if not self.files.transformer:
            return hub
        import keras

        images = keras.Input((size, size, 3), name="images")
        x, blocks, norm, call = _tower(hub, images, self.files)
        for i, block in enumerate(blocks, 1):
            x = keras.layers.Identity(name=f"block{i}")(call(block, x))
        x = keras.layers.Identity(name="final")(norm(x))
        return keras.Model(images, x, name=f"hub_{self.label[len(HUB_PREFIX):]}")

    def pool(self, output: Any, name: str) -> Any:
        """A transformer's tokens (n, tokens, width) at layer ``name`` pooled as
        ``backbone.pooling`` says: see the module's docstring."""
        import keras
        from keras import layers

        f, pooling = self.files, self.config.pooling
        n_tokens, width = int(output.shape[1]), int(output.shape[2])
        grid = self.size // f.patch
        if n_tokens != f.prefix_tokens + grid * grid:
            raise BackboneError(f"{self.label}: {n_tokens} tokens at {name}, not "
                                f"{f.prefix_tokens} + {grid}x{grid} patches")
        patches = layers.Cropping1D((f.prefix_tokens, 0))(output) if f.prefix_tokens \
            else output
        grid_map = layers.Reshape((grid, grid, width))(patches)
        if pooling in ("avg", "mean"):
            return layers.GlobalAveragePooling2D()(grid_map)
        if pooling == "max":
            return layers.GlobalMaxPooling2D()(grid_map)
        if pooling == "flatten":
            return layers.Flatten()(grid_map)
        if pooling == "none":
            return grid_map
        if f.family == "SigLIPBackbone":  # its pooled embedding: the attention head
            cls = self.hub_model.vision_encoder.head(output)
        else:
            cls = layers.Reshape((width,))(layers.Cropping1D((0, n_tokens - 1))(output))
        if pooling == "cls":
            return cls
        return keras.layers.Concatenate()([cls, layers.GlobalAveragePooling2D()(grid_map)])

    def columns(self, layers: list[str]) -> list[tuple[str, int, int]]:
        """A transformer's (layer, first column, end column) of each layer read, from its
        config (nothing built)."""
        f, pooling = self.files, self.config.pooling
        grid = self.size // f.patch
        width = {"flatten": grid * grid * f.width, "none": grid * grid * f.width,
                 "cls+mean": 2 * f.width}.get(pooling, f.width)
        return [(name, i * width, (i + 1) * width) for i, name in enumerate(layers or ["final"])]

    def stage_ends(self) -> list[str]:
        """A transformer's default layers for ``featx sweep``: about :data:`SWEEP_POINTS`
        evenly spaced blocks, the last one among them, and ``final``."""
        n = self.files.blocks
        step = max(1, math.ceil(n / SWEEP_POINTS))
        return [f"block{i}" for i in range(n % step or step, n + 1, step)] + ["final"]

    def listed_layers(self) -> list[tuple[str, tuple]]:
        """A transformer's blocks and ``final``, each (tokens, width): from its config."""
        f = self.files
        tokens = f.prefix_tokens + (self.size // f.patch) ** 2
        return [(name, (tokens, f.width)) for name in self.block_names()]

    def preprocess(self, images: Any) -> Any:
        """uint8 or float RGB 0-255 -> ``x * scale + offset`` (the image converter's)."""
        from featx.core.log import import_tensorflow

        tf = import_tensorflow()
        scale, offset = self.files.scale_offset()
        x = tf.cast(images, tf.float32)
        return x * tf.constant(scale, tf.float32) + tf.constant(offset, tf.float32)


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def _tower(hub: Any, images: Any, files: PresetFiles) -> tuple[Any, list, Any, Any]:
    """(the embedded tokens of ``images``, the blocks, the final norm, how a block is called)
    of a KerasHub transformer: the sub-layers its own ``call`` runs, in order."""
    family = files.family

    def plain(block, x):
        return block(x)

    if family == "ViTBackbone":
        encoder = hub.get_layer("vit_encoder")
        x = hub.get_layer("vit_patching_and_embedding")(images)
        return x, list(encoder.encoder_layers), encoder.layer_norm, plain
    if family == "DINOV2Backbone":
        return hub.embeddings(images), list(hub.encoder.layers), hub.layernorm, plain
    if family == "DINOV3Backbone":
        rope = hub.rope_embedding(images)
        prefix = files.prefix_tokens

        def rotary(block, x):
            return block(x, position_embeddings=rope, num_prefix_tokens=prefix)

        return hub.embeddings(images), list(hub.encoder.layers), hub.layernorm, rotary
    tower = hub.vision_encoder
    if family == "CLIPBackbone":
        x = tower.pre_layer_norm(tower.embedding(images))
        return x, list(tower.encoder_layers), tower.layer_norm, plain
    embedding = tower.embedding
    # KerasHub 0.32's SigLIPVisionEmbedding.compute_output_shape counts a class token, which
    # SigLIP has not (CLIP's, copied): this instance is told the true count of its tokens.
    embedding.compute_output_shape = lambda shape: (
        shape[0], (shape[1] // embedding.patch_size) ** 2, embedding.hidden_dim)
    return embedding(images), list(tower.encoder_layers), tower.post_layer_norm, plain
