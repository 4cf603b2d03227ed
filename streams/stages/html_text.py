"""Turn an HTML mail body into readable plain text (pure, synchronous, never raises).

The markup is parsed by Lexbor (through :mod:`selectolax`), which implements the HTML5
tree-building algorithm: implied ``</head>``, unclosed ``<svg>``, misnested formatting tags,
stray table content and the rest of what real mail contains end up in the same tree a browser
builds. This module only walks that tree; it never tokenizes markup itself. The rules are few
and are tested in ``tests/unit/streams/test_html_text.py``:

* only ``<body>`` is read; ``script``, ``style``, ``title``, ``noscript``, ``template``,
  ``iframe``, ``svg``, ``math`` (and a few other never-rendered elements) are dropped with
  their content;
* block elements (``p``, ``div``, headings, table rows, ``blockquote``, ...) start new lines,
  paragraphs are separated by one blank line, ``br`` is a line break, ``hr`` a blank line;
* table cells on a row are separated by a space, each row is a line;
* list items become ``- item`` (``1. item`` inside ``ol``), nested lists are indented;
* link text is kept, the target is not (mail is full of tracking URLs);
* whitespace collapses as a browser would, except inside ``pre`` and ``textarea``;
* entities are decoded; non-breaking spaces become spaces.

:func:`meta_charsets` is the byte-level half: the HTML5 prescan for ``<meta charset>``
declarations, used by :mod:`streams.stages.mime` when a part's Content-Type names no charset.

This module must not do I/O or decode bytes into text; charset decisions belong to ``mime``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from selectolax.lexbor import LexborHTMLParser, LexborNode

__all__ = ["PRESCAN_BYTES", "html_to_text", "meta_charsets"]

# Rendered by no mail client: dropped with everything inside them.
_DROPPED = frozenset(
    {
        "script",
        "style",
        "head",
        "title",
        "noscript",
        "template",
        "iframe",
        "noembed",
        "noframes",
        "datalist",
        "svg",
        "math",
    }
)
# Newlines owed before and after a block: 2 leaves a blank line (the UA stylesheet gives these
# elements vertical margins), 1 only starts a new line.
_BLOCKS: dict[str, int] = {
    **dict.fromkeys(
        (
            "p",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "blockquote",
            "pre",
            "listing",
            "xmp",
            "plaintext",
            "table",
            "dl",
            "address",
            "figure",
            "fieldset",
            "form",
            "hr",
        ),
        2,
    ),
    **dict.fromkeys(
        (
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
            "thead",
            "tbody",
            "tfoot",
            "details",
            "summary",
            "dialog",
            "hgroup",
            "search",
            "legend",
            "option",
            "optgroup",
            "textarea",
        ),
        1,
    ),
}
_LISTS = frozenset({"ul", "ol", "menu", "dir"})
_CELLS = frozenset({"td", "th"})
# Whitespace inside these is kept as written.
_PREFORMATTED = frozenset({"pre", "listing", "xmp", "plaintext", "textarea"})
# Elements that need any handling; the rest (a, span, b, font...) are transparent.
_STRUCTURAL = _DROPPED | _BLOCKS.keys() | _LISTS | _CELLS | {"br"}
# HTML's ASCII whitespace, plus the no-break space that mail uses as padding everywhere.
_COLLAPSIBLE = re.compile("[ \t\n\r\f\xa0]+")

# The HTML5 prescan reads this many bytes and no more (WHATWG HTML, "encoding sniffing").
PRESCAN_BYTES = 1024
_META_START = re.compile(rb"<meta[\t\n\f\r /]")
_TAG_START = re.compile(rb"</?[a-z][^\t\n\f\r >]*")
# One step of the prescan's "get an attribute": a name, then optionally '=' and a value.
_ATTRIBUTE = re.compile(
    rb"""
    [\t\n\f\r /]*
    (?P<name> [^\t\n\f\r />] [^\t\n\f\r />=]* )
    (?: [\t\n\f\r ]* = [\t\n\f\r ]*
        (?: "(?P<double>[^"]*)" | '(?P<single>[^']*)' | (?P<bare>[^\t\n\f\r >"'][^\t\n\f\r >]*) )?
    )?
    """,
    re.VERBOSE,
)
# The "extracting a character encoding from a meta element" algorithm, for content="...".
_CONTENT_CHARSET = re.compile(
    rb"""
    charset [\t\n\f\r ]* = [\t\n\f\r ]*
    (?: "(?P<double>[^"]*)" | '(?P<single>[^']*)' | (?P<bare>[^\t\n\f\r ;"'][^\t\n\f\r ;]*) )
    """,
    re.VERBOSE,
)


# --- text ------------------------------------------------------------------------------------


def html_to_text(html: str) -> str:
    """Return the readable text of an HTML document or fragment.

    Pure and deterministic; never raises on malformed markup.

    Args:
        html: The markup, already decoded to ``str`` (see :func:`meta_charsets`).

    Returns:
        Plain text with paragraph and line breaks kept; ``""`` when there is no visible text.
    """
    # <noscript> content is dropped, so parse it as a browser that runs scripts does: as one
    # opaque text node. Parsed as markup (scripting off), a <p> inside it closes the enclosing
    # <p> and the <noscript> with it, and the dropped text leaks out into the body.
    body = LexborHTMLParser(html, scripting=True).body
    if body is None:  # a <frameset> document has no body and nothing to read
        return ""
    converter = _Converter()
    _walk(body, converter)
    return converter.writer.result()


class _Writer:
    """Collect text; breaks, spaces and list markers wait until the next visible text.

    Holding them back is what keeps empty blocks, trailing ``<br>`` and whitespace between
    tags from producing stray blank lines or spaces.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.newlines = 0  # owed before the next text
        self.space = False  # a collapsed space owed before the next text
        self.marker = ""  # a list marker owed before the next text

    def block(self, newlines: int) -> None:
        # Inside a list item that has shown nothing yet, its own line start is enough:
        # <li><p>x</p></li> reads "- x", not "-" and a blank line.
        if not self.marker:
            self.newlines = max(self.newlines, newlines)

    def line_break(self) -> None:
        self.newlines += 1  # <br><br> is a blank line, unlike two block boundaries

    def separate(self) -> None:
        self.space = True

    def list_item(self, marker: str) -> None:
        self.newlines = max(self.newlines, 1)
        self.marker = marker

    def text(self, data: str) -> None:
        collapsed = _COLLAPSIBLE.sub(" ", data)
        words = collapsed.strip(" ")
        if collapsed.startswith(" "):
            self.space = True
        if words:
            self._open()
            self.parts.append(words)
            self.space = collapsed.endswith(" ")

    def preformatted(self, data: str) -> None:
        if data:
            self._open()
            self.parts.append(data.replace("\xa0", " "))

    def result(self) -> str:
        return _tidy("".join(self.parts))

    def _open(self) -> None:
        if self.parts:  # breaks and spaces before the first text would only be stripped
            if self.newlines:
                self.parts.append("\n" * self.newlines)
            elif self.space:
                self.parts.append(" ")
        self.newlines = 0
        self.space = False
        if self.marker:
            self.parts.append(self.marker)
            self.marker = ""


class _Converter:
    """Map elements entered and left during the walk onto :class:`_Writer` calls."""

    def __init__(self) -> None:
        self.writer = _Writer()
        self.lists: list[int | None] = []  # per open list: items so far for ol, None for ul
        self.preformatted = 0

    def enter(self, node: LexborNode) -> bool:
        """Handle a node's start; return whether its children are to be visited."""
        tag = node.tag
        if tag == "-text":
            self._text(node.text_content or "")
            return False
        if tag not in _STRUCTURAL:  # inline elements, comments
            return True
        if tag in _DROPPED:
            return False
        if tag == "br":
            self.writer.line_break()
        elif tag in _LISTS:
            self.writer.block(1 if self.lists else 2)
            self.lists.append(0 if tag == "ol" else None)
        elif tag == "li":
            self.writer.list_item(self._marker())
        elif tag in _CELLS:
            self.writer.separate()
        else:
            self._block(tag, entering=True)
        return True

    def leave(self, node: LexborNode) -> None:
        """Handle the end of an element whose children were visited (or that had none)."""
        tag = node.tag
        if tag not in _STRUCTURAL:
            return
        if tag in _LISTS and self.lists:
            self.lists.pop()
            self.writer.block(1 if self.lists else 2)
        else:
            self._block(tag, entering=False)

    def _text(self, data: str) -> None:
        if self.preformatted:
            self.writer.preformatted(data)
        else:
            self.writer.text(data)

    def _block(self, tag: str, *, entering: bool) -> None:
        newlines = _BLOCKS.get(tag)
        if newlines is None:
            return
        self.writer.block(newlines)
        if tag in _PREFORMATTED:
            self.preformatted += 1 if entering else -1

    def _marker(self) -> str:
        indent = "  " * max(0, len(self.lists) - 1)
        if not self.lists or self.lists[-1] is None:
            return indent + "- "
        count = self.lists[-1] + 1
        self.lists[-1] = count
        return f"{indent}{count}. "


def _walk(root: LexborNode, converter: _Converter) -> None:
    """Visit ``root``'s descendants in document order, calling enter and leave on each.

    Iterative on purpose: mail with thousands of nested elements must not hit Python's
    recursion limit, and dropped subtrees are skipped without being visited.
    """
    node = root.first_child
    depth = 1
    while node is not None:
        child = node.first_child if converter.enter(node) else None
        if child is not None:
            node = child
            depth += 1
            continue
        while node is not None:
            converter.leave(node)
            sibling = node.next
            if sibling is not None:
                node = sibling
                break
            depth -= 1
            node = node.parent if depth else None


def _tidy(text: str) -> str:
    """Strip line ends, keep at most one blank line in a row, trim the ends."""
    out: list[str] = []
    blank = 0
    for line in text.split("\n"):
        line = line.rstrip()
        blank = blank + 1 if not line else 0
        if blank <= 1:
            out.append(line)
    return "\n".join(out).strip()


# --- charset declarations --------------------------------------------------------------------


def meta_charsets(data: bytes) -> Iterator[str]:
    """Yield the charset labels declared by ``<meta>`` tags, as the HTML5 prescan finds them.

    Reads the first :data:`PRESCAN_BYTES` bytes the way the WHATWG "prescan a byte stream to
    determine its encoding" algorithm does: comments, other tags and their attribute values are
    skipped, so a ``charset=`` inside them is not a declaration. ``<meta charset=X>`` and
    ``<meta http-equiv="Content-Type" content="...; charset=X">`` count. Labels come lower-cased
    and unvalidated; the caller takes the first one it knows (the prescan also skips labels it
    does not recognise). Pure; never raises.
    """
    head = data[:PRESCAN_BYTES].lower()  # bytes.lower() touches ASCII only, as the spec does
    position = 0
    while (position := head.find(b"<", position)) != -1:
        if head.startswith(b"<!--", position):
            # "<!-->" is a whole comment: the search for "-->" starts inside the opener.
            position = _after(head, b"-->", position + 2)
        elif _META_START.match(head, position):
            attributes, position = _attributes(head, position + len(b"<meta"))
            label = _declared_label(attributes)
            if label:
                yield label
        elif match := _TAG_START.match(head, position):
            position = _attributes(head, match.end())[1]
        elif head.startswith((b"<!", b"</", b"<?"), position):
            position = _after(head, b">", position)
        else:
            position += 1
        if position < 0:
            return


def _after(head: bytes, marker: bytes, start: int) -> int:
    """Return the position just past ``marker`` at or after ``start``; -1 when it never ends."""
    found = head.find(marker, start)
    return -1 if found == -1 else found + len(marker)


def _attributes(head: bytes, position: int) -> tuple[dict[bytes, bytes], int]:
    """Read a tag's attributes from ``position``; return them (first of a name wins) and the
    position after the tag's ``>`` (-1 when the bytes end first)."""
    attributes: dict[bytes, bytes] = {}
    while (match := _ATTRIBUTE.match(head, position)) is not None:
        value = match.group("double") or match.group("single") or match.group("bare") or b""
        attributes.setdefault(match.group("name"), value)
        position = match.end()
    return attributes, _after(head, b">", position)


def _declared_label(attributes: dict[bytes, bytes]) -> str | None:
    """Return the charset one ``<meta>`` declares: ``charset=`` first, else the pragma."""
    charset = attributes.get(b"charset")
    if charset is None and attributes.get(b"http-equiv") == b"content-type":
        match = _CONTENT_CHARSET.search(attributes.get(b"content", b""))
        if match:
            charset = match.group("double") or match.group("single") or match.group("bare")
    return charset.strip().decode("latin-1") if charset else None
