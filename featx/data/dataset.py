"""Datasets: which images there are, their labels, and a deterministic stratified split.

A dataset is a folder with one sub-folder per class, or a CSV manifest of ``path,label``.
Paths are kept relative to the dataset root so that moving the dataset changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from featx.core.config import DatasetConfig
from featx.core.errors import DatasetError
from featx.core.log import plural
from featx.core.memory import CHUNK, PackedStrings, Strings, Taken
from featx.data.images import usable_cores

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2



@dataclass(frozen=True)
class FileStats:
    """Of each image: size and mtime in whole seconds (int64 (N,)), device and inode (uint64
    (N,)). Arrays, not a tuple per file: a million tuples that live on make Python's cyclic
    garbage collector sweep them again and again (the listing of 1M files took 5.1-6.0 s
    with a tuple per file, 4.1 s with the collector off)."""

    size: np.ndarray
    mtime: np.ndarray
    device: np.ndarray
    inode: np.ndarray

    def take(self, order: np.ndarray) -> FileStats:
        return FileStats(self.size[order], self.mtime[order], self.device[order],
                         self.inode[order])


@dataclass(frozen=True)
class Dataset:
    """The images of a dataset, sorted by relative path, with integer labels."""

    root: Path
    paths: PackedStrings  # relative to root, POSIX separators
    labels: np.ndarray  # int32, index into label_names
    label_names: list[str]
    name: str
    # Of each image, taken right after the folder listing (stat_files); None for a manifest
    # (stat then). Not part of equality.
    stats: FileStats | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.paths, PackedStrings):  # e.g. a store's list of paths
            object.__setattr__(self, "paths", PackedStrings(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> str:
        return str(self.root / self.paths[i])

    def files(self, images: np.ndarray) -> Sequence[str]:
        """The absolute paths of ``images`` (dataset rows), made when asked for."""
        return Taken(self.absolute, images)

    def relative(self, images: np.ndarray) -> Sequence[str]:
        """The relative paths of ``images`` (dataset rows), made when asked for."""
        return Taken(self.paths.__getitem__, images)

    def signatures(self, content: bool = False, listed: bool = False) -> Strings:
        """Per image, what says it is unchanged: ``size:mtime`` (fast), or a SHA-256 of its
        bytes with ``content=True``. Neither depends on where the dataset folder lives.
        ``listed``: take size and mtime from the stat the folder listing made a moment ago
        (planning: one ``stat`` per file, not two) instead of a ``stat`` now."""
        if content:
            return PackedStrings(
                "sha256:" + hashlib.sha256((self.root / rel).read_bytes()).hexdigest()
                for rel in self.paths)
        stats = self.stats if listed and self.stats is not None else self.file_stats()
        return StatSignatures(stats.size, stats.mtime)

    def file_stats(self) -> FileStats:
        """Size, mtime, device and inode of every image, one ``os.stat`` each, now."""
        stats, there = stat_files(str(self.root), self.paths)
        if not there.all():
            raise DatasetError(f"image not found: {self.absolute(int(np.argmin(there)))}")
        return stats


class StatSignatures(Strings):
    """``size:mtime`` of each image, made from the stat arrays when asked for: no string is
    held (1M of them as a list: 85 MiB)."""

    def __init__(self, size: np.ndarray, mtime: np.ndarray) -> None:
        self.size, self.mtime = size, mtime

    def __len__(self) -> int:
        return len(self.size)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return StatSignatures(self.size[i], self.mtime[i])
        return f"{int(self.size[i])}:{int(self.mtime[i])}"

    def __iter__(self) -> Iterator[str]:
        for a in range(0, len(self), CHUNK):
            for size, mtime in zip(self.size[a:a + CHUNK].tolist(),
                                   self.mtime[a:a + CHUNK].tolist()):
                yield f"{size}:{mtime}"

    def take(self, indices: np.ndarray) -> StatSignatures:
        return StatSignatures(self.size[indices], self.mtime[indices])


# From this many files on, a pool of processes takes the stats. Loading a dataset of 1M files
# here: 4.7 s in one process, 3.6-3.9 s with 2: a stat is a system call per file, and the
# Python around it holds the GIL, so threads were slower than one.
PARALLEL_STAT_FILES = 50_000


def stat_files(root: str, paths: Sequence[str]) -> tuple[FileStats, np.ndarray]:
    """The stats of ``paths`` (relative to ``root``), and which of them are there (a file
    may go between listing and stat: bool (N,))."""
    cores = usable_cores()
    if len(paths) < PARALLEL_STAT_FILES or cores < 2:
        parts = [_stat_some(root, paths)]
    else:
        k = 4 * cores
        chunks = [paths[i * len(paths) // k:(i + 1) * len(paths) // k] for i in range(k)]
        try:
            parts = Parallel(n_jobs=cores)(delayed(_stat_some)(root, chunk) for chunk in chunks)
        except (OSError, RuntimeError) as e:  # no processes here (a sandbox): in this one
            log.debug("stat in one process: %s", e)
            parts = [_stat_some(root, paths)]
    columns = [list(column) for column in zip(*parts)]
    del parts
    size, mtime, device, inode = (np.concatenate(columns.pop(0)) for _ in range(4))  # one
    return FileStats(size, mtime, device, inode), size >= 0  # column's parts held at a time


def _stat_some(root: str, paths: Sequence[str]) -> tuple[np.ndarray, ...]:
    """(size, mtime in whole seconds, device, inode) arrays; size -1 for a file that is
    not there."""
    stat, join = os.stat, os.path.join
    size, mtime, device, inode = [], [], [], []
    for rel in paths:
        try:
            st = stat(join(root, rel))
        except OSError:
            size.append(-1), mtime.append(0), device.append(0), inode.append(0)
            continue
        size.append(st.st_size)
        mtime.append(st.st_mtime_ns)
        device.append(st.st_dev)
        inode.append(st.st_ino)
    return (np.asarray(size, np.int64), np.asarray(mtime, np.int64) // 1_000_000_000,
            np.asarray(device, np.uint64), np.asarray(inode, np.uint64))


def manifest_digest(dataset: Dataset, signatures: Sequence[str]) -> str:
    """One hash of every (path, label, signature): changes when any image is added, removed,
    relabelled or rewritten, and not when the dataset folder is moved."""
    h = hashlib.sha256()
    for rel, label, sig in zip(dataset.paths, dataset.labels, signatures):
        h.update(f"{rel}\0{dataset.label_names[label]}\0{sig}\n".encode())
    return h.hexdigest()


def dataset_root(config: DatasetConfig) -> Path | None:
    """The folder the dataset's relative paths start from, as :func:`load_dataset` takes it
    (the root, else the manifest's folder), resolved, without listing it; None when the
    config names no dataset."""
    if config.manifest:
        return Path(config.root or Path(config.manifest).parent).resolve()
    return Path(config.root).resolve() if config.root else None


def load_dataset(config: DatasetConfig) -> Dataset:
    """Read a class-per-folder dataset or a CSV manifest, as the config says, and refuse one
    that cannot be split and learned from as asked (:func:`check_classes`): every command
    reads its dataset here, before any image is extracted."""
    if config.manifest:
        dataset = _from_csv(Path(config.manifest), Path(config.root) if config.root else None,
                            config.name)
        where = Path(config.manifest)
    elif not config.root:
        raise DatasetError("no dataset given: set dataset.root (DATA=... or --data PATH)")
    else:
        dataset = _from_folder(Path(config.root), config.name)
        where = Path(config.root)
    check_classes(dataset.labels, dataset.label_names, config.val, config.test, where,
                  allow_missing_test=config.allow_missing_test)
    return dataset


def check_classes(labels: np.ndarray, label_names: Sequence[str], val: float, test: float,
                  where: str | os.PathLike, allow_missing_test: bool = False) -> None:
    """Refuse, as one DatasetError line naming the classes and ``where`` (the dataset
    folder or manifest), labels (int (N,), indices into ``label_names``) that
    :func:`stratified_split` cannot split into something to learn from and test on: fewer
    than two classes, a class of fewer than two images, or a class that gets no test image
    (or, with ``val`` > 0, no validation image; the same for every seed). With
    ``allow_missing_test`` (``dataset.allow_missing_test``) the last is a warning instead.
    With ``val`` and ``test`` both 0 nothing is held out and nothing learned from the split:
    any classes go (the features of one folder, as featx.FeatureExtractor extracts them)."""
    _check_fractions(val, test)
    if val == 0 and test == 0:
        return
    counts = np.bincount(labels, minlength=len(label_names))
    if len(label_names) < 2:
        unsplit = "dataset.test = 0" + (" and dataset.val = 0" if val else "")
        raise DatasetError(f"{where}: one class ({label_names[0]!r}); classifying needs at "
                           f"least two (to extract features without a split: {unsplit})")
    few = np.flatnonzero(counts < 2)
    if len(few):
        raise DatasetError(f"{where}: {_classes(few, label_names, counts)} fewer than 2 "
                           "images; a class needs one to train on and one to hold out: add "
                           "images or remove the class")
    sizes = np.array([split_sizes(int(n), val, test) for n in counts])
    for column, fraction, what, setting in ((0, test, "test", "dataset.test"),
                                            (1, val, "validation", "dataset.val")):
        missing = np.flatnonzero(sizes[:, column] == 0) if fraction > 0 else []
        if not len(missing):
            continue
        said = (f"{where}: {_classes(missing, label_names, counts, 'gets', 'get')} no {what} "
                f"image with {setting} = {fraction}")
        if not allow_missing_test:
            raise DatasetError(f"{said}; {_remedy(what, int(counts[missing].min()), val, test)}"
                               ", or set dataset.allow_missing_test = true to go on without")
        log.warning("%s (dataset.allow_missing_test = true): %s", said,
                    "its images are only trained on" if column == 0 else
                    "the grid search is scored without it")


def _classes(which: np.ndarray, label_names: Sequence[str], counts: np.ndarray,
             one: str = "has", many: str = "have", shown: int = 5) -> str:
    """'class 'b' (1 image) has' or 'classes 'a' (1 image), 'b' (1 image) have' (the first
    ``shown`` of them, and how many more)."""
    listed = ", ".join(f"{label_names[c]!r} ({plural(int(counts[c]), 'image')})"
                       for c in which[:shown])
    more = f" and {len(which) - shown} more" if len(which) > shown else ""
    if len(which) == 1:
        return f"class {listed} {one}"
    return f"classes {listed}{more} {many}"


def _remedy(what: str, smallest: int, val: float, test: float) -> str:
    """What gives a class of ``smallest`` images an image of the split ``what``."""
    said = f"add images (with these fractions a class needs at least {_needed(val, test)})"
    if what == "test" and smallest >= 3:  # one to test, two left (train and cross-validate)
        # round() halves to even: a share of exactly half an image rounds to none
        said += f", raise dataset.test above {0.5 / smallest:.3g}"
    elif what == "validation":
        said += ", set dataset.val = 0 (the grid search then cross-validates on the " \
            "training images)"
    return said


def _needed(val: float, test: float) -> int:
    """The smallest class that gets a test image and, with ``val`` > 0, a validation image."""
    n = max(2, int(0.5 / max(val, test)))  # below this not even the larger share rounds to 1
    while True:
        n_test, n_val = split_sizes(n, val, test)
        if (n_test or not test) and (n_val or not val):
            return n
        n += 1


def _from_folder(root: Path, name: str) -> Dataset:
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected one folder per class)")
    counts: list[int] = []

    def listed():  # sorted by path within each class, classes in order
        for cls in classes:
            names: list[str] = []  # one class's at a time: packed as it goes
            _scan(str(root / cls), cls + "/", names)
            if not names:
                raise DatasetError(f"{root / cls}: class folder holds no images "
                                   f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
            names.sort()
            counts.append(len(names))
            yield from names

    paths = PackedStrings(listed())
    labels = np.repeat(np.arange(len(classes), dtype=np.int32), counts)
    stats, there = stat_files(str(root), paths)
    if not there.all():  # gone since the listing: not in the dataset
        keep = np.flatnonzero(there)
        paths, labels, stats = paths.take(keep), labels[keep], stats.take(keep)
    return Dataset(root.resolve(), paths, labels, classes, name or root.resolve().name, stats)


def _scan(folder: str, prefix: str, names: list[str]) -> None:
    """Every image under ``folder`` (hidden ones included, symlinked folders not followed,
    symlinked files followed: what ``Path.rglob("*")`` + ``is_file()`` listed): its
    relative path appended to ``names``.

    ``os.scandir`` instead of ``Path.rglob``: the file type comes with the directory entry
    (no ``stat``; :func:`stat_files` takes them after) and no Path objects are made. Listing
    1M files here took 20.0 s with rglob and 0.7 s with scandir. The extension is sliced,
    as ``os.path.splitext`` would (leading dots are no extension)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except NotADirectoryError:
        return
    for e in entries:
        name = e.name
        dot = name.rfind(".")
        if dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS and \
                (name[0] != "." or name[:dot].strip(".")) and e.is_file():
            names.append(prefix + name)
        elif e.is_dir(follow_symlinks=False):
            _scan(e.path, prefix + name + "/", names)


def _is_header(row: list[str], base: Path) -> bool:
    """Whether a manifest's first row is a header: it names no image (no image file there,
    no image extension), as ``filename,class`` or ``path,label`` do."""
    first = row[0].strip()
    return Path(first).suffix.lower() not in IMAGE_EXTENSIONS and \
        not (base / first).is_file()


def _header_columns(row: list[str], manifest: Path) -> tuple[int, int]:
    """The columns of path and label that a header names (path,label in any order, any
    case); any other header is an error naming it and the one expected."""
    names = [c.strip().lower() for c in row]
    if sorted(names) != ["label", "path"]:
        found = ",".join(c.strip() for c in row)
        raise DatasetError(f"{manifest}:1: header {found!r}: expected 'path,label' (in any "
                           "order), or no header and rows of path,label")
    return names.index("path"), names.index("label")


def _from_csv(manifest: Path, root: Path | None, name: str) -> Dataset:
    """Relative paths are relative to the CSV's folder; every image must lie under the
    dataset root (``root``, else the CSV's folder), whether named relatively or absolutely.
    The same file twice is one row when both rows give it the same label, an error when not."""
    if not manifest.is_file():
        raise DatasetError(f"manifest not found: {manifest}")
    base = manifest.parent.resolve()
    root = (root or manifest.parent).resolve()
    rows: dict[str, tuple[str, int]] = {}  # relative path -> label, line
    repeated = 0
    at_path, at_label = 0, 1  # the columns: path,label unless a header says label,path
    with manifest.open(newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is no header
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if line_no == 1 and _is_header(row, base):
                at_path, at_label = _header_columns(row, manifest)
                continue
            if len(row) < 2:
                raise DatasetError(f"{manifest}:{line_no}: expected path,label, got {row!r}")
            row = [row[at_path], row[at_label]]
            path = (base / row[0].strip()).resolve()
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                raise DatasetError(f"{manifest}:{line_no}: {row[0].strip()} is not under the "
                                   f"dataset root {root}") from None
            if not path.is_file():
                raise DatasetError(f"{manifest}:{line_no}: image not found: {path}")
            label = row[1].strip()
            if rel in rows:
                first_label, first_line = rows[rel]
                if first_label != label:
                    raise DatasetError(f"{manifest}:{line_no}: {rel} is listed again with label "
                                       f"{label!r}, and with {first_label!r} at line "
                                       f"{first_line}: one image, one label")
                repeated += 1
                continue
            rows[rel] = (label, line_no)
    if not rows:
        raise DatasetError(f"{manifest}: no rows")
    if repeated:
        verb = "repeats" if repeated == 1 else "repeat"
        log.warning("%s: %s %s an earlier row with the same label; each image is used once",
                    manifest, plural(repeated, "row"), verb)
    paths = sorted(rows)
    label_names = sorted({label for label, _ in rows.values()})
    index = {n: i for i, n in enumerate(label_names)}
    return Dataset(root, PackedStrings(paths),
                   np.asarray([index[rows[p][0]] for p in paths], np.int32),
                   label_names, name or manifest.stem)


def stratified_split(labels: np.ndarray, val: float, test: float, seed: int) -> np.ndarray:
    """Assign each row to TRAIN, VAL or TEST, per class, reproducibly from the seed.

    Every class keeps at least one training image; rounding is per class so that small
    classes are split in the same proportions as large ones.
    """
    _check_fractions(val, test)
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), TRAIN, np.int8)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        rows = rows[rng.permutation(len(rows))]
        n_test, n_val = split_sizes(len(rows), val, test)
        split[rows[:n_test]] = TEST
        split[rows[n_test:n_test + n_val]] = VAL
    return split


def _check_fractions(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DatasetError(f"split fractions val={val}, test={test} must be in [0, 1) "
                           "and leave some data for training")


def split_sizes(n: int, val: float, test: float) -> tuple[int, int]:
    """How many of a class's ``n`` images :func:`stratified_split` holds out: (test,
    validation), each its fraction of ``n`` rounded (half to even, as ``round``), one image
    always left to train on. The same for every seed."""
    n_test, n_val = int(round(test * n)), int(round(val * n))
    return min(n_test, n - 1), min(n_val, max(n - 1 - n_test, 0))
