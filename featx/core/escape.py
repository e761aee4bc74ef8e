"""Text from the data (class names, paths) made safe for the formats featx writes.

Class names and paths come from folder names and CSV files: a name may hold markup, a
newline or a spreadsheet formula, and must come out as the text it is.
"""

from __future__ import annotations

import html
from typing import Any

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google
# Sheets (OWASP "CSV injection"); a leading apostrophe makes it text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def markdown_cell(value: Any) -> str:
    """``value`` as the text of one Markdown table cell: HTML escaped (Markdown passes raw
    HTML through), pipes escaped, line breaks as spaces."""
    text = html.escape(str(value), quote=False)
    return " ".join(text.replace("|", "\\|").splitlines())


def spreadsheet_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: strings that would start a formula get
    a leading apostrophe; numbers pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def terminal(value: Any) -> str:
    """``value`` as text safe to print to a terminal: control and other unprintable
    characters (ANSI escape sequences, carriage returns, bidirectional overrides) written as
    Python escapes (``\\x1b``), so that a class name or path cannot move the cursor, recolour
    or rewrite what is shown."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def html_text(value: Any) -> str:
    """``value`` as HTML text or a quoted attribute value: ``& < > " '`` escaped. Every page
    escapes through this (featx.report.pages hands it to Jinja2 as the output filter)."""
    return html.escape(str(value), quote=True)


def chart_text(value: Any) -> str:
    """``value`` as matplotlib text that shows as it is: ``$`` escaped, so that a class
    name like ``$x$`` is not typeset as mathtext. (Outside a ``$...$`` pair no other
    character is special; text with no unescaped ``$`` is never parsed as math.)"""
    return str(value).replace("$", r"\$")
