"""The HTML pages featx writes (classify and fine-tune reports, explain, audit, sweep), from
one shell and shared partials: Jinja2 templates in ``featx/report/templates`` (package data).

Every page is one self-contained file: the shell (``base.html``, which every page extends)
inlines the CSS, images are data URIs. Autoescape is on, and every ``{{ value }}`` goes
through :func:`featx.core.escape.html_text` (the environment's ``finalize``), so a class name like
``<b>x</b>`` shows as text (spelled as :func:`html.escape` spells it). Templates print
values with plain ``{{ value }}``: filters that escape on their own (``|e``, ``|join``,
``~`` with markup) would use MarkupSafe's spelling instead.
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from featx.core.escape import html_text

THUMB = 128  # thumbnail side in the HTML galleries, pixels


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment: templates read from the installed package (a wheel or a
    checkout alike), autoescaped, undefined names an error rather than blank text."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("featx.report", "templates"), autoescape=True,
        finalize=_escaped, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=True)


def _escaped(value: Any) -> Any:
    # markup made by the templates themselves (macros, caller()) passes; data is escaped once
    if hasattr(value, "__html__"):
        return value
    return Markup(html_text(value))


def render(template: str, **context: Any) -> str:
    """The page ``template`` (a name in featx/report/templates) filled with ``context``."""
    return environment().get_template(template).render(**context)


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    """``data`` as a base64 data URI (for self-contained HTML pages)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(data: bytes) -> str:
    """PNG bytes (a chart) as a data URI."""
    return data_uri(data, "image/png")


def thumbnail(path: str | Path, side: int = THUMB) -> bytes | None:
    """A JPEG of the image at ``path`` at most ``side`` pixels on its longer side (EXIF
    orientation applied), or None where it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.draft("RGB", (side, side))
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((side, side))
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=85)
            return buffer.getvalue()
    except Exception:  # a missing or unreadable file has no thumbnail, never an error
        return None


@dataclass(frozen=True)
class Picture:
    """A gallery thumbnail as the ``figure`` partial shows it.

    Attributes
    ----------
    path : str, or None where no dataset folder was named to read it from
    uri : data URI of the thumbnail, or None where the file cannot be read
    href : the file's URI (the thumbnail links to it)
    """

    path: str | None
    uri: str | None = None
    href: str = ""


def picture(path: str | Path | None, side: int = THUMB) -> Picture:
    """The thumbnail of the image at ``path`` for a page (None: no dataset folder named)."""
    if path is None:
        return Picture(None)
    jpeg = thumbnail(path, side)
    if jpeg is None:
        return Picture(str(path))
    return Picture(str(path), data_uri(jpeg), Path(path).resolve().as_uri())
