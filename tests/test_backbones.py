"""Backbones: the registry, preprocessing, pooling, named layers, weights and determinism.

Random weights (``weights="none"``) at 32-64 px keep every model build to a second or two.
Random-weight MobileNetV2 activations shrink layer by layer (the pooled features are ~1e-12),
so comparisons of features use tolerances relative to their scale.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers import assert_close

from featx.core.config import BackboneConfig
from featx.features.backbones import (
    MAP_POOLINGS,
    POOLINGS,
    REGISTRY,
    Backbone,
    BackboneError,
    get_spec,
)

EXPECTED = (
    ["VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2",
     "ResNet152V2", "InceptionV3", "Xception", "InceptionResNetV2", "MobileNet", "MobileNetV2",
     "MobileNetV3Small", "MobileNetV3Large", "DenseNet121", "DenseNet169", "DenseNet201"]
    + [f"EfficientNetB{i}" for i in range(8)]
    + [f"EfficientNetV2B{i}" for i in range(4)]
    + ["EfficientNetV2S", "ConvNeXtTiny"]
)
SIZE = 64  # 2x2 at the last MobileNetV2 block: flatten differs from avg/max
SEED = 11


def mobilenet(pooling="avg", layer="", size=SIZE, seed=SEED, weights="none") -> Backbone:
    return Backbone(BackboneConfig(name="MobileNetV2", weights=weights, layer=layer,
                                   pooling=pooling, input_size=size), seed=seed)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def raw_base():
    """keras.applications' own MobileNetV2 base, built from the same seed as featx's."""
    import keras

    keras.utils.set_random_seed(SEED)
    return keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(SIZE, SIZE, 3))


def raw_output(raw_base, images, layer=None):
    import keras

    x = keras.applications.mobilenet_v2.preprocess_input(images.astype(np.float32))
    model = raw_base if layer is None else keras.Model(raw_base.input,
                                                       raw_base.get_layer(layer).output)
    return np.asarray(model(x, training=False))


# ---------------------------------------------------------------------------------- registry

def test_registry_has_every_expected_backbone():
    missing = [n for n in EXPECTED if n not in REGISTRY]
    assert not missing


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entries_exist_in_keras_applications(name):
    import keras

    spec = REGISTRY[name]
    assert spec.name == name
    assert callable(getattr(keras.applications, name))
    assert callable(getattr(keras.applications, spec.module).preprocess_input)
    assert spec.preprocess in ("caffe", "tf", "torch", "none")
    assert spec.input_size >= 32


@pytest.mark.parametrize("name, size, mode", [
    ("VGG16", 224, "caffe"), ("InceptionV3", 299, "tf"), ("EfficientNetB3", 300, "none"),
    ("DenseNet121", 224, "torch"), ("ResNet50", 224, "caffe"), ("Xception", 299, "tf"),
])
def test_native_size_and_preprocessing(name, size, mode):
    spec = get_spec(name)
    assert (spec.input_size, spec.preprocess) == (size, mode)
    # input_size 0 means the native size; no model is built for this
    assert Backbone(BackboneConfig(name=name, weights="none")).input_size == size
    assert Backbone(BackboneConfig(name=name, weights="none", input_size=96)).input_size == 96


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(BackboneError) as e:
        get_spec("ResNet9000")
    message = str(e.value)
    assert "ResNet9000" in message
    assert all(name in message for name in REGISTRY)


def test_names_are_found_whatever_their_case():
    assert get_spec("mobilenetv2").name == "MobileNetV2"
    assert get_spec("VGG16") is REGISTRY["VGG16"]


def test_unknown_pooling_lists_the_valid_ones():
    with pytest.raises(BackboneError) as e:
        mobilenet(pooling="average")
    assert "average" in str(e.value) and all(p in str(e.value) for p in POOLINGS)


@pytest.mark.parametrize("pooling", ["cls", "cls+mean"])
def test_a_cnn_has_no_class_token(pooling):
    with pytest.raises(BackboneError, match="class token: MobileNetV2 is a CNN"):
        mobilenet(pooling=pooling)


def test_unknown_backbone_points_at_kerashub_too():
    with pytest.raises(BackboneError, match="hub:<preset>"):
        get_spec("DINOv2")


# ---------------------------------------------------------------------------------- preprocess

@pytest.mark.parametrize("name", ["VGG16", "MobileNetV2", "DenseNet121", "ResNet50V2"])
def test_preprocessing_matches_keras_applications(name):
    import keras

    spec = get_spec(name)
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = np.asarray(Backbone(BackboneConfig(name=name, weights="none")).preprocess(x))
    expected = getattr(keras.applications, spec.module).preprocess_input(x.astype(np.float32))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-6, atol=1e-5)
    assert got.dtype == np.float32


def test_caffe_and_tf_preprocessing_do_what_they_say():
    x = np.random.default_rng(2).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    f = x.astype(np.float32)
    tf_mode = np.asarray(Backbone(BackboneConfig(name="InceptionV3", weights="none"))
                         .preprocess(x))
    np.testing.assert_allclose(tf_mode, f / 127.5 - 1.0, atol=1e-6)
    caffe = np.asarray(Backbone(BackboneConfig(name="VGG16", weights="none")).preprocess(x))
    np.testing.assert_allclose(caffe, f[..., ::-1] - np.array([103.939, 116.779, 123.68]),
                               atol=1e-4)


def test_models_with_their_own_rescaling_get_raw_pixels():
    x = np.random.default_rng(3).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    for name in ("EfficientNetB0", "MobileNetV3Small", "ConvNeXtTiny"):
        got = np.asarray(Backbone(BackboneConfig(name=name, weights="none")).preprocess(x))
        np.testing.assert_array_equal(got, x.astype(np.float32))


# ---------------------------------------------------------------------------------- models

def test_features_are_the_keras_model_output(raw_base, images):
    b = mobilenet(pooling="none")
    got = np.asarray(b.features(images))
    assert_close(got, raw_output(raw_base, images))
    assert b.feature_shape == tuple(raw_base.output.shape[1:])


@pytest.mark.parametrize("pooling", MAP_POOLINGS)
def test_pooling(raw_base, images, pooling):
    b = mobilenet(pooling=pooling)
    got = np.asarray(b.features(images))
    grid = raw_output(raw_base, images)  # (n, h, w, c)
    assert grid.shape[1:3] != (1, 1)  # else flatten and avg would have the same shape
    expected = {"avg": grid.mean(axis=(1, 2)), "mean": grid.mean(axis=(1, 2)),
                "max": grid.max(axis=(1, 2)),
                "flatten": grid.reshape(len(grid), -1), "none": grid}[pooling]
    assert got.shape == expected.shape
    assert b.feature_shape == expected.shape[1:]
    assert_close(got, expected)


def test_minimum_input_size_works():
    b = mobilenet(size=32)
    x = np.zeros((1, 32, 32, 3), np.uint8)
    assert np.asarray(b.features(x)).shape == (1, *b.feature_shape)


def test_input_below_the_minimum_is_a_backbone_error():
    with pytest.raises(BackboneError, match="32"):
        mobilenet(size=16).model  # noqa: B018


@pytest.mark.parametrize("pooling", ["avg", "none"])
def test_named_layer(raw_base, images, pooling):
    layer = "block_3_expand_relu"  # 16x16x144 at 64 px, far larger numbers than the last block
    b = mobilenet(pooling=pooling, layer=layer)
    grid = raw_output(raw_base, images, layer)
    expected = grid.mean(axis=(1, 2)) if pooling == "avg" else grid
    got = np.asarray(b.features(images))
    assert got.shape == expected.shape and b.feature_shape == expected.shape[1:]
    assert_close(got, expected)
    assert b.describe()["layer"] == layer


def test_wrong_layer_name_lists_layers(raw_base):
    b = mobilenet(layer="block_99_nonsense")
    with pytest.raises(BackboneError) as e:
        b.model  # noqa: B018 (the model is built on first use)
    message = str(e.value)
    assert "block_99_nonsense" in message
    assert raw_base.layers[-1].name in message  # the last layers are offered instead


def test_random_weights_are_deterministic_given_the_seed(images):
    a, b, c = mobilenet(size=32, seed=5), mobilenet(size=32, seed=5), mobilenet(size=32, seed=6)
    wa, wb, wc = a.model.get_weights(), b.model.get_weights(), c.model.get_weights()
    assert len(wa) == len(wb) == len(wc) > 0
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc))
    x = images[:, :32, :32]
    np.testing.assert_array_equal(np.asarray(a.features(x)), np.asarray(b.features(x)))
    assert a.weights_id == b.weights_id != c.weights_id


def test_describe_names_everything_the_features_depend_on():
    d = mobilenet(pooling="max", size=96).describe()
    assert d["backbone"] == "MobileNetV2" and d["pooling"] == "max"
    assert d["input_size"] == 96 and d["preprocess"] == "tf" and d["weights"] == "none"
    assert d["layer"]  # the default layer is named, never empty
    imagenet = mobilenet(weights="imagenet").describe()  # no download: nothing is built
    assert imagenet["weights"] == "imagenet" and "MobileNetV2" in imagenet["weights_id"]


# ---------------------------------------------------------------------------------- weights files

def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.h5"
    with pytest.raises(BackboneError) as e:
        mobilenet(weights=str(missing))
    assert str(missing) in str(e.value)


def test_unreadable_weights_file_is_a_backbone_error(tmp_path):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"this is not an HDF5 file" * 10)
    b = mobilenet(size=32, weights=str(bad))
    with pytest.raises(BackboneError) as e:
        b.model  # noqa: B018
    assert str(bad) in str(e.value)


def test_weights_from_a_local_file(tmp_path, images):
    import keras

    keras.utils.set_random_seed(21)
    base = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
    path = tmp_path / "mine.weights.h5"
    base.save_weights(path)
    b = mobilenet(size=32, weights=str(path), seed=0)  # the seed must not matter here
    assert b.weights_kind == "file"
    assert b.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    x = images[:, :32, :32]
    expected = base(keras.applications.mobilenet_v2.preprocess_input(x.astype(np.float32)))
    expected = np.asarray(expected).mean(axis=(1, 2))
    assert_close(np.asarray(b.features(x)), expected)


def test_mixed_precision_computes_in_float16_and_returns_float32(images):
    """Same seeded weights: mixed_float16 features are float32 and close to the float32 ones,
    and the settings (hence the store key) say which precision made them."""
    def build(precision):
        # An early layer: with random weights the deep activations are ~1e-12, below float16.
        return Backbone(BackboneConfig(name="MobileNetV2", weights="none", input_size=32,
                                       layer="block_3_expand_relu", precision=precision),
                        seed=3)

    full, mixed = build("float32"), build("mixed_float16")
    assert mixed.model.layers[2].compute_dtype == "float16"
    assert full.model.layers[2].compute_dtype == "float32"
    assert mixed.model.layers[2].variable_dtype == "float32"  # weights stay float32
    x = images[:, :32, :32]
    a = full.compiled(len(x))(x).numpy()
    b = mixed.compiled(len(x))(x).numpy()
    assert b.dtype == np.float32 and b.shape == a.shape
    assert not np.array_equal(a, b)  # really computed in float16
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * float(np.abs(a).max()))
    assert "precision" not in full.describe()  # float32 stores keep their keys
    assert mixed.describe()["precision"] == "mixed_float16"
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(BackboneError, match="mixed_float16"):
        Backbone(BackboneConfig(precision="float8"))
