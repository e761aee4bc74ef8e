"""featx predict: a saved model labels image files through the backbone it was trained on."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
from helpers import assert_close, featx_here, one_error_line
from realdata import (
    FLOWERS17,
    WEIGHTS,
    keras_home_of,
    keras_home_set,
    needs_shared,
    store_of,
    unavailable,
)

from featx.cli import main
from featx.core.config import BackboneConfig
from featx.core.errors import ModelFileError, UsageError
from featx.data.dataset import TEST, TRAIN
from featx.features.backbones import Backbone
from featx.learn.classification import classify, load_model
from featx.learn.modelfile import save as save_bundle
from featx.learn.predict import CSV_HEADER, Predictor, image_files, run
from featx.store.read import FeatureStore


@pytest.fixture(scope="module")
def models(tiny_store, tmp_path_factory, make_config):
    """logreg and linear_svm bundles trained on the tiny store, by classifier name."""
    out = tmp_path_factory.mktemp("predict-models")
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out))
    results = classify(config, tiny_store.path)
    run = out / results[0]["run"]
    return {name: run / f"tiny-{name}.skops" for name in ("logreg", "linear_svm")}


@pytest.fixture(scope="module")
def held_out(tiny_store):
    """Absolute paths, stored features and labels of the store's test rows."""
    with FeatureStore(tiny_store.path) as store:
        rows = np.flatnonzero((store.split == TEST) & store.ok)
        paths = [str(tiny_store.root / store.paths[i]) for i in rows]
        return paths, store.features(rows), store.labels[rows], store.label_names


@pytest.mark.parametrize("name", ["logreg", "linear_svm"])
def test_predictions_agree_with_the_classifier_on_stored_features(models, held_out, name):
    paths, stored, labels, names = held_out
    predictor = Predictor.load(models[name])
    assert predictor.classes == names
    # The same reader and backbone give the stored numbers back (other batch size, too).
    computed, ok, reasons = predictor.features(paths, batch_size=3)
    assert ok.all() and not reasons
    np.testing.assert_allclose(computed, stored, rtol=1e-4, atol=1e-6 * np.abs(stored).max())
    expected = [names[c] for c in predictor.model.predict(stored)]
    predictions = predictor.top_k(paths, k=2, batch_size=3)
    assert [p.path for p in predictions] == paths
    assert [p.labels[0][0] for p in predictions] == expected
    for p in predictions:
        assert not p.error and len(p.labels) == 2
        assert p.labels[0][1] >= p.labels[1][1]
    proba = predictor.predict_proba(stored)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (proba >= 0).all()


def test_scores_are_probabilities_or_a_softmax_said_so(models):
    logreg, svm = Predictor.load(models["logreg"]), Predictor.load(models["linear_svm"])
    assert logreg.probabilities and logreg.calibration == "probabilities"
    assert not svm.probabilities and "softmax of decision values" in svm.calibration
    assert "linear_svm" in svm.calibration


def test_the_bundle_records_the_feature_settings(models, tiny_store):
    bundle = load_model(models["logreg"])
    with FeatureStore(tiny_store.path) as store:
        attrs = store.attrs
    assert bundle["settings_key"] == attrs["settings_key"]
    assert bundle["feature_shape"] == attrs["feature_shape"] == [1280]
    assert bundle["classifier"] == "logreg"
    assert bundle["extracted_by"]["backbone"]["input_size"] == 32


def tiny_backbone(**changes) -> Backbone:
    settings = {"name": "MobileNetV2", "weights": "none", "input_size": 32, "pooling": "avg",
                **changes}
    return Backbone(BackboneConfig(**settings), seed=42)


def test_the_same_settings_are_accepted(models):
    bundle = load_model(models["logreg"])
    assert Predictor(bundle, tiny_backbone()).classes  # the control for the refusals below


@pytest.mark.parametrize("changes, named", [
    ({"pooling": "max"}, "pooling"),
    ({"input_size": 48}, "input_size"),
    ({"layer": "block_16_project"}, "layer"),
])
def test_other_feature_settings_are_refused(models, changes, named):
    bundle = load_model(models["logreg"])
    with pytest.raises(ModelFileError, match=f"trained on: .*{named}="):
        Predictor(bundle, tiny_backbone(**changes))


def test_other_random_weights_are_refused(models):
    bundle = load_model(models["logreg"])
    backbone = Backbone(BackboneConfig(name="MobileNetV2", weights="none", input_size=32), seed=7)
    with pytest.raises(ModelFileError, match="random:seed=7.*random:seed=42"):
        Predictor(bundle, backbone)


def test_a_weights_file_that_is_not_the_trained_one_is_refused(models, tmp_path, capsys):
    other = tmp_path / "other.h5"
    other.write_bytes(b"some other weights")
    with pytest.raises(ModelFileError, match="not the ones the model was trained with"):
        Predictor.load(models["logreg"], weights=other)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["predict", str(models["logreg"]), str(image), "--weights", str(other)]) == 2
    one_error_line(capsys.readouterr().err, other)


def test_a_tampered_bundle_is_refused_by_its_settings_key(models, tmp_path):
    bundle = load_model(models["logreg"])
    bundle["extracted_by"]["backbone"]["pooling"] = "max"
    save_bundle(tmp_path / "tampered.skops", bundle)
    with pytest.raises(ModelFileError, match="pooling='avg' \\(now 'max'\\)"):
        Predictor.load(tmp_path / "tampered.skops")
    # A setting the recorded backbone dict does not list is still caught by the key.
    bundle = load_model(models["logreg"])
    bundle["backbone"].pop("pooling")
    bundle["extracted_by"]["backbone"]["pooling"] = "max"
    with pytest.raises(ModelFileError, match="settings key"):
        Predictor(bundle, tiny_backbone(pooling="max"))


def test_features_of_another_width_are_refused(models):
    predictor = Predictor.load(models["logreg"])
    with pytest.raises(ModelFileError, match="width 640.*width 1280"):
        predictor.predict_proba(np.zeros((2, 640), np.float32))


def test_missing_or_foreign_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="no saved model"):
        Predictor.load(tmp_path / "absent.skops")
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ModelFileError, match="refused: not a skops file"):
        Predictor.load(tmp_path / "junk.joblib")
    with pytest.warns(UserWarning, match="you said you trust it"), \
            pytest.raises(ModelFileError, match="not a featx model bundle"):
        Predictor.load(tmp_path / "junk.joblib", trust=True)
    save_bundle(tmp_path / "dict.skops", {"model": None})
    with pytest.raises(ModelFileError, match="not a featx model bundle"):
        Predictor.load(tmp_path / "dict.skops")
    joblib.dump({"model": None}, tmp_path / "dict.joblib")
    with pytest.warns(UserWarning), pytest.raises(ModelFileError, match="not a featx model"):
        Predictor.load(tmp_path / "dict.joblib", trust=True)


def test_folders_expand_recursively_to_image_files(tiny_root, tmp_path):
    root, written = tiny_root
    expected = sorted(str(root / rel) for rels in written.values() for rel in rels)
    assert image_files([root]) == expected  # no .txt/.db/.DS_Store, no hidden folder
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(root / written["cat"][0], nested / "deep.PNG")
    (tmp_path / "a" / "note.txt").write_text("x")
    single = str(root / written["fox"][1])
    assert image_files([single, tmp_path / "a"]) == [single, str(nested / "deep.PNG")]


def test_csv_output(models, held_out, tmp_path):
    paths, _, _, names = held_out
    out = io.StringIO()
    assert run(str(models["logreg"]), paths[:4], top=2, csv_file="-", out=out) == 0
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == CSV_HEADER
    assert [r[0] for r in rows[1:]] == [p for p in paths[:4] for _ in range(2)]
    assert [r[1] for r in rows[1:]] == ["1", "2"] * 4
    for first, second in zip(rows[1::2], rows[2::2]):
        assert first[2] in names and second[2] in names and first[2] != second[2]
        assert 1.0 >= float(first[3]) >= float(second[3]) >= 0.0 and first[4] == ""
    # With a FILE: the table on stdout and the same CSV in the file.
    table = io.StringIO()
    run(str(models["logreg"]), paths[:4], top=2, csv_file=str(tmp_path / "p.csv"), out=table)
    assert (tmp_path / "p.csv").read_text() == out.getvalue()
    lines = table.getvalue().splitlines()
    assert lines[0].startswith("# ") and "scores: probabilities" in lines[0]
    assert [line.split("  ")[0] for line in lines[1:]] == paths[:4]


def test_an_unreadable_image_is_reported_on_its_line(models, tiny_root, tmp_path, capsys):
    root, written = tiny_root
    folder = tmp_path / "in"
    folder.mkdir()
    good = [shutil.copy(root / written[c][0], folder / f"{c}.png") for c in ("cat", "dog")]
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = tmp_path / "gone.png"
    csv_path = tmp_path / "out.csv"
    code = main(["predict", str(models["linear_svm"]), str(folder), str(missing), "--top", "3",
                 "--csv", str(csv_path)])
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "softmax of decision values" in lines[0]
    by_path = {line.split("  ")[0]: line for line in lines[1:]}
    assert set(by_path) == {str(folder / "broken.jpg"), *map(str, good), str(missing)}
    rest = {path: line[len(path):] for path, line in by_path.items()}  # the tmp path says
    assert rest[str(folder / "broken.jpg")].startswith("  unreadable: ")  # "unreadable" too
    assert rest[str(missing)].startswith("  unreadable: ")
    for path in good:
        assert "unreadable" not in rest[str(path)] and len(rest[str(path)].split()) == 6
    assert "2 of 4 images unreadable" in captured.err
    rows = list(csv.DictReader(csv_path.open()))
    bad = [r for r in rows if r["error"]]
    assert sorted(r["path"] for r in bad) == sorted([str(folder / "broken.jpg"), str(missing)])
    assert all(r["rank"] == r["label"] == r["score"] == "" for r in bad)
    assert len(rows) == len(bad) + 3 * len(good)


def test_a_folder_without_images_is_a_one_line_error(models, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["predict", str(models["logreg"]), str(tmp_path)]) == 2
    assert "no image files" in one_error_line(capsys.readouterr().err, tmp_path)


def test_top_k_must_be_positive(models, held_out):
    with pytest.raises(UsageError, match="--top"):
        Predictor.load(models["logreg"]).top_k(held_out[0][:1], k=0)


@pytest.mark.slow
def test_a_moved_weights_file_is_accepted_and_another_refused(tiny_root, tmp_path, make_config):
    """Trained with a weights file; on 'another machine' the same bytes elsewhere work."""
    import keras

    from featx.features.extraction import extract

    def save_weights(path: Path, seed: int) -> Path:
        keras.utils.set_random_seed(seed)
        net = keras.applications.MobileNetV2(include_top=False, weights=None,
                                             input_shape=(32, 32, 3))
        net.save_weights(path)
        return path

    trained = save_weights(tmp_path / "trained.weights.h5", 1)
    root, written = tiny_root
    config = make_config(root, tmp_path / "cache", out=str(tmp_path / "out"),
                         backbone={"weights": str(trained)}, classify={"classifiers": ["logreg"]})
    store = extract(config, progress=False).path
    results = classify(config, store)
    model = tmp_path / "out" / results[0]["run"] / "tiny-logreg.skops"
    moved = tmp_path / "elsewhere" / "copy.weights.h5"
    moved.parent.mkdir()
    shutil.move(trained, moved)
    with pytest.raises(ModelFileError, match="trained with is not at .*--weights PATH"):
        Predictor.load(model)
    predictor = Predictor.load(model, weights=moved)
    with FeatureStore(store) as s:
        rows = np.flatnonzero(s.split == TEST)
        paths = [str(root / s.paths[i]) for i in rows]
        stored = s.features(rows)
    expected = [predictor.classes[i] for i in predictor.predict_proba(stored).argmax(axis=1)]
    assert [p.labels[0][0] for p in predictor.top_k(paths, k=1)] == expected
    other = save_weights(tmp_path / "other.weights.h5", 2)
    with pytest.raises(ModelFileError, match="not the ones the model was trained with"):
        Predictor.load(model, weights=other)


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_real_flowers_held_out_images_are_labelled(flowers17, flowers17_logreg):
    """`featx predict` (ImageNet weights from a seeded KERAS_HOME, as the session's store was
    extracted) on a quarter of the held-out Flowers-17 images, with the
    session's logistic regression: right, and the same labels as from the stored features."""
    _, model = flowers17_logreg
    with FeatureStore(store_of(flowers17)) as s:
        rows = np.flatnonzero(s.split == TEST)
        assert len(rows) == 340 and not (s.split[rows] == TRAIN).any()
        rows = rows[::4]  # 85 images, every class
        paths = [str(FLOWERS17 / s.paths[i]) for i in rows]
        truth = [s.label_names[c] for c in s.labels[rows]]
        stored = s.features(rows)
    assert len(set(truth)) == 17
    with keras_home_set(keras_home_of(flowers17)):
        done = featx_here("predict", model, *paths, "--top", "3", "--csv")
    assert done.returncode == 0, done.stderr[-3000:]
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    top1 = {r["path"]: r["label"] for r in table if r["rank"] == "1"}
    top3 = {}
    for r in table:
        top3.setdefault(r["path"], set()).add(r["label"])
    assert sorted(top1) == sorted(paths)
    accuracy = np.mean([top1[p] == t for p, t in zip(paths, truth)])
    in_top3 = np.mean([t in top3[p] for p, t in zip(paths, truth)])
    predictor = Predictor.load(model)
    from_store = [predictor.classes[i] for i in predictor.predict_proba(stored).argmax(axis=1)]
    agree = np.mean([top1[p] == s for p, s in zip(paths, from_store)])
    print(f"flowers17: top-1 {accuracy:.3f}, top-3 {in_top3:.3f}, "
          f"agreement with stored features {agree:.3f} on {len(paths)} held-out images")
    assert accuracy >= 0.88, accuracy
    assert in_top3 >= 0.95, in_top3
    assert agree == 1.0, agree


# --- a model trained on int8 features (backbone.precision = "int8") -------------------------

@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, make_config):
    """Logistic regression on the int8 store of 40 flowers5 photographs (8 a class; ImageNet
    MobileNetV2 at 96 px, batches of 8, calibrated on 16 of them): (config, model file, the
    store's test rows as (paths copied out of the dataset, stored features)). The tests
    below remove its cache and dataset in turn: the first puts back what it moved."""
    from realdata import flowers5_subset

    from featx.features.extraction import extract

    if not WEIGHTS.is_file():
        unavailable(f"needs {WEIGHTS}")
    base = tmp_path_factory.mktemp("int8-predict")
    root = flowers5_subset(base / "flowers5", 8)
    config = make_config(root, base / "cache", out=str(base / "runs"),
                         extract={"batch_size": 8}, classify={"classifiers": ["logreg"]},
                         backbone={"weights": str(WEIGHTS), "input_size": 96,
                                   "runtime": "openvino", "precision": "int8",
                                   "calibration_images": 16})
    store = extract(config, progress=False).path
    (result,) = classify(config, store)
    with FeatureStore(store) as s:
        assert s.attrs["precision"] == "int8"
        rows = np.flatnonzero((s.split == TEST) & s.ok)
        stored = s.features(rows)
        held_out = base / "held-out"  # copies: they outlive the dataset
        held_out.mkdir()
        paths = [str(shutil.copy(root / s.paths[i], held_out / f"{n:02d}.jpg"))
                 for n, i in enumerate(rows)]
    return config, Path(config.out) / result["run"] / result["model"], paths, stored


@pytest.fixture
def quantisations(monkeypatch):
    """Every call of featx.features.runtime.quantize, counted (it still quantises)."""
    import featx.features.runtime as runtime

    calls, real = [], runtime.quantize

    def spy(model, batches):
        calls.append(sum(len(b) for b in batches))
        return real(model, batches)

    monkeypatch.setattr(runtime, "quantize", spy)
    return calls


def int8_folders(config) -> list[Path]:
    return sorted((config.cache_path / "openvino").glob("MobileNetV2-int8-*"))


@pytest.mark.slow
@pytest.mark.shared
def test_an_int8_model_predicts_with_its_cached_int8_model_without_its_dataset(
        int8_bundle, quantisations, tmp_path):
    """With the dataset gone, featx predict, featx explain and the Python API read the int8
    model the classifier was trained on from the cache folder (found by the calibration it
    records) and give the stored rows back; nothing is quantised, nothing runs in float32.
    featx export-model refuses the model in one line."""
    from featx import api

    config, model, paths, stored = int8_bundle
    root = Path(config.dataset.root)
    [folder] = int8_folders(config)
    assert folder.name.startswith("MobileNetV2-int8-b8-")
    root.rename(root.with_name("away"))
    try:
        predictor = Predictor.load(model)
        assert predictor.backbone.int8_batch == 8
        for batch in (3, 32):  # fewer, then more images a call than the model's batch of 8
            x, ok, _ = predictor.features(paths, batch_size=batch)
            assert ok.all()
            assert_close(x, stored, rtol=1e-4)  # float32's differ by > 1e-3 of the largest
        expected = [predictor.classes[i] for i in predictor.predict_proba(stored).argmax(1)]
        done = featx_here("predict", model, *paths, "--top", "1", "--csv")
        assert done.returncode == 0, done.stderr[-3000:]
        assert [r["label"] for r in csv.DictReader(io.StringIO(done.stdout))] == expected
        assert api.load_model(model).predict(paths) == expected
        done = featx_here("explain", model, paths[0], "--out", tmp_path / "explained",
                          "--neighbours", "0")
        assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / "explained" / "index.html").is_file()
        assert quantisations == [] and int8_folders(config) == [folder]
        done = featx_here("export-model", model, "--format", "keras",
                          "--out", tmp_path / "m.keras")
        assert done.returncode != 0 and "int8" in one_error_line(done.stderr, model)
        print("export-model ->", done.stderr.strip())
        assert not (tmp_path / "m.keras").exists()
    finally:
        root.with_name("away").rename(root)


@pytest.mark.slow
@pytest.mark.shared
def test_an_int8_model_without_its_cached_int8_model(int8_bundle, quantisations):
    """Its int8 model gone from the cache: quantised again from the dataset the store was
    extracted from, where that gives the same calibration sample (the stored rows back);
    else one line saying what is missing, for predict, explain and export-model alike."""
    from featx.features.plan import plan

    config, model, paths, stored = int8_bundle
    root = Path(config.dataset.root)
    sampled = Path(plan(config).backbone.calibration.files[0])
    shutil.rmtree(config.cache_path / "openvino")
    x, ok, _ = Predictor.load(model).features(paths)
    assert ok.all() and quantisations == [16]
    assert_close(x, stored, rtol=1e-4)
    assert len(int8_folders(config)) == 1

    shutil.rmtree(config.cache_path / "openvino")
    # a sampled image changed: another sample, another int8 model than the classifier's
    target = sampled.resolve()
    sampled.unlink()
    sampled.write_bytes(target.read_bytes() + b"\0")
    done = featx_here("predict", model, paths[0])
    assert done.returncode != 0
    line = one_error_line(done.stderr, model)
    assert "int8 model" in line and "gives another sample" in line, line
    shutil.rmtree(root)  # and now no dataset at all
    for command in (("predict", model, paths[0]),
                    ("explain", model, paths[0], "--out", root.with_name("explained")),
                    ("export-model", model, "--format", "keras",
                     "--out", root.with_name("m.keras"))):
        done = featx_here(*command)
        assert done.returncode != 0, command
        line = one_error_line(done.stderr, model)
        assert f"sample of {root} (seed 42)" in line and "that dataset cannot be read" in line \
            and "restore the dataset" in line, line
        print(command[0], "->", line)
    assert quantisations == [16] and not int8_folders(config)
    assert not root.with_name("m.keras").exists()
