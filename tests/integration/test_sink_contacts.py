"""Contacts sink against a real broker and Postgres: counts survive replays, names are stable."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from schemas.models import Address, ContactExtracted, ContactRole, EmailNormalized
from sinks.base import SinkConfig
from sinks.contacts import ContactsWriter, EmailsWriter
from tests.helpers import async_wait_until
from tests.integration.sink_support import (
    EPOCH,
    caught_up,
    create_topic,
    produce_events,
    running_sink,
    shuffled_with_duplicates,
)

ROLES = [ContactRole.FROM, ContactRole.TO, ContactRole.CC, ContactRole.BCC, ContactRole.REPLY_TO]


def sightings(count: int, seed: int = 4) -> list[ContactExtracted]:
    """Return distinct (address, role, message) sightings over a few users and addresses."""
    rng = random.Random(seed)
    events = []
    for number in range(count):
        user = f"user-{number % 3}"
        address = f"person{rng.randrange(40)}@example.com"
        events.append(
            ContactExtracted(
                user_id=user,
                address=address,
                display_name=rng.choice([None, f"Name {rng.randrange(3)}"]),
                role=ROLES[number % len(ROLES)],
                message_id=f"m{number}",
                thread_id=f"t{number // 3}",
                occurred_at=EPOCH + timedelta(minutes=rng.randrange(100_000)),
            )
        )
    return events


def expected_contacts(events: list[ContactExtracted]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Return the contacts rows a set of distinct sightings must leave."""
    by_contact: dict[tuple[str, str], list[ContactExtracted]] = {}
    for event in events:
        by_contact.setdefault((event.user_id, event.address), []).append(event)
    expected = {}
    for key, group in by_contact.items():
        named = [e for e in group if e.display_name is not None]
        name = (
            max(named, key=lambda e: (e.occurred_at, e.display_name)).display_name
            if named
            else None
        )
        roles = Counter(str(e.role) for e in group)
        expected[key] = (
            name,
            min(e.occurred_at for e in group),
            max(e.occurred_at for e in group),
            *(roles[str(role)] for role in ROLES),
        )
    return expected


def read_contacts(database_url: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, address, display_name, first_seen_at, last_seen_at, from_count,"
            " to_count, cc_count, bcc_count, reply_to_count FROM contacts"
        ).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def _config(kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]) -> SinkConfig:
    return SinkConfig(
        bootstrap_servers=kafka_bootstrap,
        conninfo=database_url,
        group_id=unique_name("g"),
        dlq_topic=unique_name("dlq"),
        max_batch_records=700,
    )


async def test_replayed_sightings_are_counted_once(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("contacts")
    await create_topic(kafka_bootstrap, topic)
    events = sightings(5000)
    ends = await produce_events(kafka_bootstrap, topic, shuffled_with_duplicates(events, 0.3))
    config = _config(kafka_bootstrap, database_url, unique_name)
    async with running_sink(config, {topic: ContactsWriter()}):
        await async_wait_until(lambda: caught_up(database_url, config.group_id, ends))

    # Replay everything from the start in a new group, into the same tables.
    replay = _config(kafka_bootstrap, database_url, unique_name)
    async with running_sink(replay, {topic: ContactsWriter()}):
        await async_wait_until(lambda: caught_up(database_url, replay.group_id, ends))

    assert read_contacts(database_url) == expected_contacts(events)


async def test_emails_are_written_when_switched_on(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    contacts_topic, emails_topic = unique_name("contacts"), unique_name("emails")
    await create_topic(kafka_bootstrap, contacts_topic)
    await create_topic(kafka_bootstrap, emails_topic)
    first = EmailNormalized(
        user_id="u1",
        message_id="m1",
        thread_id="t1",
        sync_id="s1",
        subject="old subject",
        sender=Address(address="a@example.com", name="A"),
        to=[Address(address="b@example.com")],
        text="body",
        snippet="body",
        size=4,
        normalized_at=EPOCH,
    )
    second = first.model_copy(
        update={"subject": "new subject", "normalized_at": EPOCH.replace(hour=1)}
    )
    email_ends = await produce_events(kafka_bootstrap, emails_topic, [second, first, second])
    contact_ends = await produce_events(kafka_bootstrap, contacts_topic, sightings(10))
    config = _config(kafka_bootstrap, database_url, unique_name)
    writers: dict[str, Any] = {contacts_topic: ContactsWriter(), emails_topic: EmailsWriter()}
    async with running_sink(config, writers):
        await async_wait_until(
            lambda: (
                caught_up(database_url, config.group_id, email_ends, emails_topic)
                and caught_up(database_url, config.group_id, contact_ends, contacts_topic)
            )
        )

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT message_id, subject, sender, recipients FROM emails").fetchall()
    assert rows == [
        (
            "m1",
            "new subject",
            "a@example.com",
            {
                "to": [{"address": "b@example.com", "name": None}],
                "cc": [],
                "bcc": [],
                "reply_to": [],
            },
        )
    ]
    assert len(read_contacts(database_url)) > 0
