"""Audit a dataset from its cached features: duplicates (and the leakage they cause), likely
label errors and outliers, written as an HTML gallery (thumbnails) and a CSV.

- exact duplicates: images with the same bytes (hashed only where sizes agree);
- near duplicates: pairs whose features have a cosine similarity at or above a threshold
  (resized, re-compressed or lightly edited copies), flagged where they cross the split
  (leakage: the test score is inflated) and where their labels differ;
- label errors: out-of-fold predicted probabilities (a cross-validated logistic regression
  on the cached features) ranked by confident learning (cleanlab);
- outliers: images far from the rest of their class (cosine similarity to the mean of the
  other images of the class, in robust z-scores within the class).

Nearest neighbours are exact (blocks of matrix products, no N x N matrix in memory) up to
``EXACT_MAX`` rows and approximate beyond, with faiss (an inverted-file index): the search
of featx/data/groups.py, whose near duplicates the split keeps together
(``dataset.group_duplicates``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import Config
from featx.core.errors import DatasetError, UsageError
from featx.core.escape import spreadsheet_cell
from featx.core.files import write_atomic
from featx.core.layout import audit_dir
from featx.core.log import plural
from featx.data.dataset import SPLIT_NAMES, Dataset, dataset_root
from featx.data.groups import (  # the search the split's duplicate groups come from
    EXACT_MAX,
    NEIGHBOURS,
    THRESHOLD,
    near_duplicates,
    unit_rows,
)
from featx.report.pages import picture, render

log = logging.getLogger(__name__)

FOLDS = 5  # cross-validation folds for the out-of-fold probabilities
PCA_DIMS = 128  # principal components the out-of-fold logistic regression reads
OUTLIER_Z = -3.0  # robust z-score below which an image is an outlier of its class
# Out-of-fold accuracy below which the label-error list comes with a caveat: a model wrong
# on more than 1 image in 10 flags about that share of the images by its own mistakes (an
# image predicted as another class is listed), so most of its list is not wrong labels.
TRUSTED_ACCURACY = 0.9
TOP = 100  # rows per section of the HTML page
CSV_HEADER = ("section", "rank", "path", "label", "split", "other_path", "other_label",
              "other_split", "score", "note")


@dataclass
class Audit:
    """What :func:`audit_arrays` found; rows index the arrays it was given.

    Attributes
    ----------
    exact : list of (i, j): rows whose files have the same bytes (j the earlier)
    near : list of (i, j, similarity), i < j, most similar first (exact pairs left out)
    label_issues : list of (i, suggested label, label quality, flagged by cleanlab), most
        likely error first
    outliers : list of (i, z-score, similarity to its class), most isolated first
    seconds : dict of step -> seconds
    method : how the neighbours were searched
    accuracy : out-of-fold accuracy of the model the label errors rest on (the share of
        rows whose out-of-fold prediction is their label); nan before it is computed
    """

    exact: list[tuple[int, int]] = field(default_factory=list)
    near: list[tuple[int, int, float]] = field(default_factory=list)
    label_issues: list[tuple[int, int, float, bool]] = field(default_factory=list)
    outliers: list[tuple[int, float, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    method: str = ""
    accuracy: float = float("nan")

    @property
    def caveat(self) -> str:
        """Why the label errors may be the model's mistakes ("" when its accuracy is at or
        above TRUSTED_ACCURACY)."""
        if not self.accuracy < TRUSTED_ACCURACY:
            return ""
        return (f"the label errors rest on a model right on {self.accuracy:.0%} of the "
                f"images (out of fold, below {TRUSTED_ACCURACY:.0%}): many are its own "
                "mistakes, not wrong labels")


# --- the four checks --------------------------------------------------------------------------

def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, folds: int = FOLDS,
                              seed: int = 0) -> np.ndarray:
    """(n, n_classes) probabilities of each row from a logistic regression fitted without it
    (stratified cross-validation), on standardised features reduced to at most ``PCA_DIMS``
    principal components (as good a ranking here, several times faster); columns by label
    value (``np.unique(y)`` order)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    folds = min(folds, smallest)
    if folds < 2:
        raise UsageError("a class has a single image: label errors need at least 2 per class")
    steps: list[Any] = [StandardScaler()]
    dims = min(PCA_DIMS, x.shape[1], len(x) * (folds - 1) // folds - 1)
    if dims < x.shape[1]:
        steps.append(PCA(dims, random_state=seed))
    model = make_pipeline(*steps, LogisticRegression(C=0.01, max_iter=300))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, x, y, cv=cv, method="predict_proba")


def label_issues(y: np.ndarray, proba: np.ndarray) -> list[tuple[int, int, float, bool]]:
    """The suspected label errors, most likely first: every row that confident learning
    (cleanlab.filter.find_label_issues) flags or whose out-of-fold prediction is another
    class, ranked by cleanlab's label quality (self-confidence), lowest first.

    Returns
    -------
    list of (row, suggested label, label quality, flagged by cleanlab)
    """
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise UsageError("label errors need cleanlab (pip install 'featx[audit]')") from None
    classes = np.unique(y)
    y_index = np.searchsorted(classes, y)
    flagged = np.zeros(len(y), bool)
    flagged[find_label_issues(y_index, proba, return_indices_ranked_by="self_confidence")] = True
    quality = get_label_quality_scores(y_index, proba)
    best = np.argmax(proba, axis=1)
    suspect = np.flatnonzero(flagged | (best != y_index))
    suspect = suspect[np.argsort(quality[suspect], kind="stable")]
    return [(int(i), int(classes[best[i]]), float(quality[i]), bool(flagged[i]))
            for i in suspect]


def class_outliers(x: np.ndarray, y: np.ndarray, z_below: float = OUTLIER_Z
                   ) -> list[tuple[int, float, float]]:
    """(row, robust z-score, similarity) of the rows whose cosine similarity to the mean of
    the other rows of their class is far below the class's usual (median - MAD), most
    isolated first. ``x``: unit rows."""
    out = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) < 3:
            continue
        total = x[rows].sum(axis=0, dtype=np.float64)
        others = (total[None, :] - x[rows]) / (len(rows) - 1)  # leave each row out
        sim = np.einsum("ij,ij->i", x[rows], others) / np.maximum(
            np.linalg.norm(others, axis=1), 1e-12)
        median = np.median(sim)
        mad = 1.4826 * np.median(np.abs(sim - median)) or 1e-12
        z = (sim - median) / mad
        out += [(int(rows[i]), float(z[i]), float(sim[i])) for i in np.flatnonzero(z < z_below)]
    return sorted(out, key=lambda o: (o[1], o[0]))


def audit_arrays(x: np.ndarray, y: np.ndarray, threshold: float = THRESHOLD,
                 k: int = NEIGHBOURS, folds: int = FOLDS, seed: int = 0,
                 exact_max: int = EXACT_MAX) -> Audit:
    """Near duplicates, label errors and outliers of feature rows (exact duplicates need the
    files: :func:`audit_store`).

    Parameters
    ----------
    x : ndarray of shape (n, d), float32; normalised in place
    y : ndarray of shape (n,), int labels
    threshold : float, near-duplicate cosine similarity
    k : int, neighbours searched per row
    folds, seed : the cross-validation of the out-of-fold probabilities

    Returns
    -------
    Audit
    """
    if not 0 < threshold <= 1:
        raise UsageError(f"--threshold {threshold}: a cosine similarity in (0, 1]")
    a = Audit()
    t0 = time.perf_counter()
    proba = out_of_fold_probabilities(x, y, folds, seed)
    a.accuracy = float(np.mean(np.unique(y)[np.argmax(proba, axis=1)] == y))
    a.seconds["out-of-fold probabilities"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    a.label_issues = label_issues(y, proba)
    a.seconds["confident learning"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = unit_rows(x)
    pairs, similarity, a.method = near_duplicates(x, threshold, k, exact_max)
    a.near = [(int(i), int(j), float(s)) for (i, j), s in zip(pairs, similarity)]
    a.seconds["neighbours"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    a.outliers = class_outliers(x, y)
    a.seconds["outliers"] = time.perf_counter() - t0
    return a


@dataclass
class Rows:
    """The audited rows of a store: paths (absolute where the dataset root is known),
    labels, splits, label names."""

    paths: list[str]
    relative: list[str]
    labels: np.ndarray
    split: np.ndarray
    label_names: list[str]


def audit_store(store_path: Path, threshold: float = THRESHOLD, k: int = NEIGHBOURS,
                folds: int = FOLDS, seed: int = 0, root: Path | None = None
                ) -> tuple[Audit, Rows]:
    """:func:`audit_arrays` on every readable row of a store, plus its exact duplicates
    (files with the same bytes, where the dataset folder is here). ``root``: the dataset
    folder as named now (default: the one recorded at extraction, which a rename or a move
    since leaves pointing elsewhere)."""
    from featx.features.extraction import duplicate_files
    from featx.store.read import FeatureStore

    with FeatureStore(store_path) as store:
        rows = np.flatnonzero(store.ok)
        if len(rows) < 3:
            raise DatasetError(f"{store_path}: {plural(len(rows), 'readable image')}; an "
                               "audit needs 3")
        root_attr = str(root or store.attrs.get("root", ""))
        root = Path(root_attr)
        all_paths, names = store.paths, store.label_names
        labels, split = store.labels[rows], store.split[rows]
        signatures = store.signatures
        recorded = store.duplicates
        t0 = time.perf_counter()
        x = store.features(rows)
        read = time.perf_counter() - t0
    relative = [all_paths[i] for i in rows]
    info = Rows([str(root / p) for p in relative], relative, labels, split, names)
    a = audit_arrays(x, labels, threshold, k, folds, seed)
    a.seconds = {"read features": read, **a.seconds}
    t0 = time.perf_counter()
    position = {p: i for i, p in enumerate(relative)}
    if root_attr and root.is_dir():
        dataset = Dataset(root, all_paths, np.zeros(len(all_paths), np.int32), names, "")
        pairs = duplicate_files(dataset, signatures)
    else:  # the dataset is elsewhere: what extraction recorded
        log.warning("dataset folder %s not here: exact duplicates as recorded at extraction",
                    root)
        pairs = recorded
    a.exact = [(position[p], position[q]) for p, q in pairs if p in position and q in position]
    exact = {tuple(sorted(p)) for p in a.exact}
    a.near = [n for n in a.near if (n[0], n[1]) not in exact]
    a.seconds["exact duplicates"] = time.perf_counter() - t0
    return a, info


# --- output -----------------------------------------------------------------------------------

def _pair_notes(rows: Rows, i: int, j: int) -> list[str]:
    notes = []
    if rows.split[i] != rows.split[j]:
        notes.append(f"cross-split ({SPLIT_NAMES[rows.split[i]]}/{SPLIT_NAMES[rows.split[j]]}"
                     ": leakage)")
    if rows.labels[i] != rows.labels[j]:
        notes.append("different labels")
    return notes


def table_rows(a: Audit, rows: Rows) -> list[dict[str, Any]]:
    """Every finding as one CSV row (see CSV_HEADER), section by section, ranked."""
    name = rows.label_names
    out = []

    def row(section, rank, i, j=None, score=None, note=""):
        out.append({
            "section": section, "rank": rank, "path": rows.relative[i],
            "label": name[rows.labels[i]], "split": SPLIT_NAMES[rows.split[i]],
            "other_path": "" if j is None else rows.relative[j],
            "other_label": "" if j is None else name[rows.labels[j]],
            "other_split": "" if j is None else SPLIT_NAMES[rows.split[j]],
            "score": "" if score is None else round(float(score), 6), "note": note})

    for r, (i, j) in enumerate(a.exact, 1):
        row("exact duplicate", r, i, j, 1.0, "; ".join(_pair_notes(rows, i, j)))
    for r, (i, j, s) in enumerate(_cross_first(a.near, rows), 1):
        row("near duplicate", r, i, j, s, "; ".join(_pair_notes(rows, i, j)))
    for r, (i, suggested, q, flagged) in enumerate(a.label_issues, 1):
        row("label error", r, i, None, q, f"suggested: {name[suggested]}"
            + ("; flagged by confident learning" if flagged else ""))
    for r, (i, z, s) in enumerate(a.outliers, 1):
        row("outlier", r, i, None, s, f"robust z {z:.2f}")
    return out


def _cross_first(near: list[tuple[int, int, float]], rows: Rows) -> list[tuple[int, int, float]]:
    # leakage first, then different labels, then the rest; most similar first within each
    return sorted(near, key=lambda p: (rows.split[p[0]] == rows.split[p[1]],
                                       rows.labels[p[0]] == rows.labels[p[1]], -p[2]))


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for r in table:  # paths and labels come from folder names: never formulas
        w.writerow([spreadsheet_cell(str(r[c])) if isinstance(r[c], str) else r[c]
                    for c in CSV_HEADER])
    write_atomic(path, buffer.getvalue())


def html_page(a: Audit, rows: Rows, store: Path, top: int = TOP) -> str:
    """One self-contained page (templates/audit.html): each section's findings with linked
    thumbnails."""
    near = _cross_first(a.near, rows)
    leaks = sum(rows.split[i] != rows.split[j] for i, j, _ in near) + sum(
        rows.split[i] != rows.split[j] for i, j in a.exact)

    def section(title: str, items: list, what: str) -> dict[str, Any]:
        # (i, j, cosine similarity or None: the same bytes, notes)
        return {"title": title, "what": what, "found": [
            (item[0], item[1], item[2] if len(item) > 2 else None,
             "; ".join(_pair_notes(rows, item[0], item[1]))) for item in items]}

    shown = {i for pair in [*a.exact[:top], *near[:top]] for i in pair[:2]}
    shown.update(i for i, *_ in [*a.label_issues[:top], *a.outliers[:top]])
    # only the images shown get a thumbnail read
    cells = {i: {"picture": picture(rows.paths[i]), "label": rows.label_names[rows.labels[i]],
                 "split": SPLIT_NAMES[rows.split[i]], "relative": rows.relative[i]}
             for i in shown}
    counts = {"images": plural(len(rows.paths), "image"),
              "classes": plural(len(rows.label_names), "class", "classes"),
              "leaks": f"{plural(leaks, 'pair')} {'crosses' if leaks == 1 else 'cross'} "
                       "the split"}
    return render("audit.html", title=f"featx audit: {store.name}", store=store.name, a=a,
                  top=top, counts=counts, trusted=TRUSTED_ACCURACY,
                  names=rows.label_names, cells=cells, outlier_z=OUTLIER_Z,
                  exact=section("Exact duplicates (same bytes)", a.exact, "exact duplicates"),
                  near=section("Near duplicates (cross-split and different labels first)",
                               near, "near duplicates"))


def run_audit(config: Config, store: Path | None = None, out: str | Path | None = None,
              threshold: float | None = None, top: int | None = None) -> list[Path]:
    """``featx audit``: audit the pipeline's store (or ``store``); write ``audit.html`` and
    ``audit.csv`` into ``out`` (default ``<store>.audit/``). Returns the two paths."""
    from featx.features.plan import check_store_matches, find_store

    if store is None:
        store = find_store(config).path
    else:
        check_store_matches(config, store)
    top = TOP if top is None else top
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    a, rows = audit_store(store, THRESHOLD if threshold is None else threshold,
                          seed=config.dataset.seed, root=dataset_root(config.dataset))
    folder = Path(out) if out else audit_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    page, table = folder / "audit.html", folder / "audit.csv"
    write_csv(table_rows(a, rows), table)
    write_atomic(page, html_page(a, rows, store, top))
    caveat = f", below {TRUSTED_ACCURACY:.2f}: many are the model's own mistakes, not wrong " \
        "labels" if a.caveat else ""
    errors = f"{plural(len(a.label_issues), 'likely label error')} (out-of-fold accuracy " \
        f"{a.accuracy:.3f}{caveat})"
    # a caveat on the result: a warning, shown with -q too
    log.log(logging.WARNING if a.caveat else logging.INFO, "audit of %s: %s, %s, %s, %s",
            plural(len(rows.paths), "image"), plural(len(a.exact), "exact duplicate"),
            plural(len(a.near), "near duplicate"), errors, plural(len(a.outliers), "outlier"))
    return [page, table]
