"""Hostile mail for the normalize core: a valid event or a PermanentError, quickly, bounded memory.

``normalized_event`` is what the normalize stage runs (inline or in the CPU pool). For every
input it must either return an ``EmailNormalized`` that survives the serde (encode, decode, equal)
or raise a ``PermanentError`` (the record goes to the DLQ); anything else would be a bug routed
as one, and a slow parse would eat the per-record deadline.
"""

from __future__ import annotations

import base64
import time
import tracemalloc
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas import serde
from schemas.errors import MimeBombError, PermanentError
from schemas.models import EmailNormalized, GmailMessageFetched
from streams.stages.mime import MAX_MIME_DEPTH, MAX_MIME_PARTS, normalized_event

NOW = datetime(2026, 3, 3, 9, 15, tzinfo=UTC)
# Inputs here stay under ~300 kB; the slowest legitimate ones parse in well under 0.2 s.
MAX_SECONDS_PER_MESSAGE = 2.0
HOSTILE = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fetched(raw: bytes) -> GmailMessageFetched:
    return GmailMessageFetched(
        user_id="u-1",
        message_id="m-1",
        thread_id="t-1",
        sync_id="s-1",
        label_ids=["INBOX"],
        internal_date=NOW,
        size_estimate=len(raw),
        snippet="",
        raw=raw,
        fetched_at=NOW,
    )


def check(raw: bytes) -> EmailNormalized | PermanentError:
    """Normalize ``raw``; assert the outcome is a round-tripping event or a PermanentError."""
    started = time.perf_counter()
    try:
        event = normalized_event(fetched(raw), NOW)
    except PermanentError as exc:
        outcome: EmailNormalized | PermanentError = exc
    else:
        assert isinstance(event, EmailNormalized)
        assert EmailNormalized.model_validate(event.model_dump()) == event
        assert serde.decode(serde.encode(event), EmailNormalized) == event
        outcome = event
    elapsed = time.perf_counter() - started
    assert elapsed < MAX_SECONDS_PER_MESSAGE, f"{len(raw)} bytes took {elapsed:.2f} s"
    return outcome


# --- strategies ------------------------------------------------------------------------------

_CHARSETS = st.sampled_from(
    [
        "utf-8",
        "iso-8859-1",
        "us-ascii",
        "x-unknown",
        "",
        "utf-7",
        "utf-16",
        "utf-32",
        "unicode_escape",
        "raw_unicode_escape",
        "punycode",
        "idna",
        "base64",
        "rot13",
        "hex",
        "zlib",
        "uu",
        "iso-2022-jp",
        "gb2312",
        "shift_jis",
        "utf-8*en",
        '"utf-8"',
        "\x00",
        "cp65001",
    ]
)
_TEXT = st.text(max_size=40)
_BYTES_TEXT = st.binary(max_size=40).map(lambda b: b.decode("latin-1"))


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    charset = draw(_CHARSETS)
    encoding = draw(st.sampled_from("BbQqXx"))
    payload = draw(
        st.one_of(
            st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
            st.text(alphabet="=_?ABCDEF0123456789abc \t", max_size=30),
            _TEXT,
        )
    )
    return f"=?{charset}?{encoding}?{payload}?="


_HEADER_NAMES = st.sampled_from(
    [
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "MIME-Version",
        "X-Junk",
    ]
)
_HEADER_VALUES = st.one_of(
    _TEXT,
    _BYTES_TEXT,
    st.lists(st.one_of(encoded_words(), _TEXT), max_size=6).map(" ".join),
    # Huge headers: one long unfolded line, or thousands of addresses / folds.
    st.integers(1, 200_000).map(lambda n: "x" * n),
    st.integers(1, 5_000).map(lambda n: ", ".join(f"u{i}@example.com" for i in range(n))),
    st.integers(1, 5_000).map(lambda n: "a\r\n " * n),
    st.integers(1, 2_000).map(lambda n: "(" * n + "a@b.c" + ")" * (n // 2)),
    st.integers(1, 2_000).map(lambda n: "=?utf-8?q?a?= " * n),
    st.sampled_from(
        [
            "multipart/mixed",
            'multipart/mixed; boundary=""',
            "multipart/alternative; boundary=b",
            "text/html; charset=x-bogus",
            "text/plain; charset=utf-16",
            "message/rfc822",
            "base64",
            "quoted-printable",
            "x-uuencode",
            "attachment; filename*=utf-8''%FF%FE",
            "attachment; filename==?bogus?B?////?=",
            "Tue, 31 Dec 9999 23:59:60 -2400",
            "Mon, 1 Jan 0001 00:00:00 +9999",
        ]
    ),
)
_HEADERS = st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=8)
_CTE = st.sampled_from(["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uue", "bogus"])
_LEAF_TYPES = st.sampled_from(
    [
        "text/plain",
        "text/html",
        "application/octet-stream",
        "image/png",
        "message/rfc822",
        "multipart/mixed",  # a multipart leaf without a boundary
    ]
)


def _head(headers: list[tuple[str, str]]) -> bytes:
    text = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def leaf_part(draw: st.DrawFn) -> bytes:
    ctype = draw(_LEAF_TYPES)
    charset = draw(_CHARSETS)
    cte = draw(_CTE)
    body = draw(
        st.one_of(
            st.binary(max_size=300),
            st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.binary(max_size=200).map(base64.b64encode),
            st.just(b"<html><body><p>hi</p>" * 50),
        )
    )
    extra = _head(draw(_HEADERS))
    return (
        f'Content-Type: {ctype}; charset="{charset}"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n".encode("utf-8", "surrogatepass")
        + extra
        + b"\r\n"
        + body
    )


def _multipart(children: list[bytes], boundary: str, subtype: str, closed: bool) -> bytes:
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\npreamble\r\n'
    parts = b"".join(f"--{boundary}\r\n".encode() + child + b"\r\n" for child in children)
    tail = f"--{boundary}--\r\nepilogue\r\n".encode() if closed else b""
    return head.encode() + parts + tail


@st.composite
def mime_tree(draw: st.DrawFn, max_depth: int = 6) -> bytes:
    """A multipart tree up to ``max_depth`` deep with broken pieces: unclosed or reused
    boundaries, wrong subtypes, garbage leaves, message/rfc822 wrappers."""
    if max_depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(leaf_part())
    children = draw(st.lists(mime_tree(max_depth=max_depth - 1), min_size=0, max_size=3))
    boundary = draw(st.sampled_from(["b", "b1", "=_x", "", " ", "a" * 80, "--", "b\x00"]))
    node = _multipart(
        children,
        boundary,
        draw(st.sampled_from(["mixed", "alternative", "related", "digest", "signed"])),
        closed=draw(st.booleans()),
    )
    if draw(st.booleans()):
        node = b"Content-Type: message/rfc822\r\n\r\n" + node
    return node


@st.composite
def broken_message(draw: st.DrawFn) -> bytes:
    raw = _head(draw(_HEADERS)) + draw(mime_tree())
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return raw if cut is None else raw[:cut]  # truncated anywhere, mid-boundary included


# --- properties ------------------------------------------------------------------------------


@HOSTILE
@given(raw=st.binary(max_size=4000))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@HOSTILE
@given(raw=broken_message())
def test_structured_but_broken_messages(raw: bytes) -> None:
    check(raw)


_MANY_WORDS = ", ".join(f"u{i}@example.com" for i in range(5_000))


@HOSTILE
@given(headers=_HEADERS, body=st.binary(max_size=200))
# Regression: the policy re-parsed this 100 kB Content-Type on each access, quadratically: 4.4 s.
@example(headers=[("Content-Type", _MANY_WORDS)], body=b"")
@example(headers=[("Content-Disposition", _MANY_WORDS)], body=b"")
def test_hostile_headers(headers: list[tuple[str, str]], body: bytes) -> None:
    outcome = check(_head(headers) + b"\r\n" + body)
    assert isinstance(outcome, EmailNormalized)  # headers alone are never a bomb


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    decoded_bytes=st.integers(1, 300_000),
    fill=st.sampled_from([b"\x00", b"A", b"\xff", b"\r\n"]),
    ctype=st.sampled_from(["text/plain", "text/html", "application/octet-stream"]),
    line_length=st.sampled_from([76, 0]),
)
def test_base64_that_expands(decoded_bytes: int, fill: bytes, ctype: str, line_length: int) -> None:
    """Base64 of long runs (what a zip bomb's payload looks like once inflated), wrapped or one
    huge line: bounded time, and an attachment's size is what it decodes to."""
    encoded = base64.b64encode(fill * decoded_bytes)
    if line_length:
        encoded = b"\r\n".join(
            encoded[i : i + line_length] for i in range(0, len(encoded), line_length)
        )
    raw = (
        b"From: a@example.com\r\nMIME-Version: 1.0\r\n"
        + f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n\r\n".encode()
        + encoded
    )
    outcome = check(raw)
    assert isinstance(outcome, EmailNormalized)
    if ctype == "application/octet-stream":
        assert [a.size for a in outcome.attachments] == [len(fill) * decoded_bytes]


def _references(count: int) -> bytes:
    return b"References: " + b" ".join(b"<%d@x.example>" % i for i in range(count)) + b"\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        # 1.7 MB References (a long thread gone wrong): 8 s in the quadratic unstructured parser.
        _references(100_000) + b"\r\nbody",
        # The same inside an attached message: refolded to size the attachment, 3.9 s at 0.9 MB.
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        + b"Content-Type: message/rfc822\r\n\r\n"
        + _references(50_000)
        + b"\r\nbody\r\n--b--\r\n",
        # 500 parts with 4,000-character names: each Content-Type parsed ~10 times, 2.6 s.
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        + b"".join(
            b'--b\r\nContent-Type: application/x; name="' + b"n" * 4000 + b'"\r\n\r\nx\r\n'
            for _ in range(500)
        )
        + b"--b--\r\n",
    ],
    ids=["references", "attached-references", "long-names"],
)
def test_quadratic_header_shapes_stay_fast(raw: bytes) -> None:
    outcome = check(raw)
    assert isinstance(outcome, EmailNormalized)


def test_references_are_kept_whole() -> None:
    outcome = check(_references(100_000) + b"\r\nbody")
    assert isinstance(outcome, EmailNormalized)
    assert len(outcome.references) == 100_000
    assert outcome.references[-1] == "<99999@x.example>"


# --- MIME bombs ------------------------------------------------------------------------------


def nested(depth: int, *, rfc822: bool = False) -> bytes:
    """A message whose multiparts (or attached messages) nest ``depth`` levels, then a leaf."""
    if rfc822:
        opening = b"Content-Type: message/rfc822\r\n\r\n" * depth
        return b"From: a@example.com\r\n" + opening + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    opening = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(depth)
    )
    closing = b"".join(f"\r\n--b{i}--".encode() for i in reversed(range(depth)))
    leaf = b"Content-Type: text/plain\r\n\r\ndeep"
    return b"From: a@example.com\r\n" + opening + leaf + closing


@pytest.mark.parametrize("rfc822", [False, True], ids=["multipart", "rfc822"])
def test_nesting_up_to_the_limit_is_parsed(rfc822: bool) -> None:
    outcome = check(nested(MAX_MIME_DEPTH - 1, rfc822=rfc822))
    assert isinstance(outcome, EmailNormalized)
    if not rfc822:
        assert outcome.text == "deep"


@pytest.mark.parametrize("rfc822", [False, True], ids=["multipart", "rfc822"])
@pytest.mark.parametrize("depth", [MAX_MIME_DEPTH, 10_000])
def test_deep_nesting_is_refused_as_a_mime_bomb(depth: int, rfc822: bool) -> None:
    raw = nested(depth, rfc822=rfc822)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(MimeBombError, match=f"deeper than {MAX_MIME_DEPTH} levels"):
            normalized_event(fetched(raw), NOW)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Before the guard: 500 levels took 4 s, 2,000 levels a RecursionError after 17 s.
    assert elapsed < MAX_SECONDS_PER_MESSAGE
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB for {len(raw)} bytes"


def test_too_many_parts_is_refused_as_a_mime_bomb() -> None:
    part = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    raw = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + part * (MAX_MIME_PARTS + 1)
    started = time.perf_counter()
    with pytest.raises(MimeBombError, match=f"more than {MAX_MIME_PARTS} parts"):
        normalized_event(fetched(raw), NOW)
    assert time.perf_counter() - started < MAX_SECONDS_PER_MESSAGE


def test_mime_bomb_error_is_permanent_and_survives_the_cpu_pool() -> None:
    """The pool pickles a worker's exception back to the stage: it must stay a MimeBombError."""
    import pickle

    with pytest.raises(MimeBombError) as caught:
        normalized_event(fetched(nested(MAX_MIME_DEPTH)), NOW)
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own bytes
    assert isinstance(copy, PermanentError)
    assert str(copy) == str(caught.value)


@example(raw=nested(MAX_MIME_DEPTH))  # regression: 500 levels took 4 s, 2,000 a RecursionError
@settings(max_examples=10, deadline=None)
@given(raw=st.integers(MAX_MIME_DEPTH, 3 * MAX_MIME_DEPTH).map(nested))
def test_nesting_past_the_limit_never_returns(raw: bytes) -> None:
    assert isinstance(check(raw), MimeBombError)
