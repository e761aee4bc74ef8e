"""featx.features.transformer without a network: the images argument read once at the
boundary, pixels through a backbone in batches (10 crops averaged), and what a clone or a
pickle keeps. (Features from real models and stores: tests/test_api.py.)"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.core.errors import ConfigError, DatasetError
from featx.features.transformer import FeatureExtractor, as_images, pixel_features


def test_paths_in_any_form_are_paths():
    assert as_images("a.png") == ("paths", ["a.png"])
    assert as_images(Path("a.png")) == ("paths", ["a.png"])
    assert as_images([Path("a.png"), "b.png"]) == ("paths", ["a.png", "b.png"])
    assert as_images(np.asarray(["a.png", "b.png"])) == ("paths", ["a.png", "b.png"])
    assert as_images(("a.png",)) == ("paths", ["a.png"])


def test_pixels_are_kept_exactly_one_array_an_image():
    batch = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    kind, items = as_images(batch)
    assert kind == "pixels" and len(items) == 2
    np.testing.assert_array_equal(items[1], batch[1])
    one = batch[0]
    kind, items = as_images(one)  # one (H, W, 3) image, not copied
    assert kind == "pixels" and len(items) == 1 and items[0] is one
    pil = Image.fromarray(batch[0])
    assert as_images(pil) == ("pixels", [pil]) and as_images([pil, pil])[1] == [pil, pil]


def test_float_pixels_are_rounded_to_the_nearest_value_never_cut():
    pixels = np.full((2, 2, 3), 254.6, np.float32)
    pixels[0, 0] = 0.4
    (image,) = as_images([pixels])[1]
    assert image.dtype == np.uint8
    assert image[0, 0, 0] == 0 and image[1, 1, 0] == 255
    wide = np.full((2, 2, 3), 300, np.int64)
    with pytest.raises(DatasetError, match=r"images\[0\] holds int64 values 300\.\.300"):
        as_images([wide])


class FakeBackbone:
    """A backbone whose features are each image's mean per channel; batches recorded."""

    input_size, resize, feature_shape = 8, "squash", (3,)

    def __init__(self) -> None:
        self.batches: list[int] = []

    def batched(self, batch_size: int):
        def forward(images: np.ndarray, ok: np.ndarray) -> np.ndarray:
            assert images.shape[1:] == (8, 8, 3) and len(images) <= batch_size and ok.all()
            self.batches.append(len(images))
            return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)
        return forward


def test_pixel_features_run_in_batches_one_row_an_image():
    colours = [np.full((10 + i, 12, 3), 20 * i, np.uint8) for i in range(5)]
    backbone = FakeBackbone()
    x = pixel_features(backbone, colours, batch_size=2)
    assert backbone.batches == [2, 2, 1]
    np.testing.assert_allclose(x, [[20 * i] * 3 for i in range(5)])
    empty = pixel_features(FakeBackbone(), [], batch_size=2)
    assert empty.shape == (0, 3) and empty.dtype == np.float32


def test_ten_crops_are_averaged_into_one_row():
    """A picture dark on the left: the crops see different parts; one row, their mean."""
    image = np.full((40, 40, 3), 200, np.uint8)
    image[:, :10] = 0
    backbone = FakeBackbone()
    x = pixel_features(backbone, [image, image], batch_size=4, tencrop=True)
    assert x.shape == (2, 3) and sum(backbone.batches) == 20  # 10 crops each
    from featx.data.images import crop_load_size, fit_image, ten_crops

    crops = ten_crops(fit_image(Image.fromarray(image), crop_load_size(8)), 8)
    np.testing.assert_allclose(x[0], crops.reshape(10, -1, 3).mean(axis=1).mean(axis=0),
                               rtol=1e-6)
    assert not np.allclose(x[0], image.reshape(-1, 3).mean(axis=0))  # not the whole image


def test_feature_names_follow_backbone_pooling_and_width():
    fx = FeatureExtractor(backbone="ResNet50", pooling="max")
    fx._width = 3  # as after a transform: no model built to ask
    assert list(fx.get_feature_names_out()) == ["resnet50max0", "resnet50max1", "resnet50max2"]


def test_a_clone_or_a_pickle_never_carries_the_model():
    from sklearn.base import clone

    fx = FeatureExtractor(weights="none", input_size=32, cache_dir="/tmp/x", progress=False)
    fx._model = object()  # a built model stands here
    assert not hasattr(clone(fx), "_model") and clone(fx).get_params() == fx.get_params()
    copy = pickle.loads(pickle.dumps(fx))
    assert not hasattr(copy, "_model") and copy.get_params() == fx.get_params()


def test_a_pickle_of_featx_0_4_shows_progress():
    """0.4's FeatureExtractor had no ``progress``: unpickled, it gets the default."""
    fx = FeatureExtractor()
    state = fx.__getstate__()
    del state["progress"]
    old = FeatureExtractor.__new__(FeatureExtractor)
    old.__setstate__(state)
    assert old.progress is True and old.get_params()["progress"] is True


def test_the_settings_are_checked_as_featx_extract_checks_them(tmp_path):
    fx = FeatureExtractor(pooling="median", cache_dir=os.fspath(tmp_path))
    with pytest.raises(ConfigError, match=r"FeatureExtractor: backbone.pooling = 'median' is "
                                          "not one of"):
        fx._config()
