"""The HTML pages (classify report, fine-tune report with its monitor, explain with its
feature maps, audit, sweep) opened in a real browser: headless Chromium renders each at a
desktop width (1280 px) and a phone width (390 px), all in one run; every image must have
decoded, a class named ``<b>x</b> & "y"`` must show as text, not markup, no error may reach
the console and nothing may be wider than the screen. Skipped where no Chromium is installed
(.ci/run installs it)."""

from __future__ import annotations

import html
import io
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import classify_result, saved_figures
from PIL import Image

EVIL = '<b>x</b> & "y"'
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser: install Debian's chromium package "
    "(apt-get install chromium; .ci/run does) to check the pages in a browser")

WIDTHS = (1280, 390)  # a desktop and a phone (an iPhone 12-15 is 390 CSS pixels wide)

# First in each page's <head>: records every error (a script's, a resource that failed to
# load, console.error) and, on load, what the page looks like; the verdict goes to the
# harness page (postMessage), whose DOM --dump-dom prints.
PROBE = """<script>(() => {
  const errors = [];
  const note = text => errors.push(String(text).slice(0, 200));
  addEventListener('error', e => note(e.message || (e.target && (e.target.src || e.target.href))
                                      || 'a resource did not load'), true);
  addEventListener('unhandledrejection', e => note(e.reason));
  const error = console.error;
  console.error = (...args) => { note(args.join(' ')); error(...args); };
  addEventListener('load', () => {
    const imgs = [...document.images];
    const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
    const hidden = imgs.filter(i => !(i.offsetWidth > 0 && i.offsetHeight > 0)).length;
    const shrunk = imgs.filter(i => !i.classList.contains('thumb') && i.complete
                               && i.width < i.naturalWidth).map(i => i.alt);
    const bold = [...document.querySelectorAll('b')].filter(b => b.textContent === 'x').length;
    let font = Infinity, smallest = '';
    const texts = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (texts.nextNode()) {
      const node = texts.currentNode, element = node.parentElement;
      if (!node.textContent.trim() || element.closest('script, style')) continue;
      const px = parseFloat(getComputedStyle(element).fontSize);
      if (px < font) { font = px; smallest = element.tagName + ': ' + node.textContent.trim(); }
    }
    parent.postMessage({page: %(page)s, width: innerWidth,
                        scroll: document.documentElement.scrollWidth, errors,
                        images: imgs.length, broken, hidden, shrunk, markup: bold,
                        text: document.body.innerText.includes(%(evil)s), font,
                        smallest: smallest.slice(0, 80)}, '*');
  });
})();</script>"""
HARNESS = """<!DOCTYPE html><html><body><pre id=probe></pre><script>
addEventListener('message', e => {
  document.getElementById('probe').textContent += 'PROBE ' + JSON.stringify(e.data) + '\\n';
});</script>%s</body></html>"""


def open_in_browser(pages: dict[str, Path], tmp: Path) -> dict[tuple[str, int], dict]:
    """Every page at every width of WIDTHS in one headless Chromium run (each in a frame of
    that width: its viewport); what the probe saw, by (name, width)."""
    frames = []
    for name, page in pages.items():
        probed = tmp / f"{name}-probed.html"
        probe = PROBE % {"page": json.dumps(name), "evil": json.dumps(EVIL)}
        probed.write_text(page.read_text().replace("<head>", "<head>" + probe, 1))
        frames += [f"<iframe src='{probed.as_uri()}' style='width:{w}px;height:900px;border:0'>"
                   "</iframe>" for w in WIDTHS]
    harness = tmp / "harness.html"
    harness.write_text(HARNESS % "".join(frames))
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", harness.as_uri()],
                         capture_output=True, text=True, timeout=180)
    seen = {}
    for line in html.unescape(dom.stdout).splitlines():
        if "PROBE {" in line:
            verdict = json.loads(line.split("PROBE ", 1)[1])
            seen[verdict["page"], verdict["width"]] = verdict
    assert len(seen) == len(pages) * len(WIDTHS), (sorted(seen), dom.stderr[-2000:])
    return seen


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
    r["cv_score_name"] = "validation accuracy"  # as featx.learn.finetune records it
    r["history"] = [{"phase": phase, "loss": 1.0 / e, "accuracy": 0.5 + e / 10,
                     "val_loss": 1.2 / e, "val_accuracy": 0.4 + e / 10}
                    for phase in ("warmup", "finetune") for e in (1, 2, 3)]
    r["kept_epochs"] = {"warmup": 3, "finetune": 2}
    return write_reports(r, tmp / "finetune" / "browser-finetune")["html"]


def _result(tmp: Path, image_file, name: str) -> dict:
    names = ["ant", name, "cow"]
    rels = _photos(tmp / "data", [f"img{i}.png" for i in range(6)], image_file)
    y = np.array([0, 1, 2, 0, 1, 2])
    scores = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05],
                       [0.2, 0.2, 0.6], [0.3, 0.6, 0.1]])
    return classify_result(y, scores, names, rels, pipeline="browser", root=str(tmp / "data"))


def explain_page(tmp: Path, image_file, name: str = EVIL) -> Path:
    """An explanation with its feature maps (featx explain --maps: the one page that shows
    featx.inspect.visualize's drawings)."""
    from featx.core.escape import chart_text
    from featx.inspect.explain import EXACT, Explanation, figure_png, html_page
    from featx.inspect.visualize import maps_png

    rels = _photos(tmp / "data", ["n0.png", "n1.png", "n2.png"], image_file)
    image = np.asarray(Image.open(tmp / "data" / rels[0]).convert("RGB").resize((64, 64)))
    cam = np.outer(np.linspace(0, 1, 64), np.linspace(1, 0, 64)).astype(np.float32)
    r = Explanation(str(tmp / "data" / rels[0]), image, [(name, 0.7), ("cow", 0.3)],
                    {name: cam}, EXACT, cam - 0.2,
                    [(str(tmp / "data" / p), name, 0.9 - i / 10) for i, p in enumerate(rels)])
    png = tmp / "explain" / "001.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(figure_png(r))
    maps = png.with_name("001-maps.png")
    rng = np.random.default_rng(0)
    maps.write_bytes(maps_png(image, rng.random((8, 8, 24)).astype(np.float32), "block_1_add",
                              16, f"{chart_text(name)}: "))  # as explain titles it
    predictor = SimpleNamespace(source="/runs/20240101-000000-abcdef12/model.skops",
                                classifier="logreg", calibration="probabilities",
                                backbone=SimpleNamespace(spec=SimpleNamespace(name="MobileNetV2")))
    page = png.parent / "index.html"
    page.write_text(html_page([r], [png], predictor, [maps]))
    return page


def audit_page(tmp: Path, image_file, name: str = EVIL) -> Path:
    from featx.inspect.audit import Audit, Rows, html_page

    rels = _photos(tmp / "data", [f"a{i}.png" for i in range(5)], image_file)
    rows = Rows([str(tmp / "data" / p) for p in rels], rels, np.array([0, 1, 2, 0, 1]),
                np.array([0, 2, 0, 0, 2], np.int8), ["ant", name, "cow"])
    a = Audit(exact=[(3, 0)], near=[(0, 1, 0.99)], label_issues=[(2, 1, 0.01, True)],
              outliers=[(4, -5.0, 0.2)], seconds={"neighbours": 0.1}, method="exact",
              accuracy=0.6)  # below TRUSTED_ACCURACY: the page has its caveat
    page = tmp / "audit" / "audit.html"
    page.parent.mkdir(parents=True)
    page.write_text(html_page(a, rows, Path("tiny-MobileNetV2-avg-0123456789abcdef.h5")))
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


# A page with every fault the probe looks for: an undecodable and a missing image,
# unescaped markup, a script error, a console error, a line wider than a phone, tiny text.
BAD = ("<!DOCTYPE html><html><head></head><body><p style='font-size:9px'>bad page</p>"
       "<img src='data:image/png;base64,iVBORw0KGgoAAAA='><img src='missing.png'>"
       f"{EVIL}<div style='width:700px'>wide</div><script>undefined_function()</script>"
       "<script>console.error('logged an error')</script></body></html>")


@pytest.fixture(scope="module")
def browsed(tmp_path_factory) -> dict[tuple[str, int], dict]:
    """Every page featx writes, made once, and the bad page, seen at each width in one run."""
    if BROWSER is None:
        pytest.skip("no headless browser")
    from conftest import write_image

    tmp = tmp_path_factory.mktemp("browser")
    pages = {make.__name__: make(tmp / make.__name__, write_image) for make in PAGES}
    (tmp / "bad.html").write_text(BAD)
    return open_in_browser({**pages, "bad": tmp / "bad.html"}, tmp)


@needs_browser
@pytest.mark.parametrize("make, n_images", [(report_page, 6), (explain_page, 5),
                                            (audit_page, 6), (sweep_page, 1),
                                            (finetune_page, 7)])
def test_pages_render_in_a_browser(make, n_images, browsed):
    seen = browsed[make.__name__, 1280]
    assert seen["images"] == n_images, seen
    assert seen["broken"] == 0 and seen["hidden"] == 0, seen
    assert seen["markup"] == 0 and seen["text"], seen  # the class name is text


@needs_browser
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("make", PAGES)
def test_pages_fit_the_screen_with_no_console_error(make, width, browsed):
    """Nothing wider than a desktop or a phone screen (a wide table or chart scrolls in its
    own box) and no error on the console."""
    seen = browsed[make.__name__, width]
    assert seen["errors"] == [], seen
    assert seen["scroll"] <= width, seen


@needs_browser
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("make", [explain_page, audit_page])
def test_explain_and_audit_pages_are_readable(make, width, browsed):
    """Text of at least 14 px; charts at their own size (their text drawn at 14 px, see
    test_chart_text_is_drawn_at_the_pages_size), scrolled sideways on a phone, not shrunk."""
    seen = browsed[make.__name__, width]
    assert seen["font"] >= 14, seen
    assert seen["shrunk"] == [], seen


@needs_browser
def test_the_probe_sees_every_fault(browsed):
    """The checks above can fail: BAD has each fault once."""
    for width in WIDTHS:
        seen = browsed["bad", width]
        assert {k: seen[k] for k in ("images", "broken", "markup", "text")} == {
            "images": 2, "broken": 2, "markup": 1, "text": False}
        assert seen["font"] == 9 and seen["scroll"] > 390, seen
        errors = " | ".join(seen["errors"])
        assert "undefined_function" in errors and "logged an error" in errors, errors
        assert "missing.png" in errors, errors
    assert browsed["bad", 1280]["scroll"] <= 1280  # 700 px fits a desktop, not a phone


# The charts a page shows at their own size, and the page's content width at 1280 px: the
# shell's body is at most 1200 px wide, less 1em (16 px) of padding each side.
CONTENT = 1200 - 2 * 16


def _explain_figure():
    from featx.inspect.explain import EXACT, Explanation, figure_png

    cam = np.outer(np.linspace(0, 1, 64), np.linspace(1, 0, 64)).astype(np.float32)
    image = np.full((64, 64, 3), 120, np.uint8)
    return figure_png(Explanation("/data/class1/n0.png", image, [("ant", 0.7), ("cow", 0.3)],
                                  {"ant": cam, "cow": cam.T}, EXACT, cam - 0.2))


def _maps_figure():
    from featx.inspect.visualize import maps_png

    maps = np.random.default_rng(0).random((8, 8, 24)).astype(np.float32)
    return maps_png(np.full((64, 64, 3), 120, np.uint8), maps, "block_1_add", 16, "n0.png: ")


def _monitor_figure():
    from featx.report.charts import monitor_png

    history = [{"phase": phase, "loss": 1.0 / e, "accuracy": 0.5 + e / 10, "val_loss": 1.2 / e,
                "val_accuracy": 0.4 + e / 10} for phase in ("warmup", "finetune") for e in (1, 2)]
    return monitor_png(history, {"warmup": 2, "finetune": 1}, "tiny")


@pytest.mark.parametrize("draw", [_explain_figure, _maps_figure, _monitor_figure])
def test_chart_text_is_drawn_at_the_pages_size(draw, monkeypatch):
    """Every word of the explain page's charts and of the fine-tune monitor is at least
    10 pt (13.3 CSS px) as the page shows the PNG: at its own size on a desktop (no wider
    than the page's content), its text at its point size times dpi / 72 pixels."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    saved = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append((self, kwargs.get("dpi")))
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    png = draw()
    (fig, dpi), = saved
    width = Image.open(io.BytesIO(png)).width
    assert width <= CONTENT, width
    small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text)
             if _drawn(t) and t.get_fontsize() * dpi / 72 < 10 * 96 / 72]
    assert not small, (dpi, small)


def _drawn(text) -> bool:
    """Whether a Text shows: visible, not empty, not an axis label of axes turned off."""
    if not (text.get_visible() and text.get_text().strip()):
        return False
    ax = text.axes
    if ax is None or ax.axison:
        return True
    axis = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label]
    return not any(text is t for t in axis)


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
    from matplotlib.text import Text

    figures = saved_figures(monkeypatch)
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
