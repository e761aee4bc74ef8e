"""Planning: which store a config's data needs, and whether one holds it (no model work).

``plan`` reads the dataset (a walk and a stat per image, or a hash with
``dataset.hash = "content"``) and names the store by its content key (featx/core/layout.py);
``find_store`` is what every command that reads a store calls: given only the data, it reads
the one store of it (``settle``: the settings given to ``featx extract`` are said once), and
it says what differs (a setting and its flag, what stopped an unfinished extraction, what
changed in the data) when no store holds the data as it is now. Both engines
(featx.features.extraction, featx.features.distributed) build on it, so neither imports the
other's internals.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx.core.config import Config
from featx.core.errors import FeatxError, StoreError
from featx.core.layout import STORE_SUFFIX, partial_dirs, store_files, store_path
from featx.core.log import plural
from featx.core.memory import CHUNK, PackedStrings, Strings
from featx.data.dataset import TRAIN, Dataset, load_dataset, manifest_digest, stratified_split
from featx.data.groups import UNGROUPED, grouped_split, grouping_identity
from featx.data.images import READ_POLICY
from featx.features.backbones import Backbone
from featx.features.runtime import calibration_sample
from featx.features.variants import PLAIN, Variant, get_variant
from featx.store.blocks import job_record
from featx.store.cache import describe_store, recorded_pipeline, store_settings
from featx.store.cache import find as find_entry
from featx.store.keys import as_text, library_versions, store_key
from featx.store.read import FeatureStore, row_pairs_to_paths, stored_groups

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    path: Path
    key: str
    cache_hit: bool
    rows: int
    extracted: int = 0  # rows computed by this run (0 on a cache hit)
    reused: int = 0  # rows taken from an earlier store or earlier finished blocks
    # rows of this dataset's previous store whose image is gone or changed (0 where rows
    # were reused from another dataset's store: that store stays as it is)
    dropped: int = 0
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
    """Everything but the images that the features depend on (the settings key); precision
    int8 also the identity of the images its model is calibrated on (a sample of the
    dataset's: :func:`_backbone` attaches it), so that a store is only ever updated with rows
    of the same int8 model."""
    int8 = {"calibration": backbone.calibration_identity} \
        if backbone.config.precision == "int8" else {}
    return {**backbone.describe(), "resize": f"{READ_POLICY}-{backbone.resize}", "dtype": "float32",
            **int8, **variant.settings}


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
    # how ``split`` treats duplicates (featx.data.groups.grouping_identity): grouped only once
    # the plain store records its groups (they come from its features)
    grouping: dict = field(default_factory=lambda: dict(UNGROUPED))
    # the plain store's duplicate groups at the pipeline's threshold (None: not found yet)
    groups: np.ndarray | None = field(default=None, repr=False, compare=False)
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

    def match(self, old: FeatureStore, paths: PackedStrings | None = None,
              signatures: PackedStrings | None = None) -> np.ndarray:
        """For each dataset image, the row of ``old`` with its path and signature, or -1
        (:func:`match_rows`; computed once per store: both the row reuse and the duplicate
        check need it). ``paths``, ``signatures``: ``old``'s, where the caller has read them
        (``FeatureStore.strings``); else read here, packed, and let go after."""
        if old.path not in self._matched:
            self._matched[old.path] = match_rows(
                old.strings("paths") if paths is None else paths,
                old.strings("signatures") if signatures is None else signatures,
                self.dataset.paths, self.signatures)
        return self._matched[old.path]

    @cached_property
    def row_image(self) -> np.ndarray:
        """For each store row, its image (a variant may store several rows per image)."""
        images = np.arange(len(self.dataset)) if self.images is None else self.images
        # int32 while it can: held while the model works (1M rows: 4 MB less)
        return np.repeat(np.asarray(images, np.int32 if len(self.dataset) < 2**31 else
                                    np.int64), self.variant.rows_per_image)

    @cached_property
    def row_view(self) -> np.ndarray:
        """For each store row, which view of its image it holds (pass or crop)."""
        per = self.variant.rows_per_image
        return np.tile(np.arange(per), len(self.row_image) // per)


@dataclass
class DataNow:
    """A dataset as it is now: its listing, each image's signature and their digest."""
    dataset: Dataset
    signatures: Strings
    manifest: str  # featx.data.dataset.manifest_digest


def data_now(config: Config) -> DataNow:
    """Read ``config``'s dataset as it is now (a walk and a stat per image, or a hash with
    ``dataset.hash = "content"``)."""
    dataset = load_dataset(config.dataset)
    signatures = dataset.signatures(content=config.dataset.hash == "content", listed=True)
    return DataNow(dataset, signatures, manifest_digest(dataset, signatures))


def _settings(config: Config, variant: str = "plain", now: DataNow | None = None
              ) -> tuple[DataNow, Backbone, Variant, dict]:
    """The dataset, backbone, variant and settings (with their ``settings_key``) of a config
    (``now``: its dataset, already read)."""
    backbone = _backbone(config)  # settings before images
    v = get_variant(config, variant)
    now = data_now(config) if now is None else now
    calibrate(backbone, config, now)
    settings = feature_settings(backbone, v)
    return now, backbone, v, {**settings, "settings_key": store_key(settings)}


def plan(config: Config, variant: str = "plain", now: DataNow | None = None) -> Plan:
    """Read the dataset (unless ``now`` holds it, read for this config) and work out which
    store this config needs (no model work); ``variant`` names a variant store
    (featx/features/variants.py) instead of the plain one. The store is named by its content
    key (featx/core/layout.py): what it holds, not where from."""
    now, backbone, v, settings = _settings(config, variant, now)
    dataset, signatures, manifest = now.dataset, now.signatures, now.manifest
    content = {"settings": settings["settings_key"], "manifest": manifest,
               "hash": config.dataset.hash}
    split, grouping, groups = None, dict(UNGROUPED), None
    if v is not PLAIN:  # a variant store follows the plain store's split, grouped or not
        plain = plan(config, "plain", now)
        split, grouping = plain.split, plain.grouping
    images = None
    if v.train_only:  # which images it holds depends on the split: part of its content
        images = np.flatnonzero(split == TRAIN)
        content["split"] = _split_attr(config)
        if grouping["duplicates"]:
            content["grouping"] = grouping
    key = store_key(content)
    path = store_path(config.cache_path, dataset.name + v.suffix, backbone.spec.name,
                      config.backbone.pooling, key)
    # The same images under another folder name: the store made under that name holds them.
    same = [q for q in config.cache_path.glob(f"*-{key}{STORE_SUFFIX}") if q != path]
    if same and not path.exists():
        path = same[0]
    if split is None:
        split, grouping, groups = plain_split(config, path, key, dataset.labels)
    return Plan(dataset, backbone, path, settings, key, signatures, v, images, split, manifest,
                grouping=grouping, groups=groups)


def plain_split(config: Config, path: Path, key: str, labels: np.ndarray
                ) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """The split of the plain store ``path`` (content key ``key``; ``labels``: int (N,), one
    per dataset image), how it treats duplicates, and the store's duplicate groups at the
    pipeline's threshold (None where it records none: not extracted yet, made before featx
    0.7 or at another threshold; the extraction then finds them). Grouped
    (featx.data.groups.grouped_split) with ``dataset.group_duplicates`` and groups found."""
    d = config.dataset
    found = None
    if path.is_file():
        try:
            with h5py.File(path, "r") as f:
                if as_text(f.attrs.get("key", "")) == key and f.attrs.get("complete", False):
                    found = stored_groups(f, path)
        except (OSError, StoreError):  # unreadable or damaged: the extraction finds them again
            found = None
    groups = found.groups if found is not None and \
        found.threshold == float(d.duplicate_threshold) else None
    if groups is None or not d.group_duplicates:
        return stratified_split(labels, d.val, d.test, d.seed), dict(UNGROUPED), groups
    return grouped_split(labels, groups, d.val, d.test, d.seed), grouping_identity(d), groups


def locate_store(config: Config) -> Path:
    """Where the plain store of ``config``'s data as it is now is (or would be)."""
    return plan(config).path


def find_store(config: Config, variant: str = "plain") -> Plan:
    """The plan of the store that holds the data named by ``config`` as it is now, for the
    commands that read stores. With no store setting given, that of the one store of this
    data (:func:`settle`); else the store of exactly the settings given (defaults for the
    rest) where there is one, or else the one store of this data with the settings given,
    the others taken from it (logged: "using the store ..."). A StoreError when there is
    none, saying why: several stores to choose from, an unfinished extraction (and what
    stopped it), a store of the same data with other settings (each that differs and how to
    change it), or what changed in the data."""
    given = settings_given(config)
    config, now = _settle(config)
    p = plan(config, variant, now)
    if p.path.is_file():
        return p
    partial = partial_dirs(p.path.parent, p.path)
    if given and not config.combine.pipelines:  # defaults are no one's words: a complete
        now = DataNow(p.dataset, p.signatures, p.manifest)  # store of what was said first
        filled = _fill(config, now)
        if filled is not None:
            config, p = filled, plan(filled, variant, now)
            if p.path.is_file():
                return p
            partial = partial_dirs(p.path.parent, p.path)
    where = f"{p.dataset.root} (dataset {p.dataset.name!r})"
    other = _nearest(config, p)
    if partial:
        stopped = job_record(partial[0]).get("stopped")
        why = (f"it stopped on: {stopped}; `featx extract` stops there again until that is "
               "fixed") if stopped else "run `featx extract` to resume it"
        raise StoreError(f"the extraction of {p.dataset.root} into {p.path} is unfinished: "
                         f"{why}" + (f"; {other}" if other else ""))
    if other:
        raise StoreError(f"no feature store for {where} with these settings in "
                         f"{p.path.parent}; {other}")
    raise StoreError(mismatch(p.dataset, p.signatures, _candidates(p), p.path.parent)
                     + _unfinished_elsewhere(p))


# The config fields that choose a store's features, each with its label in
# featx.store.cache.store_settings and the flag that sets it ("": a pipeline field or --set).
STORE_FIELDS = {
    "backbone.name": ("backbone", "--backbone"),
    "backbone.weights": ("weights", "--weights"),
    "backbone.layer": ("layer", "--layer"),
    "backbone.pooling": ("pooling", "--pooling"),
    "backbone.input_size": ("input size", "--input-size"),
    "backbone.resize": ("resize", ""),
    "backbone.precision": ("precision", ""),
    "backbone.calibration_images": ("calibration images", ""),
    "backbone.flip": ("flip", ""),
}
# The settings (featx.features.backbones.Backbone.describe, feature_settings) of each field.
_FIELD_OF = {"backbone": "backbone.name", "weights": "backbone.weights",
             "weights_id": "backbone.weights", "layer": "backbone.layer",
             "pooling": "backbone.pooling", "input_size": "backbone.input_size",
             "resize": "backbone.resize", "precision": "backbone.precision",
             "flip": "backbone.flip"}


def given_fields(config: Config, ignore: Sequence[str] = ()) -> list[str]:
    """The store settings (STORE_FIELDS but ``ignore``) that ``config`` names: set by a
    pipeline file, a flag, ``--set`` or a keyword (``Config.given``), or set otherwise to
    anything but the default."""
    default = Config()
    return [dotted for dotted in STORE_FIELDS if dotted not in ignore and
            (dotted in config.given or _field(config, dotted) != _field(default, dotted))]


def settings_given(config: Config, ignore: Sequence[str] = ()) -> bool:
    """Whether ``config`` names any store setting (:func:`given_fields`)."""
    return bool(given_fields(config, ignore))


def settle(config: Config, ignore: Sequence[str] = ()) -> Config:
    """``config``, or, where it names no store setting (the fields in ``ignore`` aside) and
    the cache holds stores of its data as it is now, a copy with the settings of the one
    such store (logged: "using the store ..."); several stores of that data: a StoreError
    listing them by the settings that tell them apart. What ``featx classify --data D``
    (and audit, explain, sweep: through :func:`find_store` or this) go through, so that the
    settings given to ``featx extract`` are said once."""
    return _settle(config, ignore)[0]


def _settle(config: Config, ignore: Sequence[str] = ()) -> tuple[Config, DataNow | None]:
    """:func:`settle`, and the dataset as read for it (None where it was not read)."""
    if config.combine.pipelines or settings_given(config, ignore) or \
            not (config.dataset.root or config.dataset.manifest):
        return config, None
    now = data_now(config)
    return _fill(config, now, ignore) or config, now


def _fill(config: Config, now: DataNow, ignore: Sequence[str] = ()) -> Config | None:
    """A copy of ``config`` with the store settings it does not name (:func:`given_fields`)
    taken from the one store of its data as it is now whose settings are then those of
    the copy (``ignore``: fields left as ``config`` has them, whatever the store's); None
    where no store is. Several such stores that differ in other fields: a StoreError
    listing them by the settings that tell them apart."""
    given = given_fields(config, ignore)
    if len(given) + len(ignore) >= len(STORE_FIELDS):  # nothing left to take from a store
        return None
    found: dict[tuple, list[tuple[Path, dict[str, Any], Config]]] = {}
    for path, attrs in dataset_stores(config, now):
        try:  # a weights file that is not there (any more) names no store here, nor do
            filled = _take(config, path, attrs, given)  # settings featx no longer takes
            settings = feature_settings(_backbone(filled, now))
        except FeatxError:
            continue
        if store_key(settings) == attrs.get("settings_key"):
            chosen = tuple(_field(filled, f) for f in STORE_FIELDS if f not in ignore)
            found.setdefault(chosen, []).append((path, attrs, filled))
    if not found:
        return None
    if len(found) > 1:
        where = f"{now.dataset.root} (dataset {now.dataset.name!r})"
        raise StoreError(_several(where, [(path, attrs) for stores in found.values()
                                          for path, attrs, _ in stores], ignore))
    path, attrs, filled = next(iter(found.values()))[0]
    for dotted in ignore:  # as config has them
        section, name = dotted.split(".")
        setattr(getattr(filled, section), name, _field(config, dotted))
        filled.given.pop(dotted, None)
        if dotted in config.given:
            filled.given[dotted] = config.given[dotted]
    log.info("using the store %s (%s)", path.name, describe_store(attrs))
    return filled


def _take(config: Config, path: Path, attrs: Mapping[str, Any], keep: Sequence[str]
          ) -> Config:
    """A copy of ``config`` with the store settings but ``keep`` as the store ``path``
    (attributes ``attrs``) records them."""
    section = recorded_pipeline(attrs).get("backbone", {})
    taken = copy.deepcopy(config)
    for dotted in STORE_FIELDS:
        name = dotted.split(".")[1]
        if dotted not in keep and name in section:
            taken.assign(dotted, section[name], f"the store {path.name}")
    return taken


def _backbone(config: Config, now: DataNow | None = None) -> Backbone:
    """``config``'s backbone; with ``now`` (its dataset as it is now), calibrated on it."""
    backbone = Backbone(config.backbone, seed=config.dataset.seed, cache_dir=config.cache_path)
    if now is not None:
        calibrate(backbone, config, now)
    return backbone


def calibrate(backbone: Backbone, config: Config, now: DataNow) -> None:
    """precision int8: attach the images its model is calibrated on, a sample of the
    dataset's seeded by dataset.seed (featx.features.runtime.calibration_sample)."""
    if backbone.config.precision == "int8":
        backbone.calibration = calibration_sample(now.dataset, now.signatures,
                                                  config.backbone.calibration_images,
                                                  config.dataset.seed)


def dataset_stores(config: Config, now: DataNow, variant: str = "single"
                   ) -> list[tuple[Path, dict[str, Any]]]:
    """The complete stores in ``config``'s cache folder that hold its data as it is now
    (recorded manifest and hash mode), plain ones or those of ``variant`` (the ``variant``
    setting: "augmented", "tencrop"), newest first, each with its attributes (as stored:
    JSON attributes as text)."""
    found = []
    for path in store_files(config.cache_path):
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: as_text(v) if isinstance(v, bytes | str) else
                         v.item() if isinstance(v, np.generic) else v
                         for k, v in f.attrs.items()}
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if attrs.get("complete") and attrs.get("manifest") == now.manifest and \
                attrs.get("hash", "stat") == config.dataset.hash and \
                attrs.get("variant", "single") == variant:
            found.append((-mtime, path, attrs))
    return [(path, attrs) for _, path, attrs in sorted(found)]


def _several(where: str, stores: list[tuple[Path, dict]], ignore: Sequence[str]) -> str:
    """One line: several stores hold this data, by the settings that tell them apart."""
    told = [(path, store_settings(attrs)) for path, attrs in stores]
    differ = [(dotted, label, flag) for dotted, (label, flag) in STORE_FIELDS.items()
              if dotted not in ignore and len({s.get(label, "") for _, s in told}) > 1]
    listed = "; ".join(
        f"{path.name} ({', '.join(f'{label} {s[label]}' for _, label, _ in differ)})"
        for path, s in told)
    how = ", ".join(f"{flag} ({dotted})" if flag else f"--set {dotted}=..."
                    for dotted, _, flag in differ)
    return (f"{len(stores)} stores hold {where} as it is now, told apart by their settings: "
            f"{listed}; choose one with {how}, or --store KEY (featx cache ls)")


def _nearest(config: Config, p: Plan) -> str:
    """"a store of it exists ... with <each setting that differs, the value asked for and
    how to change it>": of the store of ``p``'s data as it is now that differs from ``p``'s
    settings in the fewest (same kind of store: plain or the same variant); "" if none."""
    now = DataNow(p.dataset, p.signatures, p.manifest)
    stores = dataset_stores(config, now, p.settings.get("variant", "single"))
    given = given_fields(config)
    ranked = []
    for i, (path, attrs) in enumerate(stores):
        # the settings asked for, those not given as this store has them: what differs
        # then is what the command said
        try:
            taken = _take(config, path, attrs, given)
            asked = {**feature_settings(_backbone(taken, now), p.variant),
                     "pipeline": taken.to_json()}
        except FeatxError:  # the store's weights file is not here: compare as given
            asked = {**p.settings, "pipeline": config.to_json()}
        if differences := _differences(attrs, asked):
            ranked.append((len(differences), i, path, differences))
    ranked.sort(key=lambda t: t[:2])
    if not ranked:
        return ""
    _, _, path, differences = ranked[0]
    return (f"a store of it exists, {path.name}, with {'; '.join(differences)}: change "
            "those settings (or --store KEY), or run `featx extract` to make this one")


def _differences(attrs: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """Each setting in which a store (``attrs``) differs from the settings asked for:
    "<field>=<the store's>, this command asked for <asked> (<flag> / <field>)"."""
    keys = [k for k in asked if k not in ("settings_key", "pipeline")] + \
        [k for k in ("precision", "flip") if k not in asked]
    differ = [k for k in keys if _text(attrs.get(k, "")) != _text(asked.get(k, ""))]
    if "backbone" in differ:  # the preprocessing follows from the backbone
        differ = [k for k in differ if k != "preprocess"]
    store, want = store_settings(attrs), store_settings(asked)
    out = []
    for dotted, (label, flag) in STORE_FIELDS.items():
        if not any(_FIELD_OF.get(k) == dotted for k in differ):
            continue
        had, now = store[label], want[label]
        if had == now:  # weights told apart by their identity only (random seeds)
            had, now = as_text(attrs.get("weights_id")), as_text(asked.get("weights_id"))
        how = f"{flag} / {dotted}" if flag else f"--set {dotted}=..."
        out.append(f"{dotted}={had}, this command asked for {now} ({how})")
    out += [f"{k}={_text(attrs.get(k, ''))}, this command asked for "
            f"{_text(asked.get(k, ''))}" for k in differ if k not in _FIELD_OF]
    return out


def _text(value: Any) -> str:
    # a setting as a store's attribute holds it (featx.store.write.write_columns: JSON for
    # anything but a number or a text)
    return json.dumps(value) if isinstance(value, dict | list) else as_text(value)


def _unfinished_elsewhere(p: Plan) -> str:
    """"; an unfinished extraction of this data with other settings ...": what an unfinished
    extraction of the same data with other settings records of itself ("" if none)."""
    for folder in partial_dirs(p.path.parent):
        record = job_record(folder)
        about = record.get("about")
        if not isinstance(about, dict) or about.get("manifest") != p.manifest or \
                about.get("settings_key") == p.settings["settings_key"]:
            continue
        state = (f"it stopped on: {record['stopped']}" if record.get("stopped") else
                 "`featx extract` with those settings resumes it")
        return (f"; an unfinished extraction of it with other settings is in {folder.name} "
                f"({describe_store(about)}): {state}")
    return ""


def store_file(given: str | os.PathLike, cache_dir: Path) -> Path:
    """The store that ``--store`` names: a store file, or a key or file name as ``featx
    cache ls`` lists it (a prefix of a key will do where it names one store)."""
    path = Path(given)
    if path.is_file():
        return path
    try:
        entry = find_entry(cache_dir, str(given))
    except StoreError as e:
        raise StoreError(f"--store {given}: no such store file, and {e}") from None
    if entry.kind != "store" or not entry.complete:
        raise StoreError(f"--store {given}: {entry.path} is {entry.state}, not a complete "
                         "feature store")
    return entry.path


def same_dataset(attrs: Mapping[str, Any], config: Config, p: Plan) -> bool:
    """Whether a store's attributes say it holds an earlier version of ``p``'s dataset,
    which an extraction then replaces: the same folder, name and manifest file name (two
    manifests in one folder are two datasets, as are the sets of images FeatureExtractor
    is given; a name, not a path: the recorded one may be relative to another folder)."""
    recorded = str(recorded_pipeline(attrs).get("dataset", {}).get("manifest", ""))
    return as_text(attrs.get("root", "")) == str(p.dataset.root) and \
        as_text(attrs.get("dataset", "")) == p.dataset.name and \
        Path(recorded).name == Path(config.dataset.manifest).name


def job_about(config: Config, p: Plan) -> dict[str, Any]:
    """What an unfinished extraction of ``p`` records of itself (featx.store.blocks.BlockDir
    ``about``): its settings, dataset and pipeline, as the store's attributes will."""
    return {**p.settings, "dataset": p.dataset.name, "root": str(p.dataset.root),
            "manifest": p.manifest, "hash": config.dataset.hash,
            "pipeline": config.to_json()}


def _field(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


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
            changes.append(f"{plural(len(names), 'class', 'classes')} {what} "
                           f"({', '.join(sorted(names)[:5])})")
    for what, paths in (("added", now.keys() - before.keys()),
                        ("removed", before.keys() - now.keys()),
                        ("changed", {q for q in now.keys() & before.keys()
                                     if now[q] != before[q]})):
        if paths:
            changes.append(f"{plural(len(paths), 'image')} {what} "
                           f"(e.g. {sorted(paths)[0]})")
    if not changes:  # same files; other signature mode or split of a variant store
        changes.append("recorded with other settings")
    return (f"{candidates[0]} does not hold {where} as it is now: {'; '.join(changes)}; run "
            "`featx extract` to update it")


def match_rows(old_paths: Sequence[str], old_signatures: Sequence[str], paths: Sequence[str],
               signatures: Sequence[str]) -> np.ndarray:
    """For each (path, signature), the index of the same pair among the old ones, or -1
    (int32 (len(paths),); int64 past 2**31 old rows: an update holds it while the model
    works). No dict or list of N str: each pair is hashed to 64 bits a slice
    at a time, the old keys sorted and looked up with np.searchsorted, and every match then
    compared byte for byte (:func:`_same_strings`), so that keys that collide never match
    two different pairs. The old columns are best packed (``FeatureStore.strings``), and the
    new signatures are packed here: no str is held. Done before the model is built, so its
    ~130 MiB a moment at 1M rows (~55 of them the old columns; with a dict of the paths and
    lists of str it took ~225) are given back before the peak of an update."""
    got = np.full(len(paths), -1, np.int32 if len(old_paths) < 2**31 else np.int64)
    if not len(old_paths) or not len(paths):
        return got
    # packed once: the signatures are hashed, then compared (StatSignatures makes each str)
    signatures = signatures if isinstance(signatures, PackedStrings) else \
        PackedStrings(signatures)
    keys = _pair_keys(old_paths, old_signatures)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    wanted = _pair_keys(paths, signatures)
    at = np.empty(len(wanted), np.int64)
    by_key = np.argsort(wanted)  # sorted needles: np.searchsorted runs ~2x faster
    at[by_key] = np.searchsorted(keys, wanted[by_key])
    del by_key
    np.minimum(at, len(keys) - 1, out=at)
    found = np.flatnonzero(keys[at] == wanted)
    got[found] = order[at[found]]
    del at
    same = _same_strings(old_paths, got[found], paths, found) & \
        _same_strings(old_signatures, got[found], signatures, found)
    for row in found[~same].tolist():  # one key, other strings: any old pair with that key
        lo, hi = np.searchsorted(keys, wanted[row], "left"), np.searchsorted(
            keys, wanted[row], "right")
        got[row] = next((int(i) for i in order[lo:hi] if old_paths[i] == paths[row] and
                         old_signatures[i] == signatures[row]), -1)
    return got


_STEP = CHUNK // 4  # strings hashed or compared at a time: their bytes objects are transient


def _pair_keys(paths: Sequence[str], signatures: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each (path, signature) pair (int64 (N,)), _STEP pairs at a time:
    Python's hash of the two strings' bytes (SipHash; seeded per process, so keys are only
    compared within one)."""
    out = np.empty(len(paths), np.int64)
    for a in range(0, len(paths), _STEP):
        b = min(a + _STEP, len(paths))
        pairs = zip(bytes(_joined(paths, a, b)).split(b"\0"),
                    bytes(_joined(signatures, a, b)).split(b"\0"))
        out[a:b] = np.fromiter(map(hash, pairs), np.int64, b - a)
    return out


def _joined(texts: Sequence[str], a: int, b: int) -> bytes | memoryview:
    """Strings ``a`` to ``b - 1`` as their UTF-8 bytes joined by NUL (none after the last):
    of packed strings, a view of their buffer."""
    if isinstance(texts, PackedStrings):
        start = int(texts.ends[a - 1]) + 1 if a else 0
        return memoryview(texts.buffer)[start:int(texts.ends[b - 1])]
    return "\0".join(texts[a:b]).encode()


def _same_strings(a: Sequence[str], rows_a: np.ndarray, b: Sequence[str],
                  rows_b: np.ndarray) -> np.ndarray:
    """Whether ``a[rows_a[k]] == b[rows_b[k]]``, for each k (bool (K,)): one comparison of
    bytes per run of up to _STEP rows consecutive on both sides (an update's matches are a
    few long runs), string by string only within a run that differs."""
    same = np.ones(len(rows_a), bool)
    if not len(rows_a):
        return same
    breaks = np.flatnonzero((np.diff(rows_a) != 1) | (np.diff(rows_b) != 1)) + 1
    first = np.union1d(np.concatenate([[0], breaks]), np.arange(0, len(rows_a), _STEP))
    for f, g in zip(first.tolist(), [*first[1:].tolist(), len(rows_a)]):
        i, j = int(rows_a[f]), int(rows_b[f])
        if _joined(a, i, i + g - f) != _joined(b, j, j + g - f):
            same[f:g] = [a[x] == b[y] for x, y in zip(rows_a[f:g].tolist(),
                                                       rows_b[f:g].tolist())]
    return same


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
             "split": _split_attr(config), "grouping": p.grouping, "hash": config.dataset.hash,
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
