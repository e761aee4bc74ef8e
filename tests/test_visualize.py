"""Drawing what a CNN computes (featx.inspect.visualize): the first convolution's filters, a layer's
feature maps (featx explain --maps) and feature visualisation by gradient ascent (featx layers
--filters / --visualize). Fast tests on the tiny random-weights MobileNetV2 at 32x32; the
slow ones on the real ImageNet weights."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from realdata import FLOWERS17, WEIGHTS, needs_shared

from featx.cli import main
from featx.core.config import BackboneConfig
from featx.core.errors import UsageError
from featx.features.backbones import Backbone, BackboneError
from featx.inspect.visualize import (
    feature_maps,
    filters,
    filters_png,
    gradient_ascent,
    maps_png,
    parse_target,
    top_channels,
)

TINY = ["--weights", "none", "--input-size", "32"]
SEED = 42  # the tiny stores' dataset seed: the same random network


@pytest.fixture(scope="module")
def tiny():
    return Backbone(BackboneConfig(name="MobileNetV2", weights="none", input_size=32,
                                   pooling="none"), seed=SEED)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def test_filters_are_the_first_convolution_one_tile_each(tiny):
    tiles, name = filters(tiny)
    kernel = tiny.base.get_layer(name).kernel.numpy()  # (3, 3, 3, 32)
    assert name == "Conv1" and tiles.shape == (32, 3, 3, 3) and tiles.dtype == np.float32
    assert tiles.min() >= 0 and tiles.max() <= 1
    centred = tiles - 0.5  # each filter scaled by its largest weight: grey is 0
    np.testing.assert_allclose(np.abs(centred).reshape(32, -1).max(axis=1), 0.5, rtol=1e-5)
    scale = np.abs(kernel).reshape(-1, 32).max(axis=0)
    np.testing.assert_allclose(centred, np.moveaxis(kernel / (2 * scale), -1, 0), atol=1e-6)
    width, height = png_size(filters_png(tiles, "tiny"))
    assert width > 300 and height > 200


def test_filters_of_a_bgr_backbone_are_shown_in_rgb():
    vgg = Backbone(BackboneConfig(name="VGG16", weights="none", input_size=32, pooling="none"))
    tiles, name = filters(vgg)
    kernel = vgg.base.get_layer(name).kernel.numpy()  # channels in B, G, R order ("caffe")
    red = kernel[:, :, 2, 0] / (2 * np.abs(kernel[..., 0]).max())
    np.testing.assert_allclose(tiles[0, :, :, 0] - 0.5, red, atol=1e-6)


@pytest.mark.parametrize("text, layer, channels", [
    ("block_2_add:0-3,7", "block_2_add", [0, 1, 2, 3, 7]),
    ("block_2_add:5", "block_2_add", [5]),
    ("block_2_add:2,2,1", "block_2_add", [2, 1]),
    ("out_relu", "out_relu", list(range(8))),
])
def test_parse_target(text, layer, channels):
    assert parse_target(text) == (layer, channels)


@pytest.mark.parametrize("text", [":1", "block_2_add:3-1", "block_2_add:x", "a:1,,2"])
def test_parse_target_refuses(text):
    with pytest.raises(UsageError, match="--visualize"):
        parse_target(text)


def test_feature_maps_and_their_grid(tiny):
    import keras

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    maps = feature_maps(tiny, "block_1_expand_relu", images)
    assert maps.shape == (2, 16, 16, 96)
    model = keras.Model(tiny.base.input, tiny.base.get_layer("block_1_expand_relu").output)
    np.testing.assert_allclose(maps, model(tiny.preprocess(images)), rtol=1e-5, atol=1e-12)
    top = top_channels(maps[0], 5)
    means = maps[0].mean(axis=(0, 1))
    assert list(top) == list(np.argsort(-means)[:5]) and means[top[0]] == means.max()
    width, height = png_size(maps_png(images[0], maps[0], "block_1_expand_relu", k=5))
    assert width > 400 and height > 100
    with pytest.raises(BackboneError, match="no layer 'nope'"):
        feature_maps(tiny, "nope", images)


def test_gradient_ascent_raises_the_channel_and_repeats_with_its_seed(tiny):
    layer, channels = "block_1_expand_relu", [0, 7, 30]
    v = gradient_ascent(tiny, layer, channels, steps=30, seed=3)
    assert v.images.shape == (3, 32, 32, 3) and v.images.dtype == np.float32
    assert v.images.min() >= 0 and v.images.max() <= 255
    assert v.start.shape == v.final.shape == (3,)
    # the noise's own spread: the same channels on 8 other noise images
    noise = np.clip(128 + 16 * np.random.default_rng(9).standard_normal((8, 32, 32, 3)), 0, 255)
    on_noise = feature_maps(tiny, layer, noise.astype(np.uint8))[..., channels].mean(axis=(1, 2))
    assert np.all(v.final > 2 * v.start), (v.start, v.final)
    assert np.all(v.final > on_noise.max(axis=0) + 10 * on_noise.std(axis=0)), (v.final, on_noise)
    again = gradient_ascent(tiny, layer, channels, steps=30, seed=3)
    np.testing.assert_array_equal(again.images, v.images)
    other = gradient_ascent(tiny, layer, channels, steps=30, seed=4)
    assert np.abs(other.images - v.images).mean() > 5  # another start, another image


def test_gradient_ascent_refuses_channels_outside_the_layer(tiny):
    with pytest.raises(UsageError, match=r"channels 0-95; asked for 96, 200"):
        gradient_ascent(tiny, "block_1_expand_relu", [3, 96, 200], steps=1)
    with pytest.raises(UsageError, match="--steps"):
        gradient_ascent(tiny, "block_1_expand_relu", [3], steps=-1)


def test_featx_layers_draws_filters_and_channels(tmp_path, capsys):
    assert main(["layers", "MobileNetV2", *TINY, "--filters", "--visualize",
                 "block_1_expand_relu:0-1", "--steps", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("filters-MobileNetV2.png", "visualize-MobileNetV2-block_1_expand_relu.png"):
        assert f"wrote {tmp_path / name}" in out
        assert png_size((tmp_path / name).read_bytes())[0] > 200
    assert len(re.findall(r"block_1_expand_relu channel [01]: mean activation", out)) == 2
    assert main(["layers", "MobileNetV2", *TINY, "--visualize", "block_1_expand_relu:99",
                 "--out", str(tmp_path)]) == 2
    assert "featx: error: block_1_expand_relu has channels 0-95" in capsys.readouterr().err


def test_featx_layers_marks_the_stage_ends(capsys):
    assert main(["layers", "MobileNetV2", "--input-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ends = [line.split()[0] for line in lines if line.endswith("stage end")]
    assert ends == ["block_2_add", "block_5_add", "block_9_add", "block_12_add",
                    "block_15_add", "out_relu"]
    assert len(lines) > 100


def test_explain_maps_draws_a_grid_per_image(tiny_store, tmp_path, make_config):
    from featx.inspect.explain import explain
    from featx.learn.classification import classify

    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path / "r"),
                         classify={"classifiers": ["logreg"], "quick": True})
    (result,) = classify(config, tiny_store.path)
    model = tmp_path / "r" / result["run"] / result["model"]
    images = [tiny_store.root / p for p in tiny_store.written["fox"][:2]]
    written = explain(model, images, tmp_path / "x", neighbours=0, patch=16, stride=16,
                      maps="block_1_expand_relu", maps_top=4)
    maps = [p for p in written if p.name.endswith("-maps.png")]
    assert len(maps) == 2 and len(written) == 5  # 2 explanations, 2 map grids, the page
    assert all(png_size(p.read_bytes())[0] > 300 for p in maps)
    page = (tmp_path / "x" / "index.html").read_text()
    assert page.count("<h3>Feature maps</h3>") == 2
    with pytest.raises(UsageError, match="--maps-top"):
        explain(model, images, tmp_path / "y", neighbours=0, maps="block_2_add", maps_top=0)


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_imagenet_channels_grow_images_that_beat_real_flowers():
    """With the real weights, each grown image excites its channel more than any of eight
    Flowers-17 photos does (and far more than the starting noise)."""
    from featx.data.images import load_image

    b = Backbone(BackboneConfig(name="MobileNetV2", weights=str(WEIGHTS), pooling="none"))
    layer, channels = "block_9_add", [0, 1, 2, 3]
    v = gradient_ascent(b, layer, channels, steps=40)
    photos = np.stack([load_image(str(p), 224) for p in
                       sorted(FLOWERS17.glob("*/image_*0.jpg"))[::20][:8]])
    on_photos = feature_maps(b, layer, photos)[..., channels]
    crop = on_photos.shape[1] // 8  # as the ascent measures: the border left out
    best = on_photos[:, crop:-crop, crop:-crop].mean(axis=(1, 2)).max(axis=0)
    assert np.all(v.final > best), (v.final, best)
    assert np.all(v.final - v.start > 10), (v.start, v.final)
