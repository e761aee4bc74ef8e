"""The files of a classification result: JSON, Markdown, the HTML page and its charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featx.core.escape import markdown_cell
from featx.core.files import write_atomic
from featx.report.charts import chart_title, confusion_png, monitor_png, recall_png
from featx.report.metrics import TOP_PAIRS, confused_pairs
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
    return (f"{name:<12} rank-1 {result['rank1']:.3f}  rank-5 {rank5}  "
            f"({params}; cv {_num(result.get('cv_score'))}; "
            f"fit {_num(result.get('fit_seconds'), 1)}s; "
            f"{result['n_train']} train / {result['n_test']} test)")


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
    names = list(result["per_class"])
    pngs = {"confusion": confusion_png(result["confusion"], names, chart_title(result)),
            "recall": recall_png(result["per_class"], chart_title(result), result.get("rank1"))}
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


def _settings(r: dict[str, Any]) -> list[tuple[str, str]]:
    b = r.get("backbone", {})
    rows = [("pipeline", r.get("pipeline")), ("classifier", r.get("classifier")),
            ("dataset", f"{r.get('dataset')} ({r.get('n_train')} train, {r.get('n_test')} "
                        "test images)")]
    rows += [(f"backbone.{k}", v) for k, v in b.items()]
    rows += [("feature store", r.get("store")), ("key", r.get("key")),
             ("best parameters", ", ".join(f"{k.split('__')[-1]}={v}"
                                           for k, v in (r.get("best_params") or {}).items())),
             ("cross-validated accuracy", _num(r.get("cv_score"))),
             ("fit time", f"{_num(r.get('fit_seconds'), 1)} s")]
    return [(k, "" if v is None else str(v)) for k, v in rows]


def markdown(r: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The Markdown report; ``images`` maps confusion/recall to PNG file names beside it."""
    m = markdown_cell
    lines = [f"# {m(r['pipeline'])}: {m(r['classifier'])}", ""]
    lines += [f"- {k}: {m(v)}" for k, v in _settings(r)]
    lines += ["", f"**rank-1 {r['rank1']:.3f} · rank-5 {_num(r['rank5'])}**", ""]
    if images:
        lines += [f"![confusion matrix]({images['confusion']})", "",
                  f"![per-class recall]({images['recall']})", ""]
        if "monitor" in images:
            lines += [f"![training monitor]({images['monitor']})", ""]
    lines += ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, s in r["per_class"].items():
        lines.append(f"| {m(name)} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} "
                     f"| {s['support']} |")
    pairs = _pairs(r)
    lines += ["", f"## Most-confused pairs (top {TOP_PAIRS})", ""]
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
        lines += ["", f"## Misclassified test images ({n}, worst first)", "",
                  "| image | true | predicted | score |", "|---|---|---|---:|"]
        lines += [f"| {m(x['path'])} | {m(x['true'])} | {m(x['predicted'])} | {x['score']:.3f} |"
                  for x in rows]
        if n > len(rows):
            lines.append(f"\n... and {n - len(rows)} more.")
    lines += ["", "Full confusion matrix (rows: true, columns: predicted): `confusion` in the "
              "JSON result.", ""]
    return "\n".join(lines)


CHARTS = (("confusion", "confusion matrix"), ("recall", "per-class recall"),
          ("monitor", "training monitor"))  # in page order: kind, alt text (and heading)


def html_report(r: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """One self-contained HTML page (templates/report.html): the charts are embedded as
    base64 data URIs."""
    per_class = [(name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                  s["support"]) for name, s in r["per_class"].items()]
    return render("report.html", title=f"{r['pipeline']}: {r['classifier']}", r=r,
                  rank5=_num(r["rank5"]), settings=_settings(r), per_class=per_class,
                  charts=[{"alt": alt, "uri": png_uri(pngs[kind])} for kind, alt in CHARTS
                          if kind in pngs],
                  top_pairs=TOP_PAIRS, pairs=_pairs(r), gallery=_gallery(r))
