"""Turn an HTML mail body into readable plain text (pure, synchronous, never raises).

Why our own converter on :mod:`html.parser` and not a library: the well-known choice,
``html2text``, is GPL-3.0 (this project is Apache-2.0) and emits Markdown, which we would then
have to strip again; BeautifulSoup/lxml are large for what mail bodies need. The rules below are
few and are tested in ``tests/unit/test_mime.py``:

* ``script``, ``style``, ``head``, ``noscript``, ``template``, ``svg`` and ``math`` are dropped
  with their content;
* block elements (``p``, ``div``, headings, ``table`` rows, ``blockquote``, ...) start new lines,
  paragraphs are separated by one blank line, ``br`` is a line break, ``hr`` a blank line;
* list items become ``- item`` (``1. item`` inside ``ol``);
* link text is kept, the target is not (mail is full of tracking URLs);
* whitespace collapses as a browser would, except inside ``pre``;
* entities are decoded; non-breaking spaces become spaces.

This module must not import anything outside the standard library.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_DROPPED = frozenset({"script", "style", "head", "noscript", "template", "svg", "math", "title"})
# Elements that end the current paragraph: a blank line before and after.
_PARAGRAPHS = frozenset(
    {
        "p",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "pre",
        "table",
        "ul",
        "ol",
        "dl",
        "address",
        "figure",
        "fieldset",
        "form",
    }
)
# Elements that start a new line but no blank line.
_LINES = frozenset(
    {
        "div",
        "tr",
        "li",
        "dt",
        "dd",
        "section",
        "article",
        "header",
        "footer",
        "nav",
        "aside",
        "main",
        "center",
        "caption",
        "figcaption",
        "tbody",
        "thead",
        "tfoot",
        "body",
        "html",
    }
)
_CELLS = frozenset({"td", "th"})
_WHITESPACE = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]*>")


class _TextCollector(HTMLParser):
    """Collect text with the pending-newline technique: breaks are emitted lazily before text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._pending_breaks = 0
        self._at_line_start = True
        self._dropped_depth = 0
        self._pre_depth = 0
        self._lists: list[list[int] | None] = []  # per open list: [counter] for ol, None for ul

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROPPED:
            self._dropped_depth += 1
            return
        if self._dropped_depth:
            return
        if tag == "br":
            self._break(1, force=True)
        elif tag == "hr":
            self._break(2)
        elif tag in ("ul", "ol"):
            self._break(2 if not self._lists else 1)
            self._lists.append([0] if tag == "ol" else None)
        elif tag == "li":
            self._start_list_item()
        elif tag in _PARAGRAPHS:
            self._break(2)
            if tag == "pre":
                self._pre_depth += 1
        elif tag in _LINES:
            self._break(1)
        elif tag in _CELLS:
            self._emit_inline(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/> and friends: no content and no end tag, so a dropped element must not open.
        if tag not in _DROPPED:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROPPED:
            self._dropped_depth = max(0, self._dropped_depth - 1)
            return
        if self._dropped_depth:
            return
        if tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
            self._break(2 if not self._lists else 1)
        elif tag in _PARAGRAPHS:
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)
            self._break(2)
        elif tag in _LINES:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self._dropped_depth or not data:
            return
        data = data.replace("\xa0", " ")
        if self._pre_depth:
            self._flush_breaks()
            self.parts.append(data)
            self._at_line_start = data.endswith("\n")
            return
        self._emit_inline(_WHITESPACE.sub(" ", data))

    def _start_list_item(self) -> None:
        self._break(1)
        current = self._lists[-1] if self._lists else None
        if current is None:
            marker = "- "
        else:
            current[0] += 1
            marker = f"{current[0]}. "
        indent = "  " * max(0, len(self._lists) - 1)
        self._flush_breaks()
        self.parts.append(indent + marker)
        self._at_line_start = False

    def _emit_inline(self, text: str) -> None:
        if self._at_line_start or self._pending_breaks:
            text = text.lstrip(" ")
        elif self.parts and self.parts[-1].endswith(" ") and text.startswith(" "):
            text = text[1:]
        if not text:
            return
        self._flush_breaks()
        self.parts.append(text)
        self._at_line_start = False

    def _break(self, count: int, *, force: bool = False) -> None:
        if force:
            # <br> always produces a line even where the line is empty (<br><br> = blank line).
            self.parts.append("\n")
            self._at_line_start = True
            return
        if self.parts:
            self._pending_breaks = max(self._pending_breaks, count)

    def _flush_breaks(self) -> None:
        if self._pending_breaks and self.parts:
            self.parts.append("\n" * self._pending_breaks)
            self._at_line_start = True
        self._pending_breaks = 0


def _tidy(text: str) -> str:
    """Strip line ends, drop runs of blank lines beyond one, trim the ends."""
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    blank = 0
    for line in lines:
        blank = blank + 1 if not line.strip() else 0
        if blank <= 1:
            out.append(line if line.strip() else "")
    return "\n".join(out).strip("\n").strip()


def html_to_text(html: str) -> str:
    """Return the readable text of an HTML document or fragment.

    Pure and deterministic; never raises on malformed markup.

    Args:
        html: The markup, already decoded to ``str``.

    Returns:
        Plain text with paragraph and line breaks kept; ``""`` when there is no visible text.
    """
    collector = _TextCollector()
    try:
        collector.feed(html)
        collector.close()
    except (AssertionError, ValueError, IndexError, TypeError):
        # html.parser still raises on some broken declarations (e.g. ``<![foo`` on 3.11):
        # keep what was collected and strip tags crudely from the unparsed rest.
        remainder = _TAGS.sub(" ", getattr(collector, "rawdata", ""))
        collector.parts.append(" " + _WHITESPACE.sub(" ", remainder))
    return _tidy("".join(collector.parts))
