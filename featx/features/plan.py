"""Planning: which store a config's data needs, and whether one holds it (no model work).

``plan`` reads the dataset (a walk and a stat per image, or a hash with
``dataset.hash = "content"``) and names the store by its content key (featx/core/layout.py);
``find_store`` is what every command that reads a store calls, and says what changed when
no store holds the data as it is now. Both engines (featx.features.extraction,
featx.features.distributed)
build on it, so neither imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from featx.core.config import Config
from featx.core.errors import StoreError
from featx.core.layout import STORE_SUFFIX, partial_dirs, store_files, store_path
from featx.core.memory import PackedStrings, Strings
from featx.data.dataset import TRAIN, Dataset, load_dataset, manifest_digest, stratified_split
from featx.data.images import READ_POLICY
from featx.features.backbones import Backbone
from featx.features.variants import PLAIN, Variant, get_variant
from featx.store.keys import library_versions, store_key
from featx.store.read import FeatureStore, row_pairs_to_paths


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
    # (row, earlier row with the same bytes): duplicate files among the store's images, and
    # the path of each row (kept as rows: a million pairs of paths would hold 118 MiB)
    duplicate_rows: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64),
                                       repr=False, compare=False)
    row_paths: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def duplicates(self) -> list[tuple[str, str]]:
        """(path, path of an earlier image with the same bytes), in row order."""
        return row_pairs_to_paths(self.duplicate_rows, self.row_paths)


def feature_settings(backbone: Backbone, variant: Variant = PLAIN) -> dict:
    """Everything but the images that the features depend on (the settings key)."""
    return {**backbone.describe(), "resize": f"{READ_POLICY}-{backbone.resize}", "dtype": "float32",
            **variant.settings}


@dataclass
class Plan:
    dataset: Dataset
    backbone: Backbone
    path: Path
    settings: dict
    key: str  # content key: settings + manifest
    signatures: Strings  # of each dataset image
    variant: Variant = PLAIN
    images: np.ndarray | None = None  # the dataset rows the store covers (None: all)
    split: np.ndarray | None = None  # the split of every dataset image
    manifest: str = ""  # featx.data.dataset.manifest_digest of the dataset as it is now
    _matched: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def one_row_per_image(self) -> bool:
        """Whether the store's rows are the dataset's images (the plain store)."""
        return self.images is None and self.variant.rows_per_image == 1

    @property
    def row_paths(self) -> PackedStrings:
        """The path of each store row."""
        paths = self.dataset.paths
        return paths if self.one_row_per_image else paths.take(self.row_image)

    @property
    def row_signatures(self) -> Strings:
        """The signature of each store row's image."""
        return self.signatures if self.one_row_per_image else \
            self.signatures.take(self.row_image)

    def store_rows(self, pairs: np.ndarray) -> np.ndarray:
        """Pairs of dataset images as pairs of this store's rows (each image's first row);
        pairs with an image the store does not hold are left out."""
        if self.one_row_per_image:
            return pairs
        first = np.full(len(self.dataset), -1, np.int64)
        rows = np.arange(len(self.row_image))
        first[self.row_image[::-1]] = rows[::-1]  # the earliest row is written last
        got = first[pairs]
        return got[(got >= 0).all(axis=1)]

    def match(self, old: FeatureStore) -> np.ndarray:
        """For each dataset image, the row of ``old`` with its path and signature, or -1
        (:func:`match_rows`; computed once per store: both the row reuse and the duplicate
        check need it)."""
        if old.path not in self._matched:
            self._matched[old.path] = match_rows(old.paths, old.signatures,
                                                 self.dataset.paths, self.signatures)
        return self._matched[old.path]

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


def _settings(config: Config, variant: str = "plain"
              ) -> tuple[Dataset, Backbone, Variant, dict]:
    """The dataset, backbone, variant and settings (with their ``settings_key``) of a config."""
    backbone = Backbone(config.backbone, seed=config.dataset.seed,  # settings before images
                        cache_dir=config.cache_path)
    v = get_variant(config, variant)
    dataset = load_dataset(config.dataset)
    settings = feature_settings(backbone, v)
    return dataset, backbone, v, {**settings, "settings_key": store_key(settings)}


def plan(config: Config, variant: str = "plain") -> Plan:
    """Read the dataset and work out which store this config needs (no model work);
    ``variant`` names a variant store (featx/features/variants.py) instead of the plain one. The
    store is named by its content key (featx/core/layout.py): what it holds, not where from."""
    dataset, backbone, v, settings = _settings(config, variant)
    signatures = dataset.signatures(content=config.dataset.hash == "content", listed=True)
    manifest = manifest_digest(dataset, signatures)
    content = {"settings": settings["settings_key"], "manifest": manifest,
               "hash": config.dataset.hash}
    split = stratified_split(dataset.labels, config.dataset.val, config.dataset.test,
                             config.dataset.seed)
    images = None
    if v.train_only:  # which images it holds depends on the split: part of its content
        images = np.flatnonzero(split == TRAIN)
        content["split"] = _split_attr(config)
    key = store_key(content)
    path = store_path(config.cache_path, dataset.name + v.suffix, backbone.spec.name,
                      config.backbone.pooling, key)
    # The same images under another folder name: the store made under that name holds them.
    same = [q for q in config.cache_path.glob(f"*-{key}{STORE_SUFFIX}") if q != path]
    if same and not path.exists():
        path = same[0]
    return Plan(dataset, backbone, path, settings, key, signatures, v, images, split, manifest)


def locate_store(config: Config) -> Path:
    """Where the plain store of ``config``'s data as it is now is (or would be)."""
    return plan(config).path


def find_store(config: Config, variant: str = "plain") -> Plan:
    """The plan of the store that holds the data named by ``config`` as it is now, for the
    commands that read stores; a StoreError saying what changed when there is none."""
    p = plan(config, variant)
    if p.path.is_file():
        return p
    if partial_dirs(p.path.parent, p.path):
        raise StoreError(f"the extraction of {p.dataset.root} into {p.path} is unfinished: "
                         "run `featx extract` to resume it")
    raise StoreError(mismatch(p.dataset, p.signatures, _candidates(p), p.path.parent))


def check_store_matches(config: Config, store: Path) -> None:
    """Refuse ``store`` (given by path, with whatever settings it has) unless it holds the
    images ``config`` names as they are now; a config without a dataset names none."""
    if not (config.dataset.root or config.dataset.manifest):
        return
    with FeatureStore(store) as given:
        recorded, mode = given.attrs.get("manifest"), given.attrs.get("hash", "stat")
    dataset = load_dataset(config.dataset)
    signatures = dataset.signatures(content=mode == "content", listed=True)
    if manifest_digest(dataset, signatures) != recorded:
        raise StoreError(mismatch(dataset, signatures, [Path(store)]))


def mismatch(d: Dataset, signatures: list[str], candidates: list[Path],
             cache_dir: Path | None = None) -> str:
    """One line: no store holds dataset ``d`` as it is now, and what changed since the
    closest of ``candidates`` (stores of earlier versions)."""
    where = f"{d.root} (dataset {d.name!r})"
    if not candidates:
        return (f"no feature store for {where} with these settings in {cache_dir}: run "
                "`featx extract` first")
    try:
        with FeatureStore(candidates[0]) as old:
            before = {path: (old.label_names[label], sig) for path, label, sig
                      in zip(old.paths, old.labels, old.signatures)}
            old_classes = set(old.label_names)
    except StoreError as e:
        return f"{e} (no store matches {where})"
    now = {path: (d.label_names[label], sig)
           for path, label, sig in zip(d.paths, d.labels, signatures)}
    changes = []
    for what, names in (("added", set(d.label_names) - old_classes),
                        ("removed", old_classes - set(d.label_names))):
        if names:
            changes.append(f"{_count(len(names), 'class', 'classes')} {what} "
                           f"({', '.join(sorted(names)[:5])})")
    for what, paths in (("added", now.keys() - before.keys()),
                        ("removed", before.keys() - now.keys()),
                        ("changed", {q for q in now.keys() & before.keys()
                                     if now[q] != before[q]})):
        if paths:
            changes.append(f"{_count(len(paths), 'image', 'images')} {what} "
                           f"(e.g. {sorted(paths)[0]})")
    if not changes:  # same files; other signature mode or split of a variant store
        changes.append("recorded with other settings")
    return (f"{candidates[0]} does not hold {where} as it is now: {'; '.join(changes)}; run "
            "`featx extract` to update it")


def match_rows(old_paths: Sequence[str], old_signatures: Sequence[str], paths: Sequence[str],
               signatures: Sequence[str]) -> np.ndarray:
    """For each (path, signature), the index of the same pair among the old ones, or -1
    (int64 (len(paths),)); each old path once. A dict of the old paths, then the signatures
    compared in order (1M rows: 0.5 s)."""
    index = dict(zip(old_paths, range(len(old_paths))))
    got = np.fromiter((index.get(q, -1) for q in paths), np.int64, len(paths))
    del index
    same = np.fromiter((g < 0 or old_signatures[g] == sig
                        for g, sig in zip(got.tolist(), signatures)), bool, len(got))
    got[~same] = -1
    return got


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _candidates(p: Plan) -> list[Path]:
    """Complete stores made with the same settings that may hold an earlier version of
    ``p``'s dataset, closest first: made from the same folder (the newest first), then
    sharing the most image paths (a renamed or moved folder), then the newest. Whatever they
    are, only rows with the same path and signature are ever reused from them. Only stores
    of other folders have their paths read (1M paths: 1 s)."""
    wanted: set[str] | None = None
    found = []
    for path in store_files(p.path.parent):
        if path == p.path:
            continue
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("settings_key") != p.settings["settings_key"] or \
                        not f.attrs.get("complete", False):
                    continue
                same_root = f.attrs.get("root") == str(p.dataset.root)
                shared = 0
                if not same_root:
                    wanted = set(p.dataset.paths) if wanted is None else wanted
                    shared = len(wanted.intersection(f["paths"].asstr()[:]))
        except (OSError, KeyError):
            continue
        if same_root or shared:
            found.append((not same_root, -shared, -path.stat().st_mtime, path))
    return [path for *_, path in sorted(found)]


def store_attrs(config: Config, p: Plan) -> dict:
    """The attributes of the store ``p`` (both engines write the same ones). A store of
    several layers also records each layer's columns (``layer_columns``: [name, start,
    end] in order), so that they can be read apart (featx.sweep); they follow from the
    settings, so they are no part of the key."""
    attrs = {**p.settings, "key": p.key, "dataset": p.dataset.name,
             "root": str(p.dataset.root), "manifest": p.manifest,
             "split": _split_attr(config), "hash": config.dataset.hash,
             "pipeline": config.to_json(), "versions": library_versions()}
    if len(p.backbone.layers) > 1:  # the model is built by then, unless no image needed it
        attrs["layer_columns"] = [list(c) for c in p.backbone.layer_columns()]
    return attrs


def store_columns(config: Config, p: Plan, split: np.ndarray,
                  feature_shape: tuple[int, ...]) -> dict:
    """The per-row columns, attributes and compression of the store ``p`` (``split``: of
    every dataset image), as both engines write them."""
    one = p.one_row_per_image  # its rows are the dataset's images: no copies
    return dict(paths=p.row_paths, signatures=p.row_signatures,
                labels=p.dataset.labels if one else p.dataset.labels[p.row_image],
                label_names=p.dataset.label_names, split=split if one else split[p.row_image],
                attrs={**store_attrs(config, p), "feature_shape": list(feature_shape)},
                compression=config.extract.compression)


def _split_attr(config: Config) -> str:
    d = config.dataset
    return f'{{"val": {d.val}, "test": {d.test}, "seed": {d.seed}}}'
