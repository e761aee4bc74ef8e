"""Duplicate groups and the grouped stratified split: images that are copies of one another
(the same bytes, or features at a cosine similarity of ``threshold`` or more) go to one side
of the split together, so that no test image has its copy among the training images.

- :func:`near_duplicates`: the near duplicates of feature rows (exact blocked matrix
  products up to ``EXACT_MAX`` rows, faiss beyond), as ``featx audit`` reports them;
- :func:`union_groups`: the groups those pairs and the exact duplicates join;
- :func:`grouped_split`: :func:`featx.data.dataset.stratified_split` with every group kept
  on one side; without any group of two or more it is that split, row for row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from featx.core.config import DatasetConfig
from featx.core.errors import UsageError
from featx.data.dataset import TEST, TRAIN, VAL, _check_fractions, split_sizes, stratified_split

THRESHOLD = 0.95  # cosine similarity from which two images count as near duplicates
NEIGHBOURS = 10  # neighbours searched per image
EXACT_MAX = 50_000  # rows up to which the neighbour search is exact
BLOCK_ELEMENTS = 1 << 25  # similarities held at once by the exact search (128 MiB)
UNGROUPED = {"duplicates": False}  # the identity of a split made without groups


def grouping_identity(d: DatasetConfig) -> dict[str, Any]:
    """What a store records of how its split treats duplicates (its ``grouping`` attribute,
    part of the split's identity beside val, test and seed): grouped at a threshold, or not.
    A store without the attribute (made before featx 0.7) is ungrouped."""
    if not d.group_duplicates:
        return dict(UNGROUPED)
    return {"duplicates": True, "threshold": float(d.duplicate_threshold)}


# --- nearest neighbours -----------------------------------------------------------------------

def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in place where ``x`` is float32 (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _faiss_neighbours(x: np.ndarray, k: int, exact_max: int = EXACT_MAX
                      ) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        import faiss
    except ImportError:
        raise UsageError(f"{len(x)} rows: the neighbour search beyond {exact_max} rows needs "
                         "faiss (pip install 'featx[audit]')") from None
    n, d = x.shape
    nlist = int(max(16, min(4 * np.sqrt(n), n // 39)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = x[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
    index.train(np.ascontiguousarray(sample))
    index.add(np.ascontiguousarray(x))
    index.nprobe = 16
    sims, found = index.search(np.ascontiguousarray(x), k + 1)
    # drop each row itself (or, among exact copies, one equal row) from its own list
    own = found == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(found, bool)
    keep[np.arange(n), drop] = False
    sims = sims[keep].reshape(n, k)
    found = found[keep].reshape(n, k)
    return sims, found, f"faiss IVF (nlist {nlist}, nprobe 16; approximate)"


def near_pair_arrays(sims: np.ndarray, index: np.ndarray, threshold: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of a neighbour search (``sims``, ``index``: (n, k), each row's most similar
    others, -1 where none) at or above ``threshold``: pairs int64 (m, 2) with i < j,
    similarity float32 (m,), most similar first (ties by i, then j); a pair found from both
    of its rows keeps the higher of its two similarities."""
    rows, cols = np.nonzero((sims >= threshold) & (index >= 0))
    return _unique_pairs(rows, index[rows, cols], sims[rows, cols])


def _unique_pairs(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # (a, b, similarity) found from either row: each pair once (i < j) with its higher
    # similarity, most similar first (ties by i, then j); vectorised
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    i, j, s = np.minimum(a, b), np.maximum(a, b), np.asarray(s, np.float32)
    order = np.lexsort((-s, j, i))  # by pair, the most similar first within each
    i, j, s = i[order], j[order], s[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    i, j, s = i[first], j[first], s[first]
    order = np.lexsort((j, i, -s))
    return np.stack([i[order], j[order]], axis=1).reshape(-1, 2), s[order]


def near_duplicates(x: np.ndarray, threshold: float = THRESHOLD, k: int = NEIGHBOURS,
                    exact_max: int = EXACT_MAX) -> tuple[np.ndarray, np.ndarray, str]:
    """The near-duplicate pairs of unit rows (:func:`unit_rows`): each row with those of its
    ``k`` most cosine-similar others at ``threshold`` or more. Exact up to ``exact_max``
    rows (blocks of matrix products, never an N x N matrix), faiss beyond (an inverted-file
    index, approximate). The exact search keeps the similarities at or above the threshold
    of each block of rows and ranks only the rows with more than ``k`` of them (ranking
    every row took 3x the matrix product itself on 1,280 floats). Both ``featx audit`` and
    the split's groups come from here.

    Returns
    -------
    pairs : ndarray of shape (m, 2), int64, i < j
    similarity : ndarray of shape (m,), float32, most similar first
    method : str
    """
    n = len(x)
    k = max(0, min(k, n - 1))
    if n > exact_max:
        sims, index, method = _faiss_neighbours(x, k, exact_max)
        return (*near_pair_arrays(sims, index, threshold), method)
    found_a, found_b, found_s = [], [], []
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n if k else 0, step):
        stop = min(n, start + step)
        s = x[start:stop] @ x.T
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not itself
        rows, cols = np.nonzero(s >= threshold)
        many = np.flatnonzero(np.bincount(rows, minlength=stop - start) > k)
        if len(many):  # more than k: only its k most similar
            kept = ~np.isin(rows, many)
            rows, cols = rows[kept], cols[kept]
            top = np.argpartition(-s[many], k - 1, axis=1)[:, :k]
            top_rows = np.repeat(many, k)
            rows, cols = np.r_[rows, top_rows], np.r_[cols, top.reshape(-1)]
            at = s[rows, cols] >= threshold
            rows, cols = rows[at], cols[at]
        found_a.append(rows + start)
        found_b.append(cols)
        found_s.append(s[rows, cols])
    method = "exact (blocked matrix products)"
    if not found_a:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32), method
    return (*_unique_pairs(np.concatenate(found_a), np.concatenate(found_b),
                           np.concatenate(found_s)), method)


# --- groups -----------------------------------------------------------------------------------

def union_groups(n: int, *pairs: np.ndarray) -> np.ndarray:
    """The group of each of ``n`` rows that ``pairs`` (int (k, 2) arrays of rows) join,
    transitively: int32 (n,), each row's group named by its smallest row (a row in no pair is
    its own group). The connected components of the pairs' graph (scipy's, in C: 1M pairs
    took 0.08 s here, where a union-find in Python took 1.1-1.3)."""
    edges = np.concatenate([np.asarray(p, np.int64).reshape(-1, 2) for p in pairs]) \
        if pairs else np.empty((0, 2), np.int64)
    if n == 0 or not len(edges):
        return np.arange(n, dtype=np.int32)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])),
                       shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=False)
    # each component named by its smallest row: the first row of each, in row order
    _, first = np.unique(component, return_index=True)
    return first[component].astype(np.int32)


def group_sizes(groups: np.ndarray) -> tuple[int, int]:
    """(groups of two or more rows, rows in them)."""
    size = np.bincount(np.asarray(groups, np.int64))
    return int((size > 1).sum()), int(size[size > 1].sum())


def crossing_pairs(pairs: np.ndarray, split: np.ndarray) -> int:
    """How many of ``pairs`` (int (k, 2) rows; a pair given twice, in either order, counts
    once: exact copies are near duplicates too) have their rows on two sides of ``split``."""
    pairs = np.unique(np.sort(np.asarray(pairs, np.int64).reshape(-1, 2), axis=1), axis=0)
    return int((split[pairs[:, 0]] != split[pairs[:, 1]]).sum())


# --- the grouped split ------------------------------------------------------------------------

def grouped_split(labels: np.ndarray, groups: np.ndarray | None, val: float, test: float,
                  seed: int) -> np.ndarray:
    """Assign each row to TRAIN, VAL or TEST as :func:`stratified_split` does, every group
    (``groups``: int (N,), rows with the same value are one group; None: none) wholly to
    one side; int8 (N,). Deterministic in the seed.

    Each class's rows are taken in the order of the seed's permutation (the very one of
    :func:`stratified_split`), filling the class's test and then validation share; a group
    is met at its first row (by row number: one draw, as a single row has) and goes to the
    side being filled only where it fits every class it touches, and is passed over
    otherwise. A share left short (only groups too large remain) then
    takes the first group that brings its classes closer to their shares, or, for a class
    with none on that side yet, any group (so that every class is tested where it can be);
    never a class's last training row. Without groups of two or more rows this is
    :func:`stratified_split`, row for row (the permutations and rounding are the same)."""
    labels = np.asarray(labels)
    _check_fractions(val, test)
    if groups is None:
        return stratified_split(labels, val, test, seed)
    _, group = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    size = np.bincount(group)
    multi = size[group] > 1
    if not multi.any():
        return stratified_split(labels, val, test, seed)
    classes, col = np.unique(labels, return_inverse=True)
    n_classes = len(classes)
    rng = np.random.default_rng(seed)  # the same calls, in the same order, as stratified_split
    orders, quota = [], np.zeros((3, n_classes), np.int64)
    for c, cls in enumerate(classes):
        rows = np.flatnonzero(labels == cls)
        orders.append(rows[rng.permutation(len(rows))])
        quota[TEST, c], quota[VAL, c] = split_sizes(len(rows), val, test)
    # A group is placed when the walk meets its first row (by row number), not the first of
    # its rows the walk meets: that would give a group of m rows m draws at the test share
    # (a pair went to test 36% of the time on Flowers-17 instead of 25%).
    anchor = np.full(len(size), len(labels), np.int64)
    np.minimum.at(anchor, group, np.arange(len(labels)))
    in_groups = np.flatnonzero(multi)
    in_groups = in_groups[np.argsort(group[in_groups], kind="stable")]
    bounds = np.flatnonzero(np.r_[True, group[in_groups[1:]] != group[in_groups[:-1]]])
    members = dict(zip(group[in_groups[bounds]].tolist(),
                       np.split(in_groups, bounds[1:])))
    split = np.full(len(labels), TRAIN, np.int8)
    placed = np.zeros(len(labels), bool)
    used = np.zeros((3, n_classes), np.int64)
    left = np.bincount(col, minlength=n_classes)  # rows not held out: train keeps one a class

    version = 0  # how many placements so far: a group's fit changes only with them

    def place(rows: np.ndarray, side: int, count: np.ndarray) -> None:
        nonlocal version
        split[rows], placed[rows] = side, True
        used[side] += count
        left[:] -= count
        version += 1

    group_counts: dict[int, np.ndarray] = {}

    def counts(rows: np.ndarray, g: int | None = None) -> np.ndarray:
        if g is None:
            return np.bincount(col[rows], minlength=n_classes)
        if g not in group_counts:  # once a group: 1M rows in 300 groups took 8 s, not 0.1
            group_counts[g] = np.bincount(col[rows], minlength=n_classes)
        return group_counts[g]

    # pass 1 meets a group only at its first row: the walk is a class's single rows and
    # the first rows of groups (a walk over every row of a 1M-row store all in groups took
    # 8 s here); the single rows between two of those are taken as before, test first
    is_anchor = np.zeros(len(labels), bool)
    is_anchor[anchor[np.unique(group[in_groups])]] = True
    for c, order in enumerate(orders):  # pass 1: each class in turn, its seed's order
        walk = order[~multi[order] | is_anchor[order]]
        stops = [*np.flatnonzero(is_anchor[walk]).tolist(), len(walk)]
        at = 0
        for stop in stops:
            for side in (TEST, VAL):  # single rows up to the next group's: in order
                take = walk[at:at + max(0, min(quota[side, c] - used[side, c], stop - at))]
                if len(take):
                    place(take, side, counts(take))
                    at += len(take)
            if stop == len(walk) or (used[:, c] >= quota[:, c]).all():
                break
            at = stop + 1
            row = int(walk[stop])
            if placed[row]:
                continue
            g = int(group[row])
            rows = members[g]
            count = counts(rows, g)
            for side in (TEST, VAL):
                if used[side, c] < quota[side, c] and (used[side] + count <= quota[side]).all():
                    place(rows, side, count)
                    break
    group_of = group.tolist()
    for side in (TEST, VAL):  # pass 2: shares left short by groups too large for them
        for c, order in enumerate(orders):
            passed_over: dict[int, int] = {}  # group: the version it was passed over at
            for row in order[~placed[order]].tolist():
                if used[side, c] >= quota[side, c]:
                    break
                g = group_of[row]
                if placed[row] or passed_over.get(g) == version:
                    continue  # placed, or passed over with nothing placed since
                rows = members.get(g)
                if rows is None:  # a single row
                    rows = np.array([row])
                    count = counts(rows)
                else:
                    count = counts(rows, g)
                touched = count > 0
                if (left[touched] - count[touched] < 1).any():
                    passed_over[g] = version
                    continue  # a class would have no training row left
                before = np.abs(used[side] - quota[side])[touched].sum()
                after = np.abs(used[side] + count - quota[side])[touched].sum()
                if after < before or used[side, c] == 0:
                    place(rows, side, count)
                else:
                    passed_over[g] = version
    return split


def split_counts(labels: np.ndarray, split: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows of each class on each side: int64 (n_classes, 3), columns TRAIN, VAL, TEST."""
    out = np.zeros((n_classes, 3), np.int64)
    np.add.at(out, (np.asarray(labels, np.int64), np.asarray(split, np.int64)), 1)
    return out


def asked_counts(labels: np.ndarray, n_classes: int, val: float, test: float) -> np.ndarray:
    """What :func:`stratified_split` gives each class: int64 (n_classes, 3) as
    :func:`split_counts`."""
    n = np.bincount(np.asarray(labels, np.int64), minlength=n_classes)
    held = np.array([split_sizes(int(k), val, test) for k in n], np.int64).reshape(-1, 2)
    return np.stack([n - held.sum(axis=1), held[:, 1], held[:, 0]], axis=1)


def stratification(labels: np.ndarray, split: np.ndarray, label_names: list[str], val: float,
                   test: float) -> dict[str, Any]:
    """How closely ``split`` keeps each class's shares: per class its train, val and test
    rows and the test and val rows :func:`stratified_split` would give it, and the largest
    difference from those (in images) over the classes."""
    k = len(label_names)
    got, asked = split_counts(labels, split, k), asked_counts(labels, k, val, test)
    off = np.abs(got - asked)[:, 1:]
    return {"per_class": {name: {"train": int(g[TRAIN]), "val": int(g[VAL]),
                                 "test": int(g[TEST]), "asked_val": int(a[VAL]),
                                 "asked_test": int(a[TEST])}
                          for name, g, a in zip(label_names, got, asked)},
            "most_off": int(off.max()) if off.size else 0}


def split_record(labels: np.ndarray, split: np.ndarray, label_names: list[str], val: float,
                 test: float, grouped: bool, groups: np.ndarray | None = None,
                 pairs: np.ndarray | None = None, threshold: float | None = None,
                 method: str | None = None) -> dict[str, Any]:
    """What a split (int (N,); ``labels`` int (N,)) does with duplicates, as a result records
    it (``duplicates``): whether it keeps them together (``grouped``), the groups of two or
    more rows and the rows in them (``groups``: int (N,), None: not known), how many of
    ``pairs`` (int (k, 2) rows: exact copies and near duplicates at ``threshold``; None: not
    known) cross it, and :func:`stratification`."""
    record: dict[str, Any] = {"grouped": bool(grouped), "threshold": threshold, "groups": None,
                              "images": None, "crossing_pairs": None, "method": method}
    if groups is not None:
        record["groups"], record["images"] = group_sizes(groups)
    if pairs is not None:
        record["crossing_pairs"] = crossing_pairs(pairs, split)
    return {**record, **stratification(labels, split, label_names, val, test)}
