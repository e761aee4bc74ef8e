"""Fine-tuning (the comparison to feature extraction): the two phases change exactly what they
should, training lowers the loss, and the report uses the feature-extraction test rows."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers import one_error_line, saved_figures

from featx.cli import main
from featx.core.config import FinetuneConfig
from featx.data.dataset import TEST, TRAIN, VAL
from featx.learn.finetune import ConfigError, FineTuner, load_image_splits, runs_dir
from featx.store.read import FeatureStore

# Tiny and quick: 2 epochs per phase; learning rates high enough to move in 2 epochs.
TINY = {"warmup_epochs": 2, "warmup_lr": 1e-2, "epochs": 2, "unfreeze": 12, "lr": 0.05,
        "batch_size": 8, "patience": 5, "augment": True, "holdout": 0.15, "seed": 0}


def calibrate_batchnorm(model, images: np.ndarray) -> None:
    """Give a random-weight base the BatchNorm statistics of ``images`` (one pass in training
    mode with momentum 0): random MobileNetV2 shrinks activations to about 1e-13, where no
    head can learn; with these statistics they are of order 1, as with ImageNet weights."""
    import keras

    norms = [layer for layer in model.base.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.trainable, layer.momentum) for layer in norms]
    for layer in norms:
        layer.trainable, layer.momentum = True, 0.0
    model.base(model.backbone.preprocess(images), training=True)
    for layer, (trainable, momentum) in zip(norms, saved):
        layer.trainable, layer.momentum = trainable, momentum


@pytest.fixture
def calibrated(monkeypatch, tiny_root, make_config, tmp_path_factory):
    """Every FineTuner built in the test gets BatchNorm statistics from the tiny images."""
    config = make_config(tiny_root[0], tmp_path_factory.mktemp("calibrate"))
    images = load_image_splits(config).images[TRAIN]
    build = FineTuner._build

    def build_calibrated(self):
        build(self)
        calibrate_batchnorm(self, images)

    monkeypatch.setattr(FineTuner, "_build", build_calibrated)


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))


def weights_by_variable(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


@pytest.fixture(scope="module")
def tiny_images(tiny_root, make_config, tmp_path_factory):
    config = make_config(tiny_root[0], tmp_path_factory.mktemp("ft-cache"), finetune=TINY)
    return config, load_image_splits(config)


@pytest.fixture(scope="module")
def fitted(tiny_images):
    """One two-phase fit, with the base's weights recorded as each phase starts and after
    each epoch (before the best epoch's are restored), and the number of images each call of
    the frozen layers got."""
    config, data = tiny_images
    epochs: list[tuple[str, dict[str, np.ndarray]]] = []

    def log(line: str) -> None:  # called at the end of every epoch
        epochs.append((line.split()[0], weights_by_variable(model.base)))

    model = FineTuner(config.backbone, config.finetune, len(data.label_names),
                      backbone_seed=config.dataset.seed, batch_size=8, log=log)
    calibrate_batchnorm(model, data.images[TRAIN])
    before = weights_by_variable(model.base)
    head_before = weights_by_variable(model.head)
    loss_before = cross_entropy(model.predict_proba(data.images[TRAIN]), data.labels[TRAIN])
    at_phase: dict[str, dict[str, np.ndarray]] = {}
    calls: list[int] = []
    phase, frozen = model._phase, model.frozen_features

    def record_phase(name, *args, **kwargs):
        at_phase[name] = weights_by_variable(model.base)
        return phase(name, *args, **kwargs)

    def record_frozen(images):
        calls.append(len(images))
        return frozen(images)

    model._phase, model.frozen_features = record_phase, record_frozen
    model.fit(data.images[TRAIN], data.labels[TRAIN], data.images[VAL], data.labels[VAL])
    model._phase, model.frozen_features = phase, frozen
    after = weights_by_variable(model.base)
    loss_after = cross_entropy(model.predict_proba(data.images[TRAIN]), data.labels[TRAIN])
    return (model, data, before, head_before, at_phase, after, calls, epochs,
            (loss_before, loss_after))


@pytest.mark.slow
def test_training_lowers_the_training_loss(fitted):
    *_, (loss_before, loss_after) = fitted
    assert loss_after < loss_before
    model = fitted[0]
    assert [row["phase"] for row in model.history] == ["warmup"] * 2 + ["finetune"] * 2
    assert all(row["seconds"] > 0 for row in model.history)


@pytest.mark.slow
def test_warm_up_leaves_the_base_unchanged_and_trains_the_head(fitted):
    model, _, before, head_before, at_phase, *_ = fitted
    assert set(at_phase) == {"warmup", "finetune"}
    for name, value in before.items():  # the base as phase 2 starts: as built
        np.testing.assert_array_equal(at_phase["finetune"][name], value, err_msg=name)
    head_after = weights_by_variable(model.head)
    assert any(not np.array_equal(head_after[k], v) for k, v in head_before.items())


@pytest.mark.slow
def test_phase_two_trains_only_the_top_layers(fitted):
    model, _, before, _, at_phase, after, _, epochs, _ = fitted
    start = at_phase["finetune"]
    trained = {v.path for layer in model.trained_layers for v in layer.trainable_weights}
    assert trained, "phase 2 trains no weights"
    # BatchNorm layers among the top layers are not trained: their weights are not in `trained`.
    assert not any("_bn" in p.lower() for p in trained)
    bn_stats = {n for n in start if "moving_mean" in n or "moving_variance" in n}
    assert bn_stats
    phase2 = [weights for phase, weights in epochs if phase == "finetune"]
    assert len(phase2) == 2
    for weights in phase2:
        changed = {name for name in weights if not np.array_equal(weights[name], start[name])}
        assert changed == trained
        # Every layer below the top N, and every BatchNorm statistic, is as it was.
        for name in set(weights) - trained:
            np.testing.assert_array_equal(weights[name], before[name], err_msg=name)
    # The best phase-2 epoch is kept, or the warmed-up start when no epoch beat it.
    val_losses = [row["val_loss"] for row in model.history if row["phase"] == "finetune"]
    best = phase2[int(np.argmin(val_losses))]
    kept = [w for w in (start, best) if all(np.array_equal(after[k], w[k]) for k in after)]
    assert kept


@pytest.mark.slow
def test_augmentation_mirrors_only_the_training_images(fitted):
    _, data, *_, calls, _, _ = fitted
    # fit: training images and their mirrors, then validation images as they are.
    assert calls[:2] == [2 * len(data.labels[TRAIN]), len(data.labels[VAL])]


def test_test_rows_are_the_feature_extraction_ones(tiny_store, make_config, tmp_path):
    config = make_config(tiny_store.root, tmp_path, finetune=TINY)
    data = load_image_splits(config)
    with FeatureStore(tiny_store.path) as store:
        split, ok, paths, labels = store.split, store.ok, store.paths, store.labels
    test_rows = np.flatnonzero((split == TEST) & ok)
    assert data.paths[TEST] == [paths[i] for i in test_rows]
    np.testing.assert_array_equal(data.labels[TEST], labels[test_rows])
    # No validation split in the pipeline: a stratified part of the training rows holds out.
    store_train = {paths[i] for i in np.flatnonzero((split == TRAIN) & ok)}
    assert set(data.paths[TRAIN]) | set(data.paths[VAL]) == store_train
    assert not set(data.paths[TRAIN]) & set(data.paths[VAL])
    assert set(data.labels[VAL]) == set(range(len(data.label_names)))


def test_a_validation_split_in_the_pipeline_is_used_as_it_is(tiny_root, make_config, tmp_path):
    from featx.data.dataset import load_dataset, stratified_split

    config = make_config(tiny_root[0], tmp_path, finetune=TINY,
                         dataset={"val": 0.2, "test": 0.25})
    data = load_image_splits(config)
    dataset = load_dataset(config.dataset)
    split = stratified_split(dataset.labels, 0.2, 0.25, config.dataset.seed)
    assert data.paths[VAL] == [dataset.paths[i] for i in np.flatnonzero(split == VAL)]
    assert data.paths[TRAIN] == [dataset.paths[i] for i in np.flatnonzero(split == TRAIN)]


@pytest.mark.slow
def test_finetune_reports_like_classify_and_saves_the_model(tiny_store, make_config, tmp_path,
                                                            capsys, calibrated):
    import keras

    from featx.features.backbones import Backbone
    from featx.learn.classification import classify
    from featx.report import runs

    reference = classify(make_config(tiny_store.root, tiny_store.config.cache_dir,
                                     out=str(tmp_path / "ref"),
                                     classify={"classifiers": ["logreg"]}))
    cache = tmp_path / "cache"
    assert main(["finetune", "--data", str(tiny_store.root), "--weights", "none",
                 "--input-size", "32", "--cache-dir", str(cache), "--no-progress",
                 *[f"--set=finetune.{k}={json.dumps(v)}" for k, v in TINY.items()],
                 "--set=name=tiny"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("finetune") and "rank-1" in line
    assert "; val " in line and "; cv " not in line  # its validation accuracy, named so

    runs_folder = runs_dir(make_config(tiny_store.root, cache), tiny_store.root.name,
                           "MobileNetV2")
    (out,) = runs_folder.iterdir()  # the run's own folder
    result = json.loads((out / "tiny-finetune.json").read_text())
    # every field of a classify result but what a classify run records about itself
    run_record = {"run", "started", "duration_seconds", "classify", "versions", "machine",
                  "files", "model"}
    assert set(reference[0]) - run_record <= set(result)
    assert result["classifier"] == "finetune" and result["best_params"]["unfreeze"] == 12
    assert result["backbone"]["input_size"] == 32 and result["backbone"]["weights"] == "none"
    with FeatureStore(tiny_store.path) as store:
        n_test = int(np.sum((store.split == TEST) & store.ok))
    assert result["n_test"] == reference[0]["n_test"] == n_test
    assert result["n_train"] == reference[0]["n_train"]

    # The saved network is the one reported on: same rank-1 on the same test images.
    config = make_config(tiny_store.root, cache, finetune=TINY)
    data = load_image_splits(config)
    saved = keras.models.load_model(out / "tiny-finetune.keras")
    backbone = Backbone(dataclasses.replace(config.backbone, pooling="none"))
    probabilities = saved.predict(np.asarray(backbone.preprocess(data.images[TEST])), verbose=0)
    rank1 = float(np.mean(np.argmax(probabilities, axis=1) == data.labels[TEST]))
    assert rank1 == pytest.approx(result["rank1"])

    # The score it stopped on is named for what it is, on the page and in the Markdown.
    for suffix in (".html", ".md"):
        text = (out / f"tiny-finetune{suffix}").read_text().lower()
        assert "validation accuracy" in text and "cross-validated" not in text, suffix

    # `featx runs` lists it beside the feature-extraction runs.
    listed = runs.load_runs(runs.find_results(cache))
    assert [row["classifier"] for row in listed] == ["finetune"]


def test_settings_that_cannot_work_are_errors(tiny_root, make_config, tmp_path, capsys):
    config = make_config(tiny_root[0], tmp_path)
    with pytest.raises(ConfigError, match="pooling"):
        FineTuner(dataclasses.replace(config.backbone, pooling="none"), FinetuneConfig(), 3)
    with pytest.raises(ConfigError, match="warmup_optimizer"):
        FineTuner(config.backbone, FinetuneConfig(warmup_optimizer="lbfgs"), 3)
    assert main(["finetune", "--data", str(tiny_root[0]), "--weights", "none",
                 "--input-size", "32", "--cache-dir", str(tmp_path), "--set", "dataset.val=0",
                 "--set", "finetune.holdout=0"]) == 2
    assert "finetune.holdout" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_epochs_zero_trains_the_head_only(tiny_images):
    """finetune.epochs = 0 (README: "0: the head only") warms the head up and stops there."""
    config, data = tiny_images
    settings = dataclasses.replace(config.finetune, epochs=0)
    model = FineTuner(config.backbone, settings, len(data.label_names),
                      backbone_seed=config.dataset.seed, batch_size=8)
    before = weights_by_variable(model.base)
    model.fit(data.images[TRAIN], data.labels[TRAIN], data.images[VAL], data.labels[VAL])
    assert {row["phase"] for row in model.history} == {"warmup"}
    for name, value in weights_by_variable(model.base).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert 0.0 <= model.val_accuracy <= 1.0
    assert model.predict_proba(data.images[TEST]).shape == (len(data.labels[TEST]),
                                                            len(data.label_names))


@pytest.mark.slow
def test_finetune_repeats_over_seeded_splits(tiny_store, make_config, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["finetune", "--data", str(tiny_store.root), "--weights", "none",
                 "--input-size", "32", "--cache-dir", str(cache), "--no-progress",
                 *[f"--set=finetune.{k}={json.dumps(v)}" for k, v in TINY.items()],
                 "--set=name=tiny", "--set=classify.repeats=2"]) == 0
    assert "over 2 splits" in capsys.readouterr().out
    out = runs_dir(make_config(tiny_store.root, cache), tiny_store.root.name, "MobileNetV2")
    (result_file,) = out.glob("*/tiny-finetune.json")
    result = json.loads(result_file.read_text())
    assert result["repeats"]["seeds"] == [42, 43] and len(result["repeats"]["rank1"]) == 2
    assert result["rank1"] == pytest.approx(np.mean(result["repeats"]["rank1"]))


def test_the_monitor_legend_covers_no_line_and_no_phase_name(monkeypatch):
    """The legend sits below the axes: it overlaps neither plot (its lines, stars and shaded
    phases) nor the phase names, which sit above the axes."""

    from featx.report.charts import monitor_png

    figures = saved_figures(monkeypatch)
    history = [{"phase": phase, "loss": 1.0 / e, "accuracy": 0.5 + e / 10,
                "val_loss": 1.2 / e, "val_accuracy": 0.4 + e / 10}
               for phase in ("warmup", "finetune") for e in (1, 2, 3)]
    monitor_png(history, {"warmup": 3, "finetune": 2}, "tiny")
    (fig,) = figures
    (legend,) = fig.legends  # extents as drawn in the saved PNG
    box = legend.get_window_extent()
    assert [t.get_text() for t in legend.get_texts()] == [
        "training", "validation (held-out rows)", "kept epoch"]
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_ylabel()
        names = [t for t in ax.texts if t.get_text() in ("warmup", "finetune")]
        assert len(names) == 2
        for name in names:
            assert not box.overlaps(name.get_window_extent())
            # above the plot, not on its lines
            assert name.get_window_extent().y0 >= ax.get_window_extent().y1
