"""The Python face: featx.features.extraction / Store, and FeatureExtractor as a scikit-learn
transformer."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, featx_here
from PIL import Image
from realdata import FLOWERS17, WEIGHTS, needs_shared
from sklearn.base import clone

import featx
from featx.api import Model
from featx.data.images import load_image
from featx.features.backbones import Backbone
from featx.features.transformer import FeatureExtractor
from featx.store.read import FeatureStore


def tiny_extractor(**more) -> FeatureExtractor:
    return FeatureExtractor(**{"weights": "none", "input_size": 32, "batch_size": 8, **more})


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
    assert len(list(cache.glob("new-*.h5"))) == 1  # named after the images' folder
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


def test_transform_keeps_each_images_row_past_one_batch(tmp_path, image_file):
    """11 images in batches of 4, as paths, as pixels and through the cache: row i is image
    i's features computed alone (the rows differ, so any reordering shows)."""
    paths = [str(image_file(tmp_path / "img" / f"n{i:02d}.png", size=(30 + i, 40 - i),
                            seed=i)) for i in range(11)]
    fx = tiny_extractor(batch_size=4)
    one = fx._backbone().batched(1)  # each image alone, without transform
    alone = np.concatenate([one(load_image(p, 32)[None], np.ones(1, bool)) for p in paths])
    gaps = [np.abs(alone[i] - alone[j]).max() for i in range(11) for j in range(i)]
    assert min(gaps) > 100 * 1e-4 * np.abs(alone).max()  # far beyond assert_close's tolerance
    assert_close(fx.transform(paths), alone)
    assert_close(fx.transform(np.stack([load_image(p, 32) for p in paths])), alone)
    assert_close(fx.transform([Image.open(p) for p in paths]), alone)
    cached = tiny_extractor(batch_size=4, cache_dir=str(tmp_path / "cache"))
    assert_close(cached.transform(paths), alone)
    assert_close(cached.transform(paths[::-1]), alone[::-1])  # now read from the store


# ---------------------------------------------- the images argument, checked at the boundary

class _FeaturesOut:
    """A Model's predictor whose "probabilities" are the features themselves, so that
    Model.predict_proba shows what its images became."""

    classes = ["features"]
    tencrop = False

    def __init__(self, fx: FeatureExtractor) -> None:
        self.fx, self.backbone = fx, fx._backbone()

    def features(self, paths):
        x = self.fx.transform(paths)
        return x, np.ones(len(x), bool), {}

    def predict_proba(self, x):
        return x


@pytest.fixture(scope="module")
def takers():
    """FeatureExtractor.transform and Model.predict_proba: both take images."""
    fx = tiny_extractor(batch_size=4)
    return {"transform": fx.transform,
            "predict_proba": Model(_FeaturesOut(fx)).predict_proba}


def _rgb(seed=0, shape=(2, 12, 10, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


REFUSED = {
    "floats scaled to 0..1": (_rgb() / 255.0, r"all within 0\.\.1 .*scaled to 0\.\.1\? "
                              r"pass 0\.\.255"),
    "uint16 beyond 255": (_rgb().astype(np.uint16) * 2, r"uint16 values 0\.\.510, outside "
                          r"0\.\.255"),
    "negative integers": (_rgb().astype(np.int16) - 1, r"int16 values -1\.\.254, outside"),
    "floats beyond 255": (_rgb() * 4.0, r"float64 values 0\.\.1020, outside 0\.\.255"),
    "NaN": (np.where(_rgb() > 250, np.nan, _rgb()).astype(np.float32), "non-finite"),
    "inf": (np.where(_rgb() > 250, np.inf, _rgb()), "non-finite"),
    "booleans": (_rgb() > 128, "holds bool"),
    "an empty list": ([], "no images: the list of images is empty"),
    "an empty array": (_rgb(shape=(0, 12, 10, 3)), r"no images: .* shape \(0, 12, 10, 3\)"),
    "RGBA": (_rgb(shape=(2, 12, 10, 4)),
             r"shape \(2, 12, 10, 4\), not RGB \(H, W, 3\) or \(N, H, W, 3\)"),
    "a grey array in a list": ([_rgb(shape=(12, 10, 3)), _rgb(shape=(12, 10))],
                               r"images\[1\] has shape \(12, 10\), not RGB \(H, W, 3\)$"),
    "0..1 floats in a list": ([_rgb(shape=(12, 10, 3)), _rgb(shape=(12, 10, 3)) / 255.0],
                              r"images\[1\] holds float values all within 0\.\.1"),
    "a batch in a list": ([_rgb()], r"images\[0\] has shape \(2, 12, 10, 3\)"),
    "a number in a list": ([_rgb(shape=(12, 10, 3)), 3], r"images\[1\] is of type int"),
    "paths and pixels": (["a.png", _rgb(shape=(12, 10, 3))],
                         r"images\[0\] is a path but images\[1\] of type ndarray"),
    "a set of paths": ({"a.png"}, "not of type set"),
}


@pytest.mark.parametrize("taker", ["transform", "predict_proba"])
@pytest.mark.parametrize("case", REFUSED)
def test_images_that_a_cast_would_change_are_refused_in_one_line(takers, taker, case):
    images, message = REFUSED[case]
    with pytest.raises(featx.FeatxError, match=message) as raised:
        takers[taker](images)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("taker", ["transform", "predict_proba"])
def test_pixels_of_0_to_255_in_any_dtype_array_or_list_give_the_uint8_features(takers,
                                                                             taker):
    take = takers[taker]
    pixels = _rgb(seed=1, shape=(4, 12, 10, 3))
    pixels[3] = 0  # black: the same in 0..1 and 0..255, so no question to ask
    expected = take(pixels)
    assert expected.shape[0] == 4
    np.testing.assert_array_equal(take(pixels.astype(np.float32)), expected)  # img_to_array
    np.testing.assert_array_equal(
        take([pixels[0].astype(np.uint16), Image.fromarray(pixels[1]),
              pixels[2].astype(np.int64), pixels[3].astype(np.float64)]), expected)
    assert_close(take(pixels[3].astype(np.float32)), expected[3:])  # one (H, W, 3) image


@pytest.mark.parametrize("taker", ["transform", "predict_proba"])
def test_a_bare_path_is_one_image(takers, taker, tiny_store):
    path = tiny_store.root / tiny_store.written["cat"][0]
    expected = takers[taker]([str(path)])
    assert expected.shape[0] == 1
    np.testing.assert_array_equal(takers[taker](str(path)), expected)
    np.testing.assert_array_equal(takers[taker](path), expected)
    np.testing.assert_array_equal(takers[taker](np.asarray([str(path)])), expected)


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


def test_dir_lists_the_public_api_before_it_is_loaded():
    """Tab completion (IPython asks dir()) finds the lazily loaded names."""
    listed = dir(featx)
    assert {"extract", "classify", "load_model", "FeatureExtractor", "Config",
            "FeatxError", "__version__"} <= set(listed)


# ------------------------------------------------- in a notebook: reprs, runs(), errors

def _one_short_line(text: str) -> str:
    assert "\n" not in text and len(text) <= featx.api.REPR_WIDTH, (len(text), text)
    return text


def test_store_repr_is_one_line_of_facts_and_its_html_escapes(tiny_store, tmp_path):
    odd = tmp_path / "<b>odd & co" / tiny_store.path.name
    odd.parent.mkdir()
    shutil.copy2(tiny_store.path, odd)
    with FeatureStore(odd) as raw:
        width = raw.feature_shape[0]
    store = featx.api.Store(odd)
    line = _one_short_line(repr(store))
    assert line.startswith("Store('") and line.endswith("MobileNetV2 avg")
    assert f"shapes, {tiny_store.rows} rows, 3 classes, {width} features of" in line
    assert tiny_store.path.name[-12:] in line  # a long path is cut in the middle, not its end
    html = store._repr_html_()
    assert "<b>odd" not in html and "&lt;b&gt;odd &amp; co" in html
    assert "<table>" in html and ">cat, dog, fox<" in html
    gone = featx.api.Store(tmp_path / "gone.h5")
    assert "not readable: no feature store at" in _one_short_line(repr(gone))
    assert "not readable" in gone._repr_html_()


def test_a_named_classify_its_result_repr_and_the_runs_table(tiny_store, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "out"
    [result] = featx.classify(tiny_store.config, store=tiny_store.path, out=str(out),
                              classifiers="logreg", quick=True, name="<i>base</i>",
                              progress=False)
    assert result.record["classify"]["run_name"] == "<i>base</i>"
    line = _one_short_line(repr(result))
    assert line == (f"ClassifyResult(logreg on shapes: rank-1 {result.rank1:.3f}, 3 classes; "
                    "run <i>base</i>)")
    html = result._repr_html_()
    assert "<i>" not in html and f"&lt;i&gt;base&lt;/i&gt; ({result.record['run']})" in html
    # the runs table: a DataFrame with pandas ...
    table = featx.runs(out=out, cache_dir=tmp_path / "none", where={"classifier": "logreg"})
    import pandas

    assert isinstance(table, pandas.DataFrame) and len(table) == 1
    assert table.loc[0, "name"] == "<i>base</i>" and table.loc[0, "run"] == \
        result.record["run"]
    assert table.loc[0, "rank1"] == result.rank1 and bool(table.loc[0, "best"])
    # ... else a table of its own, the same rows and columns
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    plain = featx.runs(out=[out], cache_dir=tmp_path / "none")
    assert isinstance(plain, featx.api.RunTable) and len(plain) == 1
    assert plain.columns == list(table.columns)
    [row] = list(plain)
    assert {k: row[k] for k in ("name", "run", "rank1", "dataset")} == {
        "name": "<i>base</i>", "run": result.record["run"], "rank1": result.rank1,
        "dataset": "shapes"}
    assert _one_short_line(repr(plain)).startswith(
        f"RunTable(1 result from 1 run; first: rank-1 {result.rank1:.3f}, logreg on shapes")
    html = plain._repr_html_()
    assert "<i>" not in html and "&lt;i&gt;base&lt;/i&gt;" in html and "<th>when</th>" in html
    assert str(plain).splitlines()[0].split() == ["when", "run", "dataset", "backbone",
                                                  "classifier", "rank-1", "fit", "s", "best"]
    assert len(featx.runs(out=out, cache_dir=tmp_path / "none", dataset="other")) == 0


def test_an_escaped_table_of_names_with_markup(tmp_path, monkeypatch):
    """A dataset named with markup (from a folder or a CSV) is text in the HTML table."""
    folder = tmp_path / "out" / "20261130-080000-aaaa1111"
    folder.mkdir(parents=True)
    (folder / "x-logreg.json").write_text(json.dumps(
        {"classifier": "logreg", "rank1": 0.5, "dataset": "a<script>", "run": folder.name}))
    monkeypatch.setitem(sys.modules, "pandas", None)
    html = featx.runs(out=tmp_path / "out", cache_dir=tmp_path / "none")._repr_html_()
    assert "<script>" not in html and "a&lt;script&gt;" in html


def test_errors_from_python_name_its_keywords_not_the_flags(tmp_path):
    """The same error, the same class, raised where it was: its message in the words of the
    call (weights=, set=[...], store=) where the command line says --weights, --set, --store."""
    from sklearn.linear_model import LogisticRegression

    from featx.core.errors import ConfigError, ModelFileError
    from featx.learn import modelfile

    gone = tmp_path / "moved" / "trained.weights.h5"
    x, y = np.random.default_rng(0).normal(size=(8, 4)), np.arange(8) % 2
    model = modelfile.save(tmp_path / "m.skops", {
        "model": LogisticRegression().fit(x, y), "label_names": ["a", "b"],
        "pipeline": {"backbone": {"name": "MobileNetV2", "weights": str(gone)}}})
    with pytest.raises(ModelFileError) as raised:
        featx.load_model(model)
    message = str(raised.value)
    assert f"is not at {gone}; give weights=PATH (the same file)" in message
    assert "--" not in message and type(raised.value) is ModelFileError
    assert raised.value.__context__ is None  # nothing chained: one error, no "During ..."
    assert raised.traceback[-1].path.name == "predict.py"  # where it was raised
    # the command line keeps its flags
    done = featx_here("predict", model, tmp_path / "a.png")
    assert done.returncode == 2 and "give --weights PATH" in done.stderr
    pipelines = ["combine.pipelines=['a.toml', 'b.toml']"]
    with pytest.raises(ConfigError, match=r"one split; run it once per seed \(set="
                                          r"\[\"dataset\.seed=S\"\], after featx extract"):
        featx.classify(set=pipelines, repeats=2)
    with pytest.raises(ConfigError, match=r"reads its members' stores: drop store=$"):
        featx.classify(set=pipelines, store=tmp_path / "x.h5")


@pytest.mark.parametrize("message, keywords, expected", [
    ("choose a writable --cache-dir", {"cache_dir"}, "choose a writable cache_dir="),
    ("unreadable images (--strict): a.png", {"strict"}, "unreadable images (strict=True): a.png"),
    ("Load it only if you trust it: --trust (trust=True)", {"trust"},
     "Load it only if you trust it: trust=True"),
    ("--input-size: a model is read at its size", {"input_size"},
     "input_size=: a model is read at its size"),
    ("drop --no-progress", {"progress"}, "drop progress=False"),
    ("--where 'x' is not of the form column=value", {"where"},
     "where='x' is not of the form column=value"),
    ("(--set backbone.layer=a,b)", set(), '(set=["backbone.layer=a,b"])'),
    ("--top must be at least 1", {"weights"}, "--top must be at least 1"),  # not a keyword
    ("offline? featx extract --weights /w.h5 ...", {"weights"},
     "offline? featx extract --weights /w.h5 ..."),  # a command line shown as one
])
def test_flags_become_keywords(message, keywords, expected):
    from featx.api import python_words

    assert python_words(message, keywords, {"strict", "trust", "progress"}) == expected
