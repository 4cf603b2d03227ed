"""Contacts sink against a real broker and Postgres: counts survive replays, names are stable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from schemas.models import Address, EmailNormalized
from sinks.base import SinkConfig
from sinks.contacts import ContactsWriter, EmailsWriter
from tests.helpers import async_wait_until
from tests.integration.sink_support import (
    EPOCH,
    caught_up,
    create_topic,
    expected_contacts,
    produce_events,
    read_contacts,
    running_sink,
    shuffled_with_duplicates,
    sightings,
    sink_config,
)


def _config(kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]) -> SinkConfig:
    return sink_config(kafka_bootstrap, database_url, unique_name, max_batch_records=700)


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
