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
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import OPTIMIZERS, BackboneConfig, Config, FinetuneConfig
from featx.core.errors import ConfigError, DatasetError
from featx.core.files import write_atomic
from featx.core.layout import checkpoint_path, finetune_runs_dir
from featx.core.log import RESULTS, import_tensorflow, plural
from featx.core.progress import bar as progress_bar
from featx.core.runinfo import Run
from featx.data.dataset import (
    TEST,
    TRAIN,
    VAL,
    Dataset,
    load_dataset,
    manifest_digest,
    stratified_split,
)
from featx.data.groups import grouped_split, split_record, union_groups
from featx.data.images import READ_POLICY, ReadErrors, read_batches
from featx.features.backbones import Backbone
from featx.report.charts import monitor_png
from featx.report.metrics import evaluate, one_split, repeat_summary
from featx.report.results import beside, report_paths, summary_line, write_reports
from featx.store.keys import store_key

log = logging.getLogger(__name__)

HEAD_POOLINGS = ("avg", "max", "flatten")
MOMENTUM = 0.9
# The phases in order; the last two only with finetune.refit.
PHASES = ("warmup", "finetune", "refit warmup", "refit finetune")


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
    # what the split does with duplicates (featx.data.groups.split_record), as classify's
    duplicates: dict | None = None


def load_image_splits(config: Config) -> ImageSplits:
    """Decode every image of the dataset once (featx's reader) and split it."""
    dataset = load_dataset(config.dataset)
    d = config.dataset
    signatures = dataset.signatures(content=d.hash == "content", listed=True)
    split, groups, duplicates = _split(config, dataset, signatures)
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
            raise DatasetError(f"{plural(len(errors.reasons), 'unreadable image')} under "
                                f"{dataset.root} (--strict): {listing[:2000]}")
        log.warning("skipped %s: %s", plural(len(errors.reasons), "unreadable image"),
                    listing[:500])
    rows = {s: np.flatnonzero((split == s) & ok) for s in (TRAIN, VAL, TEST)}
    if not len(rows[TEST]):
        raise ConfigError(f"{dataset.root}: the split has no test rows (dataset.test = 0?)")
    if not len(rows[VAL]):
        holdout = config.finetune.holdout
        if not 0 < holdout < 1:
            raise ConfigError("fine-tuning stops early on a validation split: set "
                                "dataset.val > 0 or finetune.holdout in (0, 1)")
        sub = grouped_split(dataset.labels[rows[TRAIN]],  # copies on one side here too
                            None if groups is None else groups[rows[TRAIN]], holdout, 0.0,
                            d.seed)
        rows[VAL], rows[TRAIN] = rows[TRAIN][sub == VAL], rows[TRAIN][sub == TRAIN]
    return ImageSplits(
        dataset.label_names, {s: images[r] for s, r in rows.items()},
        {s: dataset.labels[r] for s, r in rows.items()},
        {s: [dataset.paths[i] for i in r] for s, r in rows.items()}, dataset.name,
        manifest_digest(dataset, signatures), str(dataset.root), duplicates)


def _split(config: Config, dataset: Dataset, signatures: Sequence[str]
           ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The split of feature extraction (the same test rows as `featx classify`), the
    duplicate groups it keeps together (int (N,); None: not grouped) and its record
    (featx.data.groups.split_record). With
    ``dataset.group_duplicates``: the groups the plain store of this data records (they
    come from its features); without such a store, the images with the same bytes only,
    with a warning where near duplicates would be searched (pretrained weights)."""
    from featx.features.extraction import duplicate_rows
    from featx.features.plan import DataNow, plan

    d = config.dataset
    labels, names = dataset.labels, dataset.label_names
    if not d.group_duplicates:
        split = stratified_split(labels, d.val, d.test, d.seed)
        return split, None, split_record(labels, split, names, d.val, d.test, False)
    p = plan(config, now=DataNow(dataset, signatures, manifest_digest(dataset, signatures)))
    threshold = float(d.duplicate_threshold)
    if p.groups is not None:
        return p.split, p.groups, split_record(labels, p.split, names, d.val, d.test, True,
                                               p.groups, None, threshold,
                                               "the feature store's groups")
    if p.settings.get("weights") != "none":  # random weights group exact copies only
        log.warning("no feature store of %s records its duplicate groups: only images with "
                    "the same bytes are kept on one side of the split; `featx extract` first "
                    "keeps near duplicates together too, as `featx classify` does", dataset.root)
    exact = duplicate_rows(dataset, signatures)
    groups = union_groups(len(dataset), exact)
    split = grouped_split(labels, groups, d.val, d.test, d.seed)
    return split, groups, split_record(labels, split, names, d.val, d.test, True, groups,
                                       exact, threshold, "exact copies only (no feature store)")


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
                 log: Callable[[str], None] | None = None, progress: bool = True,
                 monitor: Callable[[list[dict], dict[str, int]], None] | None = None) -> None:
        if backbone.pooling not in HEAD_POOLINGS:
            raise ConfigError(f"backbone.pooling = {backbone.pooling!r}: the fine-tuning head "
                                f"needs one of {', '.join(HEAD_POOLINGS)}")
        if "," in backbone.layer:
            raise ConfigError(f"backbone.layer = {backbone.layer!r}: fine-tuning puts its head "
                                "on one layer")
        if settings.warmup_optimizer not in OPTIMIZERS:
            raise ConfigError(f"finetune.warmup_optimizer = {settings.warmup_optimizer!r}; "
                                f"valid: {', '.join(OPTIMIZERS)}")
        if settings.unfreeze < 0 or settings.epochs < 0 or settings.warmup_epochs < 0:
            raise ConfigError("finetune.unfreeze, epochs and warmup_epochs must be >= 0")
        if not 0 <= settings.dropout < 1:
            raise ConfigError(f"finetune.dropout = {settings.dropout} must be in [0, 1)")
        self.settings = settings
        self.n_classes = n_classes
        self.batch_size = batch_size  # inference batches (the frozen part)
        self.log = log or (lambda line: None)
        self.progress = progress  # a tqdm bar per epoch
        self.monitor = monitor or (lambda history, kept: None)  # called after every epoch
        self.history: list[dict[str, Any]] = []
        self.kept: dict[str, int] = {}  # phase -> the epoch whose weights were kept (0: start)
        self.resumed_from: dict[str, Any] | None = None
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

    def augmented(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The training images as trained on: ``x``, then (``augment``) their mirror images,
        then (``crops`` K) K random crops of each. Shapes (n', s, s, 3) uint8 and (n',)."""
        s = self.settings
        parts, labels = [x], [y]
        if s.augment:
            parts.append(x[:, :, ::-1])
            labels.append(y)
        if s.crops:
            parts.append(random_crops(x, s.crops, s.seed))
            labels.append(np.repeat(y, s.crops))
        return np.concatenate(parts), np.concatenate(labels)

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            checkpoint: Checkpoint | None = None) -> FineTuner:
        """Train on ``x`` (n, s, s, 3) uint8 with labels ``y`` (n,), stopping each phase
        early on ``x_val``/``y_val``. With a ``checkpoint``, the state after every epoch is
        saved there, and a saved state is resumed from (the same settings and data give the
        same kept epochs and weights as an uninterrupted run)."""
        import_tensorflow()
        import keras

        s = self.settings
        checkpoint = checkpoint or Checkpoint(None)
        started = time.perf_counter()
        x_aug, y_aug = self.augmented(x, y)
        a, a_val = self.frozen_features(x_aug), self.frozen_features(x_val)
        self.timings["frozen_features_s"] = time.perf_counter() - started

        initial = self.network.get_weights()
        saved = checkpoint.load()
        state, arrays = saved or ({}, {})
        at = state.get("phase", 0)
        if saved:
            self.history, self.kept = state["history"], state["kept"]
            self.network.set_weights(arrays["weights"])
            self.resumed_from = {"phase": PHASES[min(at, len(PHASES) - 1)],
                                 "epoch": state["epoch"], "done": at >= len(PHASES)}
            self.log(f"resuming from {checkpoint.path} ({self.resumed_from['phase']}, "
                     f"{plural(state['epoch'], 'epoch')} done)")

        def pooled(v: np.ndarray) -> np.ndarray:
            return self.pooled.predict(v, batch_size=self.batch_size, verbose=0)

        warm = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[
            s.warmup_optimizer]

        def sgd(n_rows: int):
            lr: Any = s.lr
            if s.schedule == "cosine" and s.epochs:
                steps = s.epochs * -(-n_rows // s.batch_size)
                lr = keras.optimizers.schedules.CosineDecay(s.lr, decay_steps=steps)
            return keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM)

        def train(index: int, *args, **kwargs) -> None:
            if index < at:  # finished before the checkpoint: its weights are restored
                return
            resume = (state, arrays) if index == at and state.get("epoch") else None
            started = time.perf_counter()
            self._phase(PHASES[index], index, *args, resume=resume, checkpoint=checkpoint,
                        **kwargs)
            self.timings[f"{PHASES[index].replace(' ', '_')}_s"] = \
                time.perf_counter() - started

        p_val = pooled(a_val) if at == 0 else None
        train(0, self.head, warm(learning_rate=s.warmup_lr), s.warmup_epochs,
              pooled(a) if at == 0 else None, y_aug, p_val, y_val)
        train(1, self.network, sgd(len(a)), s.epochs, a, y_aug, a_val, y_val, keep_start=True)
        self.network.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        self.val_loss, self.val_accuracy = _batches(self.network.test_on_batch, a_val, y_val,
                                                    np.arange(len(a_val)), self.batch_size)
        if s.refit:  # again from the start, on train + validation rows, for the kept epochs
            val_aug, y_val_aug = self.augmented(x_val, y_val)
            a_all = np.concatenate([a, self.frozen_features(val_aug)])
            y_all = np.concatenate([y_aug, y_val_aug])
            if at < 2 or (at == 2 and not state.get("epoch")):  # else restored above
                self.network.set_weights(initial)
            train(2, self.head, warm(learning_rate=s.warmup_lr), self.kept["warmup"],
                  pooled(a_all) if at <= 2 else None, y_all, None, None, stop_early=False)
            train(3, self.network, sgd(len(a_all)), self.kept["finetune"], a_all, y_all,
                  None, None, stop_early=False)
        checkpoint.save({"phase": len(PHASES), "epoch": 0, "history": self.history,
                         "kept": self.kept}, {"weights": self.network.get_weights()})
        return self

    def _phase(self, phase: str, index: int, model, optimizer, epochs: int, x, y, x_val,
               y_val, keep_start: bool = False, stop_early: bool = True,
               resume: tuple[dict, dict] | None = None,
               checkpoint: Checkpoint | None = None) -> None:
        """Train ``model`` up to ``epochs``; with ``stop_early``, stop after ``patience``
        epochs without a lower validation loss and keep the weights of the lowest
        (``keep_start``: the weights it starts with count as a candidate). The order of the
        rows and the dropout masks of an epoch follow (seed, phase, epoch) alone, so a resumed
        phase repeats exactly what an uninterrupted one does."""
        s = self.settings
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        if not epochs:
            self.kept.setdefault(phase, 0)
            return
        if resume:
            state, arrays = resume
            optimizer.build(model.trainable_variables)
            for variable, value in zip(optimizer.variables, arrays["optimizer"], strict=True):
                variable.assign(value)
            epoch, best, wait = state["epoch"], state["best"], state["wait"]
            kept = state["best_epoch"]
            best_weights = arrays["best"]
        else:
            epoch, best, wait, kept = 0, float("inf"), 0, 0
            if keep_start and stop_early:
                best = _batches(model.test_on_batch, x_val, y_val, np.arange(len(x_val)),
                                self.batch_size)[0]
            best_weights = model.get_weights()
        steps = -(-len(x) // s.batch_size)
        while epoch < epochs and not (stop_early and wait and wait >= s.patience):
            started = time.perf_counter()
            rng = np.random.default_rng([s.seed, index, epoch])
            order = rng.permutation(len(x))
            self.dropout.seed_generator.state.assign(
                np.array([rng.integers(2**31), 0], dtype="int64"))
            with progress_bar(steps, f"{phase} {epoch + 1}/{epochs}", "batch", self.progress,
                              leave=False) as bar:
                loss, accuracy = _batches(model.train_on_batch, x, y, order, s.batch_size,
                                          bar.update)
            epoch += 1
            row = {"phase": phase, "epoch": epoch, "loss": loss, "accuracy": accuracy}
            line = (f"{phase:<8} epoch {epoch:>2}/{epochs}  loss {row['loss']:.3f} "
                    f"acc {row['accuracy']:.3f}")
            if stop_early:
                val_loss, val_accuracy = _batches(model.test_on_batch, x_val, y_val,
                                                  np.arange(len(x_val)), self.batch_size)
                row.update(val_loss=val_loss, val_accuracy=val_accuracy)
                line += f"  val loss {val_loss:.3f} acc {val_accuracy:.3f}"
                if val_loss < best:
                    best, wait, kept, best_weights = val_loss, 0, epoch, model.get_weights()
                else:
                    wait += 1
            row["seconds"] = round(time.perf_counter() - started, 3)
            self.history.append(row)
            self.log(f"{line}  ({row['seconds']:.1f}s)")
            if checkpoint is not None:
                checkpoint.save(
                    {"phase": index, "epoch": epoch, "best": best, "wait": wait,
                     "best_epoch": kept, "history": self.history, "kept": self.kept},
                    {"weights": self.network.get_weights(),
                     "optimizer": [np.asarray(v) for v in optimizer.variables],
                     "best": best_weights})
            self.monitor(self.history, self.kept)
        if stop_early:
            model.set_weights(best_weights)
        self.kept[phase] = kept if stop_early else epoch
        if checkpoint is not None:
            checkpoint.save({"phase": index + 1, "epoch": 0, "history": self.history,
                             "kept": self.kept}, {"weights": self.network.get_weights()})
        self.monitor(self.history, self.kept)

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


def _batches(step: Callable, x: np.ndarray, y: np.ndarray, order: np.ndarray,
             batch_size: int, done: Callable[[int], Any] = lambda n: None) -> tuple[float, float]:
    """``step`` (a model's ``train_on_batch`` or ``test_on_batch``) over the rows of ``x``
    and ``y`` in ``order``, batch by batch; the mean loss and accuracy over the rows.

    One call per batch reuses the model's one traced step: ``model.fit``/``evaluate`` once
    per epoch traced it again every epoch (a TensorFlow retracing warning, and epochs of
    Flowers-17's phase 2 twice as long)."""
    loss = accuracy = 0.0
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        logs = step(x[rows], y[rows], return_dict=True)
        loss += float(logs["loss"]) * len(rows)
        accuracy += float(logs["accuracy"]) * len(rows)
        done(1)
    return loss / max(len(order), 1), accuracy / max(len(order), 1)


def random_crops(images: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` random crops of each image (n, s, s, 3) uint8 -> (n * k, s, s, 3) uint8, image
    by image: area 50-100% of the image, aspect ratio 3/4-4/3, half of them mirrored, each
    resized back to s x s (bilinear). Deterministic in ``seed``."""
    tf = import_tensorflow()
    n, size = len(images), images.shape[1]
    rng = np.random.default_rng([seed, 7])
    area = rng.uniform(0.5, 1.0, (n, k))
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), (n, k)))
    h, w = np.minimum(np.sqrt(area / ratio), 1.0), np.minimum(np.sqrt(area * ratio), 1.0)
    y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
    mirror = rng.random((n, k)) < 0.5
    left, right = np.where(mirror, x0 + w, x0), np.where(mirror, x0, x0 + w)  # x2 < x1 mirrors
    boxes = np.stack([y0, left, y0 + h, right], -1).reshape(-1, 4).astype(np.float32)
    out = np.empty((n * k, size, size, 3), np.uint8)
    step = 64
    for i in range(0, n, step):
        batch = tf.constant(images[i:i + step], tf.float32)
        rows = slice(i * k, min(i + step, n) * k)
        index = np.repeat(np.arange(len(batch)), k).astype(np.int32)
        crops = tf.image.crop_and_resize(batch, boxes[rows], index, (size, size))
        out[rows] = np.clip(np.round(crops.numpy()), 0, 255).astype(np.uint8)
    return out


class Checkpoint:
    """A fine-tuning's state after its last finished epoch (weights, optimizer state, phase,
    epoch, early-stopping state, history), in one file replaced atomically after every epoch:
    a kill leaves the previous epoch's. ``Checkpoint(None)`` keeps nothing."""

    def __init__(self, path: Path | None, key: str = "") -> None:
        self.path, self.key = (Path(path) if path else None), key

    def load(self) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            with np.load(self.path) as f:
                state = json.loads(str(f["state"]))
                arrays: dict[str, list[np.ndarray]] = {}
                for name in sorted(f.files, key=lambda n: (n.split(".")[0], _index(n))):
                    if name != "state":
                        arrays.setdefault(name.split(".")[0], []).append(f[name])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("%s: unreadable checkpoint (%s); starting over", self.path, e)
            return None
        if state.get("key") != self.key:
            log.warning("%s: a checkpoint of other settings or data; starting over", self.path)
            return None
        return state, arrays

    def save(self, state: dict[str, Any], arrays: dict[str, list[np.ndarray]]) -> None:
        if self.path is None:
            return
        buffer = io.BytesIO()
        np.savez(buffer, state=np.array(json.dumps({**state, "key": self.key})),
                 **{f"{group}.{i}": a for group, values in arrays.items()
                    for i, a in enumerate(values)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, buffer.getvalue())

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _index(name: str) -> int:
    return int(name.split(".")[1]) if "." in name else -1


def runs_dir(config: Config, dataset: str, backbone: str) -> Path:
    """Where fine-tune run folders go: ``--out``, else
    ``<cache_dir>/<dataset>-<backbone>-finetune.runs/`` (beside the feature stores, where
    ``featx runs`` finds them)."""
    if config.out:
        return Path(config.out)
    return finetune_runs_dir(config.cache_path, dataset, backbone)


def finetune(config: Config, progress: bool = True) -> dict[str, Any]:
    """Fine-tune on the training rows, stop early on the validation rows, report on the test
    rows of the feature-extraction split. Writes, into a new run folder under
    :func:`runs_dir` (as ``featx classify`` does: no run overwrites another),
    ``<pipeline>-finetune.keras``, ``.md``, ``.html``, the charts (``-monitor.png``: loss
    and accuracy per epoch, redrawn as training goes) and ``.json`` last; returns the result
    dict (the keys of ``classification.classify``'s, and what the run records about itself),
    its summary line logged to :data:`featx.core.log.RESULTS` (``featx finetune`` prints it). With
    ``progress``: a bar over each epoch's batches and a log line of its losses.

    Every epoch ends with a checkpoint in the cache folder (``featx cache ls`` lists it): a
    run killed halfway and started again resumes from the last finished epoch, and ends as an
    uninterrupted run would. The checkpoints go once the reports are written.

    With ``classify.repeats`` R > 1, the whole fine-tuning runs R times, on the splits of
    seeds dataset.seed .. + R - 1 (R times the cost: about 100 s each for Flowers-17 on 2
    cores); the reports and model are the first split's, rank-1/rank-5 the mean over all."""
    seeds = [config.dataset.seed + r for r in range(config.classify.repeats)]
    runs: list[tuple[dict[str, Any], FineTuner, Run, Checkpoint]] = []
    for seed in seeds:
        resplit = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset,
                                                                          seed=seed))
        runs.append(_finetune_once(resplit, progress, backbone_seed=config.dataset.seed,
                                   run=runs[0][2] if runs else None))
    result, model, run, _ = runs[0]
    if len(seeds) > 1:
        result = {**result, **repeat_summary(seeds, [r for r, _, _, _ in runs])}
    else:  # what a classify result of one split says of itself (splits, per_split, scope)
        result = {**result, **one_split(result, seeds[0])}
    stem = _stem(run, config)
    keras_file = model.save(beside(stem, ".keras"))
    result = run.record(result, [*report_paths(stem, monitor=True).values(), keras_file])
    write_reports(result, stem)  # the JSON last: a kill before it leaves no listed result
    for *_, checkpoint in runs:  # the results are written: nothing left to resume
        checkpoint.remove()
    RESULTS.info("%s", summary_line("finetune", {**result,
                                                 "best_params": _short(config.finetune)}))
    log.info("results in %s/", run.dir)
    return result


def _stem(run: Run, config: Config) -> Path:
    return run.file(f"{config.name}-finetune")


def _finetune_once(config: Config, progress: bool, backbone_seed: int, run: Run | None = None
                   ) -> tuple[dict[str, Any], FineTuner, Run, Checkpoint]:
    """One fine-tuning on the split of ``config``'s seed: its result, model, run (``run``,
    else a new run folder) and checkpoint."""
    started = time.perf_counter()
    data = load_image_splits(config)
    decode_s = time.perf_counter() - started
    epochs = (lambda line: log.info("%s", line)) if progress else None
    stem = None  # set below, before the first epoch ends
    monitor = _Monitor(lambda: report_paths(stem, monitor=True)["monitor"], config.name)
    # Random weights ("none") follow the dataset seed, as in extraction: the same network.
    model = FineTuner(config.backbone, config.finetune, len(data.label_names),
                      backbone_seed=backbone_seed, batch_size=config.extract.batch_size,
                      log=epochs, progress=progress, monitor=monitor)
    backbone = {**model.backbone.describe(), "pooling": model.pooling,
                "resize": f"{READ_POLICY}-{config.backbone.resize}"}
    settings = dataclasses.asdict(config.finetune)
    d = config.dataset
    key = store_key({"backbone": backbone, "finetune": settings, "images": data.key,
                     "split": {"val": d.val, "test": d.test, "seed": d.seed}})
    name = model.backbone.spec.name
    if run is None:
        run = Run.open(runs_dir(config, data.dataset, name), settings, section="finetune")
    stem = _stem(run, config)
    checkpoint = Checkpoint(checkpoint_path(config.cache_path, data.dataset, name, key), key)
    model.fit(data.images[TRAIN], data.labels[TRAIN], data.images[VAL], data.labels[VAL],
              checkpoint=checkpoint)
    fit_seconds = time.perf_counter() - started
    scores = model.predict_proba(data.images[TEST])

    result = {
        "pipeline": config.name, "classifier": "finetune", "dataset": data.dataset,
        "store": "none (fine-tuned on decoded images; no feature store)", "key": key,
        "backbone": backbone, "best_params": settings, "cv_score": model.val_accuracy,
        "cv_score_name": "validation accuracy",  # of the early stopping's rows, not of folds
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
        "kept_epochs": model.kept,
        "resumed_from": model.resumed_from,
        "duplicates": data.duplicates,
    }
    return result, model, run, checkpoint


class _Monitor:
    """Redraws the training monitor PNG after an epoch, at most every ``every`` seconds
    (drawing takes about 0.2 s: a tiny fine-tuning's epochs are shorter than that)."""

    def __init__(self, path: Callable[[], Path], title: str, every: float = 5.0) -> None:
        self.path, self.title, self.every, self.last = path, title, every, 0.0

    def __call__(self, history: list[dict], kept: dict[str, int]) -> None:
        if time.monotonic() - self.last >= self.every:
            self.draw(history, kept)

    def draw(self, history: list[dict], kept: dict[str, int]) -> None:
        if history:
            path = self.path()
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, monitor_png(history, kept, self.title))
        self.last = time.monotonic()


def _short(s: FinetuneConfig) -> dict[str, Any]:
    return {"unfreeze": s.unfreeze, "lr": s.lr, "warmup_lr": s.warmup_lr}
