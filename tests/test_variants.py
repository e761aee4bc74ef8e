"""Layer choice, augmented training features and 10-crop over-sampling
(featx/features/variants.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers import assert_close, result_lines
from PIL import Image

from featx.core.config import BackboneConfig, Config, ConfigError
from featx.core.errors import StoreError
from featx.data.dataset import TEST, TRAIN, VAL
from featx.data.images import (
    READ_POLICY,
    ReadErrors,
    Views,
    crop_load_size,
    read_batches,
    ten_crops,
)
from featx.features.backbones import Backbone, BackboneError, list_layers
from featx.features.extraction import extract
from featx.features.plan import feature_settings, plan
from featx.learn import learners
from featx.learn.classification import classify, load_splits
from featx.store.keys import store_key
from featx.store.read import FeatureStore

LOW = "block_13_expand_relu"  # a MobileNetV2 layer well below the last (576 channels)


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    """Clearly different (random-weight features are tiny: compare relative to their scale)."""
    return bool(np.abs(a - b).max() > 1e-3 * np.abs(a).max())


def tiny_backbone(layer: str = "", pooling: str = "avg") -> Backbone:
    return Backbone(BackboneConfig(weights="none", input_size=32, layer=layer, pooling=pooling))


# --- 1. layers ---------------------------------------------------------------------------

def test_list_layers_gives_readable_layers_with_shapes():
    layers = list_layers("MobileNetV2", input_size=32)
    names = [n for n, _ in layers]
    shapes = dict(layers)
    assert len(names) == len(set(names)) > 100
    # Keras numbers the input layer's name by how many models the process built before.
    assert names[0].startswith("input_layer") and shapes[names[0]] == (32, 32, 3)
    assert shapes[LOW] == (2, 2, 576)
    assert names[-1] == "out_relu" and shapes["out_relu"] == (1, 1, 1280)


def test_several_layers_are_pooled_and_concatenated_in_order():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    low = tiny_backbone(LOW)
    last = tiny_backbone("out_relu")
    both = tiny_backbone(f"{LOW}, out_relu")
    assert low.feature_shape == (576,) and both.feature_shape == (576 + 1280,)
    assert tiny_backbone(f"out_relu,{LOW}", "max").feature_shape == (1280 + 576,)
    assert tiny_backbone(f"{LOW},out_relu", "flatten").feature_shape == (2 * 2 * 576 + 1280,)
    # Same seed, same random weights: the joined features are the single-layer ones side by side.
    joined = both.features(images).numpy()
    assert_close(joined[:, :576], low.features(images).numpy(), rtol=1e-5)
    assert_close(joined[:, 576:], last.features(images).numpy(), rtol=1e-5)


def test_layer_errors_are_clear():
    with pytest.raises(BackboneError, match="no layer 'block_99_nope'"):
        tiny_backbone(f"{LOW},block_99_nope").model  # noqa: B018
    with pytest.raises(BackboneError, match="pooling \"none\""):
        tiny_backbone(f"{LOW},out_relu", "none")
    with pytest.raises(BackboneError, match="more than once"):
        tiny_backbone(f"{LOW},{LOW}")


def test_layer_setting_takes_a_list_and_single_layer_keys_are_unchanged(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text(f'[backbone]\nlayer = ["{LOW}", "out_relu"]\n')
    assert Config.load(toml).backbone.layer == f"{LOW},out_relu"
    assert Config.load(None, [f'backbone.layer=["{LOW}", "out_relu"]']).backbone.layer \
        == f"{LOW},out_relu"
    several = feature_settings(tiny_backbone(f"{LOW} , out_relu"))
    assert several["layer"] == f"{LOW},out_relu"
    for layer in ("", LOW):
        b = tiny_backbone(layer)
        # What the settings were before several layers existed: the key must not move.
        before = {"backbone": "MobileNetV2", "weights": "none", "weights_id": b.weights_id,
                  "layer": layer or "(last conv)", "pooling": "avg", "input_size": 32,
                  "preprocess": "tf", "resize": f"{READ_POLICY}-squash", "dtype": "float32",
                  "variant": "single"}
        assert store_key(feature_settings(b)) == store_key(before)
    assert store_key(several) != store_key(feature_settings(tiny_backbone(LOW)))


# --- 3. 10-crop geometry ------------------------------------------------------------------

QUADRANTS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 0)}


def quadrant_image(side: int) -> np.ndarray:
    half = side // 2
    image = np.zeros((side, side, 3), np.uint8)
    image[:half, :half] = QUADRANTS["tl"]
    image[:half, half:] = QUADRANTS["tr"]
    image[half:, :half] = QUADRANTS["bl"]
    image[half:, half:] = QUADRANTS["br"]
    return image


def colour_share(crop: np.ndarray, colour) -> float:
    return float(np.all(crop == colour, axis=-1).mean())


def check_ten_crops(crops: np.ndarray, size: int) -> None:
    assert crops.shape == (10, size, size, 3)
    for k, corner in enumerate(("tl", "tr", "bl", "br")):
        # A corner crop holds more of its own quadrant than of any other, and its own corner
        # pixel is that colour.
        shares = {name: colour_share(crops[k], colour) for name, colour in QUADRANTS.items()}
        assert max(shares, key=shares.get) == corner
        row = 0 if corner[0] == "t" else -1
        col = 0 if corner[1] == "l" else -1
        assert tuple(crops[k, row, col]) == QUADRANTS[corner]
    centre = crops[4]
    for colour in QUADRANTS.values():  # the centre crop holds the four quadrants equally
        assert colour_share(centre, colour) == pytest.approx(0.25, abs=0.1)
    for k in range(5):  # the flips are the mirrors of the first five, in the same order
        np.testing.assert_array_equal(crops[5 + k], crops[k][:, ::-1])
    # The mirrored top-left crop has its red on the right.
    assert tuple(crops[5, 0, -1]) == QUADRANTS["tl"] and tuple(crops[5, 0, 0]) != QUADRANTS["tl"]


def test_ten_crops_geometry_on_a_hand_made_image():
    image = quadrant_image(20)
    crops = ten_crops(image, 12)
    check_ten_crops(crops, 12)
    np.testing.assert_array_equal(crops[0], image[:12, :12])
    np.testing.assert_array_equal(crops[3], image[8:, 8:])
    np.testing.assert_array_equal(crops[4], image[4:16, 4:16])
    with pytest.raises(ValueError, match="smaller"):
        ten_crops(image, 21)


def test_ten_crop_reader_reads_the_file_at_256_224_and_crops_it(tmp_path):
    size = 32
    side = crop_load_size(size)
    assert side == round(32 * 256 / 224)
    path = tmp_path / "quadrants.png"
    Image.fromarray(quadrant_image(side)).save(path)
    views = Views(count=10, load_size=side, crop=lambda im: ten_crops(im, size))
    batches = list(read_batches([str(path), str(tmp_path / "missing.png")], size, 8,
                                ReadErrors(), views=views))
    images = np.concatenate([b[1] for b in batches])
    ok = np.concatenate([b[2] for b in batches])
    assert images.shape == (20, size, size, 3)
    assert ok[:10].all() and not ok[10:].any()  # an unreadable file: 10 rows, none ok
    check_ten_crops(images[:10], size)


# --- 2. augmentation ----------------------------------------------------------------------

def test_augmenter_is_reproducible_per_seed():
    from featx.data.augment import Augmenter

    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    aug = Augmenter(3)
    a = aug.views(image, np.int64(7)).numpy()
    b = Augmenter(3).views(image, np.int64(7)).numpy()
    c = aug.views(image, np.int64(8)).numpy()
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], image)


@pytest.fixture(scope="module")
def variant_cache(tiny_root, make_config, tmp_path_factory):
    """Plain, augmented (K=2) and 10-crop (kept) stores of the tiny folders, with a
    validation split, extracted once for the module."""
    root, _ = tiny_root
    cache = tmp_path_factory.mktemp("variants")
    config = make_config(root, cache, dataset={"val": 0.2},
                         extract={"augment": 2, "augment_seed": 3, "tencrop": "keep"})
    results = {v: extract(config, progress=False, variant=v)
               for v in ("plain", "augmented", "tencrop")}
    return config, results


def test_a_variant_store_names_its_duplicate_files_by_their_own_rows(tmp_path, image_folder,
                                                                     make_config):
    """10 rows an image: the duplicate pair read back from the 10-crop store is the same pair
    of files as the plain store's, on extraction and on a cache hit."""
    import shutil

    root = tmp_path / "data"
    written = image_folder(root, junk=False)
    shutil.copy(root / written["dog"][2], root / "fox" / "zz-copy.png")
    config = make_config(root, tmp_path / "cache", extract={"tencrop": "keep"})
    plain = extract(config, progress=False)
    crops = extract(config, progress=False, variant="tencrop")
    expected = [("fox/zz-copy.png", written["dog"][2])]
    assert plain.duplicates == expected and crops.duplicates == expected
    assert crops.rows == 10 * plain.rows
    again = extract(config, progress=False, variant="tencrop")
    assert again.cache_hit and again.duplicates == expected
    with FeatureStore(crops.path) as store:
        assert store.duplicates == expected


def test_one_augmentation_pass_gives_one_row_an_image(tiny_root, make_config, tmp_path):
    """extract.augment = 1: one augmented view a training image (it crashed: the view kept its
    pass axis, (batch, 1, S, S, 3) into the backbone)."""
    root, _ = tiny_root
    config = make_config(root, tmp_path / "cache", extract={"augment": 1, "augment_seed": 3})
    result = extract(config, progress=False, variant="augmented")
    with h5py.File(result.path) as f:
        assert (f["split"][:] == TRAIN).all()
        assert result.rows == len(f["paths"]) == int((f["split"][:] == TRAIN).sum()) > 0
        assert np.isfinite(f["features"][:]).all()


def test_augmented_store_holds_training_images_only(variant_cache):
    config, results = variant_cache
    with FeatureStore(results["plain"].path) as plain:
        split, paths = plain.split, plain.paths
    train = [p for p, s in zip(paths, split) if s == TRAIN]
    assert (split == VAL).any() and (split == TEST).any()
    with h5py.File(results["augmented"].path) as f:
        rows_paths = [p.decode() for p in f["paths"][:]]
        assert rows_paths == [p for p in train for _ in range(2)]
        np.testing.assert_array_equal(f["view"][:], np.tile([0, 1], len(train)))
        assert (f["split"][:] == TRAIN).all()
        features = f["features"][:]
    assert results["augmented"].rows == 2 * len(train)
    assert differs(features[0], features[1])  # two passes, two views


def test_augmented_features_repeat_with_the_seed_and_change_with_another(
        variant_cache, tmp_path):
    config, results = variant_cache
    with h5py.File(results["augmented"].path) as f:
        first = f["features"][:]
    again = Config.from_dict(config.to_dict())
    again.cache_dir = str(tmp_path / "again")
    rerun = extract(again, progress=False, variant="augmented")
    assert not rerun.cache_hit and rerun.key == results["augmented"].key
    with h5py.File(rerun.path) as f:
        np.testing.assert_array_equal(f["features"][:], first)
    other = Config.from_dict(config.to_dict())
    other.cache_dir = str(tmp_path / "other")
    other.extract.augment_seed = 4
    changed = extract(other, progress=False, variant="augmented")
    assert changed.path.name != rerun.path.name
    with h5py.File(changed.path) as f:
        assert differs(f["features"][:], first)


def test_augmented_store_updates_incrementally_with_the_same_views(
        image_folder, image_file, make_config, tmp_path):
    root = tmp_path / "data"
    image_folder(root, per_class=4, junk=False)
    config = make_config(root, tmp_path / "cache", dataset={"test": 0.25},
                         extract={"augment": 2})
    first = extract(config, progress=False, variant="augmented")
    with FeatureStore(first.path) as store:
        before = dict(zip(zip(store.paths, store.file["view"][:]), store.features()))
    image_file(root / "cat" / "cat_new.png", colour=(40, 170, 60), seed=999)
    second = extract(config, progress=False, variant="augmented")
    assert second.key != first.key and 0 < second.extracted < second.rows
    with FeatureStore(second.path) as store:
        after = dict(zip(zip(store.paths, store.file["view"][:]), store.features()))
    kept = set(before) & set(after)
    assert len(kept) == second.rows - second.extracted > 0
    for row in kept:  # an image keeps its views whatever else is in the dataset
        np.testing.assert_array_equal(after[row], before[row])


def test_variant_stores_have_their_own_keys_and_leave_the_plain_store_alone(variant_cache):
    config, results = variant_cache
    paths = {r.path for r in results.values()}
    keys = {r.key for r in results.values()}
    assert len(paths) == 3 and len(keys) == 3
    settings = {v: plan(config, v).settings for v in results}
    assert len({s["settings_key"] for s in settings.values()}) == 3
    assert settings["augmented"]["passes"] == 2 and settings["augmented"]["augment_seed"] == 3
    assert settings["augmented"]["augment"]["rotation"] == config.extract.augment_rotation
    assert settings["tencrop"]["tencrop"] == "keep"
    # The plain store is what a config without variants extracts: a cache hit, same rows.
    plain_only = Config.from_dict(config.to_dict())
    plain_only.extract.augment, plain_only.extract.tencrop = 0, "off"
    again = extract(plain_only, progress=False)
    assert again.cache_hit and again.path == results["plain"].path
    with FeatureStore(again.path) as store:
        assert len(store) == results["plain"].rows
        assert "view" not in store.file
    # Extracting a variant again is a cache hit too.
    assert extract(config, progress=False, variant="augmented").cache_hit


def test_tencrop_kept_rows_average_to_the_mean_store(variant_cache, tmp_path):
    config, results = variant_cache
    with h5py.File(results["tencrop"].path) as f:
        kept = f["features"][:]
        np.testing.assert_array_equal(f["view"][:20], np.tile(np.arange(10), 2))
    mean_config = Config.from_dict(config.to_dict())
    mean_config.extract.tencrop = "mean"
    mean = extract(mean_config, progress=False, variant="tencrop")
    assert mean.path != results["tencrop"].path
    with h5py.File(mean.path) as f:
        averaged = f["features"][:]
        assert "view" not in f
    assert averaged.shape[0] * 10 == kept.shape[0] == results["tencrop"].rows
    assert_close(averaged, kept.reshape(-1, 10, kept.shape[1]).mean(1))


def test_load_splits_takes_train_and_test_rows_from_the_variants(variant_cache):
    config, results = variant_cache
    store = results["plain"].path
    plain = load_splits(config, store)
    both = Config.from_dict(config.to_dict())
    both.classify.train_features, both.classify.test_features = "augmented", "tencrop"
    data = load_splits(both, store)
    n_train = len(plain.y[TRAIN])
    # Training: the plain rows, then two augmented passes of each.
    assert len(data.y[TRAIN]) == 3 * n_train
    np.testing.assert_array_equal(data.x[TRAIN][:n_train], plain.x[TRAIN])
    np.testing.assert_array_equal(data.y[TRAIN][n_train:], np.repeat(plain.y[TRAIN], 2))
    # Validation and test: one row per image (mean of its crops), never augmented.
    for s in (VAL, TEST):
        assert data.paths[s] == plain.paths[s]
        np.testing.assert_array_equal(data.y[s], plain.y[s])
        assert differs(data.x[s], plain.x[s])
    with h5py.File(results["tencrop"].path) as f:
        kept = f["features"][:]
        rows = [i for i, p in enumerate(f["paths"][:]) if p.decode() == plain.paths[TEST][0]]
    assert_close(data.x[TEST][0], kept[rows].mean(0))
    # Augmented validation rows are not a thing.
    both.classify.test_features = "augmented"
    with pytest.raises(ConfigError, match="test_features"):
        load_splits(both, store)


def test_classify_with_feature_selection_end_to_end(variant_cache, tmp_path, monkeypatch):
    config, results = variant_cache
    run = Config.from_dict(config.to_dict())
    run.out = str(tmp_path / "out")
    run.classify.classifiers = ["logreg"]
    run.classify.train_features, run.classify.test_features = "tencrop", "tencrop"
    seen = {}
    fit = learners.fit

    def spy(*args, groups=None, **kwargs):
        seen["groups"] = groups
        return fit(*args, groups=groups, **kwargs)

    monkeypatch.setattr(learners, "fit", spy)
    with result_lines() as lines:
        (result,) = classify(run, results["plain"].path)
    # The crops of one image share a fold in the grid search (one group per image).
    assert len(seen["groups"]) == 10 * len(set(seen["groups"]))
    with FeatureStore(results["plain"].path) as store:
        n_train = int((store.split == TRAIN).sum())
        n_val = int((store.split == VAL).sum())
    assert result["n_train"] == 10 * n_train + n_val  # a row per crop; val one per image
    assert 0.0 <= result["rank1"] <= 1.0 and lines and lines[0].startswith("logreg")


def test_variant_settings_are_checked(tiny_store):
    config = Config.from_dict(tiny_store.config.to_dict())
    config.classify.train_features = "augmented"
    with pytest.raises(ConfigError, match="extract.augment"):
        load_splits(config, tiny_store.path)
    config.classify.train_features, config.classify.test_features = "plain", "tencrop"
    with pytest.raises(ConfigError, match="extract.tencrop"):
        load_splits(config, tiny_store.path)
    config.extract.tencrop = "mean"
    config.out = ""
    with pytest.raises(StoreError, match="featx extract"):  # the variant store is missing
        load_splits(config, tiny_store.path)


def test_predict_uses_the_crops_a_tencrop_model_was_tested_on(variant_cache, tmp_path):
    """A model evaluated on 10-crop features predicts on the mean of the same 10 crops."""
    from featx.learn.predict import Predictor

    config, results = variant_cache
    run = Config.from_dict(config.to_dict())
    run.out = str(tmp_path / "out")
    run.classify.classifiers = ["logreg"]
    run.classify.test_features = "tencrop"
    [result] = classify(run, results["plain"].path)
    predictor = Predictor.load(tmp_path / "out" / result["run"] / "tiny-logreg.skops")
    data = load_splits(run, results["plain"].path)
    root = config.dataset.root
    files = [f"{root}/{p}" for p in data.paths[TEST]]
    x, ok, _ = predictor.features(files, batch_size=7)  # crops of one image span batches
    assert ok.all() and x.shape == data.x[TEST].shape
    assert_close(x, data.x[TEST])
    with FeatureStore(results["plain"].path) as store:
        single = store.features(data.rows.get(TEST, np.flatnonzero(store.split == TEST)))
    assert differs(x, single)  # not the single-view features
