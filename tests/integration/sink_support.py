"""Shared pieces of the sink tests: event sets with known final tables, topics, a running sink."""

from __future__ import annotations

import asyncio
import io
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastavro import schemaless_writer
from prometheus_client import CollectorRegistry

from schemas import serde
from schemas.models import (
    ContactExtracted,
    ContactRole,
    EmailNormalized,
    Event,
    JobKind,
    JobStateChanged,
    JobStatus,
    MessageDeleted,
    MessageLabelsChanged,
)
from schemas.store import default_store
from sinks.base import PostgresSink, RowWriter, SinkConfig
from sinks.contacts import ContactsWriter, EmailsWriter
from sinks.mailbox_changes import DeletionsWriter, LabelsWriter
from sinks.metrics import SinkMetrics
from tests.helpers import async_wait_until
from topics.kafka import KafkaClients

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = [JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.RETRYING, JobStatus.DONE]


def job_events(jobs: int, versions: int, seed: int = 7) -> list[JobStateChanged]:
    """Return ``versions`` state changes of each of ``jobs`` jobs, in version order."""
    rng = random.Random(seed)
    events = []
    for number in range(jobs):
        user = f"user-{number % 50}"
        subject = f"msg-{number}"
        start = EPOCH + timedelta(seconds=rng.randrange(86_400))
        for version in range(1, versions + 1):
            events.append(
                JobStateChanged(
                    user_id=user,
                    job_id=JobStateChanged.make_job_id(
                        JobKind.NORMALIZE_GOOGLE_EMAIL, user, subject
                    ),
                    kind=JobKind.NORMALIZE_GOOGLE_EMAIL,
                    status=STATUSES[min(version - 1, len(STATUSES) - 1)],
                    attempts=version - 1,
                    subject_id=subject,
                    batch_id=f"batch-{number % 7}",
                    version=version,
                    occurred_at=start + timedelta(seconds=version),
                )
            )
    return events


def shuffled_with_duplicates(
    events: Sequence[Event], duplicates: float, seed: int = 11
) -> list[Event]:
    """Return the events plus a share of repeats, in random order."""
    rng = random.Random(seed)
    extra = rng.sample(list(events), int(len(events) * duplicates))
    mixed = [*events, *extra]
    rng.shuffle(mixed)
    return mixed


def expected_jobs(events: Iterable[JobStateChanged]) -> dict[str, tuple[Any, ...]]:
    """Return the ``jobs`` rows the events must leave: the last version, the first time."""
    latest: dict[str, JobStateChanged] = {}
    first: dict[str, datetime] = {}
    for event in events:
        if event.job_id not in latest or event.version > latest[event.job_id].version:
            latest[event.job_id] = event
        first[event.job_id] = min(first.get(event.job_id, event.occurred_at), event.occurred_at)
    return {
        job_id: (
            str(event.status),
            event.attempts,
            event.version,
            first[job_id],
            event.occurred_at,
        )
        for job_id, event in latest.items()
    }


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
    """Return the contacts table in the shape of ``expected_contacts``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, address, display_name, first_seen_at, last_seen_at, from_count,"
            " to_count, cc_count, bcc_count, reply_to_count FROM contacts"
        ).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def read_jobs(database_url: str) -> dict[str, tuple[Any, ...]]:
    """Return the jobs table in the shape of ``expected_jobs``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, status, attempts, version, created_at, updated_at FROM jobs"
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def count_rows(database_url: str, table: str) -> int:
    """Return the number of rows in a table (names come from the tests, not from users)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    assert row is not None
    return int(row[0])


async def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    """Create a topic and wait until the broker reports it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
) -> dict[int, int]:
    """Send (key, value) pairs, wait until all are acknowledged; return the end offsets touched."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        pending = [
            await producer.send(topic, key=key, value=value, headers=headers)
            for key, value in values
        ]
        delivered = await asyncio.gather(*pending)
    finally:
        await producer.stop()
    ends: dict[int, int] = {}
    for meta in delivered:
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


def encode_events(events: Sequence[Event]) -> list[bytes]:
    """Return the single-object encoding of each event, as ``serde.encode`` would.

    ``serde.encode`` recomputes the schema fingerprint on every call (about 0.4 ms), which
    alone would take 40 s for the 100 000-event test; the frame header is reused instead and
    checked against ``serde.encode`` for every event type present.
    """
    encoded: list[bytes] = []
    headers: dict[type[Event], tuple[bytes, Any]] = {}
    for event in events:
        model = type(event)
        reference = None
        if model not in headers:
            reference = serde.encode(event)
            headers[model] = (reference[: serde.SOE_HEADER_SIZE], default_store().current(model))
        header, known = headers[model]
        body = io.BytesIO()
        schemaless_writer(body, known.parsed, event.model_dump())
        encoded.append(header + body.getvalue())
        assert reference is None or encoded[-1] == reference
    return encoded


async def produce_events(bootstrap: str, topic: str, events: Sequence[Event]) -> dict[int, int]:
    """Send events encoded as the project serde does, keyed by user; return the end offsets."""
    values = encode_events(events)
    return await produce(
        bootstrap,
        topic,
        ((event.kafka_key(), value) for event, value in zip(events, values, strict=True)),
    )


def merge_ends(*ends: dict[int, int]) -> dict[int, int]:
    """Return the highest end offset per partition over several ``produce`` results."""
    merged: dict[int, int] = {}
    for each in ends:
        for partition, offset in each.items():
            merged[partition] = max(merged.get(partition, 0), offset)
    return merged


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Return the first ``count`` records of a topic (all partitions), waiting up to timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def kafka_committed(
    bootstrap: str, group_id: str, topic: str, partitions: int
) -> dict[int, int]:
    """Return the offsets a group committed to Kafka per partition (partitions with one)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    await consumer.start()
    try:
        committed = {
            p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)
        }
    finally:
        await consumer.stop()
    return {p: offset for p, offset in committed.items() if offset is not None}


def stored_offsets(database_url: str, group_id: str, topic: str | None = None) -> dict[int, int]:
    """Return the sink's stored next offset per partition (of one topic, if given)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT partition, next_offset FROM sink_offsets"
            " WHERE group_id = %s AND (%s::text IS NULL OR topic = %s)",
            (group_id, topic, topic),
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def caught_up(
    database_url: str, group_id: str, ends: dict[int, int], topic: str | None = None
) -> bool:
    """Return whether the stored offsets reached ``ends`` (partition -> end offset)."""
    stored = stored_offsets(database_url, group_id, topic)
    return all(stored.get(partition) == offset for partition, offset in ends.items())


@dataclass
class RunningSink:
    """A sink running in this event loop, with its private metrics."""

    sink: PostgresSink
    metrics: SinkMetrics
    registry: CollectorRegistry

    def value(self, name: str) -> float:
        """Return a sample of this sink's metrics, e.g. ``inboxflow_sink_rows_total``."""
        return self.registry.get_sample_value(name, {"sink": "test"}) or 0.0


@asynccontextmanager
async def running_sink(
    config: SinkConfig, writers: dict[str, RowWriter[Any]]
) -> AsyncIterator[RunningSink]:
    """Run a sink until the block ends; re-raise whatever made it fail."""
    registry = CollectorRegistry()
    metrics = SinkMetrics("test", registry=registry)
    sink = PostgresSink(config, writers, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        yield RunningSink(sink, metrics, registry)
        if task.done():
            task.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def sink_config(
    kafka_bootstrap: str,
    database_url: str,
    unique_name: Callable[..., str],
    **overrides: Any,
) -> SinkConfig:
    """Return a sink config with this test's own group and dead-letter topic."""
    return SinkConfig(
        kafka=KafkaClients(kafka_bootstrap),
        conninfo=database_url,
        group_id=unique_name("g"),
        dlq_topic=unique_name("dlq"),
        **overrides,
    )


# --- the contacts sink with deletions and label changes ---------------------------------------

MAILBOX_TABLE_QUERIES = {
    "contacts": (
        "SELECT user_id, address, display_name, display_name_seen_at, first_seen_at,"
        " last_seen_at, from_count, to_count, cc_count, bcc_count, reply_to_count FROM contacts"
    ),
    "contact_messages": (
        "SELECT user_id, address, role, message_id, thread_id, occurred_at, display_name"
        " FROM contact_messages"
    ),
    # Not the source_* columns: of two copies of one event, which one wrote the row may vary.
    "emails": (
        "SELECT user_id, message_id, thread_id, subject, labels, labels_history_id,"
        " normalized_at FROM emails"
    ),
    "deleted_messages": (
        "SELECT user_id, message_id, reason, history_id, deleted_at FROM deleted_messages"
    ),
    "message_labels": "SELECT user_id, message_id, label_ids, history_id FROM message_labels",
}


@dataclass(frozen=True)
class ContactsSinkTopics:
    """One test's source topics of the contacts sink, one per event type."""

    contacts: str
    emails: str
    deleted: str
    labels: str

    def of(self, event: Event) -> str:
        """Return the topic an event goes to."""
        by_type: dict[type[Event], str] = {
            ContactExtracted: self.contacts,
            EmailNormalized: self.emails,
            MessageDeleted: self.deleted,
            MessageLabelsChanged: self.labels,
        }
        return by_type[type(event)]

    def writers(self) -> dict[str, RowWriter[Any]]:
        """Return the contacts sink's writers, emails switched on."""
        return {
            self.contacts: ContactsWriter(),
            self.emails: EmailsWriter(),
            self.deleted: DeletionsWriter(),
            self.labels: LabelsWriter(),
        }


async def create_contacts_sink_topics(
    bootstrap: str, unique_name: Callable[..., str], partitions: int = 3
) -> ContactsSinkTopics:
    """Create this test's four topics of the contacts sink."""
    topics = ContactsSinkTopics(
        contacts=unique_name("contacts"),
        emails=unique_name("emails"),
        deleted=unique_name("deleted"),
        labels=unique_name("labels"),
    )
    for name in (topics.contacts, topics.emails, topics.deleted, topics.labels):
        await create_topic(bootstrap, name, partitions)
    return topics


async def produce_routed(
    bootstrap: str, topics: ContactsSinkTopics, events: Sequence[Event]
) -> dict[str, dict[int, int]]:
    """Send each event to its type's topic (their order kept per topic); return ends by topic."""
    by_topic: dict[str, list[Event]] = {}
    for event in events:
        by_topic.setdefault(topics.of(event), []).append(event)
    return {
        topic: await produce_events(bootstrap, topic, batch) for topic, batch in by_topic.items()
    }


def merge_topic_ends(*ends: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    """Return the highest end offset per topic and partition over several ``produce_routed``."""
    merged: dict[str, dict[int, int]] = {}
    for each in ends:
        for topic, partitions in each.items():
            merged[topic] = merge_ends(merged.get(topic, {}), partitions)
    return merged


async def drain(
    config: SinkConfig,
    writers: dict[str, RowWriter[Any]],
    database_url: str,
    ends: dict[str, dict[int, int]],
) -> None:
    """Run a sink until its stored offsets reach ``ends`` (topic -> partition -> end offset)."""
    async with running_sink(config, writers):
        await async_wait_until(
            lambda: all(
                caught_up(database_url, config.group_id, partitions, topic)
                for topic, partitions in ends.items()
            ),
            timeout=60,
            message="the sink caught up",
        )


def read_mailbox_tables(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Return the rows the contacts sink writes, table by table, sorted by their keys."""
    with psycopg.connect(database_url) as conn:
        return {
            table: sorted(conn.execute(query).fetchall(), key=mailbox_row_order)
            for table, query in MAILBOX_TABLE_QUERIES.items()
        }


def mailbox_row_order(row: Sequence[Any]) -> list[str]:
    """Sort key of the rows of ``read_mailbox_tables``: their leading (text) key columns."""
    return [str(value) for value in row[:4]]
