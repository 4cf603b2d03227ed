"""Sinks and the two wire framings, on a real broker, Postgres and schema registry.

A topic switching to the schema registry holds single-object frames (``C3 01``) written before
the switch and Confluent frames (``00`` + schema id) after it; a sink given the registry serde
must write both without a flag day, and must wait, not dead-letter, while the registry is away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from schemas import serde
from schemas.errors import TransientError
from schemas.models import EmailNormalized, Event
from schemas.registry import SchemaRegistryClient
from schemas.serde import RegistrySerde, Serde
from sinks.contacts import ContactsWriter, EmailsWriter
from sinks.job_state import JobStateWriter
from tests.helpers import async_wait_until
from tests.integration.sink_support import (
    EPOCH,
    caught_up,
    create_topic,
    expected_contacts,
    expected_jobs,
    job_events,
    merge_ends,
    produce,
    read_contacts,
    read_jobs,
    read_topic,
    running_sink,
    sightings,
    sink_config,
)


def _alternating(events: Sequence[Event], registry: Serde) -> list[tuple[bytes, bytes]]:
    """Key and value of each event, framed single-object and Confluent by turns."""
    framings = (serde.serde_for(None), registry)
    return [(e.kafka_key(), framings[i % 2].encode(e)) for i, e in enumerate(events)]


def _emails(count: int) -> list[EmailNormalized]:
    return [
        EmailNormalized(
            user_id=f"user-{i % 3}",
            message_id=f"m{i}",
            thread_id=f"t{i}",
            sync_id="s1",
            subject=f"subject {i}",
            text="body",
            snippet="body",
            size=4,
            normalized_at=EPOCH,
        )
        for i in range(count)
    ]


async def test_registry_mode_sinks_read_a_topic_holding_both_framings(
    kafka_bootstrap: str,
    database_url: str,
    schema_registry_url: str,
    unique_name: Callable[..., str],
) -> None:
    registry = serde.serde_for(schema_registry_url)
    jobs_topic, contacts_topic, emails_topic = (unique_name(p) for p in ("jobs", "c", "emails"))
    for topic in (jobs_topic, contacts_topic, emails_topic):
        await create_topic(kafka_bootstrap, topic)
    jobs, contacts, emails = job_events(jobs=60, versions=3), sightings(200), _emails(30)
    framed = {
        jobs_topic: _alternating(jobs, registry),
        contacts_topic: _alternating(contacts, registry),
        emails_topic: _alternating(emails, registry),
    }
    assert {value[:1] for values in framed.values() for _, value in values} == {b"\xc3", b"\x00"}
    ends = {topic: await produce(kafka_bootstrap, topic, pairs) for topic, pairs in framed.items()}

    # A fresh serde, as a sink process has: it must fetch the writer schemas by id.
    consumer_serde = serde.serde_for(schema_registry_url)
    config = sink_config(kafka_bootstrap, database_url, unique_name)
    writers: dict[str, Any] = {
        jobs_topic: JobStateWriter(serde=consumer_serde),
        contacts_topic: ContactsWriter(serde=consumer_serde),
        emails_topic: EmailsWriter(serde=consumer_serde),
    }
    async with running_sink(config, writers) as running:
        await async_wait_until(
            lambda: all(caught_up(database_url, config.group_id, e, t) for t, e in ends.items()),
            message="sink caught up on every topic",
        )
        assert running.value("inboxflow_sink_rejected_rows_total") == 0

    assert read_jobs(database_url) == expected_jobs(jobs)
    assert read_contacts(database_url) == expected_contacts(contacts)
    with psycopg.connect(database_url) as conn:
        written = {row[0] for row in conn.execute("SELECT message_id FROM emails")}
    assert written == {email.message_id for email in emails}


async def test_default_mode_sink_dead_letters_confluent_frames_naming_the_setting(
    kafka_bootstrap: str,
    database_url: str,
    schema_registry_url: str,
    unique_name: Callable[..., str],
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    [event] = job_events(jobs=1, versions=1)
    confluent = serde.serde_for(schema_registry_url).encode(event)
    ends = await produce(kafka_bootstrap, topic, [(event.kafka_key(), confluent)])
    config = sink_config(kafka_bootstrap, database_url, unique_name)
    await create_topic(kafka_bootstrap, config.dlq_topic, partitions=1)

    async with running_sink(config, {topic: JobStateWriter()}):
        await async_wait_until(lambda: caught_up(database_url, config.group_id, ends))

    [letter] = await read_topic(kafka_bootstrap, config.dlq_topic, 1)
    message = dict(letter.headers)["x-exception-message"].decode()
    assert "Confluent" in message
    assert "INBOXFLOW_SCHEMA_REGISTRY_URL" in message
    assert read_jobs(database_url) == {}


class FlakyClient(SchemaRegistryClient):
    """The real client, but the registry is 'unreachable' for the first ``outages`` lookups."""

    def __init__(self, url: str, outages: int) -> None:
        super().__init__(url)
        self.outages = outages

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        if self.outages > 0:
            self.outages -= 1
            raise TransientError("schema registry unreachable (test outage)")
        return super().get_schema(schema_id)


async def test_sink_waits_out_an_unreachable_registry_instead_of_dead_lettering(
    kafka_bootstrap: str,
    database_url: str,
    schema_registry_url: str,
    unique_name: Callable[..., str],
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic)
    events = job_events(jobs=20, versions=2)
    producer_serde = serde.serde_for(schema_registry_url)
    ends = merge_ends(
        await produce(
            kafka_bootstrap, topic, [(e.kafka_key(), producer_serde.encode(e)) for e in events]
        )
    )
    client = FlakyClient(schema_registry_url, outages=3)
    config = sink_config(kafka_bootstrap, database_url, unique_name, backoff_initial=0.05)

    async with running_sink(config, {topic: JobStateWriter(serde=RegistrySerde(client))}) as run:
        await async_wait_until(lambda: caught_up(database_url, config.group_id, ends))
        assert run.value("inboxflow_sink_rejected_rows_total") == 0

    assert client.outages == 0
    assert read_jobs(database_url) == expected_jobs(events)
