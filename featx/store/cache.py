"""Managing the cache folder: list, describe, verify and remove feature stores (and the
checkpoints of unfinished fine-tunings and the backbones converted for OpenVINO, which live
beside them)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx.core.errors import StoreError
from featx.core.files import checksum_problems
from featx.core.layout import (
    STORE_SUFFIX,
    belongings,
    block_files,
    checkpoint_files,
    converted_model_checksums,
    converted_model_dirs,
    converted_model_file,
    job_meta,
    parse_checkpoint_name,
    parse_converted_name,
    parse_store_name,
    partial_dirs,
    partial_key,
    runs_dir,
    segment_files,
    shard_dir,
    shard_files,
    store_files,
)
from featx.store.keys import as_text
from featx.store.read import FeatureStore


@dataclass
class Entry:
    path: Path
    key: str
    dataset: str
    backbone: str
    rows: int
    bytes: int
    complete: bool
    # store | partial (an unfinished extraction) | checkpoint (fine-tuning) | openvino (a
    # converted backbone; rows: its batch size)
    kind: str = "store"
    # what tells a dataset's stores apart ("" where not recorded: a checkpoint, a partial
    # folder of featx 0.4)
    layer: str = ""
    pooling: str = ""
    input_size: int = 0
    weights: str = ""  # weights_label

    @property
    def state(self) -> str:
        if self.kind == "openvino":
            return "openvino model" if self.complete else "openvino (unfinished)"
        return "complete" if self.complete else "checkpoint" if self.kind == "checkpoint" \
            else "partial"


def entries(cache_dir: Path) -> list[Entry]:
    """Every store and unfinished extraction under ``cache_dir``."""
    out = []
    for path in store_files(cache_dir):
        name = parse_store_name(path.name)
        try:
            with h5py.File(path, "r") as f:
                a = f.attrs
                key = str(a.get("key", name.key))
                # A store made on Ray may be a virtual dataset over its shard files.
                # An updated store's features are in its segment files.
                shards = [*shard_files(shard_dir(path, key)), *segment_files(path)]
                size = path.stat().st_size + sum(p.stat().st_size for p in shards)
                out.append(Entry(path, key, str(a.get("dataset", name.dataset)),
                                 str(a.get("backbone", name.backbone)),
                                 int(f["labels"].shape[0]), size,
                                 bool(a.get("complete", False)),
                                 **_told_apart(store_settings(a), name.pooling)))
        except (OSError, KeyError):
            out.append(Entry(path, name.key, name.dataset, name.backbone, 0,
                             path.stat().st_size, False, pooling=name.pooling))
    for partial in partial_dirs(cache_dir):
        blocks = block_files(partial)
        meta = {}
        try:
            meta = json.loads(job_meta(partial).read_text())
            rows = min(len(blocks) * int(meta["block_rows"]), int(meta["rows"]))
        except (OSError, ValueError, KeyError, TypeError):
            rows = 0
        name = parse_store_name(partial.name)
        about = meta.get("about") if isinstance(meta, dict) else None
        told = _told_apart(store_settings(about), name.pooling) if isinstance(about, dict) \
            else {"pooling": name.pooling}  # featx 0.4 recorded no settings
        out.append(Entry(partial, partial_key(partial), name.dataset, name.backbone, rows,
                         sum(b.stat().st_size for b in blocks), False, "partial", **told))
    for checkpoint in checkpoint_files(cache_dir):
        name = parse_checkpoint_name(checkpoint.name)
        try:  # rows: the epochs it has finished
            with np.load(checkpoint) as f:
                epochs = len(json.loads(str(f["state"])).get("history", []))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            epochs = 0
        out.append(Entry(checkpoint, name.key, name.dataset, name.backbone, epochs,
                         checkpoint.stat().st_size, False, "checkpoint"))
    for folder in converted_model_dirs(cache_dir):
        backbone, batch, key = parse_converted_name(folder.name)
        files = [f for f in folder.rglob("*") if f.is_file()]
        out.append(Entry(folder, key, "", backbone, batch, sum(f.stat().st_size for f in files),
                         batch > 0 and converted_model_file(folder).is_file(), "openvino"))
    return out


def weights_label(kind: str, weights_id: str = "", file: str = "") -> str:
    """Weights in a few characters: ``imagenet``, ``none``, or ``file:<name> sha256:<8 hex>``
    (``weights_id`` as featx.features.backbones.Backbone.weights_id gives it, ``file``: the
    weights path as given)."""
    if kind != "file":
        return kind or "?"
    return f"file:{Path(file).name} {weights_id[:15]}" if file else weights_id[:15]


def recorded_pipeline(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline a store (or an unfinished extraction) was made with, as a dict of
    sections (empty where none is recorded): its ``pipeline`` attribute, raw (JSON text) or
    as FeatureStore.attrs decodes it."""
    pipeline = attrs.get("pipeline", {})
    if not isinstance(pipeline, Mapping):
        try:
            pipeline = json.loads(as_text(pipeline))
        except ValueError:
            return {}
    return {k: v for k, v in pipeline.items() if isinstance(v, Mapping)} \
        if isinstance(pipeline, Mapping) else {}


def store_settings(attrs: Mapping[str, Any]) -> dict[str, str]:
    """What a store's attributes (or an unfinished extraction's ``about``) record of the
    settings that choose its features, as short labels, in the order they are shown:
    backbone, weights, layer, pooling, input size, then resize, precision and flip."""
    file = str(recorded_pipeline(attrs).get("backbone", {}).get("weights", ""))
    text = {k: as_text(attrs.get(k, "")) for k in
            ("backbone", "weights", "weights_id", "layer", "pooling", "input_size", "resize",
             "precision", "flip")}
    return {"backbone": text["backbone"],
            "weights": weights_label(text["weights"], text["weights_id"], file),
            "layer": text["layer"], "pooling": text["pooling"],
            "input size": text["input_size"],
            "resize": text["resize"].rsplit("-", 1)[-1],  # "<read policy>-<resize>"
            "precision": text["precision"] or "float32",  # recorded where not float32
            "flip": "mirror averaged" if text["flip"] else "no"}


def describe_store(attrs: Mapping[str, Any]) -> str:
    """One line of a store's settings: "MobileNetV2, layer (last conv), avg pooling, weights
    file:w.h5 sha256:71e4abcd, 224 px" (resize, precision and flip where not the defaults)."""
    s = store_settings(attrs)
    more = [f"{k} {s[k]}" for k, default in (("resize", "squash"), ("precision", "float32"),
                                             ("flip", "no")) if s[k] not in (default, "")]
    return ", ".join([s["backbone"], f"layer {s['layer']}", f"{s['pooling']} pooling",
                      f"weights {s['weights']}", f"{s['input size']} px", *more])


def _told_apart(settings: dict[str, str], pooling: str) -> dict[str, Any]:
    """An Entry's layer, pooling, input_size and weights, from :func:`store_settings`."""
    size = settings["input size"]
    return {"layer": settings["layer"], "pooling": settings["pooling"] or pooling,
            "input_size": int(size) if size.isdigit() else 0,
            "weights": settings["weights"] if settings["backbone"] else ""}


def find(cache_dir: Path, key: str, exact: bool = False) -> Entry:
    """The one entry whose content key, settings key or file name starts with ``key`` (with
    ``exact``: is ``key``, as ``featx cache rm`` asks, so that no prefix deletes by chance)."""
    key = key.strip()
    if not key:
        raise StoreError("an empty key names no store (featx cache ls lists them)")

    def names(e: Entry) -> list[str]:
        return [e.key, e.path.name, e.path.stem]

    every = entries(cache_dir)
    matches = [e for e in every if key in names(e)]
    if not exact and not matches:
        matches = [e for e in every if any(n.startswith(key) for n in names(e))]
    if not matches:
        hint = ("; give the whole key or file name, as `featx cache ls` prints it"
                if exact and any(any(n.startswith(key) for n in names(e)) for e in every)
                else " (featx cache ls lists them)")
        raise StoreError(f"no store with key {key!r} in {cache_dir}{hint}")
    if len(matches) > 1:
        listed = ", ".join(e.path.name for e in matches)
        raise StoreError(f"key {key!r} matches several entries: {listed}")
    return matches[0]


def info(path: Path) -> dict:
    """All recorded settings of a store."""
    with FeatureStore(path) as store:
        attrs = store.attrs
        attrs["rows"] = len(store)
        attrs["skipped"] = store.skipped
        attrs["duplicates"] = store.duplicates
        attrs["label_names"] = store.label_names
    return attrs


def verify(path: Path) -> list[str]:
    """Problems found in a store (empty: it is sound): row counts, the column checksum (on
    opening), every feature block's checksum and HDF5's Fletcher-32 (by reading them all),
    and the whole-features checksum recorded at writing. A converted OpenVINO model's folder:
    every file against the checksums recorded when it was converted. A store that fails is
    no longer recorded as verified, so the next ``featx extract`` rebuilds it."""
    if Path(path).is_dir():
        return checksum_problems(path, converted_model_checksums(path),
                                 converted_model_file(path).name)
    try:
        store = FeatureStore(path)
    except StoreError as e:
        return [str(e)]
    problems = []
    with store:
        n = len(store)
        for name in ("labels", "paths", "split", "ok", "signatures"):
            if name in store.file and store.file[name].shape[0] != n:
                problems.append(f"{name} has {store.file[name].shape[0]} rows, features {n}")
        digest = hashlib.sha256()
        try:
            for _, block in store.iter_chunks():
                digest.update(np.ascontiguousarray(block).tobytes())
        except StoreError as e:
            return problems + [str(e)]
        # an updated (segmented) store records none: its blocks' checksums cover every row
        recorded = store.attrs.get("features_sha256")
        if recorded is not None and recorded != digest.hexdigest():
            problems.append("features do not match the checksum recorded when written")
        if problems:
            store.forget_verified()
        else:
            store.mark_verified()
    return problems


def remove(entry: Entry) -> list[Path]:
    """Delete a store (or unfinished extraction) with its lock and results; return what went."""
    gone = []
    related = [entry.path]
    if entry.path.suffix == STORE_SUFFIX:  # partial and shard folders, results
        related = [*belongings(entry.path), runs_dir(entry.path)]
    for p in related:
        if p.is_dir():
            shutil.rmtree(p)
            gone.append(p)
        elif p.exists():
            p.unlink()
            gone.append(p)
    return gone
