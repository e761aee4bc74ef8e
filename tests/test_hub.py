"""KerasHub backbones (featx/features/hub.py), offline: tiny random-weight ViT, DINOv2,
DINOv3, CLIP, SigLIP and EfficientNet presets (2 blocks, width 32, 8-px patches, 32-px
images) are built once a session and saved with ``save_to_preset`` into a temporary folder;
featx reads them from there as a user reads a preset folder. Nothing is downloaded: where a
download would happen, kagglehub's is replaced by one that fails as it does offline.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    assert_close,
    extract_killed_after_first_block,
    featx_here,
    one_error_line,
    result_lines,
)

from featx.core.config import BackboneConfig
from featx.core.errors import BackboneError
from featx.features import hub
from featx.features.backbones import Backbone, get_spec

pytest.importorskip("keras_hub")

SIZE, PATCH, WIDTH, BLOCKS = 32, 8, 32, 2
GRID = SIZE // PATCH
PREFIX = {"vit": 1, "dinov2": 3, "dinov3": 5, "clip": 1, "siglip": 0}  # class + registers
TRANSFORMERS = list(PREFIX)


def _save(model, converter, folder: Path) -> Path:
    model.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="session")
def presets(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight presets, each a folder as save_to_preset writes it."""
    import keras
    from keras_hub import layers as L
    from keras_hub import models as M

    base = tmp_path_factory.mktemp("presets")
    small = {"num_layers": BLOCKS, "num_heads": 2, "hidden_dim": WIDTH}
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    imagenet = {"image_size": (SIZE, SIZE), "scale": list(1 / (255 * std)),
                "offset": list(-mean / std)}
    keras.utils.set_random_seed(1)
    out = {
        "vit": _save(M.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=PATCH, mlp_dim=64,
                                   **small),
                     L.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1),
                     base / "vit"),
        "dinov2": _save(M.DINOV2Backbone(patch_size=PATCH, intermediate_dim=64,
                                         image_shape=(SIZE, SIZE, 3), num_register_tokens=2,
                                         position_embedding_shape=(64, 64, 3), **small),
                        L.DINOV2ImageConverter(**imagenet), base / "dinov2"),
        "dinov3": _save(M.DINOV3Backbone(patch_size=PATCH, intermediate_dim=64,
                                         image_shape=(SIZE, SIZE, 3), **small),
                        L.DINOV3ImageConverter(**imagenet), base / "dinov3"),
    }
    towers = {"patch_size": PATCH, "intermediate_dim": 64, "image_shape": (SIZE, SIZE, 3),
              **small}
    text = {"vocabulary_size": 50, "embedding_dim": WIDTH, "hidden_dim": WIDTH, "num_layers": 1,
            "num_heads": 2, "intermediate_dim": 64, "max_sequence_length": 8}
    out["clip"] = _save(M.CLIPBackbone(M.CLIPVisionEncoder(**towers), M.CLIPTextEncoder(**text),
                                       projection_dim=16),
                        L.CLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 255),
                        base / "clip")
    out["siglip"] = _save(M.SigLIPBackbone(M.SigLIPVisionEncoder(**towers),
                                           M.SigLIPTextEncoder(**text)),
                          L.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5,
                                                 offset=-1),
                          base / "siglip")
    out["efficientnet"] = _save(
        M.EfficientNetBackbone(
            stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
            stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
            stackwise_expansion_ratios=[1, 2], stackwise_squeeze_and_excite_ratios=[0.0, 0.25],
            stackwise_strides=[1, 2], stackwise_block_types=["fused", "unfused"],
            width_coefficient=1.0, depth_coefficient=1.0),  # num_features: not saved
        L.EfficientNetImageConverter(**imagenet), base / "efficientnet")
    return out


def backbone(folder: Path, **settings) -> Backbone:
    return Backbone(BackboneConfig(name=f"hub:{folder}", **{"weights": "pretrained",
                                                            **settings}))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


def tokens_of(b: Backbone, images: np.ndarray, layer: str = "final") -> np.ndarray:
    """KerasHub's own tokens (its backbone, not featx's rebuilt tower) at ``layer``."""
    import keras

    hub_model = b.hub.hub_model
    x = np.asarray(b.preprocess(images))
    family = b.hub.files.family
    if layer != "final":  # only DINO's backbones expose each block: "stage<i>"
        model = keras.Model(hub_model.input, hub_model.pyramid_outputs["stage" + layer[5:]])
        return np.asarray(model(fed(model, x)))
    tower = hub_model.vision_encoder if family in ("CLIPBackbone", "SigLIPBackbone") \
        else hub_model
    if family == "SigLIPBackbone":  # its output is the pooled head: the tokens are before it
        model = keras.Model(tower.input, tower.post_layer_norm.output)
        return np.asarray(model(fed(model, x)))
    return np.asarray(tower(fed(tower, x)))


def fed(model, x: np.ndarray):
    """``x`` as ``model`` takes it: KerasHub's models name their input ({"images": x})."""
    return {name: x for name in model.input} if isinstance(model.input, dict) else x


# ---------------------------------------------------------------------------------- features

@pytest.mark.parametrize("family", TRANSFORMERS)
def test_tokens_and_poolings_are_keras_hubs(presets, images, family):
    """featx's tower gives KerasHub's tokens; cls is token 0, mean the patch tokens' mean
    (class and register tokens left out), cls+mean both, none the patch grid."""
    tokens = tokens_of(backbone(presets[family], pooling="none"), images)
    prefix = PREFIX[family]
    assert tokens.shape == (3, prefix + GRID * GRID, WIDTH)
    patches = tokens[:, prefix:]
    expected = {"mean": patches.mean(axis=1), "avg": patches.mean(axis=1),
                "max": patches.max(axis=1),
                "none": patches.reshape(3, GRID, GRID, WIDTH)}
    if family != "siglip":
        expected["cls"] = tokens[:, 0]
        expected["cls+mean"] = np.concatenate([tokens[:, 0], patches.mean(axis=1)], axis=1)
    for pooling, want in expected.items():
        b = backbone(presets[family], pooling=pooling)
        got = np.asarray(b.features(images))
        assert got.shape[1:] == b.feature_shape == want.shape[1:], pooling
        assert_close(got, want)


def test_siglip_cls_is_its_attention_pooling_head(presets, images):
    b = backbone(presets["siglip"], pooling="cls")
    tower = b.hub.hub_model.vision_encoder
    expected = tower(fed(tower, np.asarray(b.preprocess(images))))
    assert_close(np.asarray(b.features(images)), np.asarray(expected))
    with pytest.raises(BackboneError, match="no class token"):
        backbone(presets["siglip"], pooling="cls", layer="block1")


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_blocks_are_keras_hubs_block_outputs(presets, images, family):
    """``block<i>`` is the i-th block's output (KerasHub's ``stage<i>``), read pooled, and
    several blocks are joined in the order given, as ``layer_columns`` says."""
    b = backbone(presets[family], pooling="cls", layer="block2,block1")
    got = np.asarray(b.features(images))
    want = [tokens_of(b, images, name)[:, 0] for name in ("block2", "block1")]
    assert [c[0] for c in b.layer_columns()] == ["block2", "block1"]
    for (_, start, stop), w in zip(b.layer_columns(), want):
        assert_close(got[:, start:stop], w)
    assert not np.allclose(want[0], want[1])  # two different blocks were read


def test_preprocessing_is_the_image_converters_scale_and_offset(presets):
    """Less the resizing: featx's reader has resized already (32 -> 32 here)."""
    from keras_hub.layers import ImageConverter

    x = np.random.default_rng(4).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    for family in ("dinov2", "vit", "clip"):
        converter = ImageConverter.from_preset(str(presets[family]))
        ours = np.asarray(backbone(presets[family]).preprocess(x))
        np.testing.assert_allclose(ours, np.asarray(converter(x)), rtol=1e-5, atol=1e-5)
    scale = backbone(presets["dinov2"]).describe()["preprocess"]
    assert scale.startswith("x * [0.0171") and "+ [-2.11" in scale  # ImageNet's mean and std


def test_a_cnn_preset_reads_keras_layers_with_map_poolings(presets, images):
    from keras_hub.models import Backbone as KerasHubBackbone

    b = backbone(presets["efficientnet"], pooling="none")
    maps = np.asarray(b.features(images))
    assert maps.ndim == 4
    own = KerasHubBackbone.from_preset(str(presets["efficientnet"]))  # its default shape
    assert_close(maps, np.asarray(own(np.asarray(b.preprocess(images)))))
    assert_close(np.asarray(backbone(presets["efficientnet"], pooling="mean")
                            .features(images)), maps.mean(axis=(1, 2)))
    with pytest.raises(BackboneError, match="class token"):
        backbone(presets["efficientnet"], pooling="cls")
    ends = b.stage_ends()
    assert ends[-1] == b.base.layers[-1].name and len(ends) >= 2


def test_random_weights_are_seeded_from_the_presets_config(presets, images):
    def random(seed):
        return Backbone(BackboneConfig(name=f"hub:{presets['vit']}", weights="none"), seed=seed)

    a, a2, c = random(3), random(3), random(4)
    fa, fa2, fc = (np.asarray(b.features(images)) for b in (a, a2, c))
    np.testing.assert_array_equal(fa, fa2)
    assert not np.allclose(fa, fc)
    assert a.weights_id == "random:seed=3" != c.weights_id
    assert not np.allclose(fa, np.asarray(backbone(presets["vit"]).features(images)))


# ---------------------------------------------------------------------------------- settings

def test_sizes(presets, images):
    # DINOv2 interpolates its position embeddings: another multiple of the patch works
    b = backbone(presets["dinov2"], pooling="none", input_size=48)
    x = np.random.default_rng(1).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    assert np.asarray(b.features(x)).shape == (2, 6, 6, WIDTH)
    assert backbone(presets["vit"]).input_size == SIZE  # the converter's size
    with pytest.raises(BackboneError, match="reads 32 px only"):
        backbone(presets["vit"], input_size=48)
    with pytest.raises(BackboneError, match="multiple of 8"):
        backbone(presets["dinov2"], input_size=44)


@pytest.mark.parametrize("layer, message", [
    ("block3", "block1 ... block2 and final"), ("3", "block1 ... block2 and final"),
    ("block0", "block1 ... block2 and final")])
def test_a_transformer_layer_is_blockN_or_final(presets, layer, message):
    with pytest.raises(BackboneError, match=message):
        backbone(presets["vit"], layer=layer)


def test_names_and_folders_that_are_not_presets(presets, tmp_path):
    with pytest.raises(BackboneError, match="unknown KerasHub preset 'dinov9_tiny'"):
        get_spec("hub:dinov9_tiny")
    with pytest.raises(BackboneError, match="folder not found"):
        backbone(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        backbone(tmp_path / "empty")
    bare = tmp_path / "bare"
    shutil.copytree(presets["vit"], bare)
    (bare / "image_converter.json").unlink()
    with pytest.raises(BackboneError, match="no image_converter.json"):
        backbone(bare)
    with pytest.raises(BackboneError, match="holds a DINOV2Backbone preset, not "
                                            "vit_base_patch16_224_imagenet"):
        Backbone(BackboneConfig(name="hub:vit_base_patch16_224_imagenet",
                                weights=str(presets["dinov2"])))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty KerasHub cache, and kagglehub's download failing as it does offline."""
    import kagglehub

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    calls = []

    def no_network(handle, *args, **kwargs):
        calls.append(handle)
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", no_network)
    return calls


def test_a_preset_not_here_offline_is_one_line_saying_how_to_give_a_folder(offline):
    with pytest.raises(BackboneError) as e:
        Backbone(BackboneConfig(name="hub:dinov2_small"))
    message = str(e.value)
    assert "\n" not in message and "Failed to resolve" in message
    assert "hub:/path/to/dinov2_small" in message
    assert offline == ["keras/dinov2/keras/dinov2_small/1"]
    with pytest.raises(BackboneError, match="needs the preset's config"):
        Backbone(BackboneConfig(name="hub:dinov2_small", weights="none"))
    assert len(offline) == 1  # random weights never download


def test_a_preset_in_keras_hubs_cache_is_read_offline(offline, presets, tmp_path, images):
    """KerasHub's download of a preset, where it keeps it: used without a network call."""
    cached = tmp_path / "kagglehub" / "models" / "keras" / "dinov2" / "keras" / "dinov2_small"
    shutil.copytree(presets["dinov2"], cached / "1")
    b = Backbone(BackboneConfig(name="hub:dinov2_small", pooling="cls"))
    assert b.spec.name == "hub:dinov2_small" and b.hub.files.folder == cached / "1"
    assert b.weights_id == backbone(presets["dinov2"]).weights_id  # the same files
    assert offline == []
    rows = {r.name: r for r in hub.listing()}
    assert (rows["hub:dinov2_small"].input_size, rows["hub:dinov2_small"].width) == ("32", "32")
    assert rows["hub:dinov2_base"].input_size == "?"


# ---------------------------------------------------------------------------------- store keys

def test_the_key_covers_config_and_weight_files(presets, tmp_path):
    import keras

    vit = backbone(presets["vit"])
    copy = tmp_path / "elsewhere" / "vit"  # a copy of the folder, under its name
    shutil.copytree(presets["vit"], copy)
    meta = json.loads((copy / "metadata.json").read_text())
    (copy / "metadata.json").write_text(json.dumps({**meta, "date_saved": "another day"}))
    assert backbone(copy).describe() == vit.describe()  # the same numbers: the same store

    other = tmp_path / "reseeded"
    shutil.copytree(presets["vit"], other)
    keras.utils.set_random_seed(99)
    hub_model = backbone(other, weights="none").hub.hub_model  # same config, other weights
    hub_model.save_weights(str(other / "model.weights.h5"))
    assert backbone(other).weights_id != vit.weights_id

    bigger = tmp_path / "bigger"
    shutil.copytree(presets["vit"], bigger)
    config = json.loads((bigger / "config.json").read_text())
    config["config"]["layer_norm_epsilon"] = 1e-3  # same weights, another model
    (bigger / "config.json").write_text(json.dumps(config))
    assert backbone(bigger).describe()["config"] != vit.describe()["config"]
    assert backbone(bigger).weights_id != vit.weights_id

    described = {backbone(presets[f]).describe()["weights_id"] for f in TRANSFORMERS}
    assert len(described) == len(TRANSFORMERS)


# ---------------------------------------------------------------------------------- featx

@pytest.fixture(scope="module")
def colours(tmp_path_factory, image_folder) -> Path:
    """3 classes, one dominant colour each, 20 images a class (various formats and sizes)."""
    root = tmp_path_factory.mktemp("hub-colours") / "colours"
    image_folder(root, per_class=20, junk=False)
    return root


def hub_args(root: Path, cache: Path, folder: Path, *more: str) -> list[str]:
    return ["--data", str(root), "--cache-dir", str(cache), "--backbone", f"hub:{folder}",
            "--batch-size", "16", "--no-progress", *more]


@pytest.mark.slow
def test_extract_classify_sweep_from_a_local_preset(presets, colours, tmp_path):
    """The command line from a preset folder; the colours are learned (rank-1 well above
    chance 1/3) from the mean of the first block's patch tokens of a random tiny ViT."""
    cache = tmp_path / "cache"
    # a random ViT's features are alike whatever the image (cosine >= 0.95 joins 49 of the
    # 60 into one near-duplicate group): the split is kept ungrouped for this signal test
    args = hub_args(colours, cache, presets["vit"], "--layer", "block1", "--pooling", "mean",
                    "--set", "dataset.group_duplicates=false")
    done = featx_here("extract", *args)
    assert done.returncode == 0, done.stderr
    (store,) = cache.glob("*.h5")
    assert "-hub_vit-mean-" in store.name  # a plain file name (no ":")
    done = featx_here("classify", *args, "--classifiers", "logreg", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    (saved,) = (tmp_path / "o").glob("*/*-logreg.json")
    result = json.loads(saved.read_text())
    assert result["rank1"] >= 0.9, result["rank1"]
    # the saved model rebuilds the backbone from the preset folder it names, and predicts
    image = sorted((colours / "cat").iterdir())[0]
    done = featx_here("predict", str(saved.with_suffix(".skops")), str(image))
    assert done.returncode == 0, done.stderr
    assert image.name in done.stdout and "cat" in done.stdout
    # and explains it: an occlusion map, and a CAM of the block's patch tokens as their grid
    # (the mean of the tokens is an average pooling of that map)
    done = featx_here("explain", str(saved.with_suffix(".skops")), str(image), "--out",
                      str(tmp_path / "explain"))
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "explain").glob("*.png"))) == 1
    page = (tmp_path / "explain" / "index.html").read_text()
    assert "occlusion" in page and "CAM (exact" in page
    assert featx_here("extract", *args).stdout.count("cache hit") == 1

    with result_lines() as lines:
        done = featx_here("sweep", *hub_args(colours, cache, presets["vit"], "--pooling",
                                             "cls+mean", "--classifiers", "logreg"))
    assert done.returncode == 0, done.stderr
    table = "\n".join(lines)
    for name in ("block1", "block2", "final"):
        assert name in table
    sweep_json = json.loads(next(cache.glob("*.sweep/sweep.json")).read_text())
    assert {s["layer"] for s in sweep_json["layers"]} == {"block1", "block2", "final"}
    assert all(s["features"] == 2 * WIDTH for s in sweep_json["layers"])


@pytest.mark.slow
def test_resume_and_update_of_a_hub_store(presets, colours, tmp_path, make_config, monkeypatch,
                                          image_file):
    from featx.features.extraction import extract
    from featx.store.read import FeatureStore

    root = tmp_path / "data"
    shutil.copytree(colours, root)
    config = make_config(root, tmp_path / "cache", extract={"batch_size": 2},  # small blocks
                         backbone={"name": f"hub:{presets['clip']}", "weights": "pretrained",
                                   "pooling": "cls", "input_size": 0})
    extract_killed_after_first_block(config, monkeypatch)
    resumed = extract(config, progress=False)
    assert 0 < resumed.extracted < 60 and resumed.extracted + resumed.reused == 60
    with FeatureStore(resumed.path) as s:
        first = dict(zip(s.paths, s.features()))
    image_file(root / "cat" / "new.png", colour=(40, 170, 60), seed=9)
    updated = extract(config, progress=False)
    assert (updated.extracted, updated.reused) == (1, 60)
    b = Backbone(config.backbone)
    with FeatureStore(updated.path) as s:
        rows = dict(zip(s.paths, s.features()))
    for path, row in first.items():
        np.testing.assert_array_equal(rows[path], row)
    from featx.data.images import load_image

    pixels = load_image(root / "cat" / "new.png", b.input_size, b.resize)[None]
    assert_close(rows["cat/new.png"], np.asarray(b.features(pixels))[0])


@pytest.mark.slow
def test_feature_extractor_with_a_hub_backbone(presets, colours, tmp_path):
    from featx import FeatureExtractor

    paths = sorted(str(p) for p in colours.rglob("*.png"))[:6]
    fx = FeatureExtractor(backbone=f"hub:{presets['dinov2']}", weights="pretrained",
                          pooling="cls+mean", cache_dir=str(tmp_path / "c"), progress=False)
    got = fx.fit_transform(paths)
    assert got.shape == (6, 2 * WIDTH) and fx.n_features_out_ == 2 * WIDTH
    again = FeatureExtractor(**fx.get_params()).fit_transform(paths)  # from its cache
    np.testing.assert_array_equal(got, again)


def test_layers_and_backbones_list_hub_backbones(presets):
    done = featx_here("layers", f"hub:{presets['dinov2']}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    tokens = (PREFIX["dinov2"] + GRID * GRID, WIDTH)
    assert [line.split()[0] for line in lines] == ["block1", "block2", "final"]
    assert all(str(tokens) in line for line in lines)
    assert lines[-1].endswith("stage end") and lines[1].endswith("stage end")
    listed = featx_here("backbones").stdout
    for preset in ("dinov2_small", "dinov3_vit_small_lvd1689m", "vit_base_patch16_224_imagenet",
                   "clip_vit_base_patch16", "siglip_base_patch16_224",
                   "efficientnet2_rw_s_ra2_imagenet"):
        assert f"hub:{preset} " in listed
    assert "MobileNetV2" in listed


def test_stage_ends_of_a_deep_transformer_are_about_twelve_blocks(presets, tmp_path):
    deep = tmp_path / "deep"
    shutil.copytree(presets["vit"], deep)
    config = json.loads((deep / "config.json").read_text())
    config["config"]["num_layers"] = 24
    (deep / "config.json").write_text(json.dumps(config))
    ends = backbone(deep, weights="none").stage_ends()  # nothing is built for this
    assert ends == [f"block{i}" for i in range(2, 25, 2)] + ["final"]


def test_errors_on_the_command_line_are_one_line(presets, colours, tmp_path):
    done = featx_here("extract", *hub_args(colours, tmp_path, presets["vit"], "--layer",
                                           "block7"))
    assert done.returncode != 0
    assert "block7" in one_error_line(done.stderr)
    done = featx_here("extract", *hub_args(colours, tmp_path, presets["vit"], "--pooling",
                                           "cls", "--input-size", "64"))
    assert "reads 32 px only" in one_error_line(done.stderr)
    assert not list(tmp_path.glob("*.h5"))


# ---------------------------------------------------------------------------------- runtimes

@pytest.mark.slow
def test_openvino_runs_a_tiny_vit(presets, images, tmp_path, caplog):
    """Every tiny family converts here (ViT, DINOv2/v3, CLIP, SigLIP); the ViT is checked."""
    pytest.importorskip("openvino")
    config = BackboneConfig(name=f"hub:{presets['vit']}", weights="pretrained",
                            pooling="cls+mean", runtime="openvino")
    b = Backbone(config, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="featx"):
        got = b.batched(4)(images, np.ones(len(images), bool))
    assert b.runtime == "openvino" and list((tmp_path / "openvino").iterdir())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    reference = np.asarray(backbone(presets["vit"], pooling="cls+mean").features(images))
    assert_close(got, reference, rtol=1e-4)


def test_a_model_openvino_cannot_convert_runs_on_tensorflow_after_one_line(
        presets, images, tmp_path, caplog, monkeypatch):
    """A converter that fails on an op, as OpenVINO's does on one it does not know."""
    pytest.importorskip("openvino")
    from featx.features import runtime

    class OpConversionFailure(Exception):
        pass

    def fails(function):
        raise OpConversionFailure("No translator found for XlaCustomOp node.")

    monkeypatch.setattr(runtime, "convert", fails)
    b = Backbone(BackboneConfig(name=f"hub:{presets['clip']}", weights="pretrained",
                                pooling="mean", runtime="openvino"), cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="featx"):
        got = b.batched(4)(images, np.ones(len(images), bool))
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "hub:clip" in warned[0] and "TensorFlow" in warned[0], warned
    assert b.runtime == "tensorflow"
    assert_close(got, np.asarray(backbone(presets["clip"], pooling="mean").features(images)))


def test_a_cache_hit_imports_neither_tensorflow_nor_keras_hub(presets, colours, tmp_path):
    """As for keras.applications (tests/test_cli.py): a hit reads JSON and hashes files."""
    cache = tmp_path / "cache"
    args = ["extract", *hub_args(colours, cache, presets["siglip"], "--pooling", "max")]
    assert featx_here(*args).returncode == 0
    probe = ("import sys\nfrom featx.cli import main\ncode = main(sys.argv[1:])\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'tensorflow', 'keras', 'keras_hub', 'kagglehub'}))\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cache hit" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.slow
def test_finetune_a_hub_transformer(presets, colours, tmp_path):
    """`featx finetune` trains a new head on a KerasHub backbone, then its top blocks: the
    same command as for keras.applications, from a preset folder (avg pooling: the mean of
    the patch tokens, as a map)."""
    tiny = {"warmup_epochs": 1, "warmup_lr": 1e-2, "epochs": 1, "unfreeze": 4, "lr": 1e-3,
            "batch_size": 8, "patience": 5, "augment": False, "holdout": 0.15, "seed": 0}
    done = featx_here("finetune", *hub_args(colours, tmp_path / "cache", presets["vit"],
                                            "--pooling", "avg"),
                      *[f"--set=finetune.{k}={json.dumps(v)}" for k, v in tiny.items()])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("finetune") and "rank-1" in done.stdout


# ---------------------------------------------------------------------------------- export-model

POOLING = {"efficientnet": "avg"}  # the transformers: mean, of the final patch tokens
# What export-model refuses, by (family, format): a .keras file of featx's SigLIP tower does
# not load again (keras_hub 0.32: the token count of its embedding layer is fixed on the
# instance in featx.features.hub, which a file cannot carry).
REFUSED = {("siglip", "keras")}


@pytest.fixture(scope="module")
def hub_model(presets, colours, tmp_path_factory):
    """``hub_model(family)``: a logistic regression on that tiny preset's features of the
    colours, saved by featx classify (made on first use, once a module)."""
    out = tmp_path_factory.mktemp("hub-models")
    made: dict[str, Path] = {}

    def model(family: str) -> Path:
        if family not in made:
            args = hub_args(colours, out / "cache", presets[family], "--pooling",
                            POOLING.get(family, "mean"))
            assert featx_here("extract", *args).returncode == 0
            # random tiny networks may see two colours' images as near copies (one side of
            # the split): the model is what is tested here, not its rank-1
            done = featx_here("classify", *args, "--classifiers", "logreg", "--set",
                              "dataset.allow_missing_test=true", "--out", str(out / family))
            assert done.returncode == 0, done.stderr
            (made[family],) = (out / family).glob("*/*-logreg.skops")
        return made[family]

    return model


def featx_predicts(model: Path, colours: Path) -> tuple[np.ndarray, np.ndarray]:
    """Four of the colours as featx reads them (N, 32, 32, 3) and featx predict's scores."""
    from featx.learn import deploy
    from featx.learn.predict import Predictor

    predictor = Predictor.load(model)
    paths = [str(sorted((colours / c).glob("*.png"))[i]) for c in ("cat", "dog", "fox")
             for i in (0, 1)][:4]
    scores = predictor.predict_proba(predictor.features(paths)[0])
    pixels, errors = deploy._read(paths, SIZE, predictor.backbone.resize)
    assert not errors
    return pixels, scores


@pytest.mark.slow
@pytest.mark.parametrize("family", list(PREFIX) + ["efficientnet"])
def test_a_hub_model_exports_to_every_format_that_loads_again(hub_model, colours, family,
                                                               tmp_path):
    """Each format loaded back in its own runtime (Keras, TensorFlow's SavedModel loader,
    onnxruntime, OpenVINO, the LiteRT interpreter) gives featx predict's scores; a format a
    family cannot be written in is refused in one line that names the formats that work,
    and nothing is written."""
    from featx.learn import deploy

    model = hub_model(family)
    pixels, want = featx_predicts(model, colours)
    for fmt, suffix in deploy.FORMATS.items():
        out = tmp_path / fmt / (f"model{suffix}" if suffix else "savedmodel")
        done = featx_here("export-model", model, "--format", fmt, "--out", out)
        if (family, fmt) in REFUSED:  # after the progress lines, one error line
            assert done.returncode == 2 and "Traceback" not in done.stderr
            line = done.stderr.splitlines()[-1]
            assert [e for e in done.stderr.splitlines() if "error" in e] == [line]
            assert line.startswith(f"featx: error: {model}: ")
            assert f"(hub:{family}, SigLIP) does not load again" in line
            assert line.endswith("export it as savedmodel, onnx, openvino or litert")
            assert not out.exists() and not list(out.parent.iterdir())
            continue
        assert done.returncode == 0, f"{fmt}: {done.stderr[-2000:]}"
        got = deploy.runner(out, fmt)(pixels)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
        assert deploy.read_metadata(out, fmt)["backbone"]["backbone"] == f"hub:{family}"


@pytest.mark.slow
def test_int8_exports_of_a_hub_model(hub_model, colours, tmp_path):
    """LiteRT and OpenVINO int8, calibrated on the store's training images, run and keep the
    tiny ViT's top-1 on the four images."""
    from featx.learn import deploy

    model = hub_model("vit")
    pixels, want = featx_predicts(model, colours)
    for fmt in deploy.INT8_FORMATS:
        out = tmp_path / f"model{deploy.FORMATS[fmt]}"
        done = deploy.export_model(model, fmt, out, int8=True)
        assert done.metadata["int8_method"] == deploy.INT8_METHOD[fmt]
        got = deploy.runner(out, fmt)(pixels)
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all(), fmt


# ---------------------------------------------------------------------------------- explain

@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "dinov2", "siglip", "efficientnet"])
def test_a_cam_of_a_hub_backbone_is_drawn_on_its_spatial_map(hub_model, colours, family):
    """A transformer's mean-pooled patch tokens are an average pooling of the tokens laid out
    as their grid (class and register tokens left out), a CNN's avg pooling one of its last
    map: the linear model's CAM is exact on that map, and it is each image's own."""
    from featx.inspect.explain import EXACT, explain_image, spatial_model
    from featx.learn.predict import Predictor

    predictor = Predictor.load(hub_model(family))
    spatial = spatial_model(predictor.backbone)
    assert spatial is not None
    grid = tuple(spatial.output.shape[1:3])
    if family in PREFIX:
        assert tuple(spatial.output.shape[1:]) == (GRID, GRID, WIDTH)
    else:  # the CNN's last map: the image at its total stride
        assert grid == tuple(predictor.backbone.base.output.shape[1:3]) and grid[0] > 1
    a, b = (sorted((colours / c).glob("*.png"))[0] for c in ("cat", "fox"))
    maps = []
    for image in (a, b):
        r = explain_image(predictor, str(image), top=2)
        assert r.cam_method == EXACT
        cam = r.cams[r.predicted]
        assert cam.shape == (SIZE, SIZE) and np.isfinite(cam).all() and cam.max() > 0
        maps.append(cam / cam.max())
    assert not np.allclose(*maps, atol=1e-3)

