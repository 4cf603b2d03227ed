"""normalize_message: MIME shapes, charsets, headers, dates, and the never-raises contract."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import MimeBombError
from streams.stages.mime import (
    SNIPPET_CHARS,
    Attachment,
    EmailAddress,
    NormalizedEmail,
    decode_bytes,
    decode_html,
    normalize_message,
)


def normalize(raw: bytes, **kwargs: object) -> NormalizedEmail:
    return normalize_message(
        raw, message_id="m-1", thread_id="t-1", label_ids=["INBOX", "UNREAD"], **kwargs
    )


def simple_message(body: str = "Hello there.\n", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Alice <alice@example.com>")
    msg["To"] = headers.pop("To", "bob@example.com")
    msg["Subject"] = headers.pop("Subject", "Hi")
    msg["Date"] = headers.pop("Date", "Tue, 03 Mar 2026 09:15:00 +0000")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def raw_message(content_type: str, body: bytes, *, cte: str = "8bit", headers: str = "") -> bytes:
    head = (
        "From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: x\r\n"
        f"{headers}MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return head.encode("ascii") + body


def assert_safe_strings(email: NormalizedEmail) -> None:
    """Every string must survive UTF-8 encoding (Avro) and contain no NUL (Postgres text)."""
    fields = email.as_event_fields()
    stack: list[object] = [fields]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str):
            item.encode("utf-8")
            assert "\x00" not in item


# --- structure -------------------------------------------------------------------------------


def test_plain_message_fields() -> None:
    msg = simple_message(
        "Hello there.\n\nSecond paragraph.\n",
        Cc="Carol <carol@example.com>, dave@example.com",
        Reply_To="replies@example.com",
        Message_ID="<m1@example.com>",
    )
    email = normalize(msg.as_bytes())

    assert email.message_id == "m-1"
    assert email.thread_id == "t-1"
    assert email.labels == ("INBOX", "UNREAD")
    assert email.subject == "Hi"
    assert email.sender == EmailAddress("alice@example.com", "Alice")
    assert email.to == (EmailAddress("bob@example.com"),)
    assert email.cc == (
        EmailAddress("carol@example.com", "Carol"),
        EmailAddress("dave@example.com"),
    )
    assert email.bcc == ()
    assert email.reply_to == (EmailAddress("replies@example.com"),)
    assert email.sent_at == datetime(2026, 3, 3, 9, 15, tzinfo=UTC)
    assert email.text == "Hello there.\n\nSecond paragraph."
    assert email.snippet == "Hello there. Second paragraph."
    assert email.size == len(msg.as_bytes())
    assert email.attachments == ()
    assert email.message_id_header == "<m1@example.com>"


def test_alternative_prefers_plain_text() -> None:
    msg = simple_message("Plain version")
    msg.add_alternative("<html><body><p>HTML version</p></body></html>", subtype="html")
    assert normalize(msg.as_bytes()).text == "Plain version"


def test_alternative_with_empty_plain_falls_back_to_html() -> None:
    msg = simple_message("   \n")
    msg.add_alternative("<p>Only the <a href='https://t.example/x'>HTML</a> says it</p>", "html")
    assert normalize(msg.as_bytes()).text == "Only the HTML says it"


def test_html_only_message_is_converted_to_readable_text() -> None:
    html = """<html><head><title>News</title><style>p { color: red }</style></head>
    <body><script>var tracking = 1;</script>
    <h1>Weekly   update</h1><p>First&nbsp;point,<br>continued.</p>
    <ul><li>Apples</li><li>Pears <a href="https://x.example">here</a></li></ul>
    <ol><li>one</li><li>two</li></ol>
    <table><tr><td>Q1</td><td>10</td></tr><tr><td>Q2</td><td>12</td></tr></table>
    <pre>  keep
  spacing</pre></body></html>"""
    msg = simple_message()
    msg.set_content(html, subtype="html")

    text = normalize(msg.as_bytes()).text

    assert text == (
        "Weekly update\n\nFirst point,\ncontinued.\n\n- Apples\n- Pears here\n\n"
        "1. one\n2. two\n\nQ1 10\nQ2 12\n\n  keep\n  spacing"
    )
    assert "tracking" not in text
    assert "color" not in text


def test_nested_mixed_with_attachments() -> None:
    msg = simple_message("See the attached report.")
    msg.add_alternative("<p>See the attached <b>report</b>.</p>", subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(b"\x89PNG" + b"0" * 96, "image", "png", cid="<logo@x>")
    msg.add_attachment(b"%PDF" + b"1" * 2044, "application", "pdf", filename="Q1 report.pdf")
    msg.add_attachment("a,b\n1,2\n", subtype="csv", filename="data.csv")
    inner = simple_message("Forwarded body", Subject="Original")
    msg.add_attachment(inner)

    email = normalize(msg.as_bytes())

    assert email.text == "See the attached report."
    assert [(a.filename, a.mime_type) for a in email.attachments] == [
        ("", "image/png"),
        ("Q1 report.pdf", "application/pdf"),
        ("data.csv", "text/csv"),
        ("", "message/rfc822"),
    ]
    sizes = [a.size for a in email.attachments]
    assert sizes[:3] == [100, 2048, 8]
    assert sizes[3] > len("Forwarded body")
    assert all(a.attachment_id is None for a in email.attachments)


def test_text_plain_attachment_is_not_body() -> None:
    msg = simple_message("The body")
    msg.add_attachment("notes in a file", filename="notes.txt")
    email = normalize(msg.as_bytes())
    assert email.text == "The body"
    assert email.attachments == (Attachment("notes.txt", "text/plain", len("notes in a file\n")),)


def test_attachment_filename_rfc2231_and_rfc2047_are_decoded() -> None:
    msg = simple_message("x")
    msg.add_attachment(b"abc", "application", "octet-stream", filename="Übersicht März.xlsx")
    raw = msg.as_bytes()
    assert b"filename*=" in raw  # RFC 2231 form on the wire
    body = base64.b64encode(b"abc").decode()
    rfc2047 = (
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n--b--\r\n"
    ).encode()

    assert normalize(raw).attachments[0].filename == "Übersicht März.xlsx"
    assert normalize(rfc2047).attachments[0].filename == "résumé.pdf"


def test_empty_body_and_no_headers() -> None:
    email = normalize(b"")
    assert email.text == ""
    assert email.snippet == ""
    assert email.subject == ""
    assert email.sender is None
    assert email.sent_at is None
    assert email.to == ()
    assert email.references == ()

    headers_only = normalize(b"From: a@example.com\r\nSubject: nothing\r\n\r\n")
    assert headers_only.text == ""
    assert headers_only.subject == "nothing"


def test_many_recipients() -> None:
    recipients = [f"User {i} <user{i}@example.com>" for i in range(500)]
    msg = simple_message(To=", ".join(recipients[:300]), Cc=", ".join(recipients[300:]))
    email = normalize(msg.as_bytes())
    assert len(email.to) == 300
    assert len(email.cc) == 200
    assert email.cc[-1] == EmailAddress("user499@example.com", "User 499")


def test_long_thread_headers() -> None:
    refs = [f"<ref{i}@example.com>" for i in range(1000)]
    msg = simple_message(
        Subject="Re: " * 50 + "topic",
        In_Reply_To="<ref999@example.com>",
        References=" ".join(refs),
    )
    email = normalize(msg.as_bytes())
    assert email.references == tuple(refs)
    assert email.in_reply_to == "<ref999@example.com>"
    assert email.subject.endswith("topic")


def test_size_estimate_and_text_cap() -> None:
    msg = simple_message("word " * 1000)
    email = normalize(msg.as_bytes(), size_estimate=12345, max_text_chars=100)
    assert email.size == 12345
    assert len(email.text) <= 100
    assert email.text.startswith("word word")
    assert len(normalize(msg.as_bytes(), max_text_chars=None).text) == len(("word " * 1000).strip())


def test_gmail_snippet_is_used_when_given() -> None:
    raw = simple_message("Body text").as_bytes()
    assert (
        normalize(raw, snippet="It&#39;s   Gmail&#39;s\nsnippet").snippet == "It's Gmail's snippet"
    )
    assert normalize(raw, snippet="  ").snippet == "Body text"


def test_addresses_are_lower_cased() -> None:
    msg = simple_message(From="Big <BIG@Example.COM>", To="Mixed.Case@Example.com")
    email = normalize(msg.as_bytes())
    assert email.sender == EmailAddress("big@example.com", "Big")
    assert email.to == (EmailAddress("mixed.case@example.com"),)


def test_snippet_is_collapsed_and_bounded() -> None:
    body = "First   line\n\n\tsecond line " + "lorem ipsum " * 100
    email = normalize(simple_message(body).as_bytes())
    assert email.snippet.startswith("First line second line lorem")
    assert 150 <= len(email.snippet) <= SNIPPET_CHARS
    assert "  " not in email.snippet
    assert email.snippet.endswith(("lorem", "ipsum"))


# --- charsets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "data", "expected"),
    [
        ("iso-8859-1", "Grüße, café".encode("latin-1"), "Grüße, café"),
        (
            "windows-1252",
            "“Smart” quotes \N{EN DASH} €5".encode("cp1252"),
            "“Smart” quotes \N{EN DASH} €5",
        ),
        # Senders label windows-1252 text as latin-1; the C1 bytes are really cp1252.
        ("iso-8859-1", "“quoted” €".encode("cp1252"), "“quoted” €"),
        ("iso-2022-jp", "日本語のメール".encode("iso-2022-jp"), "日本語のメール"),
        ("shift_jis", "こんにちは、世界".encode("shift_jis"), "こんにちは、世界"),
        # cp932 extensions (NEC circled digits) in a "shift_jis" label.
        ("shift_jis", "①②".encode("cp932"), "①②"),
        ("utf-8", "plain ✓".encode(), "plain ✓"),
        ("x-unknown-charset", "unknown label ✓".encode(), "unknown label ✓"),
        ("x-unknown-charset", "caf\xe9".encode("latin-1"), "café"),
        ("us-ascii", "naïve".encode(), "naïve"),
        ("base64", b"not a text codec", "not a text codec"),
    ],
)
def test_body_charsets(charset: str, data: bytes, expected: str) -> None:
    raw = raw_message(f'text/plain; charset="{charset}"', data)
    assert normalize(raw).text == expected


def test_quoted_printable_windows_1252_body() -> None:
    raw = raw_message(
        "text/plain; charset=windows-1252", b"Price: =8050 =96 =93ok=94", cte="quoted-printable"
    )
    assert normalize(raw).text == "Price: €50 \N{EN DASH} “ok”"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    raw = raw_message("text/plain; charset=utf-8", b"good \xff\xfe bad")
    text = normalize(raw).text
    assert text.startswith("good ")
    assert text.endswith(" bad")


def test_decode_bytes_fallbacks() -> None:
    assert decode_bytes("€".encode("cp1252"), None) == "€"
    assert decode_bytes("ok ✓".encode(), "no-such-charset") == "ok ✓"
    assert decode_bytes(b"a\x00b", "utf-8") == "ab"


# --- charsets of HTML parts ------------------------------------------------------------------

RUSSIAN = "Ваш счёт 123 ожидает оплаты до пятницы. Спасибо, что вы с нами!"  # noqa: RUF001


def test_html_only_message_with_missing_head_end_tag_has_text_and_snippet() -> None:
    body = (
        b"<html><head><meta charset=utf-8><title>Invoice</title>"
        b"<body><p>Your invoice #123 is due.</p>"
    )
    email = normalize(raw_message("text/html; charset=utf-8", body))
    assert email.text == "Your invoice #123 is due."
    assert email.snippet == "Your invoice #123 is due."


def test_html_charset_declared_only_by_meta() -> None:
    body = f"<html><head><meta charset=windows-1251></head><body><p>{RUSSIAN}</p>"
    email = normalize(raw_message("text/html", body.encode("cp1251")))
    assert email.text == RUSSIAN
    assert email.snippet == RUSSIAN


def test_html_charset_declared_by_http_equiv() -> None:
    body = f'<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=KOI8-R"><p>{RUSSIAN}</p>'
    encoded = base64.encodebytes(body.encode("koi8-r"))
    assert normalize(raw_message("text/html", encoded, cte="base64")).text == RUSSIAN


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        # The Content-Type charset comes first; the meta tag is ignored then.
        ("text/html; charset=utf-8", f"<meta charset=windows-1251>{RUSSIAN}".encode(), RUSSIAN),
        # An unknown Content-Type charset counts as none; so does an unknown meta label.
        (
            "text/html; charset=x-bogus",
            f"<meta charset=bogus><meta charset=cp1251>{RUSSIAN}".encode("cp1251"),
            RUSSIAN,
        ),
        # A meta tag claiming UTF-16 in ASCII bytes means UTF-8 (WHATWG).
        ("text/html", f"<meta charset=utf-16>{RUSSIAN}".encode(), RUSSIAN),
        # Nothing declared: valid UTF-8 is UTF-8, legacy bytes are detected.
        ("text/html", f"<p>{RUSSIAN}</p>".encode(), RUSSIAN),
        ("text/html", f"<p>{RUSSIAN} {RUSSIAN}</p>".encode("koi8-r"), f"{RUSSIAN} {RUSSIAN}"),
        # A byte order mark decides before any label.
        ("text/html; charset=iso-8859-1", b"\xef\xbb\xbf<p>caf\xc3\xa9</p>", "café"),
        ("text/html", "\ufeff<p>café ✓</p>".encode("utf-16-le"), "café ✓"),
        # Bytes invalid in every guess still decode, with replacement characters.
        ("text/html; charset=utf-8", b"<p>ok \xff\xfe bad</p>", "ok \ufffd\ufffd bad"),
    ],
)
def test_html_part_charsets(content_type: str, body: bytes, expected: str) -> None:
    assert normalize(raw_message(content_type, body)).text == expected


def test_decode_html_never_raises_on_bogus_labels() -> None:
    text = decode_html(b'<meta charset="\x00\xff">ok', "\x00")
    assert text.startswith("<meta charset=")
    assert text.endswith('">ok')
    assert "\x00" not in text
    assert decode_html(b"<meta charset=base64>ok", "rot13") == "<meta charset=base64>ok"


def test_rfc2047_headers_are_decoded() -> None:
    raw = (
        b"From: =?iso-8859-1?q?J=F6rg_M=FCller?= <joerg@example.de>\r\n"
        b"To: =?utf-8?b?5bGx55Sw5aSq6YOO?= <taro@example.jp>, plain@example.com\r\n"
        b"Subject: =?iso-2022-jp?b?GyRCRnxLXDhsGyhC?= and =?windows-1252?q?=93more=94?=\r\n"
        b"Date: Wed, 04 Mar 2026 18:30:00 +0900\r\n\r\nbody\r\n"
    )
    email = normalize(raw)
    assert email.sender == EmailAddress("joerg@example.de", "Jörg Müller")
    assert email.to == (
        EmailAddress("taro@example.jp", "山田太郎"),
        EmailAddress("plain@example.com"),
    )
    assert email.subject == "日本語 and “more”"
    assert email.sent_at == datetime(2026, 3, 4, 9, 30, tzinfo=UTC)


def test_headers_with_unknown_charset_and_raw_8bit_stay_valid_unicode() -> None:
    raw = (
        b"From: =?x-bogus?q?Caf=E9?= <cafe@example.com>\r\n"
        b"To: J\xc3\xbcrgen <juergen@example.com>\r\n"
        b"Subject: caf\xe9 \xc3\xa9t\xc3\xa9\r\n\r\nbody\r\n"
    )
    email = normalize(raw)
    assert_safe_strings(email)
    assert email.sender is not None
    assert email.sender.address == "cafe@example.com"
    assert email.to[0] == EmailAddress("juergen@example.com", "Jürgen")
    assert "été" in email.subject


# --- dates and ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("Tue, 03 Mar 2026 09:15:00 -0500", datetime(2026, 3, 3, 14, 15, tzinfo=UTC)),
        ("3 Mar 2026 09:15:00 GMT", datetime(2026, 3, 3, 9, 15, tzinfo=UTC)),
        ("Tue, 03 Mar 2026 09:15:00 -0000", datetime(2026, 3, 3, 9, 15, tzinfo=UTC)),
        ("yesterday at noon", None),
        ("Tue, 33 Foo 2026 99:99:99 +0000", None),
        ("", None),
    ],
)
def test_dates_become_utc_or_none(date: str, expected: datetime | None) -> None:
    raw = f"From: a@example.com\r\nDate: {date}\r\n\r\nx".encode()
    assert normalize(raw).sent_at == expected


def test_missing_date_is_none() -> None:
    assert normalize(b"From: a@example.com\r\n\r\nx").sent_at is None


def test_references_without_angle_brackets_and_garbage_ids() -> None:
    raw = (
        b"Message-ID: no-brackets@x\r\nReferences: a@x b@y\r\nIn-Reply-To: junk <id@z> more\r\n\r\n"
    )
    email = normalize(raw)
    assert email.message_id_header == "no-brackets@x"
    assert email.references == ("a@x", "b@y")
    assert email.in_reply_to == "<id@z>"


# --- robustness ------------------------------------------------------------------------------


def test_broken_mime_degrades_gracefully() -> None:
    raw = (
        b'From: "unterminated <x@\r\nTo: ,,,<>,@,\r\nDate: Mon, 99 Xyz\r\n'
        b'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
        b'--never-closed\r\nContent-Type: text/plain; charset="utf-8\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n"
        b'--never-closed\r\nContent-Type: application/pdf; name="a.pdf\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBE"
    )
    email = normalize(raw)
    assert_safe_strings(email)
    assert email.sent_at is None
    assert [a.mime_type for a in email.attachments] == ["application/pdf"]


def test_multipart_without_boundary_keeps_its_text() -> None:
    raw = b"Content-Type: multipart/mixed\r\n\r\nhello despite the broken header\r\n"
    email = normalize(raw)
    assert email.text == "hello despite the broken header"
    assert email.attachments == ()


def test_nul_bytes_are_removed() -> None:
    raw = raw_message("text/plain; charset=utf-8", b"a\x00b", headers="X-Junk: \x00\r\n")
    email = normalize(raw)
    assert email.text == "ab"


def test_absurdly_deep_nesting_is_refused_as_a_mime_bomb() -> None:
    depth = 200
    opening = b"".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
        for i in range(depth)
    )
    raw = b"From: a@example.com\r\n" + opening + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    with pytest.raises(MimeBombError):
        normalize(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_normalize_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    email = normalize(raw)
    assert_safe_strings(email)
    assert len(email.snippet) <= SNIPPET_CHARS
    assert email.size == len(raw)


_header_names = st.sampled_from(
    [
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "References",
        "In-Reply-To",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
    ]
)
_header_values = st.one_of(
    st.text(max_size=80).map(lambda s: s.replace("\r", " ").replace("\n", " ")),
    st.sampled_from(
        [
            "=?utf-8?b?!!?=",
            "=?bogus?q?=FF?=",
            '"a" <b@',
            "multipart/mixed; boundary=",
            "text/html; charset=x",
            "base64",
            "attachment; filename*=utf-8''%FF",
            "<>,<@>",
            "multipart/alternative",
            "message/rfc822",
            "=?utf-8?q?=E2=82?=",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_header_names, _header_values), max_size=12),
    st.binary(max_size=300),
)
def test_normalize_never_raises_on_mangled_headers(
    headers: list[tuple[str, str]], body: bytes
) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw = head.encode("utf-8", errors="surrogatepass") + b"\r\n" + body
    assert_safe_strings(normalize(raw))
