"""Drawing what a CNN computes (docs: how-to/explain-and-audit.md): the filters of its first
convolution, the feature maps of one layer for an image, and feature visualisation, an input
grown by gradient ascent until one channel of a layer responds strongly to it.

Feature visualisation follows Keras' "Visualizing what convnets learn": start from noise,
ascend the gradient of the channel's mean activation with respect to the input pixels. Left
alone that ascent finds high-frequency patterns (adversarial noise); the usual regularisers
keep the image legible: the image is shifted by a random few pixels before each step
(jitter: a pattern must work wherever it lands), blurred every few steps (a small Gaussian:
high frequencies decay), and kept in the 0-255 range of a real image. The pixels live in the
space images are read in (RGB, 0-255) and go through the backbone's own preprocessing, so the
result is an image the backbone could be shown. Noise and jitter come from one seeded
generator: the same seed gives the same images.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import BackboneConfig
from featx.core.errors import UsageError
from featx.core.files import write_atomic
from featx.core.log import import_tensorflow, plural
from featx.features.backbones import Backbone, BackboneError, get_spec
from featx.report.charts import png_bytes

log = logging.getLogger(__name__)

N_CHANNELS = 8  # channels visualised when LAYER names none
STEPS = 60  # gradient-ascent steps
STEP = 2.0  # pixel levels (of 255) per step, the gradient normalised to unit RMS
JITTER = 4  # the image is shifted by up to this many pixels (each way) before each step
BLUR_EVERY = 4  # steps between two blurs
BLUR_SIGMA = 0.5  # pixels
NOISE = 16.0  # the starting image: mid-grey plus Gaussian noise of this s.d. (pixel levels)
MAPS_TOP = 16  # feature-map channels drawn per image


def backbone_for(model_or_backbone: str, weights: str | None = None, input_size: int = 0,
                 seed: int = 0) -> Backbone:
    """The backbone a name (``featx backbones``) or a saved model (a ``.skops`` file or a
    run folder, as ``featx predict`` takes) stands for. A name gets ``weights`` (default
    "imagenet"); a model its own backbone, with ``weights`` as the file's location here."""
    try:
        spec = get_spec(model_or_backbone)
    except BackboneError:
        if not Path(model_or_backbone).exists():
            raise
        from featx.learn.predict import Predictor

        if input_size:
            raise UsageError(f"--input-size: {model_or_backbone} is a model, read at the "
                                 "input size it was trained at") from None
        return Predictor.load(model_or_backbone, weights).backbone
    return Backbone(BackboneConfig(name=spec.name, weights=weights or "imagenet",
                                   pooling="none", input_size=input_size), seed=seed)


# --- the first convolution's filters ----------------------------------------------------------

def first_conv(base: Any) -> Any:
    """The first ``Conv2D`` of a keras model that reads the 3 colour channels."""
    import keras

    for layer in base.layers:
        if type(layer) is keras.layers.Conv2D and layer.kernel.shape[2] == 3:
            return layer
    raise UsageError(f"{base.name}: no convolution reads the image's 3 channels")


def filters(backbone: Backbone) -> tuple[np.ndarray, str]:
    """The first convolution's filters as RGB tiles, and the layer's name.

    Returns
    -------
    tiles : ndarray of shape (n_filters, kh, kw, 3), float32 in [0, 1]: each filter divided
        by its largest absolute weight, mid-grey (0.5) where a weight is 0; channels in RGB
        order (BGR models, "caffe" preprocessing, turned back)
    name : str
    """
    base = backbone.base
    conv = first_conv(base)
    w = np.asarray(conv.kernel.numpy(), np.float64)  # (kh, kw, 3, n)
    # A BatchNormalization right after scales each filter by gamma / sqrt(var + eps): only
    # its sign changes what the tile shows (a negative gamma inverts the detector).
    for layer in base.layers:
        if type(layer).__name__ == "BatchNormalization" and layer.input is conv.output \
                and layer.gamma is not None:
            w = w * np.sign(np.asarray(layer.gamma.numpy(), np.float64))
            break
    if backbone.spec.preprocess == "caffe":
        w = w[:, :, ::-1]
    w = np.moveaxis(w, -1, 0)  # (n, kh, kw, 3)
    top = np.abs(w).reshape(len(w), -1).max(axis=1)
    tiles = 0.5 + w / (2 * np.where(top > 0, top, 1.0))[:, None, None, None]
    return tiles.astype(np.float32), conv.name


def filters_png(tiles: np.ndarray, title: str = "") -> bytes:
    """A grid of filter tiles (see :func:`filters`), each labelled with its number."""
    from matplotlib.figure import Figure

    n = len(tiles)
    cols = min(n, 8 if n <= 64 else 16)
    rows = -(-n // cols)
    fig = Figure(figsize=(0.9 * cols, 0.95 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(tiles[i], interpolation="nearest")
            ax.set_title(str(i), fontsize=7, pad=2)
    fig.suptitle(title, fontsize=8)
    return png_bytes(fig, dpi=80)


# --- feature maps -------------------------------------------------------------------------

def layer_model(backbone: Backbone, layer: str) -> Any:
    """A keras model from the backbone's input to ``layer``'s output (4-D)."""
    import keras

    backbone.depth(layer)  # an unknown name: one line naming the backbone
    output = backbone.base.get_layer(layer).output
    if len(output.shape) != 4:
        raise UsageError(f"{layer}: not a map (output shape {tuple(output.shape[1:])})")
    return keras.Model(backbone.base.input, output)


def feature_maps(backbone: Backbone, layer: str, images: np.ndarray) -> np.ndarray:
    """(n, h, w, channels) float32: ``layer``'s output for (n, size, size, 3) uint8 images
    at the backbone's input size, through its own preprocessing."""
    model = layer_model(backbone, layer)
    return np.asarray(model(backbone.preprocess(images), training=False), np.float32)


def top_channels(maps: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` channels of a (h, w, channels) map with the highest mean, highest first."""
    return np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:k]


def maps_png(image: np.ndarray, maps: np.ndarray, layer: str, k: int = MAPS_TOP,
             title: str = "") -> bytes:
    """The image, then its ``k`` most active channels of ``layer`` (``maps``: (h, w, c)),
    each labelled with its channel number and mean, on its own colour scale."""
    import textwrap

    from matplotlib.figure import Figure

    channels = top_channels(maps, k)
    cols = min(len(channels) + 1, 6)
    rows = -(-(len(channels) + 1) // cols)
    # shown on the explain page at its own size: 10 pt at 100 dpi, the page's 14 px
    fig = Figure(figsize=(1.8 * max(cols, 2), 1.9 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("input", fontsize=10)
    for ax, c in zip(axes.flat[1:], channels):
        ax.imshow(maps[:, :, c], cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {c}  mean {maps[:, :, c].mean():.2g}", fontsize=10)
    for ax in axes.flat[len(channels) + 1:]:
        fig.delaxes(ax)
    h, w, n = maps.shape
    most = "most active channel" if len(channels) == 1 else \
        f"{len(channels)} most active channels"
    text = f"{title}{layer} ({h}x{w}x{n}): the {most} (each on its own colour scale)"
    # wrapped to the figure's width (about 7.5 px a character at 10 pt, 100 dpi)
    fig.suptitle(textwrap.fill(text, int(fig.get_figwidth() * 100 / 7.5)), fontsize=10)
    return png_bytes(fig, dpi=100)


# --- feature visualisation ----------------------------------------------------------------

def parse_target(text: str) -> tuple[str, list[int]]:
    """``LAYER[:CHANNELS]`` -> (layer, channels): CHANNELS is a comma-separated list of
    numbers and ranges (``0-7,12``); without it, the first N_CHANNELS channels."""
    layer, _, spec = text.partition(":")
    layer = layer.strip()
    if not layer:
        raise UsageError(f"--visualize {text!r}: name a layer (LAYER[:CHANNELS])")
    if not spec.strip():
        return layer, list(range(N_CHANNELS))
    channels: list[int] = []
    for part in spec.split(","):
        found = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not found or (found.group(2) and int(found.group(2)) < int(found.group(1))):
            raise UsageError(f"--visualize {text!r}: channels are numbers and ranges, "
                                 "e.g. 0-7,12")
        low = int(found.group(1))
        channels += range(low, int(found.group(2) or low) + 1)
    return layer, list(dict.fromkeys(channels))


@dataclass
class Visualization:
    """Inputs grown by :func:`gradient_ascent`, one per channel.

    Attributes
    ----------
    layer : str
    channels : list of int
    images : ndarray of shape (n_channels, size, size, 3), float32 RGB pixels in [0, 255]
    start : ndarray of shape (n_channels,), each channel's mean activation on the noise
    final : ndarray of shape (n_channels,), the same on its grown image
    seconds : float
    """

    layer: str
    channels: list[int]
    images: np.ndarray
    start: np.ndarray
    final: np.ndarray
    seconds: float


def gradient_ascent(backbone: Backbone, layer: str, channels: list[int], steps: int = STEPS,
                    seed: int = 0, step: float = STEP, jitter: int = JITTER,
                    blur_every: int = BLUR_EVERY, blur_sigma: float = BLUR_SIGMA
                    ) -> Visualization:
    """For each channel of ``layer``, an input image that makes its mean activation large:
    gradient ascent from seeded noise, jittered and blurred (see the module's docstring).
    All channels ascend together, one image each, in one batch."""
    tf = import_tensorflow()

    if steps < 0:
        raise UsageError(f"--steps must be 0 or more, not {steps}")
    model = layer_model(backbone, layer)
    width = int(model.output.shape[-1])
    bad = [c for c in channels if not 0 <= c < width]
    if bad or not channels:
        raise UsageError(f"{layer} has channels 0-{width - 1}; asked for "
                             f"{', '.join(map(str, bad)) or 'none'}")
    size = backbone.input_size
    h = int(model.output.shape[1])
    crop = h // 8  # the map's border sees padding: its activations are not the pattern's
    pick = tf.constant(channels, tf.int32)

    def activation(x):  # (n,) mean of each image's own channel, the border left out
        a = model(backbone.preprocess(x), training=False)
        a = tf.cast(a[:, crop:h - crop, crop:a.shape[2] - crop, :], tf.float32)
        a = tf.gather(tf.transpose(a, [0, 3, 1, 2]), pick, axis=1, batch_dims=1)
        return tf.reduce_mean(a, axis=[1, 2])

    @tf.function(reduce_retracing=True)
    def ascend(x, shift):
        moved = tf.roll(x, shift, axis=[1, 2])
        with tf.GradientTape() as tape:
            tape.watch(moved)
            total = tf.reduce_sum(activation(moved))  # images are independent: one sum
        grad = tf.roll(tape.gradient(total, moved), -shift, axis=[1, 2])
        rms = tf.sqrt(tf.reduce_mean(tf.square(grad), axis=[1, 2, 3], keepdims=True))
        return tf.clip_by_value(x + step * grad / (rms + 1e-12), 0.0, 255.0)

    rng = np.random.default_rng(seed)
    x0 = np.clip(128 + NOISE * rng.standard_normal((len(channels), size, size, 3)), 0, 255)
    x = tf.constant(x0, tf.float32)
    kernel = _gaussian(blur_sigma)
    t0 = time.perf_counter()
    start = activation(x).numpy()
    for i in range(steps):
        shift = rng.integers(-jitter, jitter + 1, size=2) if jitter else np.zeros(2, int)
        x = ascend(x, tf.constant(shift, tf.int32))
        if blur_every and (i + 1) % blur_every == 0 and i + 1 < steps:
            x = _blur(x, kernel)
    final = activation(x).numpy()
    seconds = time.perf_counter() - t0
    log.info("%s: %s, %s in %.1fs; mean activation %.3g -> %.3g", layer,
             plural(len(channels), "channel"), plural(steps, "step"), seconds,
             float(start.mean()), float(final.mean()))
    return Visualization(layer, list(channels), x.numpy(), start, final, seconds)


def _gaussian(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(2 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(x: Any, kernel: np.ndarray) -> Any:
    """A separable Gaussian blur of (n, s, s, 3) images, each channel on its own."""
    tf = import_tensorflow()

    k = tf.constant(kernel)
    r = len(kernel) // 2
    x = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    rows = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    cols = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    x = tf.nn.depthwise_conv2d(x, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, cols, [1, 1, 1, 1], "VALID")


def visualization_png(v: Visualization, title: str = "") -> bytes:
    """A grid of the grown images (contrast stretched for display: 1st-99th percentile), each
    labelled with its channel and its mean activation on the noise and on the image."""
    from matplotlib.figure import Figure

    n = len(v.channels)
    cols = min(n, 4 if n <= 8 else 8)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, c, a0, a1 in zip(axes.flat, v.images, v.channels, v.start, v.final):
        low, high = np.percentile(image, [1, 99])
        ax.imshow(np.clip((image - low) / max(high - low, 1e-6), 0, 1))
        ax.set_title(f"ch {c}: {a0:.2g} -> {a1:.2g}", fontsize=7)
    fig.suptitle(f"{title}{v.layer}: inputs grown by gradient ascent (mean activation on "
                 "the noise -> on the image)", fontsize=8)
    return png_bytes(fig, dpi=80)


# --- the files `featx layers --filters / --visualize` write ----------------------------------

def _describe(backbone: Backbone) -> str:
    weights = {"file": Path(str(backbone.weights_path)).name, "none": "random weights"}
    return f"{backbone.spec.name} ({weights.get(backbone.weights_kind, 'ImageNet')})\n"


def draw_filters(backbone: Backbone, folder: str | Path = ".") -> Path:
    """``<folder>/filters-<backbone>.png``: the first convolution's filters."""
    tiles, name = filters(backbone)
    n, kh, kw, _ = tiles.shape
    path = Path(folder) / f"filters-{backbone.spec.name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, filters_png(tiles, f"{_describe(backbone)}{name}: {n} filters of "
                                        f"{kh}x{kw}x3, RGB (grey: 0)"))
    return path


def draw_channels(backbone: Backbone, target: str, folder: str | Path = ".",
                  steps: int = STEPS, seed: int = 0) -> tuple[Path, Visualization]:
    """``<folder>/visualize-<backbone>-<layer>.png``: :func:`gradient_ascent` for
    ``target`` (``LAYER[:CHANNELS]``), and the visualisation."""
    layer, channels = parse_target(target)
    v = gradient_ascent(backbone, layer, channels, steps=steps, seed=seed)
    path = Path(folder) / f"visualize-{backbone.spec.name}-{layer}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, visualization_png(v, f"{_describe(backbone)}{plural(steps, 'step')}, "
                                            f"seed {seed}, "))
    return path, v
