"""The fast paths of mime (header reads, boundaries, address splits) agree with the slow ones."""

from __future__ import annotations

import email.feedparser
import re
from email import policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages import mime
from streams.stages.mime_feedparser import BytesFeedParser, _BoundaryAwareRe
from streams.stages.mime_headers import plain_header_value

NAMES = (
    "content-type",
    "content-disposition",
    "content-transfer-encoding",
    "message-id",
    "subject",
    "in-reply-to",
    "mime-version",
    "x-mailer",
)
WORD = st.text("aZ09-._+/=*'%!\"\\()<>@,;:?é\udce9", min_size=0, max_size=8)
SPACE = st.sampled_from(["", " ", "\t", "  ", "\r\n ", "\n\t"])


def policy_value(name: str, value: str) -> str:
    return str(policy.default.header_fetch_parse(name, value))


@st.composite
def header_values(draw: st.DrawFn) -> str:
    """Values near the covered shapes: a head, then ``; name=value`` pairs, with noise."""
    head = draw(SPACE) + draw(WORD) + draw(st.sampled_from(["/", "", "@", "<"])) + draw(WORD)
    parameters = draw(
        st.lists(
            st.tuples(
                SPACE, st.sampled_from([";", ",", ""]), SPACE, WORD, SPACE, WORD, st.booleans()
            ),
            max_size=3,
        )
    )
    text = head
    for before, separator, after, name, around, value, quoted in parameters:
        text += f"{before}{separator}{after}{name}{around}={around}"
        text += f'"{value}"' if quoted else value
    return text + draw(st.sampled_from(["", " ", ";", ">", "=?utf-8?q?x?="]))


@settings(max_examples=800, deadline=None)
@given(name=st.sampled_from(NAMES), value=header_values())
def test_a_cheap_read_equals_the_policy_read(name: str, value: str) -> None:
    cheap = plain_header_value(name, value)
    if cheap is not None:
        assert cheap == policy_value(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("content-type", 'multipart/mixed; boundary="===============5049151929005471270=="'),
        ("content-type", "text/plain; charset=utf-8"),
        ("content-type", 'text/plain;\r\n charset="iso-8859-1"'),
        ("content-type", 'application/pdf; name="report 2026.pdf"'),
        ("content-disposition", 'attachment; filename="report 2026.pdf"'),
        ("content-transfer-encoding", "quoted-printable"),
        ("message-id", "<175.5@mail.example.net>"),
        ("subject", "Re: Quarterly budget #12"),
        ("in-reply-to", "<174.4@mail.example.net>"),
    ],
)
def test_the_shapes_mail_writes_are_read_cheaply_and_alike(name: str, value: str) -> None:
    assert plain_header_value(name, value) == policy_value(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("subject", "=?utf-8?q?caf=C3=A9?="),  # encoded words: the policy decodes them
        ("subject", "caf\udce9"),  # undecoded 8-bit bytes: the policy replaces them
        ("content-type", "text/plain; charset*=utf-8''x"),  # RFC 2231
        ("content-type", 'text/plain; name="=?utf-8?q?a?="'),  # decoded even inside quotes
        ("content-type", "text/plain; charset=utf-8 (comment)"),
        ("content-type", "text/plain; a=1; A=2"),  # the policy keeps one of the two
        ("content-type", "text/plain;"),
        ("message-id", "<a@b> <c@d>"),
        ("date", "Mon, 02 Nov 2026 10:00:00 +0000"),  # structured, reformatted by the policy
    ],
)
def test_other_shapes_are_left_to_the_policy(name: str, value: str) -> None:
    assert plain_header_value(name, value) is None


BOUNDARIES = st.text("aZ09'()+_,-./:=? \t*$^|[]{}\\", min_size=1, max_size=30)
LINE_TAILS = st.lists(st.sampled_from(["-", "--", " ", "\t", "\r", "\n", "\r\n", "x"]), max_size=5)


@settings(max_examples=500, deadline=None)
@given(boundary=BOUNDARIES, prefix=st.sampled_from(["", "--", "---", "x--"]), tail=LINE_TAILS)
def test_the_boundary_matcher_matches_as_the_stdlib_pattern(
    boundary: str, prefix: str, tail: list[str]
) -> None:
    separator = "--" + boundary
    pattern = (
        "(?P<sep>" + re.escape(separator) + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
    )
    compiled, cheap = re.compile(pattern), _BoundaryAwareRe().compile(pattern)
    assert not isinstance(cheap, re.Pattern)  # the pattern was recognised
    line = prefix + boundary + "".join(tail)
    expected, found = compiled.match(line), cheap.match(line)
    assert (found is None) == (expected is None)
    if expected is not None and found is not None:
        for group in ("end", "ws", "linesep"):
            assert found.group(group) == expected.group(group)


def test_other_patterns_compile_as_usual() -> None:
    assert _BoundaryAwareRe().compile(r"(\r\n|\r|\n)\Z").pattern == r"(\r\n|\r|\n)\Z"


def test_the_shared_stdlib_parser_is_left_alone() -> None:
    assert email.feedparser.re is re
    parser = BytesFeedParser(policy=policy.default)
    parser.feed(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhi\r\n--b--\r\n")
    message = parser.close()
    assert [part.get_payload() for part in message.iter_parts()] == ["hi"]


ADDRESS_TEXT = st.text('ab@.<>, \t"();:[]\\=?é', max_size=40)


@settings(max_examples=800, deadline=None)
@given(
    text=st.one_of(
        ADDRESS_TEXT,
        st.lists(
            st.tuples(
                st.sampled_from(["", "Ana ", "=?utf-8?q?Zo=C3=AB?= ", '"B, C" ']), ADDRESS_TEXT
            ),
            max_size=4,
        ).map(lambda pairs: ", ".join(f"{name}<{addr}>" for name, addr in pairs)),
    )
)
def test_address_lists_split_at_commas_read_as_a_whole(text: str) -> None:
    whole = mime._mailboxes(text)
    pieces = mime._address_pieces(text)
    if pieces is not None:
        assert tuple(box for piece in pieces for box in mime._mailboxes(piece)) == whole
    assert mime._addresses({"to": [text]}, "to") == whole
