"""html_to_text and meta_charsets: structure, HTML5 parsing, mail-shaped bodies, properties."""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.html_text import PRESCAN_BYTES, html_to_text, meta_charsets

# --- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("a<br>b<br/><br>c", "a\nb\n\nc"),
        ("<div>x <span>y</span>\n\n   z</div>", "x y z"),
        ("<p>before<script>evil()</script>after</p>", "beforeafter"),
        ("<ul><li>a<ul><li>b</li></ul></li></ul>", "- a\n  - b"),
        ("<a href='https://e.example'>click</a> &amp; &lt;go&gt;", "click & <go>"),
        ("<![if !mso]>kept<![endif]>", "kept"),
        ("<<<>>>", "<<<>>>"),
        ("", ""),
        # A <br> at the end of a block ends its line; it does not add an empty one.
        ("<div>a<br></div><div>b</div>", "a\nb"),
        ("<p>a<br></p><p>b</p><div>c<br><br></div>d", "a\n\nb\n\nc\n\nd"),
        ("<ol><li>a<li>b<ol><li>c</ol><li>d</ol>", "1. a\n2. b\n  1. c\n3. d"),
        ("<ul><li><p>in a paragraph</p></li></ul>", "- in a paragraph"),
        ("<li>outside any list", "- outside any list"),
        ("<table><tr><th>Item<th>Qty<tr><td>Tea<td><td>2</table>", "Item Qty\nTea 2"),
        ("<h1>Title</h1>text<hr>more", "Title\n\ntext\n\nmore"),
        ("<p>a&nbsp;&nbsp;b&#8212;&eacute;&#x263A;</p>", "a b\u2014\u00e9\u263a"),
        ("<pre>\n  two\n    four</pre>after", "two\n    four\n\nafter"),
        ("x<textarea>\n  kept  as\nwritten</textarea>", "x\n  kept  as\nwritten"),
        ("<select><option>One<option>Two</select>", "One\nTwo"),
        ("<b>bold<p>para</b>rest</p>", "bold\n\npararest"),
        ("<frameset><frame src=a.html></frameset>", ""),
    ],
)
def test_html_to_text_cases(markup: str, expected: str) -> None:
    assert html_to_text(markup) == expected


@pytest.mark.parametrize(
    "hidden",
    [
        "<script>var x = 1;</script>",
        "<style>p { color: red }</style>",
        "<title>title</title>",
        "<noscript>enable scripts</noscript>",
        "<template><p>template</p></template>",
        "<iframe>frame fallback</iframe>",
        "<svg><text>drawing</text></svg>",
        "<math><mi>x</mi></math>",
        "<!-- a comment -->",
    ],
)
def test_invisible_content_is_dropped(hidden: str) -> None:
    assert html_to_text(f"<p>shown {hidden}too</p>") == "shown too"


# --- defects of the converter this one replaced -----------------------------------------------


def test_head_without_end_tag_keeps_the_body() -> None:
    # </head> is optional in HTML5: <body> closes it.
    markup = (
        "<html><head><meta charset=utf-8><title>Invoice</title>"
        "<body><p>Your invoice #123 is due.</p>"
    )
    assert html_to_text(markup) == "Your invoice #123 is due."


def test_unclosed_svg_does_not_swallow_the_rest() -> None:
    markup = "<p>Logo <svg width=10><path d='M0 0h10'></p><div>Your order shipped.</div>"
    assert html_to_text(markup) == "Logo\n\nYour order shipped."


def test_broken_markup_declaration_is_not_duplicated() -> None:
    # "<![x>" is a bogus comment; the old fallback repeated the text before it.
    assert html_to_text("ok <![x>after") == "ok after"
    assert html_to_text("<p>ok <![foo]>ok after</p>") == "ok ok after"


def test_deep_nesting_does_not_recurse() -> None:
    assert html_to_text("<div>" * 20_000 + "deep" + "</div>" * 20_000) == "deep"
    assert html_to_text("<span>" * 20_000 + "deep") == "deep"


def test_surrogates_and_nul_do_not_raise() -> None:
    text = html_to_text("<p>a\ud800b\x00c</p>")
    text.encode("utf-8")
    assert "\x00" not in text


# --- mail-shaped bodies ----------------------------------------------------------------------

RECEIPT = """<!DOCTYPE html><html><head><style>td { padding: 4px }</style></head><body>
<p>Hi Ana,</p><p>Thanks for your order #4471.</p>
<table border="1"><thead><tr><th>Item</th><th>Qty</th><th>Price</th></tr></thead>
<tbody><tr><td>Green tea</td><td align="right">2</td><td>&euro;8.50</td></tr>
<tr><td>Teapot</td><td align="right">1</td><td>&euro;32.00</td></tr></tbody>
<tfoot><tr><td colspan="2">Total</td><td>&euro;40.50</td></tr></tfoot></table>
<p>Next steps:</p><ol><li>We pack it.</li>
<li>We ship it &mdash; <a href="https://t.example/track">track it</a>.</li></ol>
</body></html>"""

REPLY = """<div dir="ltr">Sounds good, see you Monday.<br><br>Bo<br></div><br>
<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Fri, 6 Mar 2026 Ana
&lt;ana@example.com&gt; wrote:<br></div>
<blockquote class="gmail_quote" style="margin:0 0 0 .8ex">
<div>Can we move the review?</div><div>Options:</div>
<ul><li>Monday 10:00</li><li>Tuesday 14:00</li></ul></blockquote></div>"""

NEWSLETTER = """<html><head><title>Weekly</title></head><body>
<table width="600" align="center"><tr><td><center><h1>This week</h1></center></td></tr>
<tr><td><table width="100%"><tr><td><img src="https://img.example/1.png" alt="Cover"></td>
<td><h2 style="margin:0">Deploy window moves</h2><p>The window is now Friday&nbsp;18:00.</p>
<a href="https://t.example/c?u=1">Read more&nbsp;&rarr;</a></td></tr></table></td></tr>
<tr><td><p style="font-size:11px">You subscribed. <a href="https://t.example/u">Unsubscribe</a>
</p></td></tr></table><img src="https://t.example/open.gif" width="1" height="1"></body></html>"""


def test_receipt_table_and_ordered_list() -> None:
    assert html_to_text(RECEIPT) == (
        "Hi Ana,\n\nThanks for your order #4471.\n\n"
        "Item Qty Price\nGreen tea 2 \u20ac8.50\nTeapot 1 \u20ac32.00\nTotal \u20ac40.50\n\n"
        "Next steps:\n\n1. We pack it.\n2. We ship it \u2014 track it."
    )


def test_gmail_reply_with_quote() -> None:
    assert html_to_text(REPLY) == (
        "Sounds good, see you Monday.\n\nBo\n\n"
        "On Fri, 6 Mar 2026 Ana <ana@example.com> wrote:\n\n"
        "Can we move the review?\nOptions:\n\n- Monday 10:00\n- Tuesday 14:00"
    )


def test_newsletter_layout_tables() -> None:
    assert html_to_text(NEWSLETTER) == (
        "This week\n\nDeploy window moves\n\nThe window is now Friday 18:00.\n\n"
        "Read more \u2192\n\nYou subscribed. Unsubscribe"
    )


# --- meta charset prescan --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'<meta charset="windows-1251">', ["windows-1251"]),
        (b"<META CHARSET=' KOI8-R '>", ["koi8-r"]),
        (b"<meta/charset=utf-8>", ["utf-8"]),
        (
            b'<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=ISO-8859-2">',
            ["iso-8859-2"],
        ),
        (b"<meta content=\"text/html;charset='gbk'\" http-equiv=content-type>", ["gbk"]),
        # content= without the http-equiv pragma declares nothing.
        (b'<meta content="text/html; charset=koi8-r">', []),
        # charset= wins over the pragma in the same tag; the first of a name wins.
        (b'<meta http-equiv=content-type content="charset=koi8-r" charset=utf-8>', ["utf-8"]),
        (b"<meta charset=a charset=b>", ["a"]),
        # Comments and other tags' attribute values are skipped, not searched.
        (b"<!-- <meta charset=x> --><meta charset=y>", ["y"]),
        (b"<!--><meta charset=y>", ["y"]),
        (b'<a title="<meta charset=x>"><meta charset=y>', ["y"]),
        (b"<!-- <meta charset=x>", []),
        (b"<metadata charset=x><meta charset=y>", ["y"]),
        (b"<meta charset=bogus><meta charset=utf-8>", ["bogus", "utf-8"]),
        (b" " * PRESCAN_BYTES + b"<meta charset=utf-8>", []),
        (b"", []),
    ],
)
def test_meta_charsets(data: bytes, expected: list[str]) -> None:
    assert list(meta_charsets(data)) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_meta_charsets_never_raises(data: bytes) -> None:
    assert all(isinstance(label, str) for label in meta_charsets(data))


# --- properties ------------------------------------------------------------------------------

# No "-" or "." (list markers are made of them) and no whitespace; "&<>" test escaping.
_WORD = st.text(alphabet=st.sampled_from(list("abcxyzÄéßжщ中文029&<>\"'")), min_size=1, max_size=6)
_SEPARATORS = st.sampled_from([" ", "\n", "\t", "  \n ", "\r\n", "&nbsp;", " &nbsp; "])
_HIDDEN = "zzhidden"
_INVISIBLE = [
    f"<script>var {_HIDDEN} = '</p>';</script>",
    f"<style>p::before {{ content: '{_HIDDEN}' }}</style>",
    f"<template><p>{_HIDDEN}</p></template>",
    f"<noscript><p>{_HIDDEN}</p></noscript>",
    f"<svg><text>{_HIDDEN}</text></svg>",
    f"<title>{_HIDDEN}</title>",
    f"<!-- {_HIDDEN} -->",
]
_INLINE = ["span", "b", "i", "em", "strong", "a href='https://t.example/x'", "code", "u", "font"]
_BLOCK = ["div", "p", "section", "blockquote", "h2", "center", "article", "pre"]
_MARKER = re.compile(r"^(?:-|\d+\.)$")


@dataclass(frozen=True)
class _Html:
    """Generated markup and the words a reader sees in it, in order."""

    markup: str
    words: tuple[str, ...]


def _concat(parts: list[_Html]) -> _Html:
    return _Html("".join(p.markup for p in parts), tuple(w for p in parts for w in p.words))


def _wrap(tag: str, inner: _Html) -> _Html:
    return _Html(f"<{tag}>{inner.markup}</{tag.split()[0]}>", inner.words)


def _list(tag: str, items: list[_Html]) -> _Html:
    return _wrap(tag, _concat([_wrap("li", item) for item in items]))


def _table(rows: list[list[_Html]]) -> _Html:
    cells = [_concat([_wrap("td", cell) for cell in row]) for row in rows]
    return _wrap("table", _concat([_wrap("tr", row) for row in cells]))


@st.composite
def _text(draw: st.DrawFn, padded: bool) -> _Html:
    words = draw(st.lists(_WORD, min_size=1, max_size=4))
    markup = ""
    for word in words:
        markup += draw(_SEPARATORS) if padded or markup else ""
        markup += html.escape(word, quote=False)
    if padded or draw(st.booleans()):
        markup += draw(_SEPARATORS)
    return _Html(markup, tuple(words))


def _trees(padded: bool) -> st.SearchStrategy[_Html]:
    """Random nested visible elements with text, plus invisible elements and <br>."""
    leaves = st.one_of(
        _text(padded),
        _text(padded),
        st.sampled_from(_INVISIBLE).map(lambda markup: _Html(markup, ())),
        st.just(_Html("<br>", ())),
    )

    def extend(children: st.SearchStrategy[_Html]) -> st.SearchStrategy[_Html]:
        kids = st.lists(children, min_size=1, max_size=4).map(_concat)
        return st.one_of(
            st.tuples(st.sampled_from(_INLINE), kids).map(lambda pair: _wrap(*pair)),
            st.tuples(st.sampled_from(_BLOCK), kids).map(lambda pair: _wrap(*pair)),
            st.tuples(st.sampled_from(["ul", "ol"]), st.lists(kids, min_size=1, max_size=3)).map(
                lambda pair: _list(*pair)
            ),
            st.lists(st.lists(kids, min_size=1, max_size=3), min_size=1, max_size=3).map(_table),
        )

    return st.recursive(leaves, extend, max_leaves=25)


def _tokens(text: str) -> list[str]:
    return [token for token in text.split() if not _MARKER.match(token)]


@settings(max_examples=200, deadline=None)
@given(_trees(padded=True))
def test_every_visible_word_once_and_in_order(tree: _Html) -> None:
    text = html_to_text(tree.markup)
    tokens = _tokens(text)
    assert Counter(tokens) == Counter(tree.words)  # nothing lost, nothing duplicated
    assert tokens == list(tree.words)  # and in document order
    assert _HIDDEN not in text


@settings(max_examples=200, deadline=None)
@given(_trees(padded=False))
def test_adjacent_text_keeps_its_characters_in_order(tree: _Html) -> None:
    # Text nodes may touch here ("a<b>b</b>" reads "ab"), so compare without whitespace.
    text = html_to_text(tree.markup)
    assert "".join(_tokens(text)) == "".join(tree.words)
    assert _HIDDEN not in text


@settings(max_examples=200, deadline=None)
@given(_trees(padded=True))
def test_whitespace_is_tidy(tree: _Html) -> None:
    text = html_to_text(tree.markup)
    lines = text.split("\n")
    assert text == text.strip()
    assert all(line == line.rstrip() for line in lines)
    assert "\n\n\n" not in text
    if "<pre>" not in tree.markup:
        # Indentation of nested list items aside, spaces never run.
        assert all("  " not in line.lstrip(" ") for line in lines)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/!-[]ab &;#x\"'=\n pscriptvgme")), max_size=200))
def test_html_to_text_never_raises(markup: str) -> None:
    text = html_to_text(markup)
    assert text == text.strip()
