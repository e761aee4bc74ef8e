"""The Python face of featx: the same functions as the command line, returning objects.

    import featx
    store = featx.extract("pipelines/flowers17.toml", data="path/to/flowers")
    X_train, y_train = store.split("train")
    X_test, y_test = store.split("test")

Overrides are the command line's flags (``data``, ``weights``, ``input_size``, ...) as
keyword arguments, plus ``set=["section.field=value", ...]`` for any other field; the errors
these functions raise name them so (``weights=``, not ``--weights``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from featx.core.config import SHORTHANDS, Config
from featx.core.errors import ConfigError, DatasetError, FeatxError
from featx.core.escape import html_text, terminal
from featx.core.log import plural, shown
from featx.data.dataset import SPLIT_NAMES
from featx.report import runs as run_table

if TYPE_CHECKING:
    import pandas

    from featx.inspect.sweep import SweepResult
    from featx.learn.deploy import Exported

# A notebook's one-line reprs stay within this many characters.
REPR_WIDTH = 120
_F = TypeVar("_F", bound=Callable[..., Any])


# --- errors in the Python face's words ------------------------------------------------------

# ``--set ITEM`` (up to a space, ")", ";" or ", "); ``--flag (kw=...)`` (a message that says
# both); ``--flag VALUE`` where VALUE is a placeholder (PATH, R) or quoted; any other ``--flag``
_FLAG = re.compile(r"--set (?P<item>(?:[^\s,;)]|,(?=\S))+)|--(?P<flag>[a-z][a-z0-9-]*)"
                   r"(?: \((?P<given>(?P<kw>[a-z_]+)=[^)]*)\)"
                   r"| (?P<value>[A-Z][A-Z_]*\b|'[^'\n]*'))?")
# a command line shown as one (``featx extract --weights FILE ...``): left as it is
_SHELL = re.compile(r"\bfeatx [a-z][a-z-]*\b")


def _switches() -> set[str]:
    """The SHORTHANDS over a true/false field: their flags take no value (``strict=True``)."""
    out = set()
    for keyword, dotted in SHORTHANDS.items():
        owner: Any = Config()
        for part in dotted.split("."):
            owner = getattr(owner, part)
        if isinstance(owner, bool):
            out.add(keyword)
    return out


def python_words(message: str, keywords: set[str], switches: set[str]) -> str:
    """``message`` with the command-line flags it names written as the keyword arguments of
    the Python face: ``--weights PATH`` -> ``weights=PATH``, ``--input-size`` ->
    ``input_size=``, ``--strict`` -> ``strict=True``, ``--no-progress`` -> ``progress=False``,
    ``--set a.b=c`` -> ``set=["a.b=c"]``. Flags that are no keyword of ``keywords``, and
    those in a command line the message shows (``featx extract --weights ...``), stay."""
    def keyword(m: re.Match) -> str:
        clause = re.split(r"[(;,:\n]", message[:m.start()])[-1]
        if _SHELL.search(clause):
            return m[0]
        if m["item"] is not None:
            return f"set={json.dumps([m['item']])}"
        name = m["flag"].replace("-", "_")
        given = f" ({m['given']})" if m["given"] else ""
        if name.startswith("no_") and name[3:] in switches:
            name, said = name[3:], f"{name[3:]}=False"
        elif name not in keywords:
            return m[0]
        else:
            said = f"{name}=True" if name in switches else f"{name}={m['value'] or ''}"
        if m["kw"] == name:  # "--trust (trust=True)": the message said it already
            return m["given"]
        if m["value"] and said.endswith(("True", "False")):
            said += f" {m['value']}"
        return said + given

    return _FLAG.sub(keyword, message)


def _python_errors(function: _F) -> _F:
    """``function`` raising its FeatxErrors with the flags they name as its keywords
    (:func:`python_words`): the same exception re-raised, its message rewritten, so that its
    class, attributes, cause and traceback are what they were (a new exception would start
    its traceback here, and lose them)."""
    signature = inspect.signature(function)
    keywords = {*SHORTHANDS, *(n for n, p in signature.parameters.items()
                               if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))}
    switches = _switches() | {n for n, p in signature.parameters.items()
                              if isinstance(p.default, bool)}

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except FeatxError as e:
            if e.args and isinstance(e.args[0], str):
                e.args = (python_words(e.args[0], keywords, switches), *e.args[1:])
            raise

    return wrapper  # type: ignore[return-value]


# --- one-line and HTML reprs ----------------------------------------------------------------

def _squeeze(*parts: str | tuple[str], width: int = REPR_WIDTH) -> str:
    """One line of ``parts`` (a 1-tuple: a name, escaped and shortened in the middle, the
    longest first, until the line fits ``width``; a plain string: kept whole)."""
    texts = [terminal(p[0]) if isinstance(p, tuple) else p for p in parts]
    names = [i for i, p in enumerate(parts) if isinstance(p, tuple)]
    while names and sum(map(len, texts)) > width:
        i = max(names, key=lambda i: len(texts[i]))
        if len(texts[i]) <= 8:
            break
        texts[i] = run_table.shorten(texts[i], max(8, len(texts[i]) -
                                                   (sum(map(len, texts)) - width)))
    return "".join(texts)


def _html_fields(caption: str, fields: Iterable[tuple[str, Any]]) -> str:
    """A two-column HTML table, ``caption`` above: every text escaped."""
    rows = "".join(f"<tr><th style='text-align:left'>{html_text(k)}</th>"
                   f"<td style='text-align:left'>{html_text(v)}</td></tr>" for k, v in fields)
    return f"<table><caption>{html_text(caption)}</caption>{rows}</table>"


def _html_table(caption: str, headers: list[str], rows: Iterable[list[Any]]) -> str:
    """An HTML table of ``rows`` under ``headers``, ``caption`` above: every text escaped."""
    head = "".join(f"<th>{html_text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><caption>{html_text(caption)}</caption><tr>{head}</tr>{body}</table>"


def _shape(shape: Iterable[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _lines_shown(progress: bool, verbose: bool = False) -> contextlib.AbstractContextManager:
    """featx's log lines during an API call, on stderr as the command line shows them: its
    progress lines (each result's summary line among them) with ``progress``, its debug lines
    too with ``verbose``, else warnings only (featx.core.log)."""
    return shown(logging.DEBUG if verbose else logging.INFO if progress else logging.WARNING)


@_python_errors
def make_config(pipeline: str | os.PathLike | Config | None = None,
                set: list[str] | tuple[str, ...] = (), **overrides: Any) -> Config:
    """A validated :class:`~featx.core.config.Config` from a pipeline file (or a Config, copied;
    or the defaults), ``section.field=value`` items and keyword overrides."""
    if isinstance(pipeline, Config):
        config = Config.from_dict(pipeline.to_dict(), source="config")
        config.given = dict(pipeline.given)  # what its user set, not every field copied
        for item in set:
            config.set(item)
    else:
        config = Config.load(pipeline, list(set))
    for name, value in overrides.items():
        if name not in SHORTHANDS:
            raise ConfigError(f"unknown keyword {name!r} (valid: {', '.join(SHORTHANDS)}; any "
                              "other field: set=['section.field=value'])")
        if value is not None:
            config.assign(SHORTHANDS[name], value, "keyword")
    return config


class Store:
    """A feature store, read on demand (no file stays open between calls).

    Parameters
    ----------
    path : str or os.PathLike
        The store's ``.h5`` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        """One line: the file (cut in the middle if long), dataset, rows, classes, features,
        backbone; what went wrong if the file cannot be read."""
        try:
            facts = self._facts()
        except (FeatxError, OSError) as e:  # the reason, without the path again
            reason = str(e).replace(f"{self.path}: ", "").replace(str(self.path), "this path")
            return _squeeze("Store('", (str(self.path),), "'): not readable: ", (reason,))
        return _squeeze("Store('", (str(self.path),), "'): ", (str(facts["dataset"]),),
                        f", {plural(facts['rows'], 'row')}, "
                        f"{plural(len(facts['classes']), 'class', 'classes')}, "
                        f"{facts['features']} features of ", (str(facts["backbone"]),),
                        f" {facts['pooling']}")

    def _repr_html_(self) -> str:
        """The store as a small HTML table (a notebook shows it)."""
        try:
            facts = self._facts()
        except (FeatxError, OSError) as e:
            return _html_fields("featx Store", [("path", self.path), ("not readable", e)])
        classes = facts["classes"]
        names = ", ".join(classes[:10]) + (f", ... ({len(classes)})" if len(classes) > 10
                                           else "")
        return _html_fields("featx Store", [
            ("path", self.path), ("dataset", facts["dataset"]), ("rows", facts["rows"]),
            ("classes", names), ("features", facts["features"]),
            ("backbone", f"{facts['backbone']}, layer {facts['layer']}, {facts['pooling']} "
                         f"pooling, {facts['input_size']} px, weights {facts['weights']}"),
            ("key", facts["key"])])

    def _facts(self) -> dict[str, Any]:
        with self._open() as store:
            a = store.attrs
            return {"dataset": a.get("dataset"), "rows": len(store),
                    "classes": store.label_names, "features": _shape(store.feature_shape),
                    **{k: a.get(k) for k in ("backbone", "layer", "pooling", "input_size",
                                             "weights", "key")}}

    def _open(self):
        from featx.store.read import FeatureStore

        return FeatureStore(self.path)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the readable images of one split.

        Parameters
        ----------
        name : {"train", "val", "test"}

        Returns
        -------
        X : ndarray of shape (n_rows, n_features), float32
        y : ndarray of shape (n_rows,), int32, indices into :attr:`label_names`
        """
        if name not in SPLIT_NAMES:
            raise ConfigError(f"split {name!r}: valid splits are {', '.join(SPLIT_NAMES)}")
        with self._open() as store:
            rows = np.flatnonzero((store.split == SPLIT_NAMES.index(name)) & store.ok)
            return store.features(rows), store.labels[rows]

    def split_paths(self, name: str) -> list[str]:
        """Image paths (relative to the dataset root) of :meth:`split`'s rows, in order."""
        with self._open() as store:
            rows = np.flatnonzero((store.split == SPLIT_NAMES.index(name)) & store.ok)
            paths = store.paths
            return [paths[i] for i in rows]

    @property
    def paths(self) -> list[str]:
        """Every row's image path, relative to the dataset root, shape (n_rows,)."""
        with self._open() as store:
            return store.paths

    @property
    def labels(self) -> np.ndarray:
        """Every row's label, int32 of shape (n_rows,)."""
        with self._open() as store:
            return store.labels

    @property
    def label_names(self) -> list[str]:
        """Class names, indexed by label."""
        with self._open() as store:
            return store.label_names

    @property
    def attrs(self) -> dict[str, Any]:
        """Everything recorded about the store: settings, key, versions, pipeline."""
        with self._open() as store:
            return store.attrs

    def __len__(self) -> int:
        with self._open() as store:
            return len(store)

    def iter_chunks(self, rows: np.ndarray | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(row indices, features)`` a chunk at a time, for stores larger than memory:
        features of shape (n_chunk_rows, *feature_shape), float32, checked as read."""
        with self._open() as store:
            yield from store.iter_chunks(rows)


@_python_errors
def extract(pipeline: str | os.PathLike | Config | None = None, *,
            set: list[str] | tuple[str, ...] = (), progress: bool = True,
            **overrides: Any) -> Store:
    """Make sure the feature store of a pipeline exists and matches its images; return it.

    Parameters
    ----------
    pipeline : path to a pipeline TOML file, a Config, or None (defaults)
    set : list of "section.field=value"
    progress : bool, default=True
        Show the progress bar (a widget in a notebook) and featx's progress lines.
    **overrides
        The command line's flags: data, manifest, backbone, weights, layer, pooling,
        input_size, batch_size, cache_dir, engine, strict, ...

    Returns
    -------
    Store
        The plain store (variant stores the pipeline asks for are extracted too).
    """
    from featx.features.extraction import extract_all

    config = make_config(pipeline, set, **overrides)
    with _lines_shown(progress):
        results = list(extract_all(config, progress=progress))
    return Store(results[0].path)


@dataclass
class ClassifyResult:
    """One classifier's result on a store's test rows.

    Attributes
    ----------
    classifier : str
    estimator : fitted scikit-learn estimator, or None (a [combine] pipeline saves none)
    rank1, rank5 : float; rank5 is None where it means nothing (5 classes or fewer)
    per_class : dict of class name -> precision, recall, f1, support
    confusion : ndarray of shape (n_classes, n_classes), rows true, columns predicted
    label_names : list of str
    files : list of Path, everything written (reports, charts, the model)
    record : dict, the whole JSON result
    """

    classifier: str
    estimator: Any
    rank1: float
    rank5: float | None
    per_class: dict[str, dict[str, float]]
    confusion: np.ndarray
    label_names: list[str]
    files: list[Path]
    record: dict[str, Any] = field(repr=False)

    def _facts(self) -> dict[str, Any]:
        r = self.record
        rank1 = f"{self.rank1:.3f}" + (f" ± {r['rank1_std']:.3f}"
                                       if r.get("rank1_std") is not None else "")
        return {"dataset": r.get("dataset") or "-", "rank1": rank1,
                "rank5": "-" if self.rank5 is None else f"{self.rank5:.3f}",
                "run": r.get("run") or "-",
                "name": (r.get("classify") or {}).get("run_name") or ""}

    def __repr__(self) -> str:
        """One line: classifier, dataset, rank-1 (± sd), rank-5, classes, the run (its name
        where it has one) — not the 2 KB of per-class scores and files (those: attributes)."""
        f = self._facts()
        rank5 = f", rank-5 {f['rank5']}" if self.rank5 is not None else ""
        return _squeeze("ClassifyResult(", (self.classifier,), " on ", (str(f["dataset"]),),
                        f": rank-1 {f['rank1']}{rank5}, "
                        f"{plural(len(self.label_names), 'class', 'classes')}; run ",
                        (f["name"] or f["run"],), ")")

    def _repr_html_(self) -> str:
        """The result as a small HTML table (a notebook shows it): the scores, the classes
        recalled worst, the run and the model file."""
        f = self._facts()
        worst = sorted(self.per_class.items(), key=lambda kv: kv[1].get("recall", 0.0))[:3]
        return _html_fields(f"featx ClassifyResult: {self.classifier}", [
            ("dataset", f["dataset"]), ("rank-1", f["rank1"]), ("rank-5", f["rank5"]),
            ("test rows", self.record.get("n_test", "-")),
            ("classes", len(self.label_names)),
            ("lowest recall", ", ".join(f"{k} {v.get('recall', 0.0):.3f}" for k, v in worst)),
            ("run", f"{f['name']} ({f['run']})" if f["name"] else f["run"]),
            ("model", self.model_file or "-")])

    @property
    def model_file(self) -> Path | None:
        """The saved model (for :func:`load_model` and ``featx predict``), if one was."""
        return next((f for f in self.files if f.name == self.record.get("model")), None)


def run_classify(config: Config, store: Path | None = None) -> list[dict[str, Any]]:
    """``featx classify`` for any pipeline: a [combine] one by featx.learn.combine, any other by
    featx.learn.classification. Returns the result records (the JSON written for each); their
    summary lines go to featx.core.log.RESULTS as each is written."""
    from featx.learn.classification import classify as classify_store
    from featx.learn.combine import classify_combined

    if config.combine.pipelines:
        if store is not None:
            raise ConfigError("a [combine] pipeline reads its members' stores: drop --store")
        return classify_combined(config)
    return classify_store(config, store)


@_python_errors
def classify(pipeline: str | os.PathLike | Config | None = None, *,
             store: str | os.PathLike | Store | None = None,
             set: list[str] | tuple[str, ...] = (), progress: bool = True,
             verbose: bool = False, **overrides: Any) -> list[ClassifyResult]:
    """Fit the pipeline's classifiers on a store's training rows, score them on its test
    rows, write the reports into a new run folder; return the results.

    Parameters
    ----------
    pipeline : path to a pipeline TOML file, a Config, or None (defaults)
    store : a store (or its path) to use instead of the one the pipeline's data names
    set : list of "section.field=value"
    progress : bool, default=True
        Show each classifier's summary line as it is done (as ``featx: ...`` lines on
        stderr) and featx's other progress lines.
    verbose : bool, default=False
        Also featx's debug lines.
    **overrides
        The command line's flags (data, classifiers, cache_dir, out, quick, ...), and
        ``name``: a name for the run (``featx classify --name``), recorded in its results,
        shown by :func:`runs` and taken by ``featx runs --compare``.

    Returns
    -------
    list of ClassifyResult, one per classifier (and the ensemble, if asked)
    """
    from featx.learn import modelfile

    config = make_config(pipeline, set, **overrides)
    path = Path(store.path if isinstance(store, Store) else store) if store else None
    with _lines_shown(progress, verbose):
        records = run_classify(config, path)
    out = []
    for r in records:
        result = ClassifyResult(r["classifier"], None, r["rank1"], r.get("rank5"),
                                r["per_class"], np.asarray(r["confusion"]),
                                list(r["per_class"]), [Path(f) for f in r.get("files", [])], r)
        if result.model_file:  # the estimator as saved (it round-trips: tests/test_modelfile)
            result.estimator = modelfile.load(result.model_file)["model"]
        out.append(result)
    return out


@_python_errors
def sweep(pipeline: str | os.PathLike | Config | None = None, *,
          layers: list[str] | tuple[str, ...] | None = None, out: str | os.PathLike | None = None,
          set: list[str] | tuple[str, ...] = (), progress: bool = True, verbose: bool = False,
          **overrides: Any) -> SweepResult:
    """Which layer to read: extract ``layers`` of the pipeline's backbone in one pass (one
    store), fit the pipeline's classifiers on each layer's features alone and score them on
    its test rows, as ``featx sweep`` does.

    Parameters
    ----------
    pipeline : path to a pipeline TOML file, a Config, or None (defaults)
    layers : layer names (default: the end of each stage of the backbone and its last layer,
        :meth:`featx.features.backbones.Backbone.stage_ends`)
    out : folder for sweep.md, .json, .png and .html (default: ``<store>.sweep/``)
    set : list of "section.field=value"
    progress : bool, default=True
        Show the extraction's progress bar, featx's progress lines and the table.
    verbose : bool, default=False
        Also featx's debug lines.
    **overrides
        The command line's flags (data, weights, classifiers, cache_dir, quick, ...).

    Returns
    -------
    featx.inspect.sweep.SweepResult
        ``scores``: one LayerScore (layer, depth, shape, columns, classifier, rank1, rank5,
        fit_seconds) per layer and classifier, shallow layers first.
    """
    from featx.features.plan import settle
    from featx.inspect.sweep import sweep as run_sweep

    config = make_config(pipeline, set, **overrides)
    with _lines_shown(progress, verbose):
        config = settle(config, ignore=("backbone.layer",))  # as featx sweep: the one store's
        return run_sweep(config, list(layers) if layers else None, out, progress=progress)


class RunTable:
    """:func:`runs`' table where pandas is not installed: ``len()``, iteration over the rows
    (dicts keyed by :attr:`columns`), ``str()`` the table ``featx runs`` prints, and an HTML
    table in a notebook.

    Attributes
    ----------
    columns : list of str, those of featx.report.runs.COLUMNS, then ``best`` and ``path``
    rows : list of dict, one per result, best first (as sorted)
    """

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.columns = [*run_table.COLUMNS, "best", "path"]
        self.rows = [{c: r.get(c) for c in self.columns} for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __str__(self) -> str:
        return run_table.brief_table(self.rows)

    def __repr__(self) -> str:
        """One line: how many results and runs, and the first row (the best, as sorted)."""
        head = (f"RunTable({plural(len(self), 'result')} from "
                f"{plural(run_table.count_runs(self.rows), 'run')}")
        if not self.rows:
            return head + ")"
        top = self.rows[0]
        return _squeeze(head, f"; first: rank-1 {run_table.brief_cells(top)['rank1']}, ",
                        (str(top["classifier"]),), " on ", (str(top["dataset"]),), ", ",
                        (str(top["backbone"]),), ")")

    def _repr_html_(self) -> str:
        """The columns ``featx runs`` prints, as an HTML table (a notebook shows it)."""
        return _html_table(f"featx runs: {plural(len(self), 'result')}",
                           [*run_table.BRIEF.values(), "best"],
                           (list(run_table.brief_cells(r).values()) for r in self.rows))


@_python_errors
def runs(out: str | os.PathLike | Iterable[str | os.PathLike] | None = None, *,
         cache_dir: str | os.PathLike | None = None, dataset: str | None = None,
         where: Mapping[str, Any] | Iterable[str] = (), latest: bool = False,
         sort: str = "rank1") -> pandas.DataFrame | RunTable:
    """Every classification result, one row each, best rank-1 first: the rows ``featx runs``
    prints, with every column (``featx runs --wide``, as its ``--csv`` writes them).

    Parameters
    ----------
    out : a folder (or result file), or several, searched besides the cache (``out=`` folders
        of :func:`classify`)
    cache_dir : the cache whose ``**/*.runs/`` folders are searched (default: as for
        :func:`extract`)
    dataset : only the results on this dataset
    where : only the rows where every column has the value given: ``{"classifier":
        "logreg"}`` or ``["classifier=logreg"]`` (values as printed or as recorded)
    latest : only the newest run's results
    sort : any column (featx.report.runs.COLUMNS); default rank1, best first

    Returns
    -------
    pandas.DataFrame where pandas is installed, else :class:`RunTable`
        One row per result; columns featx.report.runs.COLUMNS (numbers as recorded, None
        where a result has none), ``best`` (the best rank-1 of its dataset) and ``path``
        (the result's JSON file).
    """
    from featx.core.config import cache_path

    dirs = [] if out is None else [out] if isinstance(out, (str, os.PathLike)) else list(out)
    conditions = [f"{k}={v}" for k, v in where.items()] if isinstance(where, Mapping) \
        else list(where)
    with _lines_shown(progress=False):  # a result file that cannot be read: a warning
        rows = run_table.collect(cache_path(str(cache_dir or "")), dirs, dataset, conditions,
                                 latest, sort)
    table = RunTable(rows)
    try:
        import pandas
    except ImportError:  # pandas is no dependency of featx
        return table
    return pandas.DataFrame(table.rows, columns=table.columns)


@_python_errors
def load_model(path: str | os.PathLike, *, weights: str | None = None,
               trust: bool = False) -> Model:
    """A saved classifier (a ``.skops`` file, or the best model of a run folder) with the
    backbone that computes its features.

    Parameters
    ----------
    path : a model file or a run folder
    weights : the weights file where it is on this machine, if not where it was
    trust : bool, default=False
        Also load a pickle/joblib model, which can run code: only files you trust.
    """
    from featx.learn.predict import Predictor

    return Model(Predictor.load(path, weights=weights, trust=trust))


@_python_errors
def export_model(model: str | os.PathLike, *, format: str, out: str | os.PathLike,
                 int8: bool = False, weights: str | None = None, trust: bool = False,
                 progress: bool = True) -> Exported:
    """Write a saved classifier as one model file that runs without featx, as ``featx
    export-model`` does: uint8 RGB images (N, S, S, 3) already at the backbone's input size
    -> the scores ``featx predict`` gives (N, n_classes), the labels stored in the file.

    Parameters
    ----------
    model : a model file (.skops) or a run folder (its best rank-1 model)
    format : {"keras", "savedmodel", "onnx", "openvino", "litert"}
    out : the file to write (.keras, .onnx, .xml, .tflite) or a new folder (savedmodel)
    int8 : bool, default=False
        litert and openvino: post-training int8 quantisation, calibrated on the model's own
        training images.
    weights : the weights file where it is on this machine, if not where it was
    trust : bool, default=False
        Also load a pickle/joblib model, which can run code: only files you trust.
    progress : bool, default=True
        Show featx's progress lines.

    Returns
    -------
    featx.learn.deploy.Exported
        ``path``, ``format``, ``int8``, ``bytes``, ``labels``, ``metadata`` (what the file
        records), ``ms_per_image`` (int8: single-image time in its runtime).
    """
    from featx.learn.deploy import export_model as export

    with _lines_shown(progress):
        return export(model, format, out, int8=int8, weights=weights, trust=trust)


class Model:
    """Predict from images: a path or a list of paths, PIL images, or RGB pixels of 0..255
    values, (N, H, W, 3) or (H, W, 3), uint8 or floats (as keras' img_to_array gives), read
    and resized exactly as extraction reads them; anything else is refused, never cast
    (:func:`featx.features.transformer.as_images`)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.classes_: list[str] = predictor.classes  # column order of predict_proba

    def predict_proba(self, images: Any) -> np.ndarray:
        """ndarray of shape (N, n_classes): probabilities (softmax of decision values for a
        learner without predict_proba), columns in ``classes_`` order."""
        return self.predictor.predict_proba(self._features(images))

    def predict(self, images: Any) -> list[str]:
        """The best class name of each image, list of length N."""
        proba = self.predict_proba(images)
        return [self.classes_[i] for i in proba.argmax(axis=1)]

    def top_k(self, images: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` best (class name, score) of each image, best first."""
        proba = self.predict_proba(images)
        best = np.argsort(-proba, axis=1, kind="stable")[:, :min(k, proba.shape[1])]
        return [[(self.classes_[j], float(row[j])) for j in b] for row, b in zip(proba, best)]

    def _features(self, images: Any) -> np.ndarray:
        from featx.features.transformer import as_images, pixel_features

        kind, items = as_images(images)
        if kind == "paths":
            x, ok, reasons = self.predictor.features(items)
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                raise DatasetError(f"{plural(int((~ok).sum()), 'image')} could not be read, "
                                   f"e.g. {items[bad]}: {reasons.get(bad, 'unreadable')}")
            return x
        return pixel_features(self.predictor.backbone, items, 32, self.predictor.tencrop)
