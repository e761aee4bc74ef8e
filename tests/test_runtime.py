"""The runtime switch (featx/features/runtime.py): OpenVINO runs the same function as TensorFlow.

Fast tests use random-weight MobileNetV2 at 32-64 px (a conversion takes about a second);
the slow one compares both runtimes on the ImageNet weights and real Flowers-17 images.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
from helpers import assert_close
from realdata import FLOWERS17, WEIGHTS, assert_pretrained, needs_shared, unavailable

import featx.features.runtime as runtime
from featx.core.config import BackboneConfig, Config, ConfigError
from featx.core.layout import converted_model_dir, converted_model_file
from featx.features.backbones import Backbone, BackboneError

SIZE = 64  # 2x2 at MobileNetV2's last block: flatten differs from avg and max


@pytest.fixture
def openvino():
    """OpenVINO is a dev dependency: missing, these tests skip (and fail under
    FEATX_REQUIRE_SHARED=1, as CI runs them)."""
    if importlib.util.find_spec("openvino") is None:
        unavailable(f"needs OpenVINO ({runtime.INSTALL_HINT})")


@pytest.fixture
def conversions(monkeypatch):
    """Every call of featx.features.runtime.convert, counted (the conversion itself still runs)."""
    calls = []
    real = runtime.convert

    def spy(function):
        calls.append(function)
        return real(function)

    monkeypatch.setattr(runtime, "convert", spy)
    return calls


def backbone(tmp_path, runtime_name="tensorflow", **fields) -> Backbone:
    config = BackboneConfig(**{"name": "MobileNetV2", "weights": "none", "input_size": SIZE,
                               "runtime": runtime_name, **fields})
    return Backbone(config, seed=3, cache_dir=tmp_path)


def both(tmp_path, images, batch=4, **fields) -> tuple[np.ndarray, np.ndarray]:
    """(TensorFlow's, OpenVINO's) features of ``images`` from one backbone (one Keras build:
    TensorFlow's are its traced function's, on the batch padded as ``batched`` pads it)."""
    ov = backbone(tmp_path, "openvino", **fields)
    assert ov.runtime == "openvino"
    padded = np.concatenate([images, np.zeros((batch - len(images), *images.shape[1:]),
                                              np.uint8)])
    tf_out = ov.compiled(batch)(padded).numpy()[:len(images)]
    return tf_out, ov.batched(batch)(images, np.ones(len(images), bool))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


# --- the features are TensorFlow's --------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"pooling": "avg"},
    {"pooling": "max", "flip": True},
    {"pooling": "flatten"},
    {"pooling": "none"},  # the 2x2x1280 map itself
    {"pooling": "avg", "layer": "block_6_expand_relu,out_relu"},
], ids=lambda f: "-".join(str(v) for v in f.values()))
def test_openvino_gives_tensorflows_features(tmp_path, images, openvino, fields):
    """Every pooling, several layers, flip averaging: a padded batch of 3 in a traced 4."""
    tf_out, ov_out = both(tmp_path, images, **fields)
    assert ov_out.dtype == np.float32
    assert_close(ov_out, tf_out, rtol=1e-4)
    # rows differ from one another: equality is not that of a constant
    assert np.abs(tf_out[0] - tf_out[1]).max() > 1e-3 * np.abs(tf_out).max()


def test_unreadable_rows_are_zero_with_openvino(tmp_path, images, openvino):
    ok = np.array([True, False, True])
    out = backbone(tmp_path, "openvino").batched(4)(images, ok)
    assert not out[1].any() and out[0].any() and out[2].any()


# --- the converted model is kept -----------------------------------------------------------

def test_a_second_use_reads_the_converted_model_back(tmp_path, images, openvino, conversions):
    ok = np.ones(len(images), bool)
    first = backbone(tmp_path, "openvino")
    out1 = first.batched(4)(images, ok)
    assert len(conversions) == 1
    key = runtime.model_key(first.describe(), 4)
    assert converted_model_file(converted_model_dir(tmp_path, "MobileNetV2", 4, key)).is_file()
    second = backbone(tmp_path, "openvino")  # a new backbone, as a new process has
    out2 = second.batched(4)(images, ok)
    assert len(conversions) == 1, "converted again although the cache holds the model"
    assert "model" not in second.__dict__, "the Keras model was built for a cache hit"
    np.testing.assert_array_equal(out1, out2)
    # another batch size or another pooling is another model
    backbone(tmp_path, "openvino").batched(2)(images[:2], ok[:2])
    backbone(tmp_path, "openvino", pooling="max").batched(4)(images, ok)
    assert len(conversions) == 3


def test_the_model_key_names_everything_that_defines_the_model(tmp_path):
    base = backbone(tmp_path)
    key = runtime.model_key(base.describe(), 32)
    assert runtime.model_key(base.describe(), 16) != key
    for change in ({"pooling": "max"}, {"layer": "out_relu"}, {"input_size": 96},
                   {"flip": True}, {"weights": str(WEIGHTS) if WEIGHTS.is_file() else "none"}):
        other = backbone(tmp_path, **change)
        if other.describe() == base.describe():
            continue  # no weights file here: "none" again
        assert runtime.model_key(other.describe(), 32) != key, change
    other_seed = Backbone(base.config, seed=4, cache_dir=tmp_path)
    assert runtime.model_key(other_seed.describe(), 32) != key


def test_an_unwritable_cache_folder_only_costs_a_conversion(tmp_path, images, openvino,
                                                             conversions):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    ok = np.ones(len(images), bool)
    out = backbone(blocked, "openvino").batched(4)(images, ok)
    assert out.shape == (3, 1280) and len(conversions) == 1


# --- choosing and refusing -----------------------------------------------------------------

def test_auto_chooses_openvino_only_when_installed_on_a_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "openvino_version", lambda: "2026.4.1")
    assert runtime.resolve_runtime("auto", "float32", gpu=lambda: False) == "openvino"
    assert runtime.resolve_runtime("auto", "float32", gpu=lambda: True) == "tensorflow"
    assert runtime.resolve_runtime("auto", "mixed_float16", gpu=lambda: False) == "tensorflow"
    assert runtime.resolve_runtime("tensorflow", "float32", gpu=lambda: False) == "tensorflow"
    assert runtime.resolve_runtime("openvino", "float32", gpu=lambda: True) == "openvino"
    monkeypatch.setattr(runtime, "openvino_version", lambda: None)
    assert runtime.resolve_runtime("auto", "float32", gpu=lambda: False) == "tensorflow"


def test_auto_on_this_machine(tmp_path, openvino):
    from featx.features.backbones import compute_device

    expected = "tensorflow" if compute_device().startswith("GPU") else "openvino"
    assert backbone(tmp_path, "auto").runtime == expected


def test_openvino_missing_is_refused_by_name(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "openvino_version", lambda: None)
    with pytest.raises(BackboneError, match=r"featx\[openvino\]"):
        backbone(tmp_path, "openvino")
    assert backbone(tmp_path, "auto").runtime == "tensorflow"


def test_mixed_precision_with_openvino_is_refused_by_name(tmp_path):
    with pytest.raises(BackboneError, match="precision"):
        backbone(tmp_path, "openvino", precision="mixed_float16")


def test_unknown_runtime_is_refused_by_config_and_backbone(tmp_path):
    with pytest.raises(ConfigError, match="backbone.runtime"):
        Config().set("backbone.runtime=onnx")
    with pytest.raises(BackboneError, match="onnx"):
        backbone(tmp_path, "onnx")
    config = Config()
    config.set("backbone.runtime=openvino")
    assert config.backbone.runtime == "openvino"


def test_the_runtime_is_not_part_of_the_store_key(tiny_root, make_config, tmp_path):
    """Features agree within float tolerance (above): a store made by either serves both."""
    from featx.features.plan import plan

    root, _ = tiny_root
    keys = set()
    for name in ("tensorflow", "openvino", "auto"):
        config = make_config(root, tmp_path, backbone={"runtime": name})
        keys.add(plan(config).key)
    assert len(keys) == 1


def test_extraction_with_openvino_is_a_cache_hit_for_tensorflow(tiny_store, tmp_path, openvino,
                                                               conversions):
    """End to end: the OpenVINO store holds the TensorFlow store's features."""
    from featx.features.extraction import extract
    from featx.store.read import FeatureStore

    config = dataclasses.replace(tiny_store.config, cache_dir=str(tmp_path))
    config.backbone = dataclasses.replace(config.backbone, runtime="openvino")
    result = extract(config, progress=False)
    assert not result.cache_hit and result.extracted == tiny_store.rows
    assert len(conversions) == 1
    assert result.key == tiny_store.key
    with FeatureStore(result.path) as ov, FeatureStore(tiny_store.path) as tf:
        assert ov.paths == tf.paths
        assert_close(ov.features(), tf.features(), rtol=1e-4)
    config.backbone = dataclasses.replace(config.backbone, runtime="tensorflow")
    assert extract(config, progress=False).cache_hit


def test_featx_cache_lists_verifies_and_removes_converted_models(tiny_store, tmp_path, openvino,
                                                                 conversions, capsys):
    from featx.cli import main
    from featx.core.layout import OPENVINO_DIR
    from featx.features.extraction import extract

    config = dataclasses.replace(tiny_store.config, cache_dir=str(tmp_path))
    config.backbone = dataclasses.replace(config.backbone, runtime="openvino")
    extract(config, progress=False)
    [folder] = (tmp_path / OPENVINO_DIR).iterdir()
    (tmp_path / OPENVINO_DIR / f".{folder.name}.x1y2").mkdir()  # a killed conversion's
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    key = folder.name.rsplit("-", 1)[1]
    line = next(row for row in listed.splitlines() if row.split()[-1] == key)
    assert "openvino model" in line and config.backbone.name in line
    assert "openvino (unfinished)" in listed and "3 entries" in listed
    # the store and the converted model (checked against its checksums), not the leftover
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"OK   {folder.name}" in out and f"OK   {tiny_store.path.name}" in out
    assert ".x1y2" not in out
    assert main(["cache", "verify", key, "--cache-dir", str(tmp_path)]) == 0
    assert f"OK   {folder.name}" in capsys.readouterr().out
    assert main(["cache", "rm", key, "--cache-dir", str(tmp_path)]) == 0
    assert not folder.exists() and tiny_store.path.name in {p.name for p in tmp_path.iterdir()}
    assert main(["cache", "rm", "--all", "--cache-dir", str(tmp_path)]) == 0
    assert not list((tmp_path / OPENVINO_DIR).iterdir())


def test_thread_split_uses_every_core():
    split = runtime.thread_split(6)
    assert (split.cores, split.inference_threads, split.streams, split.decode_parallel) == \
        (6, 6, 1, 6)
    assert runtime.thread_split(0).cores == runtime.usable_cores()
    assert "OpenVINO 6 inference threads" in split.describe()


# --- real weights, real images -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_openvino_equals_tensorflow_on_imagenet_weights_and_flowers17(tmp_path, openvino):
    """MobileNetV2 with the ImageNet weights, 224 px, batch 32, on 40 Flowers-17 photographs
    (a padded last batch) with every pooling featx stores by default and flip averaging."""
    from featx.data.images import ReadErrors, read_batches

    files = sorted(str(p) for p in FLOWERS17.glob("*/*.jpg"))[::34]  # 40, every class
    assert len(files) == 40
    images = np.concatenate([b for _, b, _ in read_batches(files, 224, 40, ReadErrors())])
    for fields in ({"pooling": "avg"}, {"pooling": "max", "flip": True}):
        config = BackboneConfig(name="MobileNetV2", weights=str(WEIGHTS), **fields)
        out = {}
        for name in ("tensorflow", "openvino"):
            b = Backbone(dataclasses.replace(config, runtime=name), cache_dir=tmp_path)
            run = b.batched(32)
            out[name] = np.concatenate([run(images[i:i + 32], np.ones(len(images[i:i + 32]),
                                                                       bool))
                                        for i in range(0, len(images), 32)])
        assert_pretrained(out["tensorflow"])
        scale = np.abs(out["tensorflow"]).max()
        assert np.abs(out["openvino"] - out["tensorflow"]).max() <= 1e-4 * scale, fields
        assert_close(out["openvino"], out["tensorflow"], rtol=1e-4)
