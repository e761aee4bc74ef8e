"""The extraction runner: dataset -> reader -> frozen backbone -> feature store.

A complete store with the same key is a cache hit and costs no model work; an unfinished
one is resumed from its last flushed row.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from featx.backbones import Backbone
from featx.config import Config
from featx.dataset import Dataset, load_dataset, stratified_split
from featx.images import RESIZE_POLICY, ReadErrors, read_batches
from featx.store import StoreWriter, library_versions, store_key, store_path

FLUSH_SECONDS = 5.0


class ExtractError(RuntimeError):
    """Extraction could not finish as asked (the partial store is kept for a resume)."""


@dataclass
class ExtractResult:
    path: Path
    key: str
    cache_hit: bool
    rows: int
    extracted: int = 0  # rows computed by this run (0 on a cache hit)
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


def feature_settings(backbone: Backbone, dataset: Dataset) -> dict:
    """Everything the features depend on: the content key is computed from this."""
    return {**backbone.describe(), "resize": RESIZE_POLICY, "dtype": "float32",
            "dataset_fingerprint": dataset.fingerprint()}


def locate_store(config: Config, dataset: Dataset | None = None,
                 backbone: Backbone | None = None) -> tuple[Path, str, dict]:
    """Where the store for this config lives, its key and the settings behind the key."""
    dataset = dataset or load_dataset(config.dataset)
    backbone = backbone or Backbone(config.backbone, seed=config.dataset.seed)
    settings = feature_settings(backbone, dataset)
    key = store_key(settings)
    path = store_path(config.cache_path, dataset.name, backbone.spec.name,
                      config.backbone.pooling, key)
    return path, key, settings


def extract(config: Config, progress: bool = True) -> ExtractResult:
    """Make sure the feature store for ``config`` exists and is complete; return where it is."""
    dataset = load_dataset(config.dataset)
    backbone = Backbone(config.backbone, seed=config.dataset.seed)
    split = stratified_split(dataset.labels, config.dataset.val, config.dataset.test,
                             config.dataset.seed)
    path, key, settings = locate_store(config, dataset, backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"featx: another extraction is writing {path}; waiting for it", file=sys.stderr)
        lock.acquire()
    try:
        if path.exists():
            _update_split(path, split, config)
            return ExtractResult(path, key, cache_hit=True, rows=len(dataset))
        return _run(config, dataset, backbone, split, path, key, settings, progress)
    finally:
        lock.release()


def _update_split(path: Path, split: np.ndarray, config: Config) -> None:
    """A split change needs no new features: rewrite the split in the complete store."""
    import h5py

    with h5py.File(path, "r") as f:
        same = np.array_equal(f["split"][:], split) and f.attrs["split"] == _split_attr(config)
    if not same:
        with h5py.File(path, "r+") as f:
            f["split"][:] = split
            f.attrs["split"] = _split_attr(config)


def _split_attr(config: Config) -> str:
    d = config.dataset
    return f'{{"val": {d.val}, "test": {d.test}, "seed": {d.seed}}}'


def _run(config, dataset, backbone, split, path, key, settings, progress) -> ExtractResult:
    import tensorflow as tf

    batch = config.extract.batch_size
    size = backbone.input_size
    attrs = {**settings, "key": key, "dataset": dataset.name, "split": _split_attr(config),
             "pipeline": config.to_json(), "versions": library_versions(),
             "feature_shape": list(backbone.feature_shape)}
    writer = StoreWriter(path, key=key, feature_shape=backbone.feature_shape,
                         paths=dataset.paths, labels=dataset.labels,
                         label_names=dataset.label_names, split=split, attrs=attrs,
                         compression=config.extract.compression)
    start = writer.rows_done
    if start:
        print(f"featx: resuming {writer.partial.name} at row {start} of {len(dataset)}",
              file=sys.stderr)

    # One fixed batch shape: the last batch is padded, so the graph is traced once.
    @tf.function(input_signature=[tf.TensorSpec((batch, size, size, 3), tf.uint8)])
    def forward(images):
        return backbone.features(images)

    errors = ReadErrors()
    absolute = [dataset.absolute(i) for i in range(len(dataset))]
    t0 = last_flush = time.perf_counter()
    bar = tqdm(total=len(dataset), initial=start, unit="img", disable=not progress,
               desc=f"{backbone.spec.name} {dataset.name}", file=sys.stderr)
    try:
        for first, images, ok in read_batches(absolute, size, batch, errors, start=start):
            n = len(images)
            if n < batch:
                images = np.concatenate([images, np.zeros((batch - n, *images.shape[1:]),
                                                          images.dtype)])
            features = forward(images).numpy()[:n]
            features[~ok] = 0.0
            writer.write(first, features, ok)
            bar.update(n)
            if time.perf_counter() - last_flush > FLUSH_SECONDS:
                writer.flush()
                last_flush = time.perf_counter()
        seconds = time.perf_counter() - t0
        skipped = [(dataset.paths[i], reason) for i, reason in sorted(errors.reasons.items())]
        if skipped and config.extract.strict:
            writer.flush()
            listing = "\n".join(f"  {p}: {r}" for p, r in skipped[:20])
            raise ExtractError(f"{len(skipped)} unreadable image(s) in {dataset.root} "
                               f"(strict mode; the partial store is kept):\n{listing}")
        writer.finish(skipped)
    finally:
        bar.close()
        writer.close()
    done = len(dataset) - start
    result = ExtractResult(path, key, cache_hit=False, rows=len(dataset), extracted=done,
                           seconds=seconds, skipped=skipped)
    return result
