"""featx explain: activation maps, occlusion, neighbours and the pages, on real flowers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import featx_here, saved_figures
from PIL import Image
from realdata import FLOWERS17, WEIGHTS

from featx.core.errors import UsageError
from featx.inspect.explain import linear_weights, nearest, numerical_gradient, occlusion_map

QUADRANTS = [(0, 0), (224, 0), (0, 224), (224, 224)]  # (x, y) of the pasted photo


def quadrant(m: np.ndarray) -> int:
    """0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right: where ``m`` peaks."""
    i, j = np.unravel_index(np.argmax(m), m.shape)
    h, w = m.shape
    return int(i >= h // 2) * 2 + int(j >= w // 2)


def test_linear_weights_fold_the_scaler_in():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(60, 4)) * [1, 10, 0.1, 1]
    y = np.repeat([0, 1, 2], 20)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    w = linear_weights(model, 4)
    # the class scores, less a constant per class, are the weights times the raw features
    scores = model.decision_function(x)
    np.testing.assert_allclose(scores - x @ w.T, (scores - x @ w.T)[:1].repeat(60, 0),
                               atol=1e-8)
    binary = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[:40], y[:40])
    assert linear_weights(binary, 4).shape == (2, 4)
    from sklearn.svm import SVC

    assert linear_weights(make_pipeline(StandardScaler(), SVC()).fit(x, y), 4) is None


def test_numerical_gradient_of_a_known_function():
    w = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])

    def f(x):
        return (x ** 2) @ w.T  # d/dx_j = 2 x_j w_kj

    x = np.array([1.0, 2.0, -1.0])
    np.testing.assert_allclose(numerical_gradient(f, x, [1, 0]), [2 * x * w[1], 2 * x * w[0]],
                               rtol=1e-3)


def test_occlusion_finds_the_patch_that_matters_and_checks_its_options():
    image = np.full((40, 40, 3), 200, np.uint8)
    image[30:38, 2:10] = 0  # the only dark spot: "the object"

    def probability(images):  # the visible fraction of the dark spot
        return (images[:, 30:38, 2:10] < 50).mean(axis=(1, 2, 3))

    m = occlusion_map(probability, image, patch=8, stride=4)
    assert m.shape == (40, 40) and quadrant(m) == 2 and m[34, 6] > 0 and m[5, 35] == 0
    with pytest.raises(UsageError, match="--patch 50"):
        occlusion_map(probability, image, patch=50, stride=4)
    with pytest.raises(UsageError, match="--stride 0"):
        occlusion_map(probability, image, patch=8, stride=0)


def test_a_cnn_with_mean_pooling_has_its_map_for_the_cam():
    """``mean`` is a CNN's global average as ``avg`` is: the CAM reads the same map (it
    drew none for a CNN's ``mean`` before)."""
    from featx.core.config import Config
    from featx.features.backbones import Backbone
    from featx.inspect.explain import cam_pooling, spatial_model

    maps = {}
    for pooling in ("avg", "mean"):
        c = Config()
        c.backbone.weights, c.backbone.input_size, c.backbone.pooling = "none", 32, pooling
        backbone = Backbone(c.backbone)
        assert cam_pooling(backbone) == "avg"
        maps[pooling] = spatial_model(backbone)
    assert maps["mean"] is not None
    assert tuple(maps["mean"].output.shape) == tuple(maps["avg"].output.shape) == (None, 1, 1,
                                                                                  1280)


@pytest.mark.slow
@pytest.mark.shared
def test_cam_and_occlusion_peak_where_the_flower_is(planted_flowers, tmp_path):
    """A real photo pasted into one quadrant of a grey 448x448 canvas: for several flowers
    and all four quadrants, the flower is recognised and the activation map and the
    occlusion map both peak in its quadrant."""
    from featx.inspect.explain import EXACT, explain_image
    from featx.learn.predict import Predictor

    predictor = Predictor.load(planted_flowers.model)
    misses = []  # all twelve listed at once
    for name, index in [("tigerlily", -1), ("fritillary", -1), ("bluebell", -2)]:
        photo = sorted((FLOWERS17 / name).glob("image_*.jpg"))[index]
        with Image.open(photo) as img:
            flower = img.convert("RGB").resize((224, 224))
        for q, corner in enumerate(QUADRANTS):
            canvas = Image.new("RGB", (448, 448), (128, 128, 128))
            canvas.paste(flower, corner)
            path = tmp_path / f"{name}-{q}.png"
            canvas.save(path)
            r = explain_image(predictor, str(path), top=3)  # patch 56, stride 28
            assert r.cam_method == EXACT and r.occlusion.shape == (224, 224)
            got = (r.predicted, quadrant(r.cams[r.predicted]), quadrant(r.occlusion))
            if got != (name, q, q):
                misses.append(f"{path.name}: predicted {got[0]}, CAM peak in quadrant "
                              f"{got[1]}, occlusion peak in {got[2]}")
    assert not misses, misses


@pytest.mark.slow
@pytest.mark.shared
def test_nearest_training_images_of_a_training_image_start_with_itself(planted_flowers):
    from featx.data.dataset import TRAIN
    from featx.store.read import FeatureStore

    with FeatureStore(planted_flowers.store) as s:
        row = int(np.flatnonzero(s.split == TRAIN)[3])
        query, rel = s.features(np.array([row])), s.paths[row]
    found = nearest(planted_flowers.store, query, 4)[0]
    assert found[0][0].endswith(rel) and found[0][2] == pytest.approx(1.0, abs=1e-5)
    assert [f[2] for f in found] == sorted((f[2] for f in found), reverse=True)
    with pytest.raises(UsageError, match="width"):
        nearest(planted_flowers.store, query[:, :100], 4)


@pytest.mark.slow
@pytest.mark.shared
def test_featx_explain_command(planted_flowers, tmp_path):
    """The command end to end: a PNG per image and one page, with neighbours and a
    --class map; a bad class name is one line naming it."""
    from featx.inspect.explain import GRADIENT  # noqa: F401  (the method names are importable)

    images = sorted((FLOWERS17 / "sunflower").glob("image_*.jpg"))[:2]
    out = tmp_path / "explain"
    command = ["explain", str(planted_flowers.model),
               *map(str, images), "--out", str(out), "--top", "3", "--class", "daisy",
               "--patch", "112", "--stride", "56", "--neighbours", "4",
               "--weights", str(WEIGHTS)]
    done = featx_here(*command)
    assert done.returncode == 0, done.stderr[-2000:]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 600
    page = (out / "index.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 2
    assert len(re.findall(r"src='data:image/jpeg;base64,", page)) == 8  # 4 neighbours each
    assert "CAM (exact" in page and "sunflower" in page
    bad = featx_here(*command[:3], "--class", "<nope>", "--neighbours", "0",
                     "--weights", str(WEIGHTS))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--class '<nope>': the model has no such class" in bad.stderr


def test_unreadable_image_and_unknown_class_are_one_line_errors(tmp_path):
    from types import SimpleNamespace

    from featx.inspect.explain import explain_image

    predictor = SimpleNamespace(backbone=SimpleNamespace(input_size=32), classes=["a", "b"])
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(UsageError, match=f"{bad}: not a readable image"):
        explain_image(predictor, str(bad))
    good = tmp_path / "ok.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(good)
    with pytest.raises(UsageError, match="--class 'c': the model has no such class"):
        explain_image(predictor, str(good), classes=["c"])


def _drawn(monkeypatch):
    """The figures saved inside the block, as a list filled when each is saved."""
    return saved_figures(monkeypatch)


def _texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def test_the_figure_draws_the_maps_with_colour_bars_and_nothing_the_page_shows(monkeypatch):
    """The PNG holds the image and the maps, each map with a colour bar naming what its
    colours mean; the top-k and the nearest images are the page's alone (no class score, no
    cosine in the PNG); a class with no map leaves no empty panel."""
    from featx.inspect.explain import EXACT, GRADIENT, Explanation, figure_png

    figures = _drawn(monkeypatch)
    image = np.full((32, 32, 3), 100, np.uint8)
    cam = np.outer(np.linspace(0, 1, 32), np.ones(32)).astype(np.float32)
    neighbours = [("/data/ant/a1.png", "ant", 0.912), ("/data/cow/c1.png", "cow", 0.876)]
    figure_png(Explanation("/data/ant/a0.png", image, [("ant", 0.713), ("cow", 0.287)],
                           {"ant": cam, "cow": cam.T}, EXACT, cam - 0.5, neighbours))
    (fig,) = figures
    texts = " | ".join(_texts(fig))
    assert "0.713" not in texts and "0.287" not in texts  # the top-k: the page's table
    assert "0.912" not in texts and "a1.png" not in texts  # the neighbours: its gallery
    assert "CAM: ant" in texts and "CAM: cow" in texts and "occlusion: ant" in texts
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 3  # one per map
    labels = [bar.get_ylabel() for bar in bars]
    assert labels.count("evidence for the class") == 2
    assert "probability lost when covered\n(red: for, blue: against)" in labels
    images = [ax for ax in fig.axes if ax.get_images() and ax not in bars]
    assert len(images) == 4 and len(fig.axes) == 7  # image, 2 CAMs, occlusion, 3 bars

    figures.clear()
    figure_png(Explanation("/data/ant/a0.png", image, [("ant", 0.7)], {}, GRADIENT,
                           cam - 0.5), "softmax of decision values")
    (fig,) = figures
    assert "no CAM" not in " | ".join(_texts(fig))  # the page says why there is none
    assert len(fig.axes) == 3  # the image, the occlusion map and its bar
    assert any("score lost when covered" in ax.get_ylabel() for ax in fig.axes)


def test_explain_page_says_why_a_piece_is_missing_and_titles_by_file_name(tmp_path):
    from types import SimpleNamespace

    from featx.inspect.explain import EXACT, Explanation, figure_png, html_page

    path = tmp_path / "a" / "very" / "long" / "folder" / "n0.png"
    image = np.full((32, 32, 3), 100, np.uint8)
    r = Explanation(str(path), image, [("ant", 0.7), ("cow", 0.3)], {}, EXACT,
                    np.zeros((32, 32), np.float32))
    png = tmp_path / "001.png"
    png.write_bytes(figure_png(r))
    model = tmp_path / "runs" / "r1" / "tiny-logreg.skops"
    predictor = SimpleNamespace(source=str(model), classifier="logreg",
                                calibration="probabilities",
                                backbone=SimpleNamespace(spec=SimpleNamespace(name="MobileNetV2")))
    page = html_page([r], [png], predictor, missing="No nearest training images: no feature "
                     "store found for tiny-logreg.skops (give --store).")
    assert "<title>featx explain: tiny-logreg.skops</title>" in page
    assert f"<h2 title='{path}'>n0.png</h2>" in page  # the file name; the path on hover
    assert f"<details><summary>Full path</summary><code>{path}</code></details>" in page
    assert "no feature store found for tiny-logreg.skops (give --store)" in page
    assert page.count("<td>ant</td>") == 1 and page.count("0.700") == 1  # the top-k once


@pytest.mark.slow
def test_explain_says_once_which_model_of_a_run_folder_it_uses(tiny_store, make_config,
                                                              tmp_path):
    """A run folder of two models: the choice is said once (the page's neighbours come from
    the model file chosen, not from choosing again), and the page shows them."""
    from featx.learn.classification import classify

    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(tmp_path / "r"),
                         classify={"classifiers": ["logreg", "linear_svm"], "quick": True})
    results = classify(config, tiny_store.path)
    run = tmp_path / "r" / results[0]["run"]
    image = tiny_store.root / tiny_store.written["fox"][0]
    done = featx_here("explain", run, image, "--out", tmp_path / "x", "--neighbours", "2",
                      "--patch", "16", "--stride", "16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("models; using") == 1, done.stderr
    assert done.stdout.strip() == f"wrote {tmp_path / 'x' / 'index.html'} (1 PNG)"
    page = (tmp_path / "x" / "index.html").read_text()
    assert len(re.findall(r"src='data:image/jpeg;base64,", page)) == 2  # the 2 neighbours
