"""The extraction runner: dataset -> reader -> frozen backbone -> feature store.

A complete store with the same content key is a cache hit and costs no model work. A store
for the same settings but an older version of the dataset is updated incrementally: rows of
unchanged images are reused, new and changed images are extracted, removed ones dropped. An
interrupted extraction resumes from its last finished block.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from featx.core.config import Config
from featx.core.errors import DamagedStoreError, ExtractError, FeatxError, StoreError
from featx.core.files import short_hash
from featx.core.layout import (
    belongings,
    lock_path,
)
from featx.core.log import plural
from featx.core.memory import release_freed_memory
from featx.core.progress import bar as progress_bar
from featx.data.dataset import Dataset
from featx.data.groups import (
    NEIGHBOURS,
    group_sizes,
    grouped_split,
    grouping_identity,
    near_duplicates,
    union_groups,
    unit_rows,
)
from featx.data.images import ReadErrors, read_batches
from featx.features.backbones import Backbone
from featx.features.plan import (
    ExtractResult,
    Plan,
    _candidates,
    _split_attr,
    job_about,
    match_rows,
    plan,
    same_dataset,
    store_columns,
)
from featx.features.variants import PLAIN, Variant
from featx.store.blocks import BlockDir
from featx.store.read import FeatureStore, row_pairs_to_paths
from featx.store.write import (
    RowSource,
    rewrite_split,
    write_duplicates,
    write_groups,
    write_update,
)

log = logging.getLogger(__name__)

BLOCK_BATCHES = 8  # a block (the unit of resume) is this many batches



def extract(config: Config, progress: bool = True, variant: str = "plain") -> ExtractResult:
    """Make sure the feature store for ``config`` (or its ``variant`` store) exists, is
    complete, sound and matches the dataset as it is now; return where it is."""
    run = _run
    if config.extract.engine != "local":  # the same store, built on a Ray cluster
        from featx.features.distributed import run_on_ray

        if variant != "plain":
            raise ExtractError(f"the ray engine extracts plain stores (one row per image), "
                               f"not the {variant!r} store: use extract.engine = \"local\"")
        run = run_on_ray
    if variant != "plain" and config.dataset.group_duplicates:
        extract(config, progress)  # a variant follows the plain store's grouped split
    p = plan(config, variant)
    lock = FileLock(str(lock_path(p.path)))
    try:
        p.path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another extraction is writing %s; waiting for it", p.path)
        lock.acquire()
    except OSError as e:  # a read-only cache folder serves cache hits, unlocked: stores are
        result = _cache_hit(p, config)  # only ever replaced whole, by a rename
        if result is None:
            raise StoreError(f"cannot write to the cache folder {p.path.parent} "
                             f"({e.strerror or e}): the store for {p.dataset.root} needs "
                             "extracting; choose a writable --cache-dir") from None
        return _finish(result, config, p)
    try:
        result = _cache_hit(p, config)
        if result is None:
            old = _open_old(p)
            # the previous version of this very dataset (folder and name: two manifests in
            # one folder are two datasets), replaced below; any other store stays as it is
            superseded = old.path if old is not None and old.path != p.path and \
                same_dataset(old.attrs, config, p) else None
            # the previous duplicates are reused where the old store's rows are its images;
            # its paths and signatures packed (1M: ~55 MiB; as lists of str they took 170)
            before = (old.strings("paths"), old.strings("signatures"), old.duplicate_rows) \
                if old is not None and old.has_duplicates and p.one_row_per_image and \
                "view" not in old.file else None
            if before is not None:  # rows matched once, with the columns just read
                before += (p.match(old, *before[:2]),)
            # found once per store version (a cache hit reads them back from the store),
            # before the model is built: at 1M images their arrays took 70-100 MiB a moment
            pairs = p.store_rows(duplicate_rows(p.dataset, p.signatures, before))
            del before
            if len(p.row_image) < 2**31:  # held while the model works: 1M copies, 8 MB less
                pairs = pairs.astype(np.int32)
            # groups that need no features (exact copies only) are found now, at a fraction
            # of the model's memory, and the store is written with the split they make:
            # after the model, at 1M images, they raised the peak by ~60 MiB
            groups = None
            if p.variant is PLAIN and not _searches_near(p):
                groups = union_groups(len(p.row_image), pairs)
                _split_by_groups(p, config, groups)
            # devices and inodes were for that (16 MiB at 1M); sizes and mtimes live on in
            # the signatures
            p.dataset = replace(p.dataset, stats=None)
            release_freed_memory()  # what planning freed, before the model's ~100 MiB
            # only this folder's own previous store is updated in place
            try:
                result = run(config, p, p.split, old, progress,
                             in_place=superseded is not None)
            except DamagedStoreError as e:  # a reused row failed its check: reuse none
                if old is None:
                    raise
                log.warning("%s; extracting every image instead of reusing that store's "
                            "rows", e)
                old.close()
                result = run(config, p, p.split, None, progress)
            write_duplicates(p.path, pairs)
            if p.variant is PLAIN:  # this version's duplicate groups, and its split by them
                found = find_groups(p, config, groups)
                if found is not groups:  # near duplicates joined some: split again
                    _split_by_groups(p, config, found)
                _update_split(p.path, p.split[p.row_image], config, p.grouping)
            result.duplicate_rows, result.row_paths = pairs, p.row_paths
            if superseded is None:  # rows of another dataset's store (or none) not taken:
                result.dropped = 0  # no image of this dataset was dropped
            if superseded is not None:  # the previous version of this very folder's store
                for path in belongings(superseded):
                    _delete(path)
    finally:
        lock.release()
    return _finish(result, config, p)


def _finish(result: ExtractResult, config: Config, p: Plan) -> ExtractResult:
    if result.skipped and config.extract.strict:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in result.skipped[:20])
        raise ExtractError(f"{plural(len(result.skipped), 'unreadable image')} under "
                           f"{p.dataset.root} (--strict):\n{listing}")
    return result


def _cache_hit(p: Plan, config: Config) -> ExtractResult | None:
    """The result of a cache hit on ``p``, or None: no store yet, or a damaged one (which
    the extraction then replaces)."""
    if not p.path.is_file():
        return None
    try:
        with FeatureStore(p.path) as store:
            if store.file.attrs.get("key") != p.key:
                return None
            store.verify_once()  # checks every feature block, once per file version
            skipped, duplicates = store.skipped, store.duplicate_rows
            paths = store.paths if len(duplicates) else []  # 1M paths: 0.5 s
    except StoreError as e:
        log.warning("%s; extracting afresh", e)
        return None
    if p.variant is PLAIN and p.groups is None:  # made before featx 0.7, or another threshold
        try:
            _regroup(p, config, find_groups(p, config))
        except OSError as e:  # a read-only cache folder: the store is served as it is
            log.warning("%s: cannot record its duplicate groups (%s); its split stays as it "
                        "was made", p.path, e.strerror or e)
    else:
        _update_split(p.path, p.split[p.row_image], config, p.grouping)
    rows = len(p.row_image)
    return ExtractResult(p.path, p.key, cache_hit=True, rows=rows, reused=rows,
                         skipped=sorted(set(skipped)), duplicate_rows=duplicates, row_paths=paths)


def duplicate_files(dataset: Dataset, signatures: list[str],
                    before: tuple[list[str], list[str], np.ndarray] | None = None
                    ) -> list[tuple[str, str]]:
    """(path, path of an earlier image with the same bytes) for every image whose bytes
    repeat another's, in dataset order: :func:`duplicate_rows` as paths."""
    return row_pairs_to_paths(duplicate_rows(dataset, signatures, before), dataset.paths)


def duplicate_rows(dataset: Dataset, signatures: list[str],
                   before: tuple[list[str], list[str], np.ndarray] |
                   tuple[list[str], list[str], np.ndarray, np.ndarray] | None = None
                   ) -> np.ndarray:
    """(row, earlier row with the same bytes) for every image whose bytes repeat another's,
    int64 (k, 2) ordered by row. Only images that share a size are read (a stat signature
    carries it), and of files that are one file (hard links: same inode) one is read;
    content signatures are hashes already.

    ``before``: (paths, signatures, duplicate rows) of the store being updated, and
    optionally its row for each image (:func:`featx.features.plan.match_rows`). A size whose
    images are all as they were (none added, removed or changed) keeps its recorded pairs
    unread, so an update reads O(changed images x images sharing their size), not all of
    the images that share a size with another (most of a million JPEGs do). Vectorised: at
    1M images (all duplicates of 300 files) the Python loop it replaced took 6 s."""
    n = len(signatures)
    if n == 0:
        return np.empty((0, 2), np.int64)
    if signatures[0].startswith("sha256:"):
        pairs = _equal_runs(np.unique(np.asarray(signatures, dtype=object),
                                      return_inverse=True)[1].reshape(-1))
        return pairs[np.argsort(pairs[:, 0], kind="stable")]
    stats = dataset.stats
    if stats is not None:
        sizes = stats.size
    else:
        sizes = np.fromiter((int(sig.split(":", 1)[0]) for sig in signatures), np.int64, n)
    candidate = _shared(sizes)
    kept = np.empty((0, 2), np.int64)
    if before is not None and not any(sig.startswith("sha256:") for sig in before[1][:1]):
        old_paths, old_signatures, old_pairs, *matched_rows = before
        old_row = matched_rows[0] if matched_rows else \
            match_rows(old_paths, old_signatures, dataset.paths, signatures)
        matched = old_row >= 0
        gone = np.ones(len(old_paths), bool)
        gone[old_row[matched]] = False
        try:
            dirty = np.union1d(sizes[~matched], [int(old_signatures[i].split(":", 1)[0])
                                                 for i in np.flatnonzero(gone)])
        except ValueError:  # an old signature without a size: read as if new
            dirty = np.unique(sizes)
        is_dirty = np.isin(sizes, dirty)
        new_of_old = np.full(len(old_paths), -1, np.int64)
        new_of_old[old_row[matched]] = np.flatnonzero(matched)
        pairs = new_of_old[np.asarray(old_pairs, np.int64).reshape(-1, 2)]
        keep = (pairs >= 0).all(axis=1)
        keep[keep] = ~is_dirty[pairs[keep, 0]]
        kept = pairs[keep]
        candidate &= is_dirty
    rows = np.flatnonzero(candidate)
    del candidate
    # one read per file: rows that are hard links of one inode share its hash
    if stats is not None:
        file_id, first = _files_of(stats.device[rows], stats.inode[rows])
    else:
        first, file_id = np.arange(len(rows)), np.arange(len(rows))
    hash_id: dict[str, int] = {}
    file_hash = np.full(len(first), -1, np.int64)
    for f, i in enumerate(rows[first].tolist()):
        try:
            digest = hashlib.sha256(Path(dataset.absolute(i)).read_bytes()).digest()
        except OSError:
            continue  # unreadable: the reader reports it
        file_hash[f] = hash_id.setdefault(digest, len(hash_id))
    found = file_hash[file_id]
    del file_id
    read = found >= 0
    if not read.all():
        found, rows = found[read], rows[read]
    pairs = _equal_runs(found, rows)
    del found, rows
    if len(kept):
        pairs = np.concatenate([kept, pairs])
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


# duplicate_rows keeps its arrays few and frees them as it goes: at 1M images (all sharing
# a size with another) it held at most 118 MiB of arrays for a 15 MiB result, 55 MiB
# now (tracemalloc).

def _shared(values: np.ndarray) -> np.ndarray:
    """bool (N,): whether another element has the same value."""
    order = np.argsort(values, kind="stable")
    same = values[order]
    same = same[1:] == same[:-1]
    shared = np.zeros(len(values), bool)
    shared[1:] = same
    shared[:-1] |= same
    del same
    out = np.zeros(len(values), bool)
    out[order[shared]] = True
    return out


def _files_of(device: np.ndarray, inode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows given by (device, inode): each row's file (int64 (N,), 0..F-1) and the
    first row of each file (int64 (F,))."""
    starts = np.empty(len(inode), bool)
    starts[:1] = True
    if len(inode) and (device == device[0]).all():  # one file system: inode says which file
        order = np.argsort(inode, kind="stable")
        sorted_inode = inode[order]
        np.not_equal(sorted_inode[1:], sorted_inode[:-1], out=starts[1:])
        del sorted_inode
    else:
        order = np.lexsort((inode, device))  # np.unique(axis=0) was 4x slower
        d, i = device[order], inode[order]
        starts[1:] = (d[1:] != d[:-1]) | (i[1:] != i[:-1])
        del d, i
    file_id = np.empty(len(inode), np.int64)
    file_id[order] = np.cumsum(starts) - 1
    return file_id, order[starts]


def _equal_runs(ids: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """(row, first row with the same id) for every row whose id an earlier row has,
    grouped by id; ``rows``: the row of each id (ascending; default 0..n-1)."""
    ids = np.asarray(ids).reshape(-1)
    order = np.argsort(ids, kind="stable")  # rows ascending within an id
    sorted_ids = ids[order]
    starts = np.empty(len(ids), bool)
    starts[:1] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=starts[1:])
    del sorted_ids
    if rows is not None:
        order = np.asarray(rows, np.int64)[order]
    group = np.cumsum(starts) - 1
    first = order[starts][group[~starts]]
    del group
    return np.stack([order[~starts], first], axis=1)


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def extract_all(config: Config, progress: bool = True) -> Iterator[ExtractResult]:
    """Every store the pipeline needs, one after the other: the plain store, then the variant
    stores it asks for (extract.augment, extract.tencrop), for each member of a [combine]
    pipeline (featx/learn/combine.py) or for the pipeline itself."""
    from featx.features.variants import extracted_variants

    for target in config.members() if config.combine.pipelines else [config]:
        for variant in ["plain", *extracted_variants(target)]:
            yield extract(target, progress=progress, variant=variant)


def _open_old(p: Plan) -> FeatureStore | None:
    """The complete, sound store of an earlier version of this dataset with the same
    settings, to reuse the rows of unchanged images from (None: extract every row)."""
    for path in _candidates(p):
        try:
            store = FeatureStore(path)
        except StoreError as e:
            log.warning("ignoring unusable store (%s)", e)
            continue
        try:  # rows are reused only from a checked store (once per file version)
            store.verify_once()
            return store
        except StoreError as e:
            store.close()
            log.warning("ignoring unusable store (%s)", e)
    return None


def _searches_near(p: Plan) -> bool:
    """Whether ``p``'s groups join near duplicates, found from the features: not with
    random weights, whose features are alike whatever the image (a median cosine of 0.9
    between unrelated test images here; ImageNet weights give 0.47 on Flowers-17), so that
    only exact copies are grouped."""
    return p.settings.get("weights") != "none"


def find_groups(p: Plan, config: Config, exact_groups: np.ndarray | None = None
                ) -> np.ndarray:
    """Find and record the duplicate groups of the plain store ``p`` (featx/data/groups.py):
    its exact duplicates (same bytes, found at extraction) joined with the pairs of its
    readable rows whose features have a cosine similarity of ``dataset.duplicate_threshold``
    or more among each row's NEIGHBOURS nearest (the very search ``featx audit`` makes, so
    that no pair it reports at that threshold crosses a grouped split), where
    :func:`_searches_near`. ``exact_groups``: the groups of the exact duplicates alone,
    found already (int (N,)), where no near duplicates are searched. Returns the groups:
    int32 (N,)."""
    t0 = time.perf_counter()
    threshold = float(config.dataset.duplicate_threshold)
    pairs, similarity = np.empty((0, 2), np.int64), np.empty(0, np.float32)
    with FeatureStore(p.path) as store:
        n_exact = len(store.file["duplicate_rows"]) if "duplicate_rows" in store.file else 0
        if not _searches_near(p):
            method = "none: random weights (exact copies only)"
            groups = exact_groups if exact_groups is not None else \
                union_groups(len(store), store.duplicate_rows)
        else:
            exact, rows = store.duplicate_rows, np.flatnonzero(store.ok)
            if len(rows) < 2:
                method = "none: fewer than 2 readable rows"
            else:
                found, similarity, method = near_duplicates(unit_rows(store.features(rows)),
                                                            threshold)
                pairs = rows[found].reshape(-1, 2)
            groups = union_groups(len(store), exact, pairs)
    counted, images = group_sizes(groups)
    seconds = time.perf_counter() - t0
    write_groups(p.path, groups, pairs, similarity, {
        "threshold": threshold, "neighbours": NEIGHBOURS, "method": method,
        "exact_pairs": n_exact, "near_pairs": len(pairs), "groups": counted,
        "images": images, "seconds": round(seconds, 3)})
    with FeatureStore(p.path) as store:  # its features were verified just before
        store.mark_verified()
    log.info("%s (%s) of copies: the same bytes or features at cosine >= %s (%s, %.2f s)",
             plural(counted, "duplicate group"), plural(images, "image"), threshold, method,
             seconds)
    return groups


def _split_by_groups(p: Plan, config: Config, groups: np.ndarray) -> None:
    """``p``'s split made again from the plain store's ``groups`` (grouped with
    ``dataset.group_duplicates``)."""
    d = config.dataset
    p.groups = groups
    if d.group_duplicates:
        p.split = grouped_split(p.dataset.labels, groups, d.val, d.test, d.seed)
        p.grouping = grouping_identity(d)


def _regroup(p: Plan, config: Config, groups: np.ndarray) -> None:
    """``p``'s split made again from the plain store's new ``groups`` (grouped with
    ``dataset.group_duplicates``) and written where it differs."""
    _split_by_groups(p, config, groups)
    _update_split(p.path, p.split[p.row_image], config, p.grouping)


def _update_split(path: Path, split: np.ndarray, config: Config, grouping: dict) -> None:
    """A split change needs no new features: rewrite the split in the complete store
    (``grouping``: how the split treats duplicates, recorded with it)."""
    with FeatureStore(path) as store:
        same = np.array_equal(store.split, split) and \
            store.file.attrs["split"] == _split_attr(config) and store.grouping == grouping
    if not same:
        rewrite_split(path, split, _split_attr(config), grouping)
        with FeatureStore(path) as store:  # its features were verified just before
            store.mark_verified()


def _reuse(p: Plan, old: FeatureStore | None) -> tuple[np.ndarray, int]:
    """For each row (image, or image and view), the row of the old store holding its
    features (-1: extract it), and how many old rows are dropped (image removed or changed)."""
    row_image = p.row_image
    if old is None:
        return np.full(len(row_image), -1, np.int64), 0
    if "view" not in old.file and p.variant.rows_per_image == 1:  # one row per image
        # the rows are the images: the match itself, not a copy of its 8 MB a million rows
        # (nor p.row_view: 8 MB more, held by the plan through the model's work)
        old_row = p.match(old) if p.one_row_per_image else p.match(old)[row_image]
        return old_row, len(old) - int((old_row >= 0).sum())
    old_row, row_view = np.full(len(row_image), -1, np.int64), p.row_view
    old_view = old.file["view"][:] if "view" in old.file else np.zeros(len(old), np.int64)
    index = {(path, sig, int(view)): i for i, (path, sig, view)
             in enumerate(zip(old.paths, old.signatures, old_view))}
    for i, (image, view) in enumerate(zip(row_image, row_view)):
        old_row[i] = index.get((p.dataset.paths[image], p.signatures[image], int(view)), -1)
    return old_row, len(old) - int((old_row >= 0).sum())


def _run(config: Config, p: Plan, split: np.ndarray, old: FeatureStore | None,
         progress: bool, in_place: bool = False) -> ExtractResult:
    """Extract what ``old`` (if any) does not hold and write the store. ``in_place``: ``old``
    is the previous version of this very dataset's store, so a plain store may be updated
    by appending a segment to it (featx.store.write.append_store) instead of rewriting it."""
    dataset, backbone, variant = p.dataset, p.backbone, p.variant
    row_image = p.row_image
    if old is None:  # every row is extracted: no per-row arrays but row_image (1M: 24 MiB)
        old_row, todo_images, dropped = None, row_image, 0
    else:
        old_row, dropped = _reuse(p, old)
        todo_images = row_image[old_row < 0]
    batch = config.extract.batch_size
    # About BLOCK_BATCHES batches of backbone passes a block, and whole images in each.
    block_rows = variant.rows_per_image * max(1, batch * BLOCK_BATCHES // variant.views)
    # which rows the blocks hold: all, or (an update) those the old store does not; the
    # content key names the images of every row, so this binds the blocks to their job
    job = "all" if old_row is None else \
        short_hash(np.flatnonzero(old_row < 0).astype("<i8").tobytes())
    blocks = BlockDir(p.path, p.key, len(todo_images), block_rows=block_rows, job=job,
                      about=job_about(config, p))
    done = set(blocks.done())
    remaining = [b for b in range(blocks.n_blocks) if b not in done]
    if done:
        log.info("resuming: %d of %s already extracted", len(done),
                 plural(blocks.n_blocks, "block"))
    t0 = time.perf_counter()
    extracted, rate, device = 0, 0.0, ""
    if remaining:
        from featx.features.backbones import compute_device

        device = compute_device()
        try:
            extracted, rate = _extract_blocks(config, dataset, backbone, todo_images, blocks,
                                              remaining, progress, variant=variant)
        except FeatxError as e:  # weights that cannot be had, --strict and a bad image: a
            blocks.stop(str(e))  # resume meets them again, so the folder says so (find_store)
            raise
    del todo_images
    seconds = time.perf_counter() - t0
    feature_shape = _feature_shape(blocks, old, backbone)
    skipped = write_update(
        p.path, in_place=in_place, source=RowSource(old_row),
        old=old, blocks=blocks, feature_shape=feature_shape,
        extra={"view": p.row_view} if variant.rows_per_image > 1 else None,
        **store_columns(config, p, split, feature_shape))
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
        return old.feature_shape
    return backbone.feature_shape


def _extract_blocks(config: Config, dataset: Dataset, backbone: Backbone, todo: np.ndarray,
                    blocks: BlockDir, remaining: list[int], progress: bool,
                    variant: Variant = PLAIN) -> tuple[int, float]:
    """Extract the rows of the ``remaining`` blocks (``todo``: the image of each row to
    extract); return (rows, steady backbone passes/s)."""
    batch, size = config.extract.batch_size, backbone.input_size
    forward = backbone.batched(batch)
    per_image, group = variant.rows_per_image, variant.group

    if len(remaining) == blocks.n_blocks:  # all of them: no copy of a million rows
        rows = len(todo)
        images = todo[::per_image]  # blocks hold whole images
    else:
        positions = np.concatenate([np.asarray(blocks.rows_of(b)) for b in remaining])
        rows = len(positions)
        images = todo[positions][::per_image]
        del positions
    files = dataset.files(images)
    views = variant.reader(size, dataset.relative(images))
    passes = len(files) * variant.views  # backbone passes this run
    strict = config.extract.strict
    errors = ReadErrors()  # by file
    bar = progress_bar(len(todo) * group, f"{backbone.spec.name} {dataset.name}{variant.suffix}",
                       "img" if variant.views == 1 else "view", progress,
                       initial=(len(todo) - rows) * group)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # backbone outputs not yet in a block
    block_iter = iter(remaining)
    current = next(block_iter)
    need = len(blocks.rows_of(current))
    done_rows = 0
    t_first = time.perf_counter()
    rate = 0.0
    try:
        for first, batch_images, ok in read_batches(files, size, batch, errors, views=views,
                                                        resize=backbone.resize):
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
    return rows, rate
