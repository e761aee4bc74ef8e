"""featx export-model: one model file (SavedModel, ONNX, OpenVINO, LiteRT, .keras) that
computes what featx predict computes, loaded back in each format's own runtime; int8 for
LiteRT and OpenVINO; the consumer examples of docs/how-to/export-model.md run as written."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import REPO, assert_close, featx_here, one_error_line
from realdata import (
    FLOWERS17,
    keras_home_of,
    keras_home_set,
    needs_shared,
    once_per_run,
    store_of,
)

from featx.core.config import BackboneConfig
from featx.core.errors import DependencyError, UsageError
from featx.data.dataset import TEST
from featx.features.backbones import Backbone
from featx.learn import deploy, learners, modelfile
from featx.learn.classification import classify
from featx.learn.predict import Predictor, softmax
from featx.store.read import FeatureStore

DOC = REPO / "docs" / "how-to" / "export-model.md"
# The file names the docs' examples open.
NAMES = {"keras": "flowers17.keras", "savedmodel": "flowers17_savedmodel",
         "onnx": "flowers17.onnx", "openvino": "flowers17.xml", "litert": "flowers17.tflite"}
FLOAT = list(deploy.FORMATS)
AGREEMENT_IMAGES = 200


# --- the head: scikit-learn's numbers as Dense layers --------------------------------------

def _features(classes: int, n: int = 90, d: int = 24, seed: int = 0) -> tuple:
    """Features of both signs (signed_sqrt must keep the sign), classes told apart."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0.0, 1.0, (n, d)) + 0.8 * rng.normal(size=(classes, d))[y]
    return x.astype(np.float32), y


def featx_scores(model, x: np.ndarray) -> np.ndarray:
    """What featx predict scores with (Predictor.predict_proba)."""
    scores = learners.class_scores(model, x)
    return scores if hasattr(model, "predict_proba") else softmax(scores)


def head_model(model, width: int):
    import keras

    features = keras.Input((width,))
    return keras.Model(features, deploy.head_layers(deploy.head_steps(model), features))


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("name, normalize", [
    ("logreg", "none"), ("logreg", "l2"), ("logreg", "power"), ("logreg", "pca_whiten"),
    ("linear_svm", "none"), ("linear_svm", "power"), ("linear_svm", "pca_whiten"),
    ("sgd", "none"),
])
def test_the_head_gives_featx_predicts_scores(name, normalize, classes):
    x, y = _features(classes)
    model = learners.fit(name, x, y, cv=2, quick=True, normalize=normalize).model
    want = featx_scores(model, x)
    got = np.asarray(head_model(model, x.shape[1])(x))
    assert got.shape == want.shape == (len(x), classes)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


@pytest.mark.parametrize("classes", [2, 4])
def test_an_ensemble_of_linear_learners_is_the_mean_of_their_probabilities(classes):
    """linear_svm enters an ensemble Platt-calibrated (CalibratedClassifierCV, sigmoid)."""
    x, y = _features(classes, seed=1)
    members = [learners.with_probabilities(learners.fit(n, x, y, cv=2, quick=True).model,
                                           x, y, cv=2) for n in ("logreg", "linear_svm", "sgd")]
    model = learners.ProbabilityAverage(members)
    np.testing.assert_allclose(np.asarray(head_model(model, x.shape[1])(x)),
                               featx_scores(model, x), atol=2e-6)


@pytest.mark.parametrize("name", ["rbf_svm", "knn"])
def test_heads_that_are_not_linear_have_no_steps(name):
    x, y = _features(3)
    model = learners.fit(name, x, y, cv=2, quick=True).model
    with pytest.raises(deploy.NotLinear):
        deploy.head_steps(model)
    svm = learners.with_probabilities(learners.fit("linear_svm", x, y, cv=2, quick=True).model,
                                      x, y, cv=2)
    with pytest.raises(deploy.NotLinear):  # one such member is enough
        deploy.head_steps(learners.ProbabilityAverage([svm, model if name == "knn" else
                                                       learners.with_probabilities(model, x, y,
                                                                                   cv=2)]))


# --- the backbone part --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["VGG16", "MobileNetV2", "DenseNet121", "EfficientNetB0"])
def test_the_preprocessing_is_the_backbones_own(name):
    """caffe (BGR, mean subtracted), tf ([-1, 1]), torch (mean/std) and none."""
    import keras

    backbone = Backbone(BackboneConfig(name=name, weights="none", input_size=32))
    images = keras.Input((32, 32, 3), dtype="uint8")
    model = keras.Model(images, deploy.preprocessing(backbone, images))
    pixels = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    want = np.asarray(backbone.preprocess(pixels))
    assert_close(np.asarray(model(pixels)), want, rtol=1e-6)
    assert not np.allclose(want[..., 0], pixels[..., 0]) or backbone.spec.preprocess == "none"


@pytest.mark.parametrize("settings", [
    {"flip": True, "layer": "block_13_expand_relu,out_relu"},  # mirror averaging, two layers
    {"pooling": "none", "layer": "block_16_project"},  # a whole map, flattened
])
def test_the_model_computes_the_backbones_features(settings):
    import keras

    backbone = Backbone(BackboneConfig(name="MobileNetV2", weights="none", input_size=32,
                                       **settings), seed=3)
    images = keras.Input((32, 32, 3), dtype="uint8")
    model = keras.Model(images, deploy.feature_layers(backbone, images))
    pixels = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    want = np.asarray(backbone.features(pixels)).reshape(3, -1)
    assert_close(np.asarray(model(pixels)), want, rtol=1e-4)
    if settings.get("flip"):  # the control: without the mirror the numbers differ
        plain = Backbone(BackboneConfig(name="MobileNetV2", weights="none", input_size=32,
                                        layer=settings["layer"]), seed=3)
        assert not np.allclose(np.asarray(plain.features(pixels)), want, rtol=1e-3, atol=0)


def test_litert_int8_bias_correction_takes_out_the_mean_error(monkeypatch):
    """Rounding a layer's weights to int8 shifts the mean of its output (here: eight small
    weights a channel round to 0); the correction measures that shift per channel on the
    calibration images and takes it out of the int32 bias: on other images the corrected
    model's mean error against float32 is a fraction of the uncorrected one's."""
    import keras

    images = keras.Input((16, 16, 3), dtype="uint8", name="image")
    conv = keras.layers.DepthwiseConv2D(3, activation="relu")
    model = keras.Model(images, keras.layers.GlobalAveragePooling2D()(
        conv(keras.layers.Rescaling(1 / 255)(images))))
    kernel = np.full((3, 3, 3, 1), 0.003, np.float32)
    kernel[1, 1] = [[1.0], [0.8], [1.2]]
    conv.set_weights([kernel, np.zeros(3, np.float32)])
    rng = np.random.default_rng(0)
    calibration, other = (rng.integers(0, 256, (40, 16, 16, 3), np.uint8) for _ in range(2))
    want = np.asarray(model(other))

    def mean_error(flatbuffer: bytes) -> float:
        interpreter = deploy.litert_interpreter()(model_content=flatbuffer)
        run = interpreter.get_signature_runner()
        got = np.concatenate([next(iter(run(image=x[None]).values())) for x in other])
        return float(np.abs((got - want).mean(axis=0)).max())  # the worst channel's

    corrected = mean_error(deploy._litert_int8(model, calibration))
    monkeypatch.setattr(deploy, "_bias_corrected", lambda quantised, debug, images: quantised)
    plain = mean_error(deploy._litert_int8(model, calibration))
    print(f"mean error of the worst channel: {plain:.2e} uncorrected, {corrected:.2e} corrected")
    assert corrected < 0.3 * plain


# --- the command on the tiny store (random weights, 32 px) --------------------------------

@pytest.fixture(scope="module")
def tiny_models(tiny_store, tmp_path_factory, make_config):
    """logreg and knn bundles trained on the tiny store, by classifier name."""
    out = tmp_path_factory.mktemp("export-models")
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out),
                         classify={"classifiers": ["logreg", "knn"]})
    run = out / classify(config, tiny_store.path)[0]["run"]
    return {name: run / f"tiny-{name}.skops" for name in ("logreg", "knn")}


def tiny_images(tiny_store) -> tuple[list[str], np.ndarray]:
    with FeatureStore(tiny_store.path) as store:
        paths = [str(tiny_store.root / p) for p in store.paths]
    pixels, errors = deploy._read(paths, 32, "squash")
    assert not errors
    return paths, pixels


def test_a_keras_file_gives_featx_predicts_scores(tiny_models, tiny_store, tmp_path):
    out = tmp_path / "tiny.keras"
    done = featx_here("export-model", tiny_models["logreg"], "--format", "keras", "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (keras, " in done.stdout and "3 classes" in done.stdout
    assert "(N, 32, 32, 3) resized with squash" in done.stdout
    predictor = Predictor.load(tiny_models["logreg"])
    paths, pixels = tiny_images(tiny_store)
    want = predictor.predict_proba(predictor.features(paths)[0])
    got = deploy.runner(out, "keras")(pixels)
    np.testing.assert_allclose(got, want, atol=1e-5)
    meta = deploy.read_metadata(out, "keras")
    assert meta["labels"] == predictor.classes == ["cat", "dog", "fox"]
    assert meta["input"]["shape"] == [None, 32, 32, 3] and meta["input"]["resize"] == "squash"
    assert meta["scores"] == "probabilities" and not meta["int8"]


def test_the_python_api_returns_what_it_wrote(tiny_models, tmp_path):
    import featx

    assert "export_model" in featx.__all__ and "export_model" in dir(featx)
    done = featx.export_model(tiny_models["logreg"], format="keras", out=tmp_path / "m.keras",
                              progress=False)
    assert done.path == tmp_path / "m.keras" and done.path.is_file()
    assert done.bytes == done.path.stat().st_size and done.labels == ["cat", "dog", "fox"]
    assert done.metadata == deploy.read_metadata(done.path, "keras")


def test_the_command_line_offers_every_format(tiny_models, tmp_path):
    from featx.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    formats = next(a for a in sub.choices["export-model"]._actions if a.dest == "format")
    assert re.findall(r"\w+", formats.help) == [*list(deploy.FORMATS)[:-1], "or", "litert"]
    done = featx_here("export-model", tiny_models["logreg"], "--format", "tflite", "--out",
                      tmp_path / "m.tflite")
    assert done.returncode == 2 and not list(tmp_path.iterdir())
    assert "unknown export format 'tflite'; valid: keras, savedmodel, onnx, openvino, " \
        "litert" in one_error_line(done.stderr)


def test_a_head_that_is_not_linear_is_refused_in_one_line(tiny_models, tmp_path):
    out = tmp_path / "knn.onnx"
    out.write_bytes(b"kept")  # what was there stays
    done = featx_here("export-model", tiny_models["knn"], "--format", "onnx", "--out", out)
    assert done.returncode == 2
    line = one_error_line(done.stderr, tiny_models["knn"])
    assert "knn model cannot be exported" in line and deploy.EXPORTABLE in line
    assert out.read_bytes() == b"kept" and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("args, says", [
    (["--format", "onnx", "--int8", "--out", "m.onnx"], "--int8 is for litert and openvino"),
    (["--format", "litert", "--out", "m.onnx"], "litert models are .tflite files"),
    (["--format", "openvino", "--out", "m"], "openvino models are .xml files"),
])
def test_requests_that_cannot_be_done_are_one_line_errors(tiny_models, tmp_path, args, says):
    args = [str(tmp_path / a) if a.startswith("m") else a for a in args]
    done = featx_here("export-model", tiny_models["logreg"], *args)
    assert done.returncode == 2
    assert says in one_error_line(done.stderr)
    assert not list(tmp_path.iterdir())


def test_a_savedmodel_never_replaces_a_folder_that_holds_files(tiny_models, tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    done = featx_here("export-model", tiny_models["logreg"], "--format", "savedmodel",
                      "--out", tmp_path)
    assert done.returncode == 2
    assert "already exists" in one_error_line(done.stderr, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_a_missing_converter_names_the_extra(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(deploy, "_importable", lambda module: module != "tf2onnx")
    with pytest.raises(DependencyError, match=r"needs tf2onnx: pip install 'featx\[export\]'"):
        deploy.export_model(tiny_models["logreg"], "onnx", tmp_path / "m.onnx")
    monkeypatch.setattr(deploy, "_importable", lambda module: module != "nncf")
    with pytest.raises(DependencyError, match="openvino int8 needs nncf"):
        deploy.export_model(tiny_models["logreg"], "openvino", tmp_path / "m.xml", int8=True)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("change, says", [
    ({"classify": {"test_features": "tencrop"}}, "10-crop features"),
    ({"backbone": {"precision": "mixed_float16"}}, "exported models are float32"),
])
def test_models_an_export_cannot_reproduce_are_refused(tiny_models, tmp_path, change, says):
    """A 10-crop model averages 10 passes per image; a mixed-precision backbone is a GPU
    setting the converters do not take (its settings key dropped, as bundles before 0.2)."""
    bundle = modelfile.load(tiny_models["logreg"])
    for section, values in change.items():
        target = bundle["pipeline"] if section == "classify" else bundle["extracted_by"]
        target[section] = {**target[section], **values}
    if "backbone" in change:
        del bundle["settings_key"]
    crafted = modelfile.save(tmp_path / "crafted.skops", bundle)
    with pytest.raises(UsageError, match=says):
        deploy.export_model(crafted, "keras", tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()


# --- real data: Flowers-17, the real MobileNetV2 weights ----------------------------------

EXPORTS = [(fmt, False) for fmt in FLOAT] + [(fmt, True) for fmt in deploy.INT8_FORMATS]


def artifact(folder: Path, fmt: str, int8: bool) -> Path:
    return folder / ("int8" if int8 else "float") / NAMES[fmt]


@pytest.fixture(scope="session")
def flowers17_exports(flowers17, flowers17_logreg, tmp_path_factory):
    """The session's Flowers-17 logistic regression exported once per test run to every
    format (float) and to int8 LiteRT and OpenVINO; featx predict's scores of the 340 test
    images (and the images as featx reads them), for the tests to compare against."""
    _, model = flowers17_logreg

    def build(folder: Path) -> dict:
        with FeatureStore(store_of(flowers17)) as store:
            rows = np.flatnonzero((store.split == TEST) & store.ok)
            paths = [str(FLOWERS17 / store.paths[i]) for i in rows]
            truth = [store.label_names[c] for c in store.labels[rows]]
        exported = {}
        with keras_home_set(keras_home_of(flowers17)):
            predictor = Predictor.load(model)
            features, ok, _ = predictor.features(paths)
            assert ok.all()
            np.save(folder / "featx.npy", predictor.predict_proba(features))
            for fmt, int8 in EXPORTS[:-1]:
                done = deploy.export_model(model, fmt, artifact(folder, fmt, int8), int8=int8)
                exported[f"{fmt}{'-int8' if int8 else ''}"] = {
                    "bytes": done.bytes, "ms": done.ms_per_image}
            # the last through the command line, which prints the int8 size and speed
            fmt, int8 = EXPORTS[-1]
            done = featx_here("export-model", model, "--format", fmt, "--int8", "--out",
                              artifact(folder, fmt, int8))
            assert done.returncode == 0, done.stderr[-3000:]
            said = re.search(r"int8: ([\d.]+) MB against ([\d.]+) MB of float32 weights; "
                             r"([\d.]+) ms an image", done.stdout)
            assert said, done.stdout
            exported[f"{fmt}-int8"] = {"bytes": float(said[1]) * 1e6, "ms": float(said[3])}
        pixels, errors = deploy._read(paths, 224, "squash")
        assert not errors
        np.save(folder / "pixels.npy", pixels)
        return {"folder": str(folder), "paths": paths, "truth": truth,
                "classes": predictor.classes, "exported": exported}

    built = once_per_run(tmp_path_factory, "flowers17-exports", build)
    folder = Path(built.pop("folder"))
    return SimpleNamespace(**built, folder=folder, model=model,
                           featx=np.load(folder / "featx.npy"),
                           pixels=np.load(folder / "pixels.npy", mmap_mode="r"))


def agreement_rows(n: int) -> np.ndarray:
    """AGREEMENT_IMAGES of the test images, spread over all of them (every class)."""
    return np.unique(np.linspace(0, n - 1, AGREEMENT_IMAGES).round().astype(int))


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("fmt", FLOAT)
def test_every_float_format_gives_featx_predicts_scores(flowers17_exports, fmt):
    e = flowers17_exports
    rows = agreement_rows(len(e.paths))
    assert len(rows) == AGREEMENT_IMAGES
    run = deploy.runner(artifact(e.folder, fmt, False), fmt)
    got = np.concatenate([run(np.asarray(e.pixels[rows[i:i + 32]]))
                          for i in range(0, len(rows), 32)])
    want = e.featx[rows]
    top1 = (got.argmax(axis=1) == want.argmax(axis=1)).mean()
    worst = float(np.abs(got - want).max())
    print(f"{fmt}: top-1 agreement {top1:.3f}, largest probability difference {worst:.2e} "
          f"on {len(rows)} Flowers-17 test images")
    assert top1 == 1.0
    assert worst <= 1e-4
    meta = deploy.read_metadata(artifact(e.folder, fmt, False), fmt)
    assert meta["labels"] == e.classes and meta["input"]["shape"][1:] == [224, 224, 3]


def int8_scores(e, fmt: str) -> np.ndarray:
    run = deploy.runner(artifact(e.folder, fmt, True), fmt)
    return np.concatenate([run(np.asarray(e.pixels[i:i + 32]))
                           for i in range(0, len(e.paths), 32)])


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("fmt", deploy.INT8_FORMATS)
def test_int8_keeps_rank1_and_is_smaller_and_timed(flowers17_exports, fmt):
    e = flowers17_exports
    got = int8_scores(e, fmt)
    truth = np.array([e.classes.index(t) for t in e.truth])
    rank1_int8 = (got.argmax(axis=1) == truth).mean()
    rank1_float = (e.featx.argmax(axis=1) == truth).mean()
    info, float_bytes = e.exported[f"{fmt}-int8"], e.exported[fmt]["bytes"]
    print(f"{fmt} int8: rank-1 {rank1_int8:.3f} (float {rank1_float:.3f}) on {len(truth)} test "
          f"images; {info['bytes'] / 1e6:.1f} MB (float {float_bytes / 1e6:.1f} MB), "
          f"{info['ms']} ms an image")
    assert abs(rank1_int8 - rank1_float) <= 0.01
    assert info["bytes"] < 0.5 * float_bytes  # int8 weights: about a quarter of float32
    assert info["ms"] is not None and info["ms"] > 0
    meta = deploy.read_metadata(artifact(e.folder, fmt, True), fmt)
    assert meta["int8"] and meta["calibration_images"] == deploy.CALIBRATION_IMAGES
    assert meta["int8_method"] == deploy.INT8_METHOD[fmt]


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("fmt", deploy.INT8_FORMATS)
def test_int8_top1_agrees_with_featx_predict_on_97_percent(flowers17_exports, fmt):
    """Measured (2026-12-06): OpenVINO 0.970; LiteRT 0.985, with its bias correction (0.945
    without: featx.learn.deploy, above _litert_int8)."""
    e = flowers17_exports
    rows = agreement_rows(len(e.paths))
    got = int8_scores(e, fmt)[rows]
    agree = (got.argmax(axis=1) == e.featx[rows].argmax(axis=1)).mean()
    print(f"{fmt} int8: top-1 agreement with featx predict {agree:.3f} on {len(rows)} images")
    assert agree >= 0.97


# --- the docs' consumer examples, as written ----------------------------------------------

def doc_examples() -> dict[str, str]:
    text = DOC.read_text()
    return dict(re.findall(r"<!-- example: (\w+) -->\s*```python\n(.*?)```", text, re.S))


def test_the_docs_have_one_example_per_format():
    assert sorted(doc_examples()) == sorted(FLOAT)


def imported(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return names


# Each example may import its runtime, Pillow, NumPy and the standard library: no featx.
RUNTIMES = {"onnx": {"onnxruntime"}, "litert": {"ai_edge_litert"}, "openvino": {"openvino"},
            "savedmodel": {"tensorflow"}, "keras": {"keras"}}
# Run in a fresh process, where what it imports can be seen: the runtimes without TensorFlow.
FRESH = ("onnx", "litert", "openvino")
CHECK = ("import sys\nexec(compile(open('example.py').read(), 'example.py', 'exec'))\n"
         "print('imported:', *sorted({m.split('.')[0] for m in sys.modules} & "
         "{'featx', 'tensorflow', 'keras', 'sklearn', 'h5py'}))\n")


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("fmt", FLOAT)
def test_each_docs_example_runs_as_written(flowers17_exports, fmt, tmp_path):
    e = flowers17_exports
    code = doc_examples()[fmt]
    assert imported(code) <= {"json", "zipfile", "numpy", "PIL", *RUNTIMES[fmt]}
    image = 7  # a test image; the example must print featx predict's label and score for it
    shutil.copy(e.paths[image], tmp_path / "flower.jpg")
    source = artifact(e.folder, fmt, False)
    (tmp_path / source.name).symlink_to(source)
    if fmt == "openvino":
        (tmp_path / source.with_suffix(".bin").name).symlink_to(source.with_suffix(".bin"))
    if fmt in FRESH:
        (tmp_path / "example.py").write_text(code)
        done = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout.splitlines()
        assert out[-1] == "imported:", out  # none of featx, TensorFlow, scikit-learn
        out = out[:-1]
    else:
        printed = io.StringIO()
        with contextlib.chdir(tmp_path), contextlib.redirect_stdout(printed):
            exec(compile(code, f"{DOC.name}:{fmt}", "exec"), {"__name__": "__example__"})
        out = printed.getvalue().splitlines()
    label, score = out[-1].rsplit(" ", 1)
    want = e.featx[image]
    print(f"{fmt} example: {out[-1]} (featx predict: {e.classes[want.argmax()]} "
          f"{want.max():.6f})")
    assert label == e.classes[int(want.argmax())]
    assert abs(float(score) - float(want.max())) <= 1e-4
