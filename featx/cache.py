"""Managing the cache folder: list, describe, verify and remove feature stores."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featx.store import FeatureStore, StoreError, shard_dir


@dataclass
class Entry:
    path: Path
    key: str
    dataset: str
    backbone: str
    rows: int
    bytes: int
    complete: bool


def entries(cache_dir: Path) -> list[Entry]:
    """Every store and unfinished extraction under ``cache_dir``."""
    out = []
    for path in sorted(Path(cache_dir).glob("*.h5")):
        try:
            with h5py.File(path, "r") as f:
                a = f.attrs
                key = str(a.get("key", "?"))
                # A store made on Ray may be a virtual dataset over its shard files.
                shards = shard_dir(path, key).glob("shard-*.h5")
                size = path.stat().st_size + sum(p.stat().st_size for p in shards)
                out.append(Entry(path, key, str(a.get("dataset", "?")),
                                 str(a.get("backbone", "?")), int(f["features"].shape[0]),
                                 size, bool(a.get("complete", False))))
        except (OSError, KeyError):
            out.append(Entry(path, "?", "?", "?", 0, path.stat().st_size, False))
    for partial in sorted(Path(cache_dir).glob("*.h5.*.partial")):
        blocks = list(partial.glob("block-*.npz"))
        try:
            meta = json.loads((partial / "meta.json").read_text())
            rows = min(len(blocks) * int(meta["block_rows"]), int(meta["rows"]))
        except (OSError, ValueError, KeyError):
            rows = 0
        key = partial.name.rsplit(".", 2)[-2]
        dataset, backbone = partial.name.split("-")[0], partial.name.split("-")[1]
        out.append(Entry(partial, key, dataset, backbone, rows,
                         sum(b.stat().st_size for b in blocks), False))
    return out


def find(cache_dir: Path, key: str) -> Entry:
    """The one entry whose content key, settings key or file name starts with ``key``."""
    matches = [e for e in entries(cache_dir)
               if e.key.startswith(key) or e.path.name.startswith(key)
               or (e.path.suffix == ".h5" and e.path.stem.rsplit("-", 1)[-1].startswith(key))]
    if not matches:
        raise StoreError(f"no store with key {key!r} in {cache_dir} (featx cache ls lists them)")
    if len(matches) > 1:
        names = ", ".join(e.path.name for e in matches)
        raise StoreError(f"key {key!r} matches several entries: {names}")
    return matches[0]


def info(path: Path) -> dict:
    """All recorded settings of a store."""
    with FeatureStore(path) as store:
        attrs = store.attrs
        attrs["rows"] = len(store)
        attrs["skipped"] = store.skipped
        attrs["label_names"] = store.label_names
    return attrs


def verify(path: Path) -> list[str]:
    """Problems found in a store (empty: it is sound). Reads every chunk, so HDF5's Fletcher-32
    checksums are checked, and compares the content hash recorded at writing."""
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
        except OSError as e:
            return problems + [f"features unreadable (checksum or I/O error): {e}"]
        recorded = store.attrs.get("features_sha256")
        if recorded and recorded != digest.hexdigest():
            problems.append("features do not match the checksum recorded when written")
    return problems


def remove(entry: Entry) -> list[Path]:
    """Delete a store (or unfinished extraction) with its lock and results; return what went."""
    gone = []
    related = [entry.path, Path(str(entry.path) + ".lock"),
               entry.path.with_name(entry.path.stem + ".runs")]
    if entry.path.suffix == ".h5":
        related += list(entry.path.parent.glob(entry.path.name + ".*.partial"))
        related += list(entry.path.parent.glob(entry.path.name + ".*.shards"))  # ray engine
    for p in related:
        if p.is_dir():
            shutil.rmtree(p)
            gone.append(p)
        elif p.exists():
            p.unlink()
            gone.append(p)
    return gone
