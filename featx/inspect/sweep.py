"""``featx sweep``: which layer to read, measured.

The classic guidance: on a small dataset like ImageNet read the top of the network; on one
unlike it, a lower convolutional layer. Where that line falls for a dataset is an
experiment: one extraction pass reads every layer asked for together (``backbone.layer =
"L1,L2,..."``: one store, each layer's pooled columns side by side, their ranges recorded as
``layer_columns``), then the pipeline's learners are fitted on each layer's columns alone,
on the pipeline's split, by the classify runner's own functions, and scored on its test rows.
With ``classify.repeats`` = R, on R splits instead (those of classify's repeats: seeds
dataset.seed ...), each layer's score the mean and standard deviation over them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import Config
from featx.core.errors import UsageError
from featx.core.escape import chart_text
from featx.core.files import write_atomic
from featx.core.layout import sweep_dir
from featx.core.log import RESULTS, plural, said_once
from featx.data.dataset import TEST, TRAIN, VAL
from featx.features.backbones import Backbone
from featx.features.extraction import extract
from featx.learn.classification import (
    Splits,
    fit_learner,
    index_splits,
    load_splits,
    resplit,
    scores_on_test,
    split_seeds,
)
from featx.report.charts import png_bytes
from featx.report.metrics import rank_k
from featx.report.pages import png_uri, render
from featx.store.read import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class LayerScore:
    """One learner on one layer's columns.

    Attributes
    ----------
    layer : str
    depth : int, the layer's position in the backbone (0: the input; ``featx layers`` order)
    shape : (h, w, channels) of the layer's map
    columns : (start, end) of its columns in the store's feature rows
    classifier : str
    rank1, rank5 : float on the test rows; rank5 None with 5 classes or fewer. With
        repeated splits: the mean over them
    fit_seconds : float, the grid search and final fit (the mean over repeated splits)
    best_params : dict (of the first split)
    rank1_std, rank5_std : float, the standard deviation (ddof 1) over repeated splits;
        None with one split
    repeats : dict of each split's ``seeds``, ``rank1``, ``rank5`` and ``best_params``
        (lists of R); None with one split
    """

    layer: str
    depth: int
    shape: tuple[int, ...]
    columns: tuple[int, int]
    classifier: str
    rank1: float
    rank5: float | None
    fit_seconds: float
    best_params: dict[str, Any]
    rank1_std: float | None = None
    rank5_std: float | None = None
    repeats: dict[str, list] | None = None

    @property
    def features(self) -> int:
        return self.columns[1] - self.columns[0]


@dataclass
class SweepResult:
    """What :func:`sweep` measured: one :class:`LayerScore` per layer and learner, shallow
    layers first, and where it wrote its table, JSON and plot."""

    dataset: str
    backbone: str
    store: Path
    n_train: int
    n_test: int
    extract_seconds: float  # 0 on a cache hit
    cache_hit: bool
    scores: list[LayerScore]
    files: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # of the splits scored: R of them

    @property
    def repeats(self) -> int:
        return max(len(self.seeds), 1)

    @property
    def page(self) -> Path | None:
        """sweep.html, once written."""
        return next((f for f in self.files if f.suffix == ".html"), None)


def sweep(config: Config, layers: list[str] | None = None, out: str | Path | None = None,
          progress: bool = True) -> SweepResult:
    """Read ``layers`` (default: the end of each stage of the backbone, see
    :meth:`featx.features.backbones.Backbone.stage_ends`) in one extraction pass and score each with
    every learner of ``classify.classifiers``, on the store's split or, with
    ``classify.repeats`` = R > 1, on R splits (:func:`featx.learn.classification.resplit`,
    seeds dataset.seed ...: classify's repeats); write ``sweep.md``, ``sweep.json``,
    ``sweep.png`` and ``sweep.html`` (the page: chart and table, mean ± sd with repeats)
    into ``out`` (default: beside the store, ``<store>.sweep/``) and log the table and
    where it went to :data:`featx.core.log.RESULTS` (``featx sweep`` prints them)."""
    _check(config)
    # The layers' names, depths and shapes: from the architecture alone (random weights,
    # no file read), so that a cache hit loads no weights.
    shapes = Backbone(dataclasses.replace(config.backbone, weights="none", layer=""))
    layers = list(dict.fromkeys(layers)) if layers else shapes.stage_ends()
    info = {name: (shapes.depth(name), tuple(int(d) for d in
                                             shapes.base.get_layer(name).output.shape[1:]))
            for name in layers}
    config = copy.deepcopy(config)
    config.backbone.layer = ",".join(layers)
    extracted = extract(config, progress=progress)
    repeats = config.classify.repeats
    # One split: the store's, features read per split. Several: every row's features once,
    # each split a copy of its rows' (one at a time), as classify's repeats do.
    data = (index_splits if repeats > 1 else load_splits)(config, extracted.path)
    columns = _columns(data, layers, shapes, config)
    seeds = split_seeds(config) if repeats > 1 else []
    scored: dict[tuple[str, str], list[tuple[Any, float, float | None]]] = {}
    with said_once(logging.getLogger("featx.learn.learners")):  # edge warnings: once
        for seed, split in _splits(config, data, seeds):
            for name in layers:
                start, stop = columns[name]
                part = dataclasses.replace(  # in memory: a streaming learner would read
                    split, x={s: x[:, start:stop] for s, x in split.x.items()}, rows={})
                for learner in config.classify.classifiers:
                    fitted = fit_learner(learner, part, config)
                    test = scores_on_test(fitted, part)
                    classes = fitted.model.classes_
                    got = (fitted, rank_k(split.y[TEST], test, classes, 1),
                           rank_k(split.y[TEST], test, classes, 5))
                    scored.setdefault((name, learner), []).append(got)
                    log.info("%s %s: rank-1 %.3f (%d features, %.1fs)%s", name, learner,
                             got[1], stop - start, fitted.fit_seconds,
                             f", split seed {seed}" if seeds else "")
    scores = [_score(name, info[name], columns[name], learner, got, seeds)
              for (name, learner), got in scored.items()]
    result = SweepResult(data.attrs.get("dataset", ""), shapes.spec.name, extracted.path,
                         int(len(data.y[TRAIN]) + len(data.y[VAL])), int(len(data.y[TEST])),
                         0.0 if extracted.cache_hit else extracted.seconds,
                         extracted.cache_hit, scores, seeds=seeds)
    folder = Path(out) if out else sweep_dir(extracted.path)
    result.files = write(result, folder)
    RESULTS.info("%s", table(result))
    RESULTS.info("wrote %s", ", ".join(str(f) for f in result.files if f != result.page))
    RESULTS.info("the page: %s", result.page)
    return result


def _splits(config: Config, data: Splits, seeds: list[int]
            ) -> Iterator[tuple[int | None, Splits]]:
    """(seed, Splits) of each split to score, one at a time: the store's own (seed None)
    with no ``seeds``, else each seed's (features in memory)."""
    if not seeds:
        yield None, data
        return
    with FeatureStore(data.store) as store:
        labels, ok, paths, features = store.labels, store.ok, store.paths, store.features()
    for seed in seeds:
        yield seed, resplit(data, config, seed, labels, ok, paths, features)


def _score(name: str, info: tuple[int, tuple[int, ...]], columns: tuple[int, int],
           learner: str, got: list[tuple[Any, float, float | None]], seeds: list[int]
           ) -> LayerScore:
    """One layer and learner's LayerScore from its (fitted, rank-1, rank-5) on each split."""
    fitted, rank1, rank5 = got[0]
    score = LayerScore(name, info[0], info[1], columns, learner, rank1, rank5,
                       fitted.fit_seconds, fitted.best_params)
    if not seeds:
        return score
    rank1s, rank5s = [r1 for _, r1, _ in got], [r5 for _, _, r5 in got]
    return dataclasses.replace(
        score, rank1=float(np.mean(rank1s)), rank1_std=_std(rank1s),
        rank5=None if rank5 is None else float(np.mean(rank5s)),
        rank5_std=None if rank5 is None else _std(rank5s),
        fit_seconds=float(np.mean([f.fit_seconds for f, _, _ in got])),
        repeats={"seeds": list(seeds), "rank1": rank1s, "rank5": rank5s,
                 "best_params": [f.best_params for f, _, _ in got]})


def _std(values: list[float]) -> float:
    """The standard deviation over the splits, ddof 1 as classify --repeats reports it."""
    return float(np.std(values, ddof=1))


def _check(config: Config) -> None:
    c = config.classify
    if config.combine.pipelines:
        raise UsageError(f"pipeline {config.name!r} has a [combine] section: sweep one "
                         "backbone's pipeline")
    if c.train_features != "plain" or c.test_features != "plain":
        raise UsageError("featx sweep reads plain features: set classify.train_features and "
                         "classify.test_features to \"plain\"")
    if config.backbone.pooling == "none":
        raise UsageError("featx sweep joins several layers: pooling \"none\" cannot; use avg, "
                         "max or flatten")
    if c.ensemble:
        log.warning("featx sweep scores each learner alone (classify.ensemble ignored)")


def _columns(data: Splits, layers: list[str], shapes: Backbone, config: Config
             ) -> dict[str, tuple[int, int]]:
    """Each layer's (start, end) columns, as the store records them; a store of one layer,
    or one written before stores recorded them, gets them from the architecture."""
    recorded = data.attrs.get("layer_columns")
    if recorded:
        columns = {name: (int(a), int(b)) for name, a, b in recorded}
    else:
        as_read = dataclasses.replace(config.backbone, weights="none")
        columns = {name: (a, b) for name, a, b in Backbone(as_read).layer_columns()}
    width = int(np.prod(data.attrs.get("feature_shape", [0])))
    if sorted(columns) != sorted(layers) or max(b for _, b in columns.values()) != width:
        raise UsageError(f"{data.store}: its columns {columns} are not those of the layers "
                         f"{', '.join(layers)} ({width} features)")
    return columns


# --- the table, the plot ----------------------------------------------------------------------

COLUMNS = ("layer", "depth", "map", "features", "classifier", "rank-1", "rank-5", "fit s")
TEXT_COLUMNS = (0, 2, 4)  # left-aligned; the numbers right-aligned


def rows(result: SweepResult) -> list[list[str]]:
    """The table's cells, one row per layer and learner (rank-1 and rank-5 as mean ± sd
    over repeated splits)."""
    return [[s.layer, str(s.depth), "x".join(map(str, s.shape)), f"{s.features:,}",
             s.classifier, _score_text(s.rank1, s.rank1_std), _score_text(s.rank5, s.rank5_std),
             f"{s.fit_seconds:.1f}"] for s in result.scores]


def _score_text(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def split_rows(result: SweepResult) -> tuple[list[str], list[list[str]]]:
    """With repeated splits, the rank-1 of each (columns: layer, classifier, one per seed)
    and its rows; no rows with one split."""
    head = ["layer", "classifier", *(f"seed {seed}" for seed in result.seeds)]
    return head, [[s.layer, s.classifier, *(f"{r:.3f}" for r in s.repeats["rank1"])]
                  for s in result.scores if s.repeats]


def _heading(r: SweepResult) -> str:
    how = "a cache hit" if r.cache_hit else f"{r.extract_seconds:.1f} s"
    layers = plural(len(dict.fromkeys(s.layer for s in r.scores)), "layer")
    said = (f"{r.dataset}, {r.backbone}: {layers} from one extraction pass ({how}); "
            f"{r.n_train} training, {plural(r.n_test, 'test image')}")
    if r.seeds:
        said += (f"; scores: mean ± sd over {r.repeats} splits (seeds "
                 f"{', '.join(map(str, r.seeds))})")
    return said


def table(result: SweepResult) -> str:
    """The plain-text table ``featx sweep`` prints."""
    cells = [list(COLUMNS), *rows(result)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i in TEXT_COLUMNS else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells]
    return "\n".join([_heading(result), *lines])


def markdown(result: SweepResult) -> str:
    """The table as Markdown (the README's form)."""
    align = ["---" if i in TEXT_COLUMNS else "---:" for i in range(len(COLUMNS))]
    lines = [f"| {' | '.join(r)} |" for r in [list(COLUMNS), align, *rows(result)]]
    return "\n".join([_heading(result), "", *lines]) + "\n"


def sweep_png(result: SweepResult) -> bytes:
    """Rank-1 against depth, one line per learner (with repeated splits: the mean, error bars
    of one standard deviation): the layers evenly spaced, shallow to deep, each labelled with
    its depth, feature count and (first learner's) fit time."""
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(s.layer for s in result.scores))
    learners = list(dict.fromkeys(s.classifier for s in result.scores))
    fig = Figure(figsize=(max(6.0, 1.15 * len(layers) + 1.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    for learner in learners:
        mine = {s.layer: s for s in result.scores if s.classifier == learner}
        at = [i for i, name in enumerate(layers) if name in mine]
        if result.seeds:
            ax.errorbar(at, [mine[layers[i]].rank1 for i in at],
                        yerr=[mine[layers[i]].rank1_std or 0.0 for i in at], marker="o",
                        capsize=4, label=chart_text(learner))
        else:
            ax.plot(at, [mine[layers[i]].rank1 for i in at], marker="o",
                    label=chart_text(learner))
        for i in at:
            ax.annotate(f"{mine[layers[i]].rank1:.3f}", (i, mine[layers[i]].rank1),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    first = {s.layer: s for s in result.scores if s.classifier == learners[0]}
    ax.set_xticks(range(len(layers)), [
        f"{chart_text(name)}\ndepth {first[name].depth}\n{first[name].features:,} f., "
        f"{first[name].fit_seconds:.1f} s" for name in layers], fontsize=7)
    low = min(s.rank1 - (s.rank1_std or 0.0) for s in result.scores)
    high = max(s.rank1 + (s.rank1_std or 0.0) for s in result.scores)
    ax.set_ylim(max(0.0, low - 0.08), min(1.04, high + 0.05))
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xlabel(f"layer of {chart_text(result.backbone)}, shallow to deep (depth: its "
                  "number in the network; f.: features after pooling; s: "
                  f"{chart_text(learners[0])} fit time)",
                  fontsize=8)
    ax.set_ylabel("rank-1 on the test images" + (
        f"\n(mean ± sd, {result.repeats} splits)" if result.seeds else ""))
    ax.grid(alpha=0.3)
    if len(learners) > 1:
        ax.legend(fontsize=8)
    ax.set_title(chart_text(_heading(result)), fontsize=8)
    return png_bytes(fig, dpi=90)


REPEATED = ("rank1_std", "rank5_std", "repeats")  # LayerScore's fields of repeated splits


def to_json(result: SweepResult) -> dict[str, Any]:
    """sweep.json: with one split as before repeats were, with several also ``repeats``
    and ``seeds``, and each layer's standard deviations and scores on each split."""
    layers = [{k: v for k, v in dataclasses.asdict(s).items()
               if result.seeds or k not in REPEATED} | {"features": s.features}
              for s in result.scores]
    repeats = {"repeats": result.repeats, "seeds": result.seeds} if result.seeds else {}
    return {"dataset": result.dataset, "backbone": result.backbone,
            "store": str(result.store), "n_train": result.n_train, "n_test": result.n_test,
            "extract_seconds": result.extract_seconds, "cache_hit": result.cache_hit,
            **repeats, "layers": layers}


def html_page(result: SweepResult, png: bytes) -> str:
    """The self-contained page (templates/sweep.html): the plot (``png``, inlined) above
    the table; with repeated splits, also the rank-1 of each split."""
    split_head, split_cells = split_rows(result)
    return render("sweep.html", title=f"featx sweep: {result.dataset}, {result.backbone}",
                  dataset=result.dataset, backbone=result.backbone, heading=_heading(result),
                  uri=png_uri(png), columns=COLUMNS, rows=rows(result),
                  right=[i for i in range(len(COLUMNS)) if i not in TEXT_COLUMNS],
                  repeats=result.repeats, split_columns=split_head, split_rows=split_cells,
                  split_right=list(range(2, len(split_head))))


def write(result: SweepResult, folder: Path) -> list[Path]:
    """``sweep.md``, ``sweep.json``, ``sweep.png`` and ``sweep.html`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    png = sweep_png(result)
    files = {folder / "sweep.md": markdown(result).encode(),
             folder / "sweep.json": json.dumps(to_json(result), indent=2, default=str).encode(),
             folder / "sweep.png": png, folder / "sweep.html": html_page(result, png).encode()}
    for path, data in files.items():
        write_atomic(path, data)
    return list(files)
