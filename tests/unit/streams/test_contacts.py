"""extract_contacts: normalization, validity, deduplication, and agreement with getaddresses."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.contacts import Contact, ContactRole, extract_contacts, is_valid_address
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
    expected = {(m.address.strip().strip("<>").strip().lower(), role) for role, m in given_pairs}
    assert set(keys) == {k for k in expected if is_valid_address(k[0])}
    assert extract_contacts(email) == contacts  # deterministic
