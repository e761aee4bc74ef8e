"""The Python face: featx.extraction / Store, and FeatureExtractor as a scikit-learn transformer."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realdata import FLOWERS17, WEIGHTS, needs_shared
from sklearn.base import clone

import featx
from featx.backbones import Backbone
from featx.images import load_image
from featx.store import FeatureStore
from featx.transformer import FeatureExtractor


def tiny_extractor(**more) -> FeatureExtractor:
    return FeatureExtractor(weights="none", input_size=32, batch_size=8, **more)


def assert_close(actual, expected, rtol=1e-4):
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def test_public_names_are_listed():
    assert {"extract", "Store", "FeatureExtractor", "FeatxError"} <= set(featx.__all__)
    for name in featx.__all__:
        assert getattr(featx, name) is not None


def test_extract_returns_a_store_with_splits_by_name(tiny_store):
    store = featx.api.extract(tiny_store.config)
    assert store.path == tiny_store.path
    with FeatureStore(tiny_store.path) as raw:
        split, ok, features, labels = raw.split, raw.ok, raw.features(), raw.labels
    for index, name in enumerate(("train", "val", "test")):
        x, y = store.split(name)
        rows = np.flatnonzero((split == index) & ok)
        np.testing.assert_array_equal(x, features[rows])
        np.testing.assert_array_equal(y, labels[rows])
    assert len(store.split("train")[0]) + len(store.split("test")[0]) == tiny_store.rows
    assert store.label_names == ["cat", "dog", "fox"] and len(store.paths) == tiny_store.rows
    streamed = np.concatenate([block for _, block in store.iter_chunks()])
    np.testing.assert_array_equal(streamed, features)
    with pytest.raises(featx.FeatxError, match="valid splits are train, val, test"):
        store.split("training")


def test_extract_takes_the_command_lines_keywords(tiny_store, tmp_path):
    store = featx.api.extract(data=str(tiny_store.root), weights="none", input_size=32,
                              batch_size=8, cache_dir=str(tmp_path / "c"),
                              set=["dataset.test=0.25"])
    assert store.attrs["key"] == tiny_store.key  # the same settings, the same content key
    with pytest.raises(featx.FeatxError, match="unknown keyword 'dataa'"):
        featx.api.extract(dataa="x")


def test_transform_gives_the_stores_features_for_paths_pil_images_and_arrays(tiny_store):
    paths = [str(tiny_store.root / p) for p in tiny_store.written["cat"][:3]]
    fx = tiny_extractor(seed=tiny_store.config.dataset.seed)
    from_paths = fx.transform(paths)
    with FeatureStore(tiny_store.path) as store:
        rows = [store.paths.index(p) for p in tiny_store.written["cat"][:3]]
        expected = store.features(np.asarray(rows))
    assert from_paths.dtype == np.float32 and from_paths.shape == expected.shape
    assert_close(from_paths, expected)
    pil = [Image.open(p) for p in paths]
    assert_close(fx.transform(pil), expected)
    pixels = np.stack([load_image(p, 32) for p in paths])
    assert_close(fx.transform(pixels), expected)
    assert len(fx.get_feature_names_out()) == expected.shape[1]


def test_cloned_and_pickled_without_a_model(tiny_store):
    fx = tiny_extractor()
    fx.transform([str(tiny_store.root / tiny_store.written["dog"][0])])
    assert fx._model is not None
    copy = clone(fx)
    assert copy.get_params() == fx.get_params() and getattr(copy, "_model", None) is None
    data = pickle.dumps(fx)
    assert b"keras" not in data and len(data) < 5000
    restored = pickle.loads(data)
    assert getattr(restored, "_model", None) is None
    assert restored.get_params() == fx.get_params()


def test_transform_reads_featx_extracts_store_without_model_work(tiny_store, tmp_path,
                                                                  monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(tiny_store.path, cache / tiny_store.path.name)
    monkeypatch.setattr(Backbone, "model", property(lambda self: pytest.fail("model built")))
    fx = tiny_extractor(cache_dir=str(cache), seed=tiny_store.config.dataset.seed)
    rel = tiny_store.written["fox"][:4]
    got = fx.transform([str(tiny_store.root / p) for p in rel])
    with FeatureStore(tiny_store.path) as store:
        expected = store.features(np.asarray(sorted(store.paths.index(p) for p in rel)))
    np.testing.assert_array_equal(got, expected)  # the very rows of the store


def test_transform_caches_new_images_in_a_store_of_their_own(tiny_store, tmp_path,
                                                             monkeypatch, image_file):
    cache = tmp_path / "cache"
    new = [str(image_file(tmp_path / "new" / f"n{i}.png", seed=i)) for i in range(3)]
    fx = tiny_extractor(cache_dir=str(cache))
    first = fx.transform(new)
    assert len(list(cache.glob("transform-*.h5"))) == 1
    monkeypatch.setattr(Backbone, "model", property(lambda self: pytest.fail("model built")))
    again = tiny_extractor(cache_dir=str(cache)).transform(new[::-1])
    np.testing.assert_array_equal(again, first[::-1])


def test_unreadable_images_are_an_error_naming_one(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(featx.FeatxError, match="bad.jpg"):
        tiny_extractor().transform([str(bad)])
    with pytest.raises(featx.FeatxError, match=r"\(N, H, W, 3\)"):
        tiny_extractor().transform(np.zeros((2, 8, 8), np.uint8))


def test_scikit_learn_estimator_checks_that_apply():
    """Those about parameters and cloning apply; the others feed numeric 2-D arrays to
    fit/transform, and this transformer takes images (paths, PIL images, (N, H, W, 3))."""
    from sklearn.utils import estimator_checks as checks

    fx = tiny_extractor()
    for check in (checks.check_no_attributes_set_in_init,
                  checks.check_parameters_default_constructible,
                  checks.check_get_params_invariance, checks.check_set_params):
        check("FeatureExtractor", fx)


# ------------------------------------------------------------ real images, real weights

def _flowers_subset(tmp_path: Path, classes=5, per_class=12) -> tuple[list[str], np.ndarray]:
    names = sorted(p.name for p in FLOWERS17.iterdir() if p.is_dir())[:classes]
    paths, labels = [], []
    for label, name in enumerate(names):
        files = sorted((FLOWERS17 / name).iterdir())[:per_class]
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    return paths, np.asarray(labels)


@pytest.mark.slow
@needs_shared
def test_in_make_pipeline_grid_search_and_cross_val_score(tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
    from sklearn.pipeline import make_pipeline

    paths, y = _flowers_subset(tmp_path)
    fx = FeatureExtractor(weights=str(WEIGHTS), batch_size=16, cache_dir=str(tmp_path / "c"))
    model = make_pipeline(fx, LogisticRegression(max_iter=2000))
    train, test, y_train, y_test = train_test_split(paths, y, test_size=0.25, stratify=y,
                                                    random_state=0)
    assert model.fit(train, y_train).score(test, y_test) >= 0.8  # chance: 0.2
    # every image is in the cache now: the searches below do no model work
    monkeypatch.setattr(Backbone, "model", property(lambda self: pytest.fail("model built")))
    scores = cross_val_score(model, paths, y, cv=3)
    assert scores.mean() >= 0.8
    search = GridSearchCV(model, {"logisticregression__C": [0.1, 1.0]}, cv=2).fit(paths, y)
    assert search.best_score_ >= 0.8
    assert search.best_estimator_.steps[0][1].get_params()["cache_dir"] == str(tmp_path / "c")


def test_transform_through_a_symlinked_folder_finds_the_cached_rows(tmp_path, image_file,
                                                                     monkeypatch):
    real = tmp_path / "real"
    files = [image_file(real / f"n{i}.png", seed=i) for i in range(3)]
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    linked = [str(tmp_path / "link" / f.name) for f in files]
    first = tiny_extractor(cache_dir=str(tmp_path / "cache")).transform(linked)
    monkeypatch.setattr(Backbone, "model", property(lambda self: pytest.fail("model built")))
    np.testing.assert_array_equal(
        tiny_extractor(cache_dir=str(tmp_path / "cache")).transform([str(f) for f in files]),
        first)
