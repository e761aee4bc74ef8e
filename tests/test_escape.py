"""featx.core.escape: text from the data (class names, paths) comes out of every format
featx writes as the text it is."""

from __future__ import annotations

import pytest

from featx.core.escape import chart_text, html_text, markdown_cell, spreadsheet_cell, terminal


def test_a_markdown_cell_is_one_cell_of_plain_text():
    assert markdown_cell('<b>x</b> & "y"') == '&lt;b&gt;x&lt;/b&gt; &amp; "y"'
    assert markdown_cell("a | b") == "a \\| b"  # not a column break
    assert markdown_cell("two\nlines\r\nhere") == "two lines here"  # not a row break
    assert markdown_cell(0.5) == "0.5"


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_spreadsheet_cell_that_would_be_a_formula_is_text(start):
    assert spreadsheet_cell(f"{start}SUM(A1)") == f"'{start}SUM(A1)"


def test_other_spreadsheet_cells_pass_unchanged():
    assert spreadsheet_cell("cat = dog") == "cat = dog"
    assert spreadsheet_cell(-1.5) == -1.5 and spreadsheet_cell(3) == 3  # numbers stay numbers


def test_terminal_text_cannot_drive_the_terminal():
    shown = terminal("red\x1b[31m\rback\u202eevil\tend")
    assert shown == "red\\x1b[31m\\rback\\u202eevil\\tend"
    assert shown.isprintable()
    assert terminal("été 日本 ok") == "été 日本 ok"  # printable text as it is


def test_html_text_escapes_markup_and_both_quotes():
    assert html_text("""<a href='x' title="y">&</a>""") == \
        "&lt;a href=&#x27;x&#x27; title=&quot;y&quot;&gt;&amp;&lt;/a&gt;"


def test_chart_text_is_never_mathtext():
    assert chart_text("$x$ costs $5") == r"\$x\$ costs \$5"
    assert chart_text("no dollars") == "no dollars"
