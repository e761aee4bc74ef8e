"""The HTML pages (classify report, explain, audit) opened in a real browser: headless
Chromium renders each, a screenshot is taken, every image must have decoded and a class named
``<b>x</b> & "y"`` must show as text, not markup. Skipped where no Chromium is installed
(.ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

EVIL = '<b>x</b> & "y"'
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser: install Debian's chromium package "
    "(apt-get install chromium; .ci/run does) to check the pages in a browser")

# Run on load; the verdict goes into the DOM that --dump-dom prints.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  const bold = [...document.querySelectorAll('b')].filter(b => b.textContent === 'x');
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = 'PROBE images=' + imgs.length + ' broken=' + broken.length +
    ' markup=' + bold.length + ' text=' + document.body.innerText.includes(%s);
  document.body.appendChild(p);
});</script>"""


def open_in_browser(page: Path, tmp: Path) -> tuple[dict[str, int], Path]:
    """Render ``page`` in headless Chromium; return what the probe saw and a screenshot."""
    probe = PROBE % json.dumps(EVIL)
    probed = tmp / f"{page.stem}-probed.html"
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=120)
    found = re.search(r"PROBE images=(\d+) broken=(\d+) markup=(\d+) text=(\w+)", dom.stdout)
    assert found, dom.stderr[-2000:]
    shot = tmp / f"{page.stem}.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 5000, "no screenshot"
    images, broken, markup, text = found.groups()
    return {"images": int(images), "broken": int(broken), "markup": int(markup),
            "text": text == "true"}, shot


def _photos(root: Path, names: list[str], image_file) -> list[str]:
    rels = []
    for i, name in enumerate(names):
        rel = f"class{i % 3}/{name}"
        image_file(root / rel, size=(90 + 7 * i, 70), colour=(40 * i % 255, 120, 200),
                   seed=i)
        rels.append(rel)
    return rels


def report_page(tmp: Path, image_file, name: str = EVIL) -> Path:
    from featx.report.results import write_reports

    return write_reports(_result(tmp, image_file, name), tmp / "report" / "browser-logreg")["html"]


def finetune_page(tmp: Path, image_file, name: str = EVIL) -> Path:
    """The fine-tune report: the classify page plus the training monitor."""
    from featx.report.results import write_reports

    r = _result(tmp, image_file, name)
    r["classifier"] = "finetune"
    r["history"] = [{"phase": phase, "loss": 1.0 / e, "accuracy": 0.5 + e / 10,
                     "val_loss": 1.2 / e, "val_accuracy": 0.4 + e / 10}
                    for phase in ("warmup", "finetune") for e in (1, 2, 3)]
    r["kept_epochs"] = {"warmup": 3, "finetune": 2}
    return write_reports(r, tmp / "finetune" / "browser-finetune")["html"]


def _result(tmp: Path, image_file, name: str) -> dict:
    from featx.report.metrics import evaluate

    names = ["ant", name, "cow"]
    rels = _photos(tmp / "data", [f"img{i}.png" for i in range(6)], image_file)
    y = np.array([0, 1, 2, 0, 1, 2])
    scores = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05],
                       [0.2, 0.2, 0.6], [0.3, 0.6, 0.1]])
    r = evaluate(y, scores, np.arange(3), names, rels)
    r.update({"pipeline": "browser", "classifier": "logreg", "dataset": "tiny",
              "store": "/x.h5", "key": "k", "best_params": {}, "cv_score": 0.5,
              "fit_seconds": 1.0, "n_train": 10, "root": str(tmp / "data"),
              "backbone": {"backbone": "MobileNetV2", "pooling": "avg"}})
    return r


def explain_page(tmp: Path, image_file, name: str = EVIL) -> Path:
    from featx.inspect.explain import EXACT, Explanation, figure_png, html_page

    rels = _photos(tmp / "data", ["n0.png", "n1.png", "n2.png"], image_file)
    image = np.asarray(Image.open(tmp / "data" / rels[0]).convert("RGB").resize((64, 64)))
    cam = np.outer(np.linspace(0, 1, 64), np.linspace(1, 0, 64)).astype(np.float32)
    r = Explanation(str(tmp / "data" / rels[0]), image, [(name, 0.7), ("cow", 0.3)],
                    {name: cam}, EXACT, cam - 0.2,
                    [(str(tmp / "data" / p), name, 0.9 - i / 10) for i, p in enumerate(rels)])
    png = tmp / "explain" / "001.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(figure_png(r))
    predictor = SimpleNamespace(source="model.skops", classifier="logreg",
                                calibration="probabilities",
                                backbone=SimpleNamespace(spec=SimpleNamespace(name="MobileNetV2")))
    page = png.parent / "index.html"
    page.write_text(html_page([r], [png], predictor))
    return page


def audit_page(tmp: Path, image_file, name: str = EVIL) -> Path:
    from featx.inspect.audit import Audit, Rows, html_page

    rels = _photos(tmp / "data", [f"a{i}.png" for i in range(5)], image_file)
    rows = Rows([str(tmp / "data" / p) for p in rels], rels, np.array([0, 1, 2, 0, 1]),
                np.array([0, 2, 0, 0, 2], np.int8), ["ant", name, "cow"])
    a = Audit(exact=[(3, 0)], near=[(0, 1, 0.99)], label_issues=[(2, 1, 0.01, True)],
              outliers=[(4, -5.0, 0.2)], seconds={"neighbours": 0.1}, method="exact")
    page = tmp / "audit" / "audit.html"
    page.parent.mkdir(parents=True)
    page.write_text(html_page(a, rows, Path("store.h5")))
    return page


def sweep_page(tmp: Path, image_file, name: str = EVIL) -> Path:
    """A sweep of two layers with two learners, of a dataset named ``name``."""
    from featx.inspect.sweep import LayerScore, SweepResult, write

    layers = [("block_2_add", 26, (8, 8, 24), (0, 24)), ("out_relu", 154, (1, 1, 1280),
                                                         (24, 1304))]
    scores = [LayerScore(*layer, learner, rank1, None, 1.5, {"C": 1.0})
              for learner, ranks in (("logreg", (0.8, 0.9)), ("linear_svm", (0.7, 0.95)))
              for layer, rank1 in zip(layers, ranks)]
    result = SweepResult(name, "MobileNetV2", tmp / "s.h5", 40, 10, 1.5, False, scores)
    (page,) = [f for f in write(result, tmp / "sweep") if f.suffix == ".html"]
    return page


PAGES = [report_page, finetune_page, explain_page, audit_page, sweep_page]
# What the one shell (featx/report/templates/base.html) starts every page with.
SHELL = "<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='generator' content='featx'>"


@needs_browser
@pytest.mark.parametrize("make, n_images", [(report_page, 6), (explain_page, 4),
                                            (audit_page, 6), (sweep_page, 1),
                                            (finetune_page, 7)])
def test_pages_render_in_a_browser(make, n_images, tmp_path, image_file):
    page = make(tmp_path, image_file)
    seen, shot = open_in_browser(page, tmp_path)
    assert seen["images"] == n_images, seen
    assert seen["broken"] == 0, seen
    assert seen["markup"] == 0 and seen["text"], seen  # the class name is text
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10, "a blank screenshot"


@needs_browser
def test_the_probe_sees_a_broken_image_and_markup(tmp_path):
    """The checks above can fail: a page with an undecodable image and unescaped markup."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><p>bad page</p><img src='data:image/png;"
                    f"base64,iVBORw0KGgoAAAA='><img src='missing.png'>{EVIL}</body></html>")
    seen, _ = open_in_browser(page, tmp_path)
    assert seen == {"images": 2, "broken": 2, "markup": 1, "text": False}


@pytest.mark.parametrize("make", PAGES)
def test_every_page_comes_from_the_one_shell(make, tmp_path, image_file):
    import featx

    page = make(tmp_path, image_file).read_text()
    assert page.startswith(SHELL) and page.count("<!DOCTYPE") == 1, page[:200]
    assert page.endswith("</body></html>\n")
    css = (Path(featx.__file__).parent / "report" / "templates" / "featx.css").read_text()
    assert css.strip() in page  # the style inlined: one self-contained file
    assert "<link" not in page and "<script" not in page


def test_no_module_writes_a_page_shell_by_hand():
    import featx

    package = Path(featx.__file__).parent
    assert [p.name for p in package.rglob("*.py") if "DOCTYPE" in p.read_text()] == []
    templates = sorted((package / "report" / "templates").glob("*.html"))
    assert len(templates) >= 6  # the shell, the partials and a page each
    for template in templates:
        if template.name not in ("base.html", "partials.html"):
            assert '{% extends "base.html" %}' in template.read_text(), template.name


DOLLAR = "<b>$x$</b>"  # mathtext to matplotlib, markup to a browser: must show as it is


@pytest.mark.parametrize("make", PAGES)
def test_a_name_with_mathtext_and_markup_shows_as_it_is(make, tmp_path, image_file,
                                                        monkeypatch):
    """In the page (escaped HTML) and in every chart label (no text parsed as mathtext)."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    page = make(tmp_path, image_file, DOLLAR).read_text()
    assert "&lt;b&gt;$x$&lt;/b&gt;" in page and DOLLAR not in page
    shown = []
    for fig in figures:
        for text in fig.findobj(Text):
            drawn, math = text._preprocess_math(text.get_text())  # as matplotlib draws it
            assert not math, text.get_text()
            shown.append(drawn)
    if make is not audit_page:  # the audit page has no chart
        assert any(DOLLAR in s for s in shown), shown
