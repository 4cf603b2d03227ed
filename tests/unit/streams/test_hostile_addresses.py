"""Hostile address headers: parse_mailboxes and the contact helpers never raise, never hang,
and what they return fits the ``Address`` record and the ``ContactExtracted`` event."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas import serde
from schemas.models import Address, ContactExtracted, ContactRole
from streams.stages.contacts import (
    extract_contacts_from_headers,
    is_valid_address,
    normalize_address,
    parse_mailboxes,
)

NOW = datetime(2026, 3, 3, 9, 15, tzinfo=UTC)
MAX_SECONDS_PER_HEADER = 1.0
_SPECIALS = '<>()[]",;:@.\\ \t\r\n=?_'

_ATOMS = st.one_of(
    st.text(alphabet=_SPECIALS + "ab", max_size=20),
    st.text(max_size=20),
    st.sampled_from(
        [
            "=?utf-8?B?PGV2aWxAeC5jb20+?=",  # an encoded "<evil@x.com>"
            "=?x-bogus?Q?=FF=FE?=",
            "=?unicode_escape?Q?=5Cud800?=",
            "=?punycode?B?////?=",
            "=?idna?Q?xn--?=",
            "=?rot13?Q?abc?=",
            "=?utf-16?B?2AA=?=",
            "=?utf-8*en?Q?caf=C3=A9?=",
            "\udc80\udcff",
            "\x00",
            "xn--",
            "a@xn--zz.example",
            "a@" + "b" * 300 + ".com",
            "a@[1.2.3.4]",
            "<@relay.example:user@example.com>",
            "undisclosed-recipients:;",
        ]
    ),
)
_HEADERS = st.one_of(
    st.text(max_size=300),
    st.lists(_ATOMS, max_size=30).map("".join),
    # Huge: many mailboxes, deep comments, unclosed constructs.
    st.integers(1, 5_000).map(lambda n: ", ".join(f"U{i} <u{i}@Example.COM>" for i in range(n))),
    st.integers(1, 20_000).map(lambda n: "(" * n + "a@b.c"),
    st.integers(1, 20_000).map(lambda n: '"' + "\\" * n),
    st.integers(1, 20_000).map(lambda n: "<" * n + "a@b.c"),
    st.integers(1, 5_000).map(lambda n: "=?utf-8?q?a?= " * n),
)


def timed_parse(header: str) -> list[Address]:
    started = time.perf_counter()
    mailboxes = parse_mailboxes(header)
    elapsed = time.perf_counter() - started
    assert elapsed < MAX_SECONDS_PER_HEADER, f"{len(header)} chars took {elapsed:.2f} s"
    return [Address(address=m.address, name=m.name) for m in mailboxes]


@settings(max_examples=150, deadline=None)
@given(header=_HEADERS)
def test_parse_mailboxes_never_raises_and_fits_the_schema(header: str) -> None:
    for address in timed_parse(header):
        assert address.address
        assert address.address == address.address.strip()
        for text in (address.address, address.name or ""):
            text.encode("utf-8")  # no lone surrogates: Avro and Postgres take it
            assert "\x00" not in text


@settings(max_examples=150, deadline=None)
@given(address=st.one_of(st.text(max_size=80), st.lists(_ATOMS, max_size=6).map("".join)))
# Stray brackets around whitespace: one pass stripped "<", then " ", and left the ">".
@example(address="a> >")
def test_normalize_address_is_idempotent_and_never_raises(address: str) -> None:
    once = normalize_address(address)
    assert normalize_address(once) == once
    is_valid_address(address)
    is_valid_address(once)


@settings(max_examples=100, deadline=None)
@given(to=st.lists(_HEADERS, max_size=3), cc=st.lists(_HEADERS, max_size=2))
def test_contacts_from_hostile_headers_are_valid_events(to: list[str], cc: list[str]) -> None:
    started = time.perf_counter()
    contacts = extract_contacts_from_headers({ContactRole.TO: to, ContactRole.CC: cc})
    assert time.perf_counter() - started < 3 * MAX_SECONDS_PER_HEADER
    for contact in contacts[:50]:
        assert is_valid_address(contact.address)
        assert normalize_address(contact.address) == contact.address
        event = ContactExtracted(
            user_id="u-1",
            message_id="m-1",
            thread_id="t-1",
            address=contact.address,
            display_name=contact.display_name,
            role=contact.role,
            occurred_at=NOW,
        )
        assert serde.decode(serde.encode(event), ContactExtracted) == event
