"""Contacts: header parsing, normalization (IDNA keys), validity, deduplication."""

from __future__ import annotations

import unicodedata
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, getaddresses

import idna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streams.stages.contacts import (
    Contact,
    ContactRole,
    Mailbox,
    extract_contacts,
    extract_contacts_from_headers,
    is_valid_address,
    normalize_address,
    parse_mailboxes,
)
from streams.stages.mime import EmailAddress, NormalizedEmail, normalize_message

ROLE_HEADERS = {
    ContactRole.FROM: "From",
    ContactRole.TO: "To",
    ContactRole.CC: "Cc",
    ContactRole.BCC: "Bcc",
    ContactRole.REPLY_TO: "Reply-To",
}


def email_with(
    *,
    sender: EmailAddress | None = None,
    to: tuple[EmailAddress, ...] = (),
    cc: tuple[EmailAddress, ...] = (),
    bcc: tuple[EmailAddress, ...] = (),
    reply_to: tuple[EmailAddress, ...] = (),
) -> NormalizedEmail:
    return NormalizedEmail(
        message_id="m",
        thread_id="t",
        labels=(),
        subject="",
        sender=sender,
        authors=(sender,) if sender else (),
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        sent_at=None,
        text="",
        snippet="",
        size=0,
        attachments=(),
        message_id_header=None,
        in_reply_to=None,
        references=(),
    )


def test_roles_normalization_and_order() -> None:
    email = email_with(
        sender=EmailAddress(" Alice@Example.COM ", "Alice"),
        to=(EmailAddress("bob@example.com", "Bob"), EmailAddress("carol@example.com")),
        cc=(EmailAddress("Bob@example.com", "Robert"),),
        bcc=(EmailAddress("dave@example.com", "dave@example.com"),),
        reply_to=(EmailAddress("alice@example.com", "'Alice'"),),
    )
    assert extract_contacts(email) == [
        Contact("alice@example.com", "Alice", ContactRole.FROM),
        Contact("bob@example.com", "Bob", ContactRole.TO),
        Contact("carol@example.com", None, ContactRole.TO),
        Contact("bob@example.com", "Robert", ContactRole.CC),
        Contact("dave@example.com", None, ContactRole.BCC),
        Contact("alice@example.com", "Alice", ContactRole.REPLY_TO),
    ]


def test_duplicates_keep_first_non_empty_name() -> None:
    email = email_with(
        to=(
            EmailAddress("x@example.com"),
            EmailAddress("X@Example.com", "  "),
            EmailAddress("x@example.com", "First Name"),
            EmailAddress("x@example.com", "Second Name"),
        )
    )
    assert extract_contacts(email) == [Contact("x@example.com", "First Name", ContactRole.TO)]


def test_invalid_addresses_are_dropped() -> None:
    email = email_with(
        sender=EmailAddress("not-an-address", "Nobody"),
        to=(
            EmailAddress("@example.com"),
            EmailAddress("a@"),
            EmailAddress("a b@example.com"),
            EmailAddress("a@localhost"),
            EmailAddress("a@-bad-.com"),
            EmailAddress("ok@example.com"),
        ),
    )
    assert extract_contacts(email) == [Contact("ok@example.com", None, ContactRole.TO)]


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("user@example.com", True),
        ("first.last+tag@sub.example.co.uk", True),
        ("o'brien@example.ie", True),
        ("jürgen@münchen.de", True),
        ('"john doe"@example.com', True),
        ("user@xn--mnchen-3ya.de", True),
        ("user@हिन्दी.भारत", True),  # combining vowel signs: valid IDNA, not \w
        ('"a,b"@example.com', True),
        ("", False),
        ("@", False),
        ("user@", False),
        ("@example.com", False),
        ("us..er@example.com", False),
        (".user@example.com", False),
        ("user@example..com", False),
        ("user@[127.0.0.1]", False),
        ("user@example.com>", False),
        ("a" * 65 + "@example.com", False),
    ],
)
def test_is_valid_address(address: str, valid: bool) -> None:
    assert is_valid_address(address) is valid


def test_display_name_equal_to_address_or_quoted_is_cleaned() -> None:
    email = email_with(
        to=(
            EmailAddress("a@example.com", "A@EXAMPLE.COM"),
            EmailAddress("b@example.com", '"Bee  Person"'),
        )
    )
    assert [c.display_name for c in extract_contacts(email)] == [None, "Bee Person"]


def expected_from_getaddresses(raw: bytes) -> set[tuple[str, ContactRole]]:
    """What the e2e test computes: getaddresses over the policy-decoded header values."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    expected: set[tuple[str, ContactRole]] = set()
    for role, header in ROLE_HEADERS.items():
        pairs = getaddresses([str(v) for v in msg.get_all(header, [])])
        if role is ContactRole.FROM:
            pairs = pairs[:1]
        for _name, address in pairs:
            address = address.strip().lower()
            if is_valid_address(address):
                expected.add((address, role))
    return expected


def test_agrees_with_getaddresses_on_a_real_message() -> None:
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?J=C3=B6rg?= <JOERG@example.de>"
    msg["To"] = '"Doe, John" <john@example.com>, jane@example.com, "Ünal" <unal@example.tr>'
    msg["Cc"] = "Team: one@example.com, two@example.com;, john@example.com"
    msg["Bcc"] = "hidden@example.com"
    msg["Reply-To"] = "list@example.org"
    msg.set_content("hi")
    raw = msg.as_bytes()

    contacts = extract_contacts(normalize_message(raw, message_id="m", thread_id="t", label_ids=[]))

    assert {(c.address, c.role) for c in contacts} == expected_from_getaddresses(raw)
    names = {(c.address, c.role): c.display_name for c in contacts}
    assert names[("joerg@example.de", ContactRole.FROM)] == "Jörg"
    assert names[("john@example.com", ContactRole.TO)] == "Doe, John"
    assert names[("unal@example.tr", ContactRole.TO)] == "Ünal"
    assert names[("john@example.com", ContactRole.CC)] is None


_local = st.text(alphabet="abcxyz.+_-'", min_size=0, max_size=6)
_domain = st.sampled_from(["example.com", "Example.COM", "ex.org", "", "localhost", "-x-.com"])
_addresses = st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain) | st.text(
    max_size=10
)
_names = st.none() | st.text(alphabet="AbC dé\"'", max_size=8)
_mailbox = st.builds(EmailAddress, _addresses, _names)
_mailbox_lists = st.lists(_mailbox, max_size=8).map(tuple)


@settings(max_examples=300, deadline=None)
@given(st.none() | _mailbox, _mailbox_lists, _mailbox_lists, _mailbox_lists, _mailbox_lists)
def test_contacts_are_valid_deduplicated_and_complete(
    sender: EmailAddress | None,
    to: tuple[EmailAddress, ...],
    cc: tuple[EmailAddress, ...],
    bcc: tuple[EmailAddress, ...],
    reply_to: tuple[EmailAddress, ...],
) -> None:
    email = email_with(sender=sender, to=to, cc=cc, bcc=bcc, reply_to=reply_to)
    contacts = extract_contacts(email)

    keys = [(c.address, c.role) for c in contacts]
    assert len(keys) == len(set(keys))
    assert all(is_valid_address(c.address) and c.address == c.address.lower() for c in contacts)
    assert all(c.display_name is None or c.display_name.strip() for c in contacts)
    given_pairs = [(ContactRole.FROM, sender)] if sender else []
    for role, mailboxes in (
        (ContactRole.TO, to),
        (ContactRole.CC, cc),
        (ContactRole.BCC, bcc),
        (ContactRole.REPLY_TO, reply_to),
    ):
        given_pairs += [(role, m) for m in mailboxes]
    expected = {(normalize_address(m.address), role) for role, m in given_pairs}
    assert set(keys) == {k for k in expected if is_valid_address(k[0])}
    assert extract_contacts(email) == contacts  # deterministic


# -- header text -----------------------------------------------------------------------------


def from_headers(**texts: str) -> list[Contact]:
    return extract_contacts_from_headers(
        {ContactRole(role): [text] for role, text in texts.items()}
    )


def test_angle_addr_is_the_address_and_an_address_like_name_is_text() -> None:
    assert from_headers(**{"from": "alice@example.org <bob@example.com>"}) == [
        Contact("bob@example.com", "alice@example.org", ContactRole.FROM)
    ]
    assert from_headers(to='"carol@example.org" <Dave@Example.com>, eve@example.com') == [
        Contact("dave@example.com", "carol@example.org", ContactRole.TO),
        Contact("eve@example.com", None, ContactRole.TO),
    ]


def test_every_author_of_a_from_is_a_sender() -> None:
    assert from_headers(**{"from": "A <a@x.test>, b@y.test", "reply_to": "a@x.test"}) == [
        Contact("a@x.test", "A", ContactRole.FROM),
        Contact("b@y.test", None, ContactRole.FROM),
        Contact("a@x.test", None, ContactRole.REPLY_TO),
    ]


def test_several_fields_of_one_role_are_all_read() -> None:
    contacts = extract_contacts_from_headers(
        {ContactRole.TO: ["a@example.com", "B <b@example.com>"], ContactRole.CC: []}
    )
    assert [c.address for c in contacts] == ["a@example.com", "b@example.com"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("undisclosed-recipients:;", []),
        (
            "Team: one@example.com, Two <two@example.com>;, john@example.com",
            [
                Mailbox("one@example.com"),
                Mailbox("two@example.com", "Two"),
                Mailbox("john@example.com"),
            ],
        ),
        (
            '"a,b"@example.com, c@example.com',
            [Mailbox('"a,b"@example.com'), Mailbox("c@example.com")],
        ),
        ('"Doe, John" <john@example.com>', [Mailbox("john@example.com", "Doe, John")]),
        ("john@example.com (John Doe)", [Mailbox("john@example.com", "John Doe")]),
        ("John <john@example.com> (work)", [Mailbox("john@example.com", "John")]),
        ("=?utf-8?q?J=C3=B6rg?= <joerg@example.de>", [Mailbox("joerg@example.de", "Jörg")]),
        (
            "=?utf-8?b?SsO2cmc=?= =?utf-8?q?_M=C3=BCller?= <j@example.de>",
            [Mailbox("j@example.de", "Jörg Müller")],
        ),
        # An encoded word is decoded after parsing: its "@" and "<" are text.
        (
            "=?utf-8?q?x=40y.test_=3Cz=3E?= <a@example.com>",
            [Mailbox("a@example.com", "x@y.test <z>")],
        ),
        ('"Q \\"Quote\\" R" <q@example.com>', [Mailbox("q@example.com", 'Q "Quote" R')]),
        ("<@relay.example:user@example.com>", [Mailbox("user@example.com")]),
        ("user @ example . com", [Mailbox("user@example.com")]),
        ("Alice <alice@example.com", [Mailbox("alice@example.com", "Alice")]),  # unclosed
        (
            "A <a@example.com> B <b@example.com>",
            [Mailbox("a@example.com", "A"), Mailbox("b@example.com", "B")],
        ),
        ("<>, Nobody <>, ,", []),
        ("", []),
    ],
)
def test_parse_mailboxes(header: str, expected: list[Mailbox]) -> None:
    assert parse_mailboxes(header) == expected


def test_broken_mailboxes_are_dropped_by_extraction() -> None:
    assert from_headers(to="a b@example.com, @, x@localhost, x@[127.0.0.1], ok@example.com") == [
        Contact("ok@example.com", None, ContactRole.TO)
    ]


def test_headers_of_a_real_message() -> None:
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?J=C3=B6rg?= <JOERG@example.de>, helper@example.de"
    msg["To"] = '"Doe, John" <john@example.com>, jane@example.com, "Ünal" <unal@xn--bcher-kva.de>'
    msg["Cc"] = "Team: one@example.com, two@example.com;, john@example.com"
    msg["Bcc"] = "undisclosed-recipients:;"
    msg.set_content("hi")
    parsed = BytesParser(policy=policy.compat32).parsebytes(msg.as_bytes())
    headers = {role: parsed.get_all(name, []) for role, name in ROLE_HEADERS.items()}

    assert extract_contacts_from_headers(headers) == [
        Contact("joerg@example.de", "Jörg", ContactRole.FROM),
        Contact("helper@example.de", None, ContactRole.FROM),
        Contact("john@example.com", "Doe, John", ContactRole.TO),
        Contact("jane@example.com", None, ContactRole.TO),
        Contact("unal@bücher.de", "Ünal", ContactRole.TO),
        Contact("one@example.com", None, ContactRole.CC),
        Contact("two@example.com", None, ContactRole.CC),
        Contact("john@example.com", None, ContactRole.CC),
    ]


# The event path cannot show these yet: streams.stages.mime parses address headers with
# email.utils.getaddresses and keeps one From mailbox (EmailNormalized.sender is a single record).
# The whole path: mime's parse, then extraction (the extract stage reads the same fields).


def pipeline_contacts(headers: str) -> set[tuple[str, ContactRole]]:
    raw = (headers + "\r\nSubject: s\r\n\r\nbody\r\n").encode()
    email = normalize_message(raw, message_id="m", thread_id="t", label_ids=[])
    return {(c.address, c.role) for c in extract_contacts(email)}


def test_pipeline_takes_the_angle_addr() -> None:
    assert pipeline_contacts("From: alice@example.org <bob@example.com>") == {
        ("bob@example.com", ContactRole.FROM)
    }


def test_pipeline_keeps_every_author() -> None:
    assert pipeline_contacts("From: A <a@x.test>, b@y.test") == {
        ("a@x.test", ContactRole.FROM),
        ("b@y.test", ContactRole.FROM),
    }


# -- IDNA keys -------------------------------------------------------------------------------


def test_idn_spellings_are_one_contact_shown_in_unicode() -> None:
    email = email_with(
        to=(
            EmailAddress("x@xn--bcher-kva.de"),
            EmailAddress("X@BÜCHER.de", "X"),
            EmailAddress("x@bücher.de"),
        ),
        cc=(EmailAddress("Y@XN--BCHER-KVA.DE"),),
    )
    assert extract_contacts(email) == [
        Contact("x@bücher.de", "X", ContactRole.TO),
        Contact("y@bücher.de", None, ContactRole.CC),
    ]


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("x@bücher.de", "x@bücher.de"),
        ("x@xn--bcher-kva.de", "x@bücher.de"),
        (" <X@XN--BCHER-KVA.DE> ", "x@bücher.de"),
        ("x@\uff42ücher\uff0ede", "x@bücher.de"),  # fullwidth b and dot: UTS 46 maps them
        ("x@straße.de", "x@straße.de"),  # IDNA 2008 keeps ß (no transitional mapping)
        (unicodedata.normalize("NFD", "josé@bücher.de"), "josé@bücher.de"),  # NFC
        ("User@Example.COM", "user@example.com"),
        ("a@xn--zz.com", "a@xn--zz.com"),  # not valid IDNA: kept as text
        ("A@Ex--Ämple.DE", "a@ex--ämple.de"),
        ("a@bü_cher.de", "a@bü_cher.de"),
        ("no-at-sign", "no-at-sign"),
        ("", ""),
    ],
)
def test_normalize_address(address: str, key: str) -> None:
    assert normalize_address(address) == key
    assert normalize_address(key) == key


def test_a_domain_that_is_not_idna_does_not_stop_extraction() -> None:
    email = email_with(
        to=(
            EmailAddress("a@xn--zz.com"),
            EmailAddress("b@ex--ämple.de"),
            EmailAddress("c@bü_cher.de"),
            EmailAddress("d@bücher.de"),
        )
    )
    assert [c.address for c in extract_contacts(email)] == [
        "a@xn--zz.com",
        "b@ex--ämple.de",
        "d@bücher.de",
    ]


_label = st.text(alphabet="abcdeüößéñçå0-", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="abcXYZ.+_", min_size=1, max_size=8), _label, st.sampled_from(["de", "com"])
)
def test_unicode_and_ascii_spellings_share_one_key(local: str, label: str, tld: str) -> None:
    try:
        ascii_domain = idna.encode(f"{label}.{tld}", uts46=True).decode()
    except idna.IDNAError:
        assume(False)
    unicode_key = normalize_address(f"{local}@{label}.{tld.upper()}")
    assert normalize_address(f"{local}@{ascii_domain}") == unicode_key
    assert normalize_address(f"{local}@{ascii_domain.upper()}") == unicode_key
    assert unicode_key == normalize_address(unicode_key)


# -- properties of header parsing ------------------------------------------------------------

_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_dot_atom = st.lists(st.text(alphabet=_ATEXT, min_size=1, max_size=5), min_size=1, max_size=3)
_quoted_local = st.text(alphabet='ab ,;:<>()@."\\', min_size=1, max_size=6).map(
    lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
_local_part = _dot_atom.map(".".join) | _quoted_local
_domain = st.sampled_from(
    ["example.com", "Example.COM", "mail.example.org", "xn--bcher-kva.de", "XN--MNCHEN-3YA.DE"]
)
_addr_spec = st.builds(lambda local, domain: f"{local}@{domain}", _local_part, _domain).filter(
    lambda address: len(address.rpartition("@")[0]) <= 64
)
# Any printable name: formataddr quotes specials and writes non-ASCII as an encoded word. "=?"
# is left out so that an ASCII name never reads as an encoded word.
_display = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cc", "Cs", "Zl", "Zp"], blacklist_characters="=?"
    ),
    max_size=12,
)
_address_lists = st.lists(st.tuples(_display, _addr_spec), max_size=6)


def expected_name(name: str) -> str | None:
    return " ".join(name.split()) or None


@settings(max_examples=500, deadline=None)
@given(_address_lists)
def test_formatted_address_lists_parse_back(pairs: list[tuple[str, str]]) -> None:
    header = ", ".join(formataddr(pair) for pair in pairs)
    parsed = parse_mailboxes(header)
    assert [(m.address, m.name) for m in parsed] == [(a, expected_name(n)) for n, a in pairs]


@settings(max_examples=300, deadline=None)
@given(_address_lists)
def test_formatted_address_lists_give_their_contacts(pairs: list[tuple[str, str]]) -> None:
    header = ", ".join(formataddr(pair) for pair in pairs)
    contacts = extract_contacts_from_headers({ContactRole.FROM: [header]})
    keys = list(dict.fromkeys(normalize_address(address) for _, address in pairs))
    assert all(is_valid_address(key) for key in keys)
    assert [c.address for c in contacts] == keys
    assert all(c.role is ContactRole.FROM for c in contacts)


_header_text = st.text() | st.text(
    alphabet='ab@.,;:<>()"\\[] =?qQbB8-_\t\r\n\x00\udc80é', max_size=40
)


@settings(max_examples=500, deadline=None)
@given(_header_text)
def test_extraction_never_raises_on_any_header_text(header: str) -> None:
    parse_mailboxes(header)
    contacts = extract_contacts_from_headers({role: [header] for role in ContactRole})
    for contact in contacts:
        assert is_valid_address(contact.address)
        assert normalize_address(contact.address) == contact.address
        for text in (contact.address, contact.display_name or ""):
            assert "\x00" not in text
            text.encode("utf-8")  # no lone surrogates: Avro and Postgres take it as is
