"""The extraction runner: dataset -> reader -> frozen backbone -> feature store.

A complete store with the same content key is a cache hit and costs no model work. A store
for the same settings but an older version of the dataset is updated incrementally: rows of
unchanged images are reused, new and changed images are extracted, removed ones dropped. An
interrupted extraction resumes from its last finished block.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from featx.backbones import Backbone
from featx.config import Config
from featx.dataset import TRAIN, Dataset, load_dataset, manifest_digest, stratified_split
from featx.images import RESIZE_POLICY, ReadErrors, read_batches
from featx.store import (
    BlockDir,
    FeatureStore,
    RowSource,
    StoreError,
    library_versions,
    store_key,
    store_path,
    write_store,
)
from featx.variants import PLAIN, Variant, get_variant

BLOCK_BATCHES = 8  # a block (the unit of resume) is this many batches


class ExtractError(RuntimeError):
    """Extraction could not finish as asked (finished blocks are kept for a resume)."""


@dataclass
class ExtractResult:
    path: Path
    key: str
    cache_hit: bool
    rows: int
    extracted: int = 0  # rows computed by this run (0 on a cache hit)
    reused: int = 0  # rows taken from an earlier store or earlier finished blocks
    dropped: int = 0  # rows of the earlier store whose image is gone or changed
    seconds: float = 0.0  # wall time of the whole run, model building included
    images_per_second: float = 0.0  # steady state: after the first batch (graph tracing)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    device: str = ""  # where the model ran ("CPU", "GPU:0 <name>"); empty on a cache hit


def feature_settings(backbone: Backbone, variant: Variant = PLAIN) -> dict:
    """Everything but the images that the features depend on (the settings key)."""
    return {**backbone.describe(), "resize": RESIZE_POLICY, "dtype": "float32",
            **variant.settings}


@dataclass
class Plan:
    dataset: Dataset
    backbone: Backbone
    path: Path
    settings: dict
    key: str  # content key: settings + manifest
    signatures: list[str]
    variant: Variant = PLAIN
    images: np.ndarray | None = None  # the dataset rows the store covers (None: all)
    split: np.ndarray | None = None  # the split of every dataset image

    @cached_property
    def row_image(self) -> np.ndarray:
        """For each store row, its image (a variant may store several rows per image)."""
        images = np.arange(len(self.dataset)) if self.images is None else self.images
        return np.repeat(images, self.variant.rows_per_image)

    @cached_property
    def row_view(self) -> np.ndarray:
        """For each store row, which view of its image it holds (pass or crop)."""
        per = self.variant.rows_per_image
        return np.tile(np.arange(per), len(self.row_image) // per)


def _locate(config: Config, variant: str = "plain"
            ) -> tuple[Dataset, Backbone, Variant, dict, Path]:
    """The dataset, backbone, variant, settings (with their ``settings_key``) and store path
    of a config: the path depends on the settings only, not on the images' contents."""
    dataset = load_dataset(config.dataset)
    backbone = Backbone(config.backbone, seed=config.dataset.seed)
    if config.dataset.hash not in ("stat", "content"):
        raise StoreError(f"dataset.hash must be stat or content, not {config.dataset.hash!r}")
    v = get_variant(config, variant)
    settings = feature_settings(backbone, v)
    settings_key = store_key(settings)
    path = store_path(config.cache_path, dataset.name + v.suffix, backbone.spec.name,
                      config.backbone.pooling, settings_key)
    return dataset, backbone, v, {**settings, "settings_key": settings_key}, path


def plan(config: Config, variant: str = "plain") -> Plan:
    """Read the dataset and work out which store this config needs (no model work);
    ``variant`` names a variant store (featx/variants.py) instead of the plain one."""
    dataset, backbone, v, settings, path = _locate(config, variant)
    signatures = dataset.signatures(content=config.dataset.hash == "content")
    content = {"settings": settings["settings_key"],
               "manifest": manifest_digest(dataset, signatures), "hash": config.dataset.hash}
    split = stratified_split(dataset.labels, config.dataset.val, config.dataset.test,
                             config.dataset.seed)
    images = None
    if v.train_only:  # which images it holds depends on the split: part of its content
        images = np.flatnonzero(split == TRAIN)
        content["split"] = _split_attr(config)
    key = store_key(content)
    return Plan(dataset, backbone, path, settings, key, signatures, v, images, split)


def locate_store(config: Config) -> Path:
    """The plain store's path, without reading the images (no stat, no hash)."""
    return _locate(config)[4]


def extract(config: Config, progress: bool = True, variant: str = "plain") -> ExtractResult:
    """Make sure the feature store for ``config`` (or its ``variant`` store) exists, is
    complete and matches the dataset as it is now; return where it is."""
    run = _run
    if config.extract.engine != "local":  # the same store, built on a Ray cluster
        from featx.distributed import check_engine, run_on_ray

        check_engine(config.extract.engine, "extract.engine")
        if variant != "plain":
            raise ExtractError(f"the ray engine extracts plain stores (one row per image), "
                               f"not the {variant!r} store: use extract.engine = \"local\"")
        run = run_on_ray
    p = plan(config, variant)
    p.path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(p.path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"featx: another extraction is writing {p.path}; waiting for it", file=sys.stderr)
        lock.acquire()
    try:
        old = _open_old(p)
        if old is not None and old.file.attrs.get("key") == p.key:
            skipped = old.skipped
            _update_split(old, p.split[p.row_image], config)  # closes old
            rows = len(p.row_image)
            result = ExtractResult(p.path, p.key, cache_hit=True, rows=rows, reused=rows,
                                   skipped=sorted(set(skipped)))
        else:
            result = run(config, p, p.split, old, progress)
    finally:
        lock.release()
    if result.skipped and config.extract.strict:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in result.skipped[:20])
        raise ExtractError(f"{len(result.skipped)} unreadable image(s) under "
                           f"{p.dataset.root} (--strict):\n{listing}")
    return result


def extract_all(config: Config, progress: bool = True) -> Iterator[ExtractResult]:
    """Every store the pipeline needs, one after the other: the plain store, then the variant
    stores it asks for (extract.augment, extract.tencrop), for each member of a [combine]
    pipeline (featx/combine.py) or for the pipeline itself."""
    from featx.combine import members
    from featx.variants import extracted_variants

    for target in members(config) if config.combine.pipelines else [config]:
        for variant in ["plain", *extracted_variants(target)]:
            yield extract(target, progress=progress, variant=variant)


def _open_old(p: Plan) -> FeatureStore | None:
    """The complete store already at this path, if it was made with the same settings."""
    if not p.path.exists():
        return None
    try:
        old = FeatureStore(p.path)
    except StoreError as e:
        print(f"featx: ignoring unusable store ({e}); extracting afresh", file=sys.stderr)
        return None
    if old.file.attrs.get("settings_key") != p.settings["settings_key"]:
        old.close()  # same file name, other settings: a hash collision or a tampered file
        return None
    return old


def _update_split(old: FeatureStore, split: np.ndarray, config: Config) -> None:
    """A split change needs no new features: rewrite the split in the complete store
    (``old``, open read-only, is closed here and reopened to write only if it changed)."""
    import h5py

    with old:
        same = np.array_equal(old.split, split) and old.file.attrs["split"] == _split_attr(config)
    if not same:
        with h5py.File(old.path, "r+") as f:
            f["split"][:] = split
            f.attrs["split"] = _split_attr(config)


def store_attrs(config: Config, p: Plan) -> dict:
    """The attributes of the store ``p`` (both engines write the same ones)."""
    return {**p.settings, "key": p.key, "dataset": p.dataset.name,
            "split": _split_attr(config), "hash": config.dataset.hash,
            "pipeline": config.to_json(), "versions": library_versions()}


def _split_attr(config: Config) -> str:
    d = config.dataset
    return f'{{"val": {d.val}, "test": {d.test}, "seed": {d.seed}}}'


def _reuse(p: Plan, old: FeatureStore | None) -> tuple[np.ndarray, int]:
    """For each row (image, or image and view), the row of the old store holding its
    features (-1: extract it), and how many old rows are dropped (image removed or changed)."""
    row_image, row_view = p.row_image, p.row_view
    old_row = np.full(len(row_image), -1, np.int64)
    if old is None:
        return old_row, 0
    old_view = old.file["view"][:] if "view" in old.file else np.zeros(len(old), np.int64)
    index = {(path, sig, int(view)): i for i, (path, sig, view)
             in enumerate(zip(old.paths, old.signatures, old_view))}
    for i, (image, view) in enumerate(zip(row_image, row_view)):
        old_row[i] = index.get((p.dataset.paths[image], p.signatures[image], int(view)), -1)
    return old_row, len(old) - int((old_row >= 0).sum())


def _run(config: Config, p: Plan, split: np.ndarray, old: FeatureStore | None,
         progress: bool) -> ExtractResult:
    dataset, backbone, variant = p.dataset, p.backbone, p.variant
    row_image = p.row_image
    old_row, dropped = _reuse(p, old)
    todo = np.flatnonzero(old_row < 0)
    new_row = np.full(len(row_image), -1, np.int64)
    new_row[todo] = np.arange(len(todo))
    batch = config.extract.batch_size
    # About BLOCK_BATCHES batches of backbone passes a block, and whole images in each.
    block_rows = variant.rows_per_image * max(1, batch * BLOCK_BATCHES // variant.views)
    blocks = BlockDir(p.path, p.key, len(todo), block_rows=block_rows)
    done = set(blocks.done())
    remaining = [b for b in range(blocks.n_blocks) if b not in done]
    if done:
        print(f"featx: resuming: {len(done)} of {blocks.n_blocks} blocks already extracted",
              file=sys.stderr)
    t0 = time.perf_counter()
    extracted, rate, device = 0, 0.0, ""
    if remaining:
        from featx.backbones import compute_device

        device = compute_device()
        extracted, rate = _extract_blocks(config, dataset, backbone, row_image[todo], blocks,
                                          remaining, progress, variant=variant)
    seconds = time.perf_counter() - t0
    feature_shape = _feature_shape(blocks, old, backbone)
    skipped = write_store(
        p.path, feature_shape=feature_shape, source=RowSource(old_row, new_row), old=old,
        blocks=blocks, paths=[dataset.paths[i] for i in row_image],
        signatures=[p.signatures[i] for i in row_image], labels=dataset.labels[row_image],
        label_names=dataset.label_names, split=split[row_image],
        attrs={**store_attrs(config, p), "feature_shape": list(feature_shape)},
        compression=config.extract.compression,
        extra={"view": p.row_view} if variant.rows_per_image > 1 else None)
    blocks.remove()
    skipped = sorted(set(skipped))  # a variant lists an image once per view
    return ExtractResult(p.path, p.key, cache_hit=False, rows=len(row_image),
                         extracted=extracted, reused=len(row_image) - extracted,
                         dropped=dropped, seconds=seconds, images_per_second=rate,
                         skipped=skipped, device=device)


def _feature_shape(blocks: BlockDir, old: FeatureStore | None,
                   backbone: Backbone) -> tuple[int, ...]:
    """Taken from the data when there is any, so that assembling never builds the model."""
    done = blocks.done()
    if done:
        return tuple(blocks.load(done[0])["features"].shape[1:])
    if old is not None:
        return tuple(old.file["features"].shape[1:])
    return backbone.feature_shape


def _extract_blocks(config: Config, dataset: Dataset, backbone: Backbone, todo: np.ndarray,
                    blocks: BlockDir, remaining: list[int], progress: bool,
                    variant: Variant = PLAIN) -> tuple[int, float]:
    """Extract the rows of the ``remaining`` blocks (``todo``: the image of each row to
    extract); return (rows, steady backbone passes/s)."""
    batch, size = config.extract.batch_size, backbone.input_size
    forward = backbone.batched(batch)
    per_image, group = variant.rows_per_image, variant.group

    positions = np.concatenate([np.asarray(blocks.rows_of(b)) for b in remaining])
    images = todo[positions][::per_image]  # blocks hold whole images
    files = [dataset.absolute(int(i)) for i in images]
    views = variant.reader(size, [dataset.paths[int(i)] for i in images])
    passes = len(files) * variant.views  # backbone passes this run
    strict = config.extract.strict
    errors = ReadErrors()  # by file
    bar = tqdm(total=len(todo) * group, initial=(len(todo) - len(positions)) * group,
               unit="img" if variant.views == 1 else "view", disable=not progress,
               desc=f"{backbone.spec.name} {dataset.name}{variant.suffix}", file=sys.stderr)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # backbone outputs not yet in a block
    block_iter = iter(remaining)
    current = next(block_iter)
    need = len(blocks.rows_of(current))
    done_rows = 0
    t_first = time.perf_counter()
    rate = 0.0
    try:
        for first, batch_images, ok in read_batches(files, size, batch, errors, views=views):
            if strict and not ok.all():
                bad = (first + int(np.flatnonzero(~ok)[0])) // variant.views
                raise ExtractError(f"unreadable image {files[bad]}: {errors.reasons[bad]} "
                                   "(--strict; finished blocks are kept)")
            n = len(batch_images)
            features = forward(batch_images, ok)
            if first == 0:
                t_first = time.perf_counter()
            elif first + n == passes:
                rate = (first + n - batch) / (time.perf_counter() - t_first)
            pending.append((features, ok))
            bar.update(n)
            have = sum(len(f) for f, _ in pending) // group
            while current is not None and have >= need:
                feats = np.concatenate([f for f, _ in pending])
                oks = np.concatenate([o for _, o in pending])
                used = need * group
                block, block_ok = feats[:used], oks[:used]
                if group > 1:  # views averaged into one row per image
                    block = block.reshape(need, group, *block.shape[1:]).mean(axis=1)
                    block_ok = block_ok.reshape(need, group).all(axis=1)
                reasons = [errors.reasons.get((done_rows + j) // per_image, "")
                           for j in range(need)]
                blocks.save(current, block, block_ok, reasons)
                pending = [(feats[used:], oks[used:])]
                done_rows += need
                have -= need
                current = next(block_iter, None)
                need = len(blocks.rows_of(current)) if current is not None else 0
    finally:
        bar.close()
    return len(positions), rate
