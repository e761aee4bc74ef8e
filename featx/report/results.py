"""The files of a classification result: JSON, Markdown, the HTML page and its charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featx.core.escape import markdown_cell
from featx.core.files import write_atomic
from featx.data.images import READ_POLICY
from featx.report.charts import (
    RECALL_BANDS,
    chart_title,
    confusion_png,
    monitor_png,
    recall_png,
)
from featx.report.metrics import (
    CLASSES,
    FIRST,
    SCORES,
    TOP_PAIRS,
    confused_pairs,
    scope,
    seeds_text,
)
from featx.report.pages import picture, png_uri, render


def _params(result: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('__')[-1]}={v}" for k, v in result["best_params"].items())


def summary_line(name: str, result: dict[str, Any]) -> str:
    params = _params(result)
    rank5 = _num(result["rank5"], na="n/a")  # n/a: k at or above the number of classes
    if result.get("repeats"):  # mean ± standard deviation over the splits
        n = len(result["repeats"]["seeds"])
        rank1 = f"{result['rank1']:.3f} ± {result['rank1_std']:.3f}"
        if result["rank5"] is not None:
            rank5 = f"{rank5} ± {result['rank5_std']:.3f}"
        return (f"{name:<12} rank-1 {rank1}  rank-5 {rank5}  over {n} splits "
                f"(first split: {_params(result)}; fit {_num(result.get('fit_seconds'), 1)}s; "
                f"{result['n_train']} train / {result['n_test']} test)")
    cv = "val" if cv_name(result) == "validation accuracy" else "cv"
    return (f"{name:<12} rank-1 {result['rank1']:.3f}  rank-5 {rank5}  "
            f"({params}; {cv} {_num(result.get('cv_score'))}; "
            f"fit {_num(result.get('fit_seconds'), 1)}s; "
            f"{result['n_train']} train / {result['n_test']} test)")


def cv_name(result: dict[str, Any]) -> str:
    """What a result's ``cv_score`` is: "cross-validated accuracy" unless the result names it
    (``cv_score_name``: a fine-tuning's is its "validation accuracy")."""
    return result.get("cv_score_name") or "cross-validated accuracy"


def report_paths(stem: Path, monitor: bool = False) -> dict[str, Path]:
    """The files :func:`write_reports` writes, by kind: json, md, html, confusion, recall,
    and (``monitor``: a fine-tuning's result) monitor."""
    stem = Path(stem)
    paths = {"json": beside(stem, ".json"), "md": beside(stem, ".md"),
             "html": beside(stem, ".html"), "confusion": beside(stem, "-confusion.png"),
             "recall": beside(stem, "-recall.png")}
    if monitor:
        paths["monitor"] = beside(stem, "-monitor.png")
    return paths


def write_reports(result: dict[str, Any], stem: Path) -> dict[str, Path]:
    """Write ``stem.json`` (everything), ``stem.md``, ``stem.html`` (self-contained: the
    charts are embedded) and the charts ``stem-confusion.png`` and ``stem-recall.png``, each
    atomically, the JSON last (`featx runs` lists a result once its JSON is there).
    Returns the paths by kind: json, md, html, confusion, recall."""
    paths = report_paths(stem, monitor=bool(result.get("history")))
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    names, shows = list(result["per_class"]), scope_of(result)
    pngs = {"confusion": confusion_png(result["confusion"], names, chart_title(result),
                                       shows["confusion"]),
            "recall": recall_png(result["per_class"], chart_title(result), shows["per_class"])}
    if result.get("history"):  # a fine-tuning: its training monitor
        pngs["monitor"] = monitor_png(result["history"], result.get("kept_epochs", {}),
                                      result.get("pipeline", ""))
    for kind, png in pngs.items():
        write_atomic(paths[kind], png)
    write_atomic(paths["md"], markdown(result, {k: paths[k].name for k in pngs}))
    write_atomic(paths["html"], html_report(result, pngs))
    write_atomic(paths["json"], json.dumps(result, indent=2, sort_keys=True))
    return paths


def beside(stem: Path, suffix: str) -> Path:
    # not with_suffix: a pipeline name may contain dots
    return stem.with_name(stem.name + suffix)


def _num(x: Any, digits: int = 3, na: str = "-") -> str:
    return na if x is None else f"{x:.{digits}f}"


def _pairs(r: dict[str, Any]) -> list[dict[str, Any]]:
    # results written by other code may carry only the matrix
    if "confused_pairs" in r:
        return r["confused_pairs"][:TOP_PAIRS]
    return confused_pairs(r["confusion"], list(r["per_class"]))


def _gallery(r: dict[str, Any]) -> dict[str, Any] | None:
    # The misclassified test images, worst first, as thumbnails (a result written by other
    # code may have none: then no section).
    rows = r.get("misclassified")
    if rows is None:
        return None
    # Relative paths only under the folder the run named: not against the working folder.
    root = Path(r["root"]) if r.get("root") else None
    return {"n": r.get("n_misclassified", len(rows)),
            "kind": "probability" if r.get("scores") == "probabilities" else "score",
            "rows": [(row, picture(root / row["path"] if root else None)) for row in rows]}


def scope_of(r: dict[str, Any]) -> dict[str, str]:
    """What each part of ``r`` shows (featx.report.metrics.scope): its own ``scope``; for
    results written without one, what they held: repeated splits' scores with split 1's
    matrix and model, or one split."""
    if r.get("scope"):
        return r["scope"]
    seeds = (r.get("repeats") or {}).get("seeds")
    if seeds and len(seeds) > 1:
        shows = scope(seeds)
        return shows | {k: shows["model"] for k in CLASSES}
    return {k: "one split" for k in (*SCORES, *CLASSES, *FIRST, "n_test")}


def headline(r: dict[str, Any]) -> tuple[str, str, str]:
    """The page's scores: rank-1, rank-5 (``rank-1 0.912 ± 0.013 over 5 splits`` for
    repeated splits) and the line under them saying which split(s) and test images."""
    seeds = (r.get("repeats") or {}).get("seeds") or []
    rank5 = _num(r.get("rank5"))
    tested = f"{r['n_test']} test images" if r.get("n_test") is not None else "test images"
    if len(seeds) > 1:
        over = f" over {len(seeds)} splits"
        rank1 = f"rank-1 {r['rank1']:.3f} ± {_num(r.get('rank1_std'))}{over}"
        if r.get("rank5") is not None:
            rank5 += f" ± {_num(r.get('rank5_std'))}{over}"
        note = (f"Mean ± standard deviation over {len(seeds)} splits ({seeds_text(seeds)}), "
                f"{tested} in each.")
    else:
        rank1 = f"rank-1 {r['rank1']:.3f}"
        note = f"On {scope_of(r)['rank1']}: {tested}."
    return rank1, f"rank-5 {rank5}", note


def per_split(r: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of the per-split table of a repeated result (none for one split): split,
    seed, rank-1, rank-5, chosen parameters, cross-validated score, test images."""
    rows = r.get("per_split") or []
    if len(rows) < 2:
        return []
    return [(s["split"], s["seed"], _num(s["rank1"]), _num(s["rank5"]),
             _params({"best_params": s.get("best_params") or {}}), _num(s.get("cv_score")),
             s.get("n_test")) for s in rows]


POOLING = {"avg": "global average", "max": "global maximum", "flatten": "flattened map",
           "none": "none (the whole feature map)"}
PREPROCESS = {"caffe": "Caffe style (BGR, ImageNet mean subtracted)", "tf": "scaled to [-1, 1]",
              "torch": "scaled to [0, 1], then ImageNet mean and sd",
              "none": "none (done inside the network)"}
FITS = {"squash": "squashed to the input size (aspect ratio not kept)",
        "crop": "short side to the input size, centre cropped",
        "pad": "long side to the input size, padded to a square"}


def reading(policy: str) -> str:
    """``backbone.resize`` (e.g. ``pil-draft+exif+rgb-on-white+bilinear-squash``) in words;
    as it is where it is not featx's own reading policy."""
    read, _, fit = str(policy).rpartition("-")
    if read != READ_POLICY or fit not in FITS:
        return str(policy)
    return f"{FITS[fit]}; EXIF rotation applied, transparency on white, bilinear"


def weights_text(b: dict[str, Any], file: str | None = None) -> str:
    """``imagenet``, ``file <name> (sha256 71e4c0de…)`` or ``random (seed 1)``."""
    kind, ident = b.get("weights"), str(b.get("weights_id") or "")
    if kind == "file":
        digest = ident.removeprefix("sha256:")[:8]
        return " ".join(x for x in ("file", file, f"(sha256 {digest}…)" if digest else "") if x)
    if kind == "none" and ident.startswith("random:seed="):
        return f"random (seed {ident.removeprefix('random:seed=')})"
    return str(kind)


def settings(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings table for a person: labels and values in words (the raw names and full
    values: :func:`raw_settings`); parts that come from split 1 of repeated splits say so."""
    b, shows = r.get("backbone", {}), scope_of(r)
    first = f", {shows['model']}" if r.get("repeats") else ""
    n_test = f"{r.get('n_test')} test images" + (" per split" if r.get("repeats") else "")
    rows: list[tuple[str, Any]] = [
        ("Pipeline", r.get("pipeline")), ("Classifier", r.get("classifier")),
        ("Dataset", f"{r.get('dataset')} ({r.get('n_train')} train, {n_test})")]
    if r.get("duplicates"):
        rows.append(("Duplicates" + first, duplicates_text(r["duplicates"])))
    words: dict[str, tuple[str, Any]] = {
        "backbone": ("Backbone", b.get("backbone")),
        "weights": ("Weights", weights_text(b, r.get("weights_file"))),
        "layer": ("Layer", "the last convolutional block" if b.get("layer") == "(last conv)"
                  else b.get("layer")),
        "pooling": ("Pooling", POOLING.get(b.get("pooling"), b.get("pooling"))),
        "input_size": ("Input size", f"{b.get('input_size')} × {b.get('input_size')} pixels"),
        "preprocess": ("Pixel scaling", PREPROCESS.get(b.get("preprocess"),
                                                       b.get("preprocess"))),
        "resize": ("Image reading", reading(b.get("resize"))),
        "precision": ("Precision", b.get("precision")), "flip": ("Flip", b.get("flip")),
        "combine": ("Combined from", b.get("combine"))}
    rows += [words.get(k, (k, v)) for k, v in b.items() if k != "weights_id"]
    rows += [("Feature store", r.get("store")),
             ("Chosen parameters" + first, _params({"best_params": r.get("best_params") or {}})),
             (cv_name(r).capitalize() + first, _num(r.get("cv_score"))),
             ("Fit time" + first, f"{_num(r.get('fit_seconds'), 1)} s")]
    return [(k, "" if v is None else str(v)) for k, v in rows]


def duplicates_text(d: dict[str, Any]) -> str:
    """What the split does with the store's duplicates (a result's ``duplicates``,
    featx.learn.classification.duplicates_record) in words."""
    off = d.get("most_off", 0)
    shares = "every class split as asked" if not off else \
        f"a class's test or validation share at most {off} image{'s' if off != 1 else ''} off"
    if d.get("grouped") and d.get("groups") == 0:
        return (f"none found (the same bytes, or features at cosine ≥ {d.get('threshold')}): "
                "the plain stratified split")
    if d.get("grouped"):
        return (f"kept together: {d.get('groups')} groups of copies ({d.get('images')} images: "
                f"the same bytes, or features at cosine ≥ {d.get('threshold')}) each on one "
                f"side of the split; {shares}")
    if d.get("crossing_pairs") is None:
        return "not grouped; near duplicates not searched (a store made before featx 0.7)"
    n = d["crossing_pairs"]
    return (f"not grouped (dataset.group_duplicates = false): {n} pair{'s' if n != 1 else ''} "
            f"of copies (the same bytes, or features at cosine ≥ {d.get('threshold')}) "
            f"{'cross' if n != 1 else 'crosses'} the split" + ("; featx audit lists them" if n
                                                               else ""))


def raw_settings(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings as the result records them: raw names and full values."""
    rows = [("pipeline", r.get("pipeline")), ("classifier", r.get("classifier")),
            ("dataset", r.get("dataset")), ("n_train", r.get("n_train")),
            ("n_test", r.get("n_test"))]
    rows += [(f"backbone.{k}", v) for k, v in r.get("backbone", {}).items()]
    if r.get("weights_file"):
        rows.append(("weights_file", r["weights_file"]))
    rows += [("store", r.get("store")), ("key", r.get("key")),
             ("best_params", ", ".join(f"{k}={v}"
                                       for k, v in (r.get("best_params") or {}).items())),
             ("cv_score", r.get("cv_score")), ("fit_seconds", r.get("fit_seconds"))]
    rows += [(f"duplicates.{k}", v) for k, v in (r.get("duplicates") or {}).items()
             if k != "per_class"]  # per_class: the JSON
    return [(k, "" if v is None else str(v)) for k, v in rows]


def markdown(r: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The Markdown report; ``images`` maps confusion/recall to PNG file names beside it."""
    m, shows = markdown_cell, scope_of(r)
    rank1, rank5, note = headline(r)
    lines = [f"# {m(r['pipeline'])}: {m(r['classifier'])}", ""]
    lines += [f"- {k}: {m(v)}" for k, v in settings(r)]
    lines += ["", f"**{m(rank1)} · {m(rank5)}**", "", m(note), ""]
    splits = per_split(r)
    if splits:
        lines += ["| split | seed | rank-1 | rank-5 | chosen parameters | cv | test images |",
                  "|---:|---:|---:|---:|---|---:|---:|"]
        lines += ["| " + " | ".join(m(c) for c in row) + " |" for row in splits]
        lines.append("")
    if images:
        lines += [f"Confusion matrix, {m(shows['confusion'])}:", "",
                  f"![confusion matrix]({images['confusion']})", "",
                  f"Per-class recall, {m(shows['per_class'])}:", "",
                  f"![per-class recall]({images['recall']})", "",
                  "Bars: " + "; ".join(f"{name} {m(meaning)}"
                                       for _, _, name, meaning in RECALL_BANDS)
                  + "; dashed line: the overall rank-1 of the same predictions.", ""]
        if "monitor" in images:
            lines += [f"![training monitor]({images['monitor']})", ""]
    lines += [f"Per class, {m(shows['per_class'])}:", "",
              "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, s in r["per_class"].items():
        lines.append(f"| {m(name)} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} "
                     f"| {s['support']} |")
    pairs = _pairs(r)
    lines += ["", f"## Most-confused pairs (top {TOP_PAIRS}), {m(shows['confused_pairs'])}", ""]
    if pairs:
        lines += ["| true | predicted | count | examples |", "|---|---|---:|---|"]
        for p in pairs:
            examples = ", ".join(m(e) for e in p.get("examples", []))
            lines.append(f"| {m(p['true'])} | {m(p['predicted'])} | {p['count']} | {examples} |")
    else:
        lines.append("No test image was misclassified.")
    rows = r.get("misclassified")
    if rows:
        n = r.get("n_misclassified", len(rows))
        lines += ["", f"## Misclassified test images ({n}, worst first), "
                  f"{m(shows['misclassified'])}", "",
                  "| image | true | predicted | score |", "|---|---|---|---:|"]
        lines += [f"| {m(x['path'])} | {m(x['true'])} | {m(x['predicted'])} | {x['score']:.3f} |"
                  for x in rows]
        if n > len(rows):
            lines.append(f"\n... and {n - len(rows)} more.")
    lines += ["", "Full confusion matrix (rows: true, columns: predicted): `confusion` in the "
              "JSON result.", ""]
    return "\n".join(lines)


# In page order: kind, alt text (and heading), the scope key that says which split(s)
CHARTS = (("confusion", "confusion matrix", "confusion"),
          ("recall", "per-class recall", "per_class"), ("monitor", "training monitor", None))


def html_report(r: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """One self-contained HTML page (templates/report.html): the charts are embedded as
    base64 data URIs; every score, chart and table says which split(s) it shows."""
    shows = scope_of(r)
    per_class = [(name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                  s["support"]) for name, s in r["per_class"].items()]
    rank1, rank5, note = headline(r)
    if per_split(r):
        note += " Each split's scores: the table below."
    charts = [{"kind": kind, "alt": alt, "uri": png_uri(pngs[kind]),
               "scope": shows[key] if key else None}
              for kind, alt, key in CHARTS if kind in pngs]
    return render("report.html", title=f"{r['pipeline']}: {r['classifier']}", r=r,
                  rank1=rank1, rank5=rank5, note=note, per_split=per_split(r),
                  cv_label=cv_name(r),
                  settings=settings(r), raw_settings=raw_settings(r), per_class=per_class,
                  charts=charts, bands=RECALL_BANDS, shows=shows, top_pairs=TOP_PAIRS,
                  pairs=_pairs(r), gallery=_gallery(r))
