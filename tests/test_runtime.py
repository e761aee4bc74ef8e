"""The runtime switch (featx/features/runtime.py): OpenVINO runs the same function as TensorFlow.

Fast tests use random-weight MobileNetV2 at 32-64 px (a conversion takes about a second);
the slow one compares both runtimes on the ImageNet weights and real Flowers-17 images.
precision int8 (NNCF's quantisation): fast tests of its calibration sample and store key
(no model work), one slow test of the whole path on 400 real flowers5 photographs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, extract_killed_after_first_block
from realdata import (
    FLOWERS17,
    WEIGHTS,
    assert_pretrained,
    flowers5_subset,
    needs_shared,
    unavailable,
)

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
    assert runtime.resolve_runtime("auto", "int8", gpu=lambda: True) == "openvino"  # only it
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


# --- precision int8: the calibration sample and the store key (no model work) --------------

def int8_config(make_config, root, cache, **backbone):
    return make_config(root, cache, backbone={"runtime": "openvino", "precision": "int8",
                                              "calibration_images": 5, **backbone})


def sample(root, size=5, seed=42):
    from featx.core.config import DatasetConfig
    from featx.data.dataset import load_dataset

    data = load_dataset(DatasetConfig(root=str(root)))
    return runtime.calibration_sample(data, data.signatures(), size, seed)


def test_the_calibration_sample_is_seeded_and_moves_only_where_an_image_ranks(tmp_path):
    from conftest import make_image_folder, write_image

    root = tmp_path / "data"
    written = make_image_folder(root, per_class=6, junk=False)
    first = sample(root)
    assert first == sample(root) and len(first.files) == 5 and len(set(first.files)) == 5
    every = {str(root / rel) for rels in written.values() for rel in rels}
    assert set(first.files) <= every
    assert sample(root, seed=43).files != first.files  # 5 of 18: another seed, another five
    assert sample(root, seed=43).digest != first.digest
    assert sorted(sample(root, size=100).files) == sorted(every)  # fewer images: all of them
    # an added image takes a place in the sample only where it ranks among the first five
    for i in range(8):
        added = write_image(root / "cat" / f"new{i}.png", seed=900 + i)
        now = sample(root)
        kept = [f for f in now.files if f != str(added)]
        assert kept == [f for f in first.files if f in kept], i
        assert (str(added) in now.files) == (now.files != first.files), i
        first = now
    # a sampled image changed (another signature): another identity, the same files
    changed = Path(first.files[0])
    changed.write_bytes(changed.read_bytes() + b"\0")
    again = sample(root)
    assert again.files == first.files and again.digest != first.digest


def test_an_int8_store_has_its_own_key_holding_its_calibration(tmp_path, make_config):
    """Precision and calibration identity are in the settings key: a float32 store never
    serves int8, nor the reverse; another sample size or seed, or a sampled image changed,
    is another int8 store; an image added outside the sample leaves the settings key as it
    is (its rows are reused, the new one extracted with the same int8 model)."""
    from conftest import make_image_folder, write_image

    from featx.features.plan import plan

    root = tmp_path / "data"
    make_image_folder(root, per_class=6, junk=False)
    float32 = plan(make_config(root, tmp_path))
    int8 = plan(int8_config(make_config, root, tmp_path))
    assert int8.key != float32.key and int8.path != float32.path
    assert int8.settings["precision"] == "int8" and "precision" not in float32.settings
    assert int8.settings["calibration"].startswith("5 images, seed 42, ")
    assert int8.settings["settings_key"] != float32.settings["settings_key"]
    keys = {int8.settings["settings_key"]}
    for other in (int8_config(make_config, root, tmp_path, calibration_images=6),
                  make_config(root, tmp_path, dataset={"seed": 7},
                              backbone={"runtime": "auto", "precision": "int8",
                                        "calibration_images": 5})):
        keys.add(plan(other).settings["settings_key"])
    assert len(keys) == 3
    # a float32 plan with the same sample size named is float32's store (the size is unused)
    assert plan(make_config(root, tmp_path, backbone={"calibration_images": 5})).key == \
        float32.key
    before = int8.settings["settings_key"]
    for i in range(20):  # until an added image falls outside the sample
        added = write_image(root / "dog" / f"more{i}.png", seed=700 + i)
        now = plan(int8_config(make_config, root, tmp_path))
        if str(added) not in now.backbone.calibration.files:
            assert now.settings["settings_key"] == before and now.key != int8.key
            break
        before = now.settings["settings_key"]
    else:
        pytest.fail("every added image ranked into a sample of 5")


def test_int8_is_refused_where_it_cannot_run(tmp_path, monkeypatch):
    with pytest.raises(BackboneError, match="runtime"):
        backbone(tmp_path, "tensorflow", precision="int8")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nncf" else real(name, *a))
    with pytest.raises(BackboneError, match=r"nncf.*featx\[openvino\]"):
        backbone(tmp_path, "openvino", precision="int8")
    monkeypatch.undo()
    # a backbone that read no dataset has no calibration: one line, no store key, no model
    from featx.features.plan import feature_settings

    lonely = backbone(tmp_path, "openvino", precision="int8")
    for act in (lambda: feature_settings(lonely), lambda: lonely.batched(4)):
        with pytest.raises(BackboneError, match="calibrated on a sample") as e:
            act()
        assert "\n" not in str(e.value)


# --- precision int8 on real photographs ----------------------------------------------------

INT8_SIZE, INT8_PER_CLASS, INT8_CALIBRATION = 96, 80, 100


@pytest.fixture
def quantisations(monkeypatch):
    """Every call of featx.features.runtime.quantize, counted (it still quantises)."""
    calls = []
    real = runtime.quantize

    def spy(model, batches):
        calls.append(sum(len(b) for b in batches))
        return real(model, batches)

    monkeypatch.setattr(runtime, "quantize", spy)
    return calls


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_int8_on_real_photographs(tmp_path, make_config, openvino, quantisations, capsys):
    """400 flowers5 photographs (80 a class), MobileNetV2 with the ImageNet weights at 96 px,
    batches of 16 (4 resume blocks): the int8 store is not float32's (neither is a cache hit
    for the other), a killed int8 extraction resumes with the model quantised before, the
    model is quantised once and read back after, a damaged one is made again, and rank-1
    (logistic regression, 3 splits) stays within 3 points of float32's."""
    from featx.core.layout import OPENVINO_DIR
    from featx.data.dataset import TRAIN, stratified_split
    from featx.features.extraction import extract
    from featx.learn.learners import fit
    from featx.store.cache import entries
    from featx.store.read import FeatureStore

    root = flowers5_subset(tmp_path / "flowers5", INT8_PER_CLASS)
    cache = tmp_path / "cache"
    common = {"weights": str(WEIGHTS), "input_size": INT8_SIZE}
    float32 = make_config(root, cache, backbone=common, extract={"batch_size": 16})
    int8 = make_config(root, cache, extract={"batch_size": 16},
                       backbone={**common, "runtime": "openvino", "precision": "int8",
                                 "calibration_images": INT8_CALIBRATION})

    plain = extract(float32, progress=False)
    assert not plain.cache_hit and plain.rows == 5 * INT8_PER_CLASS
    with pytest.MonkeyPatch.context() as patch:  # it undoes its patches: not the spy's
        saved = extract_killed_after_first_block(int8, patch)
    assert saved == [0] and quantisations == [112]  # 100 images in 7 full batches of 16
    resumed = extract(int8, progress=False)
    assert not resumed.cache_hit and resumed.key != plain.key and resumed.path != plain.path
    assert resumed.extracted == plain.rows - 16 * 8, "the int8 extraction did not resume"
    assert quantisations == [112], "quantised again although the cache holds the model"
    assert extract(float32, progress=False).cache_hit  # neither serves the other
    assert extract(int8, progress=False).cache_hit
    with FeatureStore(plain.path) as f, FeatureStore(resumed.path) as q:
        x, y, labels = f.features(), q.features(), f.labels
        assert q.attrs["precision"] == "int8" and q.paths == f.paths
        assert q.attrs["calibration"].startswith(f"{INT8_CALIBRATION} images, seed 42, ")
        calibration = q.attrs["calibration"]
    assert_pretrained(x)
    scale = np.abs(x).max()
    # int8, not float32 relabelled: its features differ, but not by much on the whole
    assert np.abs(y - x).max() > 1e-3 * scale and np.abs(y - x).mean() < 0.05 * scale
    [model] = [e for e in entries(cache) if e.kind == "openvino" and "int8" in e.backbone]
    assert model.backbone == "MobileNetV2-int8" and model.rows == 16 and model.complete
    # it records its calibration: featx predict finds a saved model's int8 model by it
    assert runtime.cached_int8_models(cache, "MobileNetV2") == [
        (cache / OPENVINO_DIR / model.path.name, 16, calibration)]

    # every row, before and after the kill, is the cached model's: recomputed now, equal
    from featx.data.images import ReadErrors, read_batches
    from featx.features.plan import plan

    p = plan(int8)
    forward = p.backbone.batched(16)
    files = [str(root / path) for path in p.dataset.paths]
    again = np.concatenate([forward(b, ok) for _, b, ok in
                            read_batches(files, INT8_SIZE, 16, ReadErrors())])
    assert_close(again, y, rtol=1e-4)
    assert quantisations == [112]

    # a damaged int8 model is quantised again (and the store made with it is unchanged)
    folder = cache / OPENVINO_DIR / model.path.name
    (folder / "model.bin").write_bytes(b"damaged")
    resumed.path.unlink()
    capsys.readouterr()
    remade = extract(int8, progress=False)
    assert quantisations == [112, 112] and "quantising again" in capsys.readouterr().err
    with FeatureStore(remade.path) as q:
        assert_close(q.features(), y, rtol=1e-4)

    rank1 = {"float32": [], "int8": []}
    for seed in (42, 43, 44):
        split = stratified_split(labels, 0.0, 0.25, seed) == TRAIN
        for name, features in (("float32", x), ("int8", y)):
            model = fit("logreg", features[split], labels[split], quick=True, seed=0).model
            rank1[name].append(float((model.predict(features[~split]) == labels[~split]).mean()))
    assert np.mean(rank1["float32"]) > 0.5, rank1  # real features: far above chance (0.2)
    assert abs(np.mean(rank1["int8"]) - np.mean(rank1["float32"])) <= 0.03, rank1
