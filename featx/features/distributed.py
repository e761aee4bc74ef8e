"""Beyond one machine: extraction and the grid search on a Ray cluster (``pip install featx[ray]``).

Extraction (``extract.engine = "ray"``): the dataset manifest (sorted paths) is cut into
deterministic shards of ``extract.shard_rows`` rows. Ray Data streams the rows of the
unfinished shards through ``map_batches`` with :class:`ShardExtractor`, a callable class
holding one featx :class:`~featx.features.backbones.Backbone` per actor (one actor per GPU, or one
per
node on CPU clusters) and running the same reader and the same fixed-batch, padded forward
pass as the single-machine path. The driver writes each shard to its own HDF5 file in
``<store>.<key>.shards/`` (temporary name, renamed when the shard is whole), then joins them
into a store with the single-machine layout, key and attributes: ``features`` is an HDF5
virtual dataset over the shard files, or a plain chunked copy with ``extract.consolidate``.

Failures: Ray restarts a dead actor and retries its batches; if the run still fails (a node
gone with its results), the driver retries the shards not yet written, and a new
``featx extract`` after a crash redoes only the missing shards.

Updates: when the dataset changed, only its new and changed images go to the cluster; the
other rows come from the earlier store, as with the local engine (a new segment beside the
earlier store's, or a rewrite of a virtual one).

``backbone.precision = "int8"``: the driver quantises the model once (or reads it from the
cache folder) before any shard goes out; each actor gets the calibration sample's identity
and files with its config and reads that model from the cache folder. An actor on a node
that does not share the cache folder quantises the same sample again: NNCF made the very
same model.bin from it twice here (MobileNetV2, 96 px, 16 flowers5 images).

Search (``classify.engine = "ray"``): the grid search runs through joblib's Ray backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import Config, ConfigError
from featx.core.errors import ExtractError
from featx.core.files import short_hash
from featx.core.layout import shard_dir, shard_file
from featx.core.log import plural
from featx.core.progress import bar as progress_bar
from featx.core.rayutil import connected
from featx.features.plan import ExtractResult, Plan, store_attrs, store_columns
from featx.features.runtime import Calibration
from featx.store.blocks import resume_unit
from featx.store.keys import STRING, VIRTUAL_READ_ROWS, FeatureDigest
from featx.store.read import FeatureStore
from featx.store.write import CHUNK_BYTES, RowSource, write_columns, write_store, write_update

log = logging.getLogger(__name__)

ATTEMPTS = 3  # runs of the unfinished shards before giving up
TASK_BATCHES = 4  # batches per Ray Data block: the unit Ray retries on a restarted actor


# --- shards -----------------------------------------------------------------------------------

class ShardDir:
    """The shard files of one extraction job: ``shard-NNNNN.h5`` per ``shard_rows`` rows.

    The folder is named by the content key, so only the very same job resumes from it; a
    resumed job keeps the shard size it started with.
    """

    def __init__(self, store: Path, content_key: str, rows: int, shard_rows: int) -> None:
        self.dir = shard_dir(store, content_key)
        self.key = content_key
        self.rows = rows
        if shard_rows < 1:
            raise ConfigError(f"extract.shard_rows must be at least 1, not {shard_rows}")
        self.shard_rows = resume_unit(self.dir, {"key": content_key, "rows": rows},
                                      "shard_rows", shard_rows)
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    @property
    def n_shards(self) -> int:
        return -(-self.rows // self.shard_rows)

    def bounds(self, index: int) -> tuple[int, int]:
        return index * self.shard_rows, min((index + 1) * self.shard_rows, self.rows)

    def path(self, index: int) -> Path:
        return shard_file(self.dir, index)

    def done(self) -> list[int]:
        return [i for i in range(self.n_shards) if self.path(i).exists()]

    def todo(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.path(i).exists()]

    # write_store and append_store read new rows "by block": a shard is a block.
    @property
    def block_rows(self) -> int:
        return self.shard_rows

    @property
    def n_blocks(self) -> int:
        return self.n_shards

    def rows_of(self, index: int) -> range:
        return range(*self.bounds(index))

    def load(self, index: int) -> dict[str, np.ndarray]:
        import h5py

        if self._cache is None or self._cache[0] != index:  # write_store asks row by row
            with h5py.File(self.path(index), "r") as f:
                self._cache = (index, {"features": f["features"][:], "ok": f["ok"][:],
                                       "reasons": f["reasons"].asstr()[:]})
        return self._cache[1]


class _ShardWriter:
    """One shard being written, rows in any order; renamed into place when every row is in."""

    def __init__(self, shards: ShardDir, index: int, feature_shape: tuple[int, ...],
                 compression: str) -> None:
        import h5py

        self.final = shards.path(index)
        self.tmp = self.final.with_suffix(".tmp")
        self.start, stop = shards.bounds(index)
        n = stop - self.start
        self.seen = np.zeros(n, bool)
        row_bytes = 4 * int(np.prod(feature_shape))
        chunk = int(max(1, min(n, CHUNK_BYTES // max(row_bytes, 1))))
        comp = None if compression == "none" else compression
        self.file = h5py.File(self.tmp, "w")
        self.file.create_dataset("features", (n, *feature_shape), np.float32,
                                 chunks=(chunk, *feature_shape), compression=comp,
                                 shuffle=comp is not None, fletcher32=True)
        self.file.create_dataset("ok", (n,), bool)
        self.file.create_dataset("reasons", (n,), STRING)
        self.file.attrs.update({"key": shards.key, "shard": index, "start": self.start,
                                "stop": stop})

    def write(self, rows: np.ndarray, features: np.ndarray, ok: np.ndarray,
              reasons: np.ndarray) -> bool:
        """Write rows (absolute row numbers, ascending); True when the shard is whole."""
        local = rows - self.start
        at = slice(local[0], local[-1] + 1) if local[-1] - local[0] + 1 == len(local) else local
        self.file["features"][at] = features
        self.file["ok"][at] = ok
        bad = np.flatnonzero(~ok)
        for i in bad:
            self.file["reasons"][local[i]] = str(reasons[i])
        self.seen[local] = True
        return bool(self.seen.all())

    def finish(self) -> None:
        self.file.attrs["complete"] = True
        self.file.close()
        os.replace(self.tmp, self.final)  # atomic: a shard under its final name is whole

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


# --- the actor --------------------------------------------------------------------------------

class ShardExtractor:
    """Ray Data callable class: one frozen backbone per actor, built once.

    Maps a batch ``{"row", "path"}`` (at most ``extract.batch_size`` rows) to ``{"row",
    "features", "ok", "reason"}``: the same reader (:func:`featx.data.images.load_image`) and the
    same traced, fixed-shape forward pass (the batch padded with zeros) as ``featx extract``
    on one machine, so the numbers are the same.
    """

    def __init__(self, config: dict[str, Any], calibration: Calibration | None = None) -> None:
        from featx.data.images import usable_cores
        from featx.features.backbones import Backbone

        cfg = Config.from_dict(config, source="ray driver")
        self.backbone = Backbone(cfg.backbone, seed=cfg.dataset.seed, cache_dir=cfg.cache_path)
        self.backbone.calibration = calibration  # precision int8: the driver's sample
        self.batch = cfg.extract.batch_size
        self.forward = self.backbone.batched(self.batch)
        # Pillow releases the GIL while decoding: threads decode a batch in parallel.
        self.pool = ThreadPoolExecutor(usable_cores())

    def _load(self, path: str) -> tuple[np.ndarray, bool, str]:
        from featx.data.images import load_image

        size = self.backbone.input_size
        try:
            return load_image(path, size, self.backbone.resize), True, ""
        except Exception as e:  # a per-file skip, never a crash (as in images.read_batches)
            return np.zeros((size, size, 3), np.uint8), False, f"{type(e).__name__}: {e}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loaded = list(self.pool.map(self._load, [str(p) for p in batch["path"]]))
        images = np.stack([image for image, _, _ in loaded])
        ok = np.array([good for _, good, _ in loaded], bool)
        features = self.forward(images, ok)
        return {"row": np.asarray(batch["row"], np.int64), "features": features, "ok": ok,
                "reason": np.array([reason for _, _, reason in loaded], dtype=object)}


# --- the driver -------------------------------------------------------------------------------

def run_on_ray(config: Config, p: Plan, split: np.ndarray, old: FeatureStore | None,
               progress: bool, in_place: bool = False) -> ExtractResult:
    """The extraction step of :func:`featx.features.extraction.extract` (which plans, locks and
    spots
    cache hits) on a Ray cluster: the same store as the local engine makes. Rows of unchanged
    images are reused from ``old`` (a store of an earlier version of the dataset): only new
    and changed images go to the cluster (:func:`_update`)."""
    if old is not None:
        old_row = p.match(old)
        if (old_row >= 0).any():
            return _update(config, p, split, old, old_row, progress, in_place)
        old.close()
    shards = ShardDir(p.path, p.key, len(p.dataset), config.extract.shard_rows)
    t0 = time.perf_counter()
    extracted = _extract_with_retries(config, p, shards, None, progress)
    seconds = time.perf_counter() - t0
    join(p, shards, split, store_attrs(config, p), config.extract.compression,
         config.extract.consolidate)
    with FeatureStore(p.path) as store:
        skipped = store.skipped
    return ExtractResult(p.path, p.key, cache_hit=False, rows=len(p.dataset),
                         extracted=extracted, reused=len(p.dataset) - extracted,
                         seconds=seconds, images_per_second=extracted / max(seconds, 1e-9),
                         skipped=skipped, device="ray cluster")


def _extract_with_retries(config: Config, p: Plan, shards: ShardDir,
                          images: np.ndarray | None, progress: bool) -> int:
    """Extract the unfinished shards (``images``: the dataset image of each shard row; None:
    row i is image i), running again those a failed run left; return the rows extracted."""
    done = shards.done()
    if done:
        log.info("resuming: %d of %s already extracted", len(done),
                 plural(shards.n_shards, "shard"))
    extracted = 0
    if p.backbone.config.precision == "int8" and shards.todo():
        # quantised once, here, before connecting: a failure is one line, not every actor's
        # crash, and the actors read the model from the cache folder
        p.backbone.openvino(config.extract.batch_size)
    with connected(config.ray_address) as ray:
        for attempt in range(1, ATTEMPTS + 1):
            todo = shards.todo()
            if not todo:
                break
            try:
                extracted += _extract_shards(ray, config, p, shards, todo, progress,
                                             images=images)
            except Exception as e:  # a lost node surfaces as one of many Ray error types
                if isinstance(e, ExtractError) or attempt == ATTEMPTS:
                    raise ExtractError(f"ray extraction failed ({len(shards.done())} of "
                                       f"{plural(shards.n_shards, 'shard')} kept for a "
                                       f"resume): "
                                       f"{type(e).__name__}: {e}") from e
                log.warning("ray run failed (%s: %s); retrying %s", type(e).__name__,
                            str(e)[:300], plural(len(shards.todo()), "unfinished shard"))
    return extracted


def _update(config: Config, p: Plan, split: np.ndarray, old: FeatureStore,
            old_row: np.ndarray, progress: bool, in_place: bool) -> ExtractResult:
    """The store of ``p`` from ``old``'s rows of unchanged images (``old_row``: per image,
    its row there or -1) and the other images extracted on the cluster, written as the
    local engine writes an update: one more segment beside ``old``'s (no feature of
    ``old`` copied) when ``old`` is this very dataset's previous store and not a virtual
    one, else a rewrite from both."""
    n = len(p.dataset)
    todo = np.flatnonzero(old_row < 0)  # the blocks' rows, in order (RowSource)
    # its own shard folder: shards of an unfinished full run of this key hold other rows
    key = short_hash(f"{p.key}:update:".encode() + todo.tobytes())
    shards = ShardDir(p.path, key, len(todo), config.extract.shard_rows)
    t0 = time.perf_counter()
    extracted = _extract_with_retries(config, p, shards, todo, progress) if len(todo) else 0
    seconds = time.perf_counter() - t0
    feature_shape = tuple(shards.load(0)["features"].shape[1:]) if len(todo) \
        else old.feature_shape
    dropped = len(old) - int((old_row >= 0).sum())
    skipped = write_update(p.path, in_place=in_place, source=RowSource(old_row), old=old,
                           blocks=shards, feature_shape=feature_shape,
                           **store_columns(config, p, split, feature_shape))
    shutil.rmtree(shards.dir, ignore_errors=True)
    return ExtractResult(p.path, p.key, cache_hit=False, rows=n, extracted=extracted,
                         reused=n - len(todo), dropped=dropped, seconds=seconds,
                         images_per_second=extracted / max(seconds, 1e-9),
                         skipped=sorted(set(skipped)), device="ray cluster")


def _actor_options(ray) -> dict[str, Any]:
    """One actor per GPU; on CPU clusters one per node, holding the smallest node's CPUs so
    that no two share a node (TensorFlow uses every core it finds)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(size=gpus)}
    cpus = [n["Resources"]["CPU"] for n in ray.nodes()
            if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
    if not cpus:
        raise ExtractError("the Ray cluster has no node with a CPU or GPU to run on")
    return {"num_cpus": min(cpus), "compute": ray.data.ActorPoolStrategy(size=len(cpus))}


def _extract_shards(ray, config: Config, p: Plan, shards: ShardDir, todo: list[int],
                    progress: bool, images: np.ndarray | None = None) -> int:
    import pyarrow as pa

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    rows = np.concatenate([np.arange(*shards.bounds(i)) for i in todo])
    paths = [p.dataset.absolute(int(i)) for i in (rows if images is None else images[rows])]
    batch = config.extract.batch_size
    step = batch * TASK_BATCHES
    ds = ray.data.from_arrow([pa.table({"row": rows[i:i + step], "path": paths[i:i + step]})
                              for i in range(0, len(rows), step)])
    out = ds.map_batches(ShardExtractor, fn_constructor_kwargs={
                             "config": config.to_dict(), "calibration": p.backbone.calibration},
                         batch_size=batch, batch_format="numpy", **_actor_options(ray))
    writers: dict[int, _ShardWriter] = {}
    bar = progress_bar(shards.rows, f"{p.backbone.spec.name} {p.dataset.name} (ray)", "img",
                       progress, initial=shards.rows - len(rows))
    try:
        for got in out.iter_batches(batch_size=None, batch_format="numpy"):
            order = np.argsort(got["row"])  # h5py writes increasing indices
            got = {k: v[order] for k, v in got.items()}
            index = got["row"] // shards.shard_rows
            for s in np.unique(index):
                sel = index == s
                if s not in writers:
                    writers[s] = _ShardWriter(shards, int(s), got["features"].shape[1:],
                                              config.extract.compression)
                if writers[s].write(got["row"][sel], got["features"][sel], got["ok"][sel],
                                    got["reason"][sel]):
                    writers.pop(s).finish()
            bar.update(len(order))
    finally:
        bar.close()
        for w in writers.values():
            w.discard()
    return len(rows)


def join(p: Plan, shards: ShardDir, split: np.ndarray, attrs: dict[str, Any],
         compression: str, consolidate: bool) -> Path:
    """Publish the finished shards as the store at ``p.path``: a virtual dataset over the
    shard files (kept beside the store), or with ``consolidate`` a single-file copy."""
    feature_shape = tuple(shards.load(0)["features"].shape[1:])  # cached: read once
    attrs = {**attrs, "feature_shape": list(feature_shape)}
    common = dict(feature_shape=feature_shape, paths=p.dataset.paths,
                  signatures=p.signatures, labels=p.dataset.labels,
                  label_names=p.dataset.label_names, split=split, attrs=attrs)
    if consolidate:
        write_store(p.path, source=RowSource(), old=None,
                    blocks=shards, compression=compression, **common)
    else:
        _write_virtual(p.path, shards, **common)
    _remove_other_shards(p.path, keep=None if consolidate else shards.dir)
    return p.path


def _write_virtual(path: Path, shards: ShardDir, *, feature_shape: tuple[int, ...],
                   paths: list[str], signatures: list[str], labels: np.ndarray,
                   label_names: list[str], split: np.ndarray, attrs: dict[str, Any]) -> None:
    """The store of :func:`featx.store.write.write_store` with ``features`` virtual: same datasets,
    attributes and checksum; the shards' own chunks keep their Fletcher-32 checksums."""
    import h5py

    n = len(paths)
    layout = h5py.VirtualLayout((n, *feature_shape), np.float32)
    digest = FeatureDigest(VIRTUAL_READ_ROWS)
    ok_all = np.ones(n, bool)
    skipped: list[tuple[str, str]] = []
    for s in range(shards.n_shards):
        start, stop = shards.bounds(s)
        part = shards.load(s)  # read back: checks every chunk before the store is published
        digest.update(part["features"])
        ok_all[start:stop] = part["ok"]
        skipped += [(paths[start + i], str(part["reasons"][i]))
                    for i in np.flatnonzero(~part["ok"])]
        # relative to the store's folder: moving the cache folder breaks nothing
        source = os.path.relpath(shards.path(s), path.parent)
        layout[start:stop] = h5py.VirtualSource(source, "features", (stop - start,
                                                                     *feature_shape))
    tmp = path.with_name(path.name + ".assembling")
    with h5py.File(tmp, "w") as f:
        # NaN, not zeros, where a shard file is missing: never mistaken for features
        f.create_virtual_dataset("features", layout, fillvalue=np.nan)
        write_columns(f, labels=labels, paths=paths, signatures=signatures,
                      label_names=label_names, split=split, ok=ok_all, skipped=skipped,
                      attrs=attrs, digest=digest)
    os.replace(tmp, path)


def _remove_other_shards(store: Path, keep: Path | None) -> None:
    """Shard folders of earlier versions of this store: nothing refers to them any more."""
    pattern = re.compile(re.escape(store.name) + r"\.[0-9a-f]+\.shards")
    for d in store.parent.glob(store.name + ".*.shards"):
        if d != keep and pattern.fullmatch(d.name):
            shutil.rmtree(d, ignore_errors=True)
