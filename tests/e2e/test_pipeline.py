"""The pipeline end to end: emulator, sync, fetch, normalize, extract/embed/insight, Postgres.

Every worker and sink runs as a real process on the session's Kafka and Postgres; only Gmail is
emulated. One pipeline serves the module; each test uses mailboxes of its own.
"""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

import pytest

from devstack.gmail_emulator.mailbox import ListQuery
from devstack.gmail_emulator.server import GmailEmulator
from devstack.stack import Stack
from schemas.models import (
    ContactExtracted,
    EmailEmbedded,
    EmailNormalized,
    InsightProduced,
    MessageDiscovered,
)
from tests.helpers import wait_until
from tests.pipeline_support import Pipeline, running_pipeline

EML_DIR = Path(__file__).resolve().parents[1] / "data" / "eml"
ROLES = {"from": "from", "to": "to", "cc": "cc", "bcc": "bcc", "reply-to": "reply_to"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[GmailEmulator]:
    running = GmailEmulator().start_in_thread()
    try:
        yield running
    finally:
        running.stop_thread()


@pytest.fixture(scope="module")
def pipeline(stack: Stack, emulator: GmailEmulator) -> Iterator[Pipeline]:
    with running_pipeline(stack, emulator) as running:
        yield running


def new_user(emulator: GmailEmulator, messages: int, seed: int) -> str:
    user = f"u{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(user, messages=messages, seed=seed)
    return user


def listed_ids(emulator: GmailEmulator, user: str) -> set[str]:
    """What messages.list returns for the user (spam and trash excluded, as Gmail does)."""
    with emulator.state.lock:
        return {m.id for m in emulator.mailbox(user).list(ListQuery())}


def raw_of(emulator: GmailEmulator, user: str, message_id: str) -> bytes:
    with emulator.state.lock:
        return emulator.mailbox(user).messages[message_id].raw


def expected_contacts(raw: bytes) -> set[tuple[str, str]]:
    """(address, role) pairs as Python's email package parses them from the raw message."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    pairs = set()
    for header, role in ROLES.items():
        values = [str(v) for v in message.get_all(header, [])]
        for _, address in getaddresses(values):
            address = address.strip().lower()
            if "@" in address and " " not in address:
                pairs.add((address, role))
    return pairs


def for_users(events: list, users: list[str]) -> list:  # type: ignore[type-arg]
    return [event for event in events if event.user_id in users]


def test_every_message_is_normalized_extracted_embedded_and_done(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    users = [new_user(emulator, 40, seed=11), new_user(emulator, 25, seed=12)]
    expected = {user: listed_ids(emulator, user) for user in users}
    total = sum(len(ids) for ids in expected.values())

    pipeline.sync(users, full=True)
    pipeline.wait_settled(users, messages=total)

    catalogue = pipeline.catalogue
    normalized = for_users(pipeline.events(catalogue.email_normalized.name, EmailNormalized), users)
    for user in users:
        assert {e.message_id for e in normalized if e.user_id == user} == expected[user]
    contacts = for_users(pipeline.events(catalogue.contact_extracted.name, ContactExtracted), users)
    for event in normalized:
        got = {(c.address, c.role.value) for c in contacts if c.message_id == event.message_id}
        assert got == expected_contacts(raw_of(emulator, event.user_id, event.message_id)), (
            event.message_id
        )
    embedded = for_users(pipeline.events(catalogue.email_embedded.name, EmailEmbedded), users)
    assert {e.message_id for e in embedded} == set().union(*expected.values())
    assert all(e.dimension == 384 for e in embedded)
    assert all(len(c.vector) == 384 for e in embedded for c in e.chunks)

    jobs = pipeline.jobs(users)
    for kind in ("normalize_google_email", "extract_contacts", "embed", "insight"):
        assert jobs[kind] == {"done": total}, kind

    def insights_cover_every_dated_message() -> bool:
        latest: dict[str, InsightProduced] = {}
        for event in pipeline.events(catalogue.insight_produced.name, InsightProduced):
            latest[event.user_id] = event
        for user in users:
            dated = sum(1 for e in normalized if e.user_id == user and e.sent_at is not None)
            insight = latest.get(user)
            if insight is None or sum(d.messages for d in insight.volume_by_day) != dated:
                return False
        return True

    # The last emission after a burst comes from the insight worker's periodic tick.
    wait_until(insights_cover_every_dated_message, timeout=30, message="final insights")
    assert jobs["google_gmail_sync"] == {"done": 2}
    stored = pipeline.query(
        "SELECT count(DISTINCT message_id) FROM contact_messages WHERE user_id = ANY(%(u)s)",
        u=users,
    )
    assert stored[0][0] == len({c.message_id for c in contacts})


def test_incremental_sync_picks_up_only_new_messages(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    user = new_user(emulator, 20, seed=21)
    first = len(listed_ids(emulator, user))
    pipeline.sync([user], full=True)
    pipeline.wait_settled([user], messages=first)

    added = {emulator.add_message(user, make_mail(i, user)) for i in range(3)}
    pipeline.sync([user])
    pipeline.wait_settled([user], messages=first + 3)

    discovered = for_users(
        pipeline.events(pipeline.catalogue.message_discovered.name, MessageDiscovered), [user]
    )
    assert len(discovered) == first + 3, "each message is discovered exactly once"
    assert added <= {e.message_id for e in discovered}
    assert pipeline.jobs([user])["normalize_google_email"] == {"done": first + 3}


def test_stale_history_triggers_full_resync_without_duplicates(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    user = new_user(emulator, 15, seed=31)
    first = len(listed_ids(emulator, user))
    pipeline.sync([user], full=True)
    pipeline.wait_settled([user], messages=first)

    emulator.expire_history(user)
    for i in range(2):
        emulator.add_message(user, make_mail(100 + i, user))
    pipeline.sync([user])  # incremental request; Gmail answers 404 for the old historyId
    pipeline.wait_settled([user], messages=first + 2)

    discovered = for_users(
        pipeline.events(pipeline.catalogue.message_discovered.name, MessageDiscovered), [user]
    )
    ids = [e.message_id for e in discovered]
    assert len(ids) == len(set(ids)) == first + 2
    rows = pipeline.query(
        "SELECT count(*), count(DISTINCT id) FROM jobs WHERE user_id = %(u)s AND kind = 'embed'",
        u=user,
    )
    assert rows[0] == (first + 2, first + 2)


def test_imported_eml_files_flow_through_unchanged_in_meaning(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    user = new_user(emulator, 0, seed=41)
    files = sorted(EML_DIR.glob("*.eml"))
    assert files, "tests/data/eml holds the real-world samples"
    ids = {emulator.add_message(user, path.read_bytes()): path for path in files}
    pipeline.sync([user], full=True)
    pipeline.wait_settled([user], messages=len(ids))

    normalized = for_users(
        pipeline.events(pipeline.catalogue.email_normalized.name, EmailNormalized), [user]
    )
    assert {e.message_id for e in normalized} == set(ids)
    for event in normalized:
        parsed = email.message_from_bytes(
            ids[event.message_id].read_bytes(), policy=email.policy.default
        )
        assert event.subject == str(parsed["subject"] or "")
        sender = parsed["from"].addresses[0] if parsed["from"] else None
        assert event.sender is not None
        assert sender is not None
        assert event.sender.address.lower() == sender.addr_spec.lower()
        body = parsed.get_body(preferencelist=("plain", "html"))
        assert body is not None
        first_words = " ".join(str(body.get_content()).split()[:5])
        if body.get_content_type() == "text/plain":
            assert first_words in " ".join(event.text.split())
        attachments = [p.get_filename() for p in parsed.iter_attachments()]
        assert sorted(a.filename for a in event.attachments) == sorted(a for a in attachments if a)


def make_mail(index: int, user: str) -> bytes:
    message = EmailMessage()
    message["From"] = f"Sender {index} <sender{index}@example.org>"
    message["To"] = user
    message["Subject"] = f"New mail {index}"
    message["Message-ID"] = f"<new-{index}-{uuid.uuid4().hex[:6]}@example.org>"
    message.set_content(f"Fresh message number {index}.")
    return message.as_bytes()
