"""User strings (class names, file names, run names) escaped for the format they land in: a
class called `<img onerror=...>` or `=HYPERLINK(...)` or `cost_$x^$` must come out as text.

HTML goes through `html.escape` where the page is built; Markdown, CSV and matplotlib here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
# Characters that start a Markdown construct anywhere in a line (emphasis, code, links, table
# cells, strike-through), and those that do at the start of a line (headings, lists, quotes);
# each is written backslash-escaped. `<` and `&` are written as HTML entities.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_LINE_START = re.compile(r"^([#+\->=!])")
_ORDERED_ITEM = re.compile(r"^(\d+)([.)])")
# A spreadsheet reads a cell starting with one of these as a formula (OWASP's CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def markdown(value: Any) -> str:
    """`value` as literal Markdown text on one line: inline HTML neutralised (`<` as `&lt;`),
    Markdown punctuation backslash-escaped, so it can sit in a paragraph or a table cell."""
    text = " ".join(str(value).splitlines())
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
    text = _LINE_START.sub(r"\\\1", text)
    return _ORDERED_ITEM.sub(r"\1\\\2", text)


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, quoted with a leading apostrophe;
    numbers and other text unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@contextmanager
def plain_text() -> Iterator[None]:
    """Matplotlib text drawn as written: a `$` in a class name is not mathtext."""
    import matplotlib  # here: predict escapes CSV cells and draws nothing

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def drawn_as_plain_text(draw: F) -> F:
    """A figure function whose titles, labels and ticks are drawn as plain text."""

    @wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with plain_text():
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
