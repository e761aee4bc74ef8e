"""Fine-tuning, as the comparison to feature extraction: the same backbone (registry,
weights, input size, preprocessing) with a new head (global pooling, dropout, dense softmax),
trained in two phases on the same split.

Phase 1 (warm-up) trains the head alone, the base frozen, with Adam or RMSprop. Phase 2
trains the top ``unfreeze`` layers of the base with the head, by SGD with momentum at a
small learning rate. BatchNormalization layers stay frozen and in inference mode throughout
(their moving statistics are ImageNet's). Each phase stops early on the validation loss and
keeps its best weights.

Layers below the first trained one never change and run in inference mode, so their output
is a fixed function of the image: it is computed once per image (and per mirror image, the
augmentation) and both phases train on it. That is exact, not an approximation, and makes an
epoch cost only the top layers. The cut is placed at the highest point at or below the first
trained layer where a single tensor crosses (MobileNetV2's residual blocks cannot be cut in
the middle); frozen layers between the cut and the first trained layer stay frozen.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.backbones import Backbone
from featx.config import OPTIMIZERS, BackboneConfig, Config, FinetuneConfig
from featx.dataset import TEST, TRAIN, VAL, load_dataset, manifest_digest, stratified_split
from featx.errors import FinetuneError
from featx.images import READ_POLICY, ReadErrors, read_batches
from featx.log import import_tensorflow
from featx.report import beside, evaluate, repeat_summary, summary_line, write_reports
from featx.store import safe_name, store_key

log = logging.getLogger(__name__)

HEAD_POOLINGS = ("avg", "max", "flatten")
MOMENTUM = 0.9



@dataclass
class ImageSplits:
    """Decoded uint8 images, labels and dataset-relative paths of the train, val and test rows.

    Test rows are exactly the feature-extraction test rows (same split, readable images
    only); val rows are the pipeline's validation split, or, when it has none, a stratified
    ``finetune.holdout`` share of the training rows."""
    label_names: list[str]
    images: dict[int, np.ndarray]
    labels: dict[int, np.ndarray]
    paths: dict[int, list[str]]
    dataset: str
    key: str  # the images: path, label and signature of every one
    root: str = ""  # the dataset folder (the report's gallery shows its images)


def load_image_splits(config: Config) -> ImageSplits:
    """Decode every image of the dataset once (featx's reader) and split it."""
    dataset = load_dataset(config.dataset)
    d = config.dataset
    split = stratified_split(dataset.labels, d.val, d.test, d.seed)
    size = Backbone(config.backbone).input_size
    errors = ReadErrors()
    images = np.empty((len(dataset), size, size, 3), np.uint8)
    ok = np.zeros(len(dataset), bool)
    absolute = [dataset.absolute(i) for i in range(len(dataset))]
    for first, batch, batch_ok in read_batches(absolute, size, config.extract.batch_size, errors,
                                               resize=config.backbone.resize):
        images[first:first + len(batch)] = batch
        ok[first:first + len(batch)] = batch_ok
    if errors.reasons:
        listing = "; ".join(f"{dataset.paths[i]}: {r}" for i, r in sorted(errors.reasons.items()))
        if config.extract.strict:
            raise FinetuneError(f"{len(errors.reasons)} unreadable image(s) under "
                                f"{dataset.root} (--strict): {listing[:2000]}")
        log.warning("skipped %d unreadable image(s): %s", len(errors.reasons), listing[:500])
    rows = {s: np.flatnonzero((split == s) & ok) for s in (TRAIN, VAL, TEST)}
    if not len(rows[TEST]):
        raise FinetuneError(f"{dataset.root}: the split has no test rows (dataset.test = 0?)")
    if not len(rows[VAL]):
        holdout = config.finetune.holdout
        if not 0 < holdout < 1:
            raise FinetuneError("fine-tuning stops early on a validation split: set "
                                "dataset.val > 0 or finetune.holdout in (0, 1)")
        sub = stratified_split(dataset.labels[rows[TRAIN]], holdout, 0.0, d.seed)
        rows[VAL], rows[TRAIN] = rows[TRAIN][sub == VAL], rows[TRAIN][sub == TRAIN]
    signatures = dataset.signatures(content=d.hash == "content")
    return ImageSplits(
        dataset.label_names, {s: images[r] for s, r in rows.items()},
        {s: dataset.labels[r] for s, r in rows.items()},
        {s: [dataset.paths[i] for i in r] for s, r in rows.items()}, dataset.name,
        manifest_digest(dataset, signatures), str(dataset.root))


def _crossing(layers: list, k: int, output) -> list:
    """The tensors that layers[:k] hand to layers[k:] (or to the model output)."""
    from keras import tree

    below = {id(layer) for layer in layers[:k]}
    found: dict[int, Any] = {}
    consumed = [t for layer in layers[k:] for t in tree.flatten(layer.input)] + [output]
    for t in consumed:
        if id(t._keras_history.operation) in below:
            found[id(t)] = t
    return list(found.values())


class FineTuner:
    """The backbone with a new head, fitted in two phases (see the module docstring).

    ``fit(x, y, x_val, y_val)`` takes uint8 RGB images at the backbone's input size;
    ``predict_proba(x)`` returns class probabilities; ``save(path)`` writes the whole
    network (preprocessed images in, probabilities out) as a ``.keras`` file.
    """

    def __init__(self, backbone: BackboneConfig, settings: FinetuneConfig, n_classes: int,
                 backbone_seed: int = 0, batch_size: int = 32,
                 log: Callable[[str], None] | None = None) -> None:
        if backbone.pooling not in HEAD_POOLINGS:
            raise FinetuneError(f"backbone.pooling = {backbone.pooling!r}: the fine-tuning head "
                                f"needs one of {', '.join(HEAD_POOLINGS)}")
        if "," in backbone.layer:
            raise FinetuneError(f"backbone.layer = {backbone.layer!r}: fine-tuning puts its head "
                                "on one layer")
        if settings.warmup_optimizer not in OPTIMIZERS:
            raise FinetuneError(f"finetune.warmup_optimizer = {settings.warmup_optimizer!r}; "
                                f"valid: {', '.join(OPTIMIZERS)}")
        if settings.unfreeze < 0 or settings.epochs < 0 or settings.warmup_epochs < 0:
            raise FinetuneError("finetune.unfreeze, epochs and warmup_epochs must be >= 0")
        if not 0 <= settings.dropout < 1:
            raise FinetuneError(f"finetune.dropout = {settings.dropout} must be in [0, 1)")
        self.settings = settings
        self.n_classes = n_classes
        self.batch_size = batch_size  # inference batches (the frozen part)
        self.log = log or (lambda line: None)
        self.history: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        # The spatial map: pooling belongs to the head.
        self.backbone = Backbone(dataclasses.replace(backbone, pooling="none"),
                                 seed=backbone_seed)
        self.pooling = backbone.pooling
        self._build()

    def _build(self) -> None:
        import keras
        tf = import_tensorflow()

        base = self.backbone.model
        self.base = base
        layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
        n_unfreeze = self.settings.unfreeze if self.settings.epochs else 0
        first = max(len(layers) - n_unfreeze, 0)
        self.trained_layers = layers[first:]
        cut = first
        while cut > 0 and len(_crossing(layers, cut, base.output)) != 1:
            cut -= 1  # cut 0 is the image input itself
        (tensor,) = _crossing(layers, cut, base.output) if cut else (base.input,)
        self.cut_layer = layers[cut - 1].name if cut else "(input)"
        self.bottom = keras.Model(base.input, tensor) if cut else None
        self.top = keras.Model(tensor, base.output) if cut < len(layers) else None

        base.trainable = True
        for i, layer in enumerate(layers):
            # BatchNorm keeps ImageNet's statistics: non-trainable layers run in inference mode.
            layer.trainable = i >= first and not isinstance(layer, keras.layers.BatchNormalization)

        seed = self.settings.seed  # the head's initial weights, dropout and shuffling
        keras.utils.set_random_seed(seed)
        self.pool = {"avg": keras.layers.GlobalAveragePooling2D(),
                     "max": keras.layers.GlobalMaxPooling2D(),
                     "flatten": keras.layers.Flatten()}[self.pooling]
        self.dropout = keras.layers.Dropout(self.settings.dropout, seed=seed)
        self.dense = keras.layers.Dense(self.n_classes, activation="softmax", dtype="float32",
                                        name="predictions")
        cut_input = keras.Input(tuple(tensor.shape[1:]), name="cut")
        x = self.top(cut_input, training=False) if self.top is not None else cut_input
        pooled = self.pool(x)
        self.network = keras.Model(cut_input, self.dense(self.dropout(pooled)), name="finetune")
        self.pooled = keras.Model(cut_input, pooled)
        head_input = keras.Input(tuple(pooled.shape[1:]), name="pooled")
        self.head = keras.Model(head_input, self.dense(self.dropout(head_input)), name="head")

        bottom, preprocess = self.bottom, self.backbone.preprocess

        # No autograph: it re-reads the source of what it converts from disk.
        @tf.function(reduce_retracing=True, autograph=False)
        def frozen(images):
            x = preprocess(images)
            return bottom(x, training=False) if bottom is not None else x

        self._frozen = frozen

    def frozen_features(self, images: np.ndarray) -> np.ndarray:
        """The output of the frozen layers below the cut (uint8 images in)."""
        if not len(images):
            return np.zeros((0, *self.network.input.shape[1:]), np.float32)
        return np.concatenate([np.asarray(self._frozen(images[i:i + self.batch_size]))
                               for i in range(0, len(images), self.batch_size)])

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
            ) -> FineTuner:
        import_tensorflow()
        import keras

        s = self.settings
        started = time.perf_counter()
        if s.augment:  # the mirror image of every training image (only training images)
            x, y = np.concatenate([x, x[:, :, ::-1]]), np.concatenate([y, y])
        a, a_val = self.frozen_features(x), self.frozen_features(x_val)
        self.timings["frozen_features_s"] = time.perf_counter() - started

        started = time.perf_counter()
        p, p_val = (self.pooled.predict(v, batch_size=self.batch_size, verbose=0)
                    for v in (a, a_val))
        warm = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[
            s.warmup_optimizer](learning_rate=s.warmup_lr)
        self._phase("warmup", self.head, warm, s.warmup_epochs, p, y, p_val, y_val)
        self.timings["warmup_s"] = time.perf_counter() - started

        started = time.perf_counter()
        sgd = keras.optimizers.SGD(learning_rate=s.lr, momentum=MOMENTUM)
        self._phase("finetune", self.network, sgd, s.epochs, a, y, a_val, y_val,
                    keep_start=True)
        self.timings["finetune_s"] = time.perf_counter() - started
        self.val_loss, self.val_accuracy = (float(v) for v in self.network.evaluate(
            a_val, y_val, batch_size=self.batch_size, verbose=0))
        return self

    def _phase(self, phase: str, model, optimizer, epochs: int, x, y, x_val, y_val,
               keep_start: bool = False) -> None:
        """Train ``model`` up to ``epochs``, stopping early, and keep the weights of the best
        validation loss (``keep_start``: the weights it starts with count as a candidate)."""
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        if not epochs:
            return
        baseline = float("inf")
        if keep_start:
            baseline = float(model.evaluate(x_val, y_val, batch_size=self.batch_size,
                                            verbose=0)[0])
        keeper = _KeepBest(phase, self.settings.patience, baseline, self.history, self.log,
                           epochs)
        model.fit(x, y, batch_size=self.settings.batch_size, epochs=epochs, shuffle=True,
                  validation_data=(x_val, y_val), callbacks=[keeper], verbose=0)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        a = self.frozen_features(images)
        return self.network.predict(a, batch_size=self.batch_size, verbose=0)

    def save(self, path: str | Path) -> Path:
        """The whole network as one ``.keras`` file: input is the image preprocessed as the
        backbone's ``preprocess`` says (recorded in the result JSON)."""
        import_tensorflow()
        import keras

        full = keras.Model(self.base.input, self.dense(self.dropout(self.pool(self.base.output))),
                           name=f"featx_finetune_{self.backbone.spec.name}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        full.save(path)
        return path


@functools.cache
def _keep_best_callback():
    import_tensorflow()
    import keras

    class KeepBest(keras.callbacks.Callback):
        """Early stopping on the validation loss that restores the best weights, including
        the weights the phase started from when no epoch beats them; logs epoch times."""

        def __init__(self, phase, patience, baseline, history, log, epochs):
            super().__init__()
            self.phase, self.patience, self.best = phase, patience, baseline
            self.history, self.log, self.epochs = history, log, epochs
            self.wait = 0

        def on_train_begin(self, logs=None):
            self.best_weights = self.model.get_weights()

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            row = {"phase": self.phase, "epoch": epoch + 1, "seconds": round(seconds, 3),
                   **{k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")}}
            self.history.append(row)
            self.log(f"{self.phase:<8} epoch {epoch + 1:>2}/{self.epochs}  "
                     f"loss {row['loss']:.3f} acc {row['accuracy']:.3f}  val loss "
                     f"{row['val_loss']:.3f} acc {row['val_accuracy']:.3f}  ({seconds:.1f}s)")
            if row["val_loss"] < self.best:
                self.best, self.wait = row["val_loss"], 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
                if self.wait >= self.patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.model.set_weights(self.best_weights)

    return KeepBest


def _KeepBest(*args):  # noqa: N802 - built lazily: keras is imported only when needed
    return _keep_best_callback()(*args)


def runs_dir(config: Config, dataset: str, backbone: str) -> Path:
    """``--out``, else ``<cache_dir>/<dataset>-<backbone>-finetune.runs/`` (beside the
    feature stores, where ``featx runs`` finds it)."""
    if config.out:
        return Path(config.out)
    return config.cache_path / f"{safe_name(dataset)}-{backbone}-finetune.runs"


def finetune(config: Config, echo: Callable[[str], None] = print,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune on the training rows, stop early on the validation rows, report on the test
    rows of the feature-extraction split. Writes ``<pipeline>-finetune.json``, ``.md`` and
    ``.keras``; returns the result dict (the keys of ``featx.classification.classify``'s).

    With ``classify.repeats`` R > 1, the whole fine-tuning runs R times, on the splits of
    seeds dataset.seed .. + R - 1 (R times the cost: about 100 s each for Flowers-17 on 2
    cores); the reports and model are the first split's, rank-1/rank-5 the mean over all."""
    seeds = [config.dataset.seed + r for r in range(config.classify.repeats)]
    runs = []
    for seed in seeds:
        resplit = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset,
                                                                          seed=seed))
        runs.append(_finetune_once(resplit, progress, backbone_seed=config.dataset.seed))
    result, model, out_dir = runs[0]
    if len(seeds) > 1:
        result = {**result, **repeat_summary(seeds, [r for r, _, _ in runs])}
    stem = out_dir / f"{config.name}-finetune"
    write_reports(result, stem)
    model.save(beside(stem, ".keras"))
    echo(summary_line("finetune", {**result, "best_params": _short(config.finetune)}))
    log.info("results in %s/", out_dir)
    return result


def _finetune_once(config: Config, progress: bool, backbone_seed: int
                   ) -> tuple[dict[str, Any], FineTuner, Path]:
    """One fine-tuning on the split of ``config``'s seed: its result, model and folder."""
    started = time.perf_counter()
    data = load_image_splits(config)
    decode_s = time.perf_counter() - started
    epochs = (lambda line: log.info("%s", line)) if progress else None
    # Random weights ("none") follow the dataset seed, as in extraction: the same network.
    model = FineTuner(config.backbone, config.finetune, len(data.label_names),
                      backbone_seed=backbone_seed, batch_size=config.extract.batch_size,
                      log=epochs)
    model.fit(data.images[TRAIN], data.labels[TRAIN], data.images[VAL], data.labels[VAL])
    fit_seconds = time.perf_counter() - started
    scores = model.predict_proba(data.images[TEST])

    backbone = {**model.backbone.describe(), "pooling": model.pooling,
                "resize": f"{READ_POLICY}-{config.backbone.resize}"}
    settings = dataclasses.asdict(config.finetune)
    d = config.dataset
    key = store_key({"backbone": backbone, "finetune": settings, "images": data.key,
                     "split": {"val": d.val, "test": d.test, "seed": d.seed}})
    result = {
        "pipeline": config.name, "classifier": "finetune", "dataset": data.dataset,
        "store": "none (fine-tuned on decoded images; no feature store)", "key": key,
        "backbone": backbone, "best_params": settings, "cv_score": model.val_accuracy,
        "fit_seconds": fit_seconds,
        "n_train": int(len(data.labels[TRAIN]) + len(data.labels[VAL])),
        "root": data.root,
        **evaluate(data.labels[TEST], scores, np.arange(len(data.label_names)),
                   data.label_names, paths=data.paths[TEST]),
        "n_val": int(len(data.labels[VAL])),
        "cut_layer": model.cut_layer,
        "trained_layers": [layer.name for layer in model.trained_layers
                           if layer.trainable and layer.weights],
        "timings": {"decode_s": decode_s, **model.timings},
        "history": model.history,
    }
    return result, model, runs_dir(config, data.dataset, model.backbone.spec.name)


def _short(s: FinetuneConfig) -> dict[str, Any]:
    return {"unfreeze": s.unfreeze, "lr": s.lr, "warmup_lr": s.warmup_lr}
