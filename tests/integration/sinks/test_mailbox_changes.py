"""Contacts sink with deletions and label changes, against a real broker and Postgres.

A deletion wins whatever the order its message's events arrive in, a label change keeps the
highest history id, and every delivery order and duplication of one set of events leaves the
same tables (the ones a pure model of the events predicts).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from aiokafka import ConsumerRecord

from schemas import headers as topic_headers
from schemas.models import (
    Address,
    ContactExtracted,
    ContactRole,
    DeletionReason,
    EmailNormalized,
    Event,
    MessageDeleted,
    MessageLabelsChanged,
)
from sinks.base import Decoded, RowWriter
from sinks.contacts import ContactsWriter, EmailsWriter
from sinks.mailbox_changes import MAX_MAILBOX_LOCKS, DeletionsWriter, LabelsWriter, lock_mailboxes
from sinks.mailbox_changes import mailbox_lock_key as lock_key
from tests.integration.sink_support import (
    EPOCH,
    ROLES,
    create_contacts_sink_topics,
    create_topic,
    drain,
    expected_contacts,
    mailbox_row_order,
    merge_topic_ends,
    produce_routed,
    read_contacts,
    read_mailbox_tables,
    read_topic,
    sink_config,
)

FROM, TO, CC, BCC, REPLY_TO = ROLES
Tables = dict[str, list[tuple[Any, ...]]]


# --- events -----------------------------------------------------------------------------------


def sighting(
    message: str,
    address: str,
    role: ContactRole,
    minutes: int,
    name: str | None = None,
    user: str = "u1",
) -> ContactExtracted:
    return ContactExtracted(
        user_id=user,
        address=address,
        display_name=name,
        role=role,
        message_id=message,
        thread_id=f"t-{message}",
        occurred_at=EPOCH + timedelta(minutes=minutes),
    )


def email(
    message: str,
    *,
    history_id: int | None = None,
    labels: Sequence[str] = ("INBOX",),
    minutes: int = 0,
    subject: str | None = None,
    user: str = "u1",
) -> EmailNormalized:
    return EmailNormalized(
        user_id=user,
        message_id=message,
        thread_id=f"t-{message}",
        sync_id="s1",
        subject=subject or f"subject of {message}",
        sender=Address(address="sender@x.test"),
        labels=list(labels),
        history_id=history_id,
        text="body",
        snippet="body",
        size=4,
        normalized_at=EPOCH + timedelta(days=1, minutes=minutes),
    )


def label_change(
    message: str, history_id: int, labels: Sequence[str], user: str = "u1"
) -> MessageLabelsChanged:
    return MessageLabelsChanged(
        user_id=user,
        message_id=message,
        thread_id=f"t-{message}",
        sync_id="s2",
        history_id=history_id,
        label_ids=list(labels),
        changed_at=EPOCH + timedelta(days=2),
    )


def deletion(
    message: str,
    user: str = "u1",
    reason: DeletionReason = DeletionReason.DELETED,
    history_id: int | None = 100,
) -> MessageDeleted:
    return MessageDeleted(
        user_id=user,
        message_id=message,
        sync_id="s3",
        history_id=history_id,
        reason=reason,
        deleted_at=EPOCH + timedelta(days=3),
    )


# --- a model of the tables --------------------------------------------------------------------


def expected_tables(events: Sequence[Event]) -> Tables:
    """Return the rows ``read_mailbox_tables`` must find after ``events`` in any order. Pure."""
    deleted: dict[tuple[str, str], MessageDeleted] = {}
    for event in events:
        if isinstance(event, MessageDeleted):
            deleted.setdefault((event.user_id, event.message_id), event)

    def live(event: Event) -> bool:
        return (event.user_id, getattr(event, "message_id", "")) not in deleted

    sightings = sorted({e for e in events if isinstance(e, ContactExtracted) and live(e)}, key=repr)
    emails: dict[tuple[str, str], EmailNormalized] = {}
    labels: dict[tuple[str, str], MessageLabelsChanged] = {}
    for event in events:
        if isinstance(event, EmailNormalized) and live(event):
            key = (event.user_id, event.message_id)
            if key not in emails or event.normalized_at > emails[key].normalized_at:
                emails[key] = event
        if isinstance(event, MessageLabelsChanged) and live(event):
            key = (event.user_id, event.message_id)
            if key not in labels or event.history_id > labels[key].history_id:
                labels[key] = event

    def email_labels(event: EmailNormalized) -> tuple[list[str], Decimal | None]:
        change = labels.get((event.user_id, event.message_id))
        if change is not None and (
            event.history_id is None or change.history_id > event.history_id
        ):
            return change.label_ids, Decimal(change.history_id)
        return event.labels, None if event.history_id is None else Decimal(event.history_id)

    contacts = []
    for (user, address), row in expected_contacts(sightings).items():
        named = [
            s.occurred_at
            for s in sightings
            if (s.user_id, s.address) == (user, address) and s.display_name is not None
        ]
        seen_at = max(named, default=None)
        contacts.append((user, address, row[0], seen_at, *row[1:]))
    tables: Tables = {
        "contacts": contacts,
        "contact_messages": [
            (
                s.user_id,
                s.address,
                str(s.role),
                s.message_id,
                s.thread_id,
                s.occurred_at,
                s.display_name,
            )
            for s in sightings
        ],
        "emails": [
            (e.user_id, e.message_id, e.thread_id, e.subject, *email_labels(e), e.normalized_at)
            for e in emails.values()
        ],
        "deleted_messages": [
            (
                d.user_id,
                d.message_id,
                str(d.reason),
                None if d.history_id is None else Decimal(d.history_id),
                d.deleted_at,
            )
            for d in deleted.values()
        ],
        "message_labels": [
            (c.user_id, c.message_id, c.label_ids, Decimal(c.history_id)) for c in labels.values()
        ],
    }
    return {name: sorted(rows, key=mailbox_row_order) for name, rows in tables.items()}


LABELS = ["INBOX", "UNREAD", "STARRED", "IMPORTANT", "Label_1", "Label_2"]
NAMES = [None, "Ann", "Bea", "Cy"]
ADDRESSES = [f"p{number}@x.test" for number in range(6)]


def mailbox_events(rng: random.Random, users: int = 2, messages: int = 7) -> list[Event]:
    """Return each event once: sightings, normalizations, label changes, some deletions."""
    events: list[Event] = []
    pairs = list(itertools.product(ADDRESSES, ROLES))
    for user in (f"user-{number}" for number in range(users)):
        for number in range(messages):
            message, minutes = f"m{number}", 10 * number + rng.randrange(5)
            for address, role in rng.sample(pairs, rng.randint(1, 5)):
                events.append(sighting(message, address, role, minutes, rng.choice(NAMES), user))
            for copy in range(rng.randint(0, 2)):
                events.append(
                    email(
                        message,
                        history_id=rng.choice([None, rng.randrange(1, 40)]),
                        labels=rng.sample(LABELS, rng.randint(0, 3)),
                        minutes=10 * number + copy,
                        subject=f"{message} take {copy}",
                        user=user,
                    )
                )
            for history_id in rng.sample(range(1, 40), rng.randint(0, 3)):
                labels = rng.sample(LABELS, rng.randint(0, 3))
                events.append(label_change(message, history_id, labels, user))
            if rng.random() < 0.35:
                reason = rng.choice([DeletionReason.DELETED, DeletionReason.RECONCILED])
                history = rng.choice([None, rng.randrange(40, 80)])
                events.append(deletion(message, user, reason, history))
    return events


def delivered(rng: random.Random, events: Sequence[Event], duplicates: float) -> list[Event]:
    """Return the events with a share of them repeated, all in random order."""
    copies = [*events, *rng.sample(list(events), int(len(events) * duplicates))]
    rng.shuffle(copies)
    return copies


# --- writers called directly, in the sink's transaction shape ---------------------------------

WRITER_TYPES: dict[type[Event], Callable[[], RowWriter[Any]]] = {
    ContactExtracted: ContactsWriter,
    EmailNormalized: EmailsWriter,
    MessageDeleted: DeletionsWriter,
    MessageLabelsChanged: LabelsWriter,
}
MAILBOX_TABLES = "contacts, contact_messages, emails, deleted_messages, message_labels"


def record(topic: str, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"",
        value=b"",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=[],
    )


class DirectSink:
    """The contacts sink's writers on one connection, fed batches as ``PostgresSink`` does."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.writers = {kind: make() for kind, make in WRITER_TYPES.items()}
        self.offset = 0

    @classmethod
    async def connect(cls, database_url: str) -> DirectSink:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        sink = cls(conn)
        for writer in sink.writers.values():
            await writer.prepare(conn)
        return sink

    async def write_batch(self, batch: Sequence[Event], order: Sequence[type[Event]]) -> None:
        """One transaction; each event type's writer in a savepoint, in ``order``."""
        by_type: dict[type[Event], list[Decoded[Any]]] = {}
        for event in batch:
            self.offset += 1
            item = Decoded(record(type(event).__name__, self.offset), event)
            by_type.setdefault(type(event), []).append(item)
        async with self.conn.transaction():
            for kind in order:
                if kind in by_type:
                    async with self.conn.transaction():
                        await self.writers[kind].write(self.conn, by_type[kind])


async def test_any_delivery_order_and_duplication_converge_on_one_set_of_tables(
    database_url: str,
) -> None:
    sink = await DirectSink.connect(database_url)
    try:
        for seed in range(40):
            rng = random.Random(seed)
            events = mailbox_events(rng)
            copies = delivered(rng, events, duplicates=0.4)
            cuts = sorted(rng.sample(range(1, len(copies)), rng.randint(0, 8)))
            for start, end in itertools.pairwise([0, *cuts, len(copies)]):
                order = list(WRITER_TYPES)
                rng.shuffle(order)
                await sink.write_batch(copies[start:end], order)

            assert read_mailbox_tables(database_url) == expected_tables(events), f"seed {seed}"
            await sink.conn.execute(f"TRUNCATE {MAILBOX_TABLES}")
    finally:
        await sink.conn.close()


async def test_a_deletion_written_first_in_a_transaction_keeps_the_rest_out(
    database_url: str,
) -> None:
    sink = await DirectSink.connect(database_url)
    try:
        batch: list[Event] = [
            deletion("m1"),
            sighting("m1", "only-m1@x.test", FROM, 5, "Only"),
            sighting("m1", "both@x.test", TO, 5),
            sighting("m2", "both@x.test", CC, 9),
            email("m1", history_id=3),
            label_change("m1", 7, ["STARRED"]),
            email("m2"),
        ]
        await sink.write_batch(batch, list(WRITER_TYPES)[::-1])  # deletions first
    finally:
        await sink.conn.close()

    tables = read_mailbox_tables(database_url)
    assert tables == expected_tables(batch)
    assert [row[3] for row in tables["contact_messages"]] == ["m2"]
    assert [row[1] for row in tables["emails"]] == ["m2"]
    assert tables["message_labels"] == []


async def test_mailbox_locks_exclude_writers_of_one_mailbox_only(database_url: str) -> None:
    assert lock_key("u1") != lock_key("u2")
    holder = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    other = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        await other.execute("SET lock_timeout = '200ms'")
        async with holder.transaction():
            await lock_mailboxes(holder, ["u1"])
            with pytest.raises(psycopg.errors.LockNotAvailable):
                async with other.transaction():
                    await lock_mailboxes(other, ["u1", "u3"])
            async with other.transaction():
                await lock_mailboxes(other, ["u2"])  # another mailbox: no wait
            many = [f"u-{number}" for number in range(MAX_MAILBOX_LOCKS + 1)]
            with pytest.raises(psycopg.errors.LockNotAvailable):
                async with other.transaction():
                    await lock_mailboxes(other, many)  # every mailbox: waits for all holders
        async with other.transaction():
            await lock_mailboxes(other, ["u1"])  # released at the holder's commit
    finally:
        await holder.close()
        await other.close()


# --- through Kafka ----------------------------------------------------------------------------

THREE_MESSAGES = [
    sighting("m1", "alice@x.test", FROM, 10, "Alice"),
    sighting("m1", "bob@x.test", TO, 10),
    sighting("m1", "erin@x.test", CC, 10, "Erin"),
    sighting("m2", "alice@x.test", FROM, 20, "Alice A."),
    sighting("m2", "bob@x.test", CC, 20),
    sighting("m2", "carol@x.test", TO, 20),
    sighting("m2", "dave@x.test", BCC, 20, "Dave"),
    sighting("m2", "erin@x.test", TO, 20, "Erin Newname"),
    sighting("m3", "alice@x.test", TO, 30),
    sighting("m3", "carol@x.test", REPLY_TO, 30),
]


def _config(kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]) -> Any:
    return sink_config(kafka_bootstrap, database_url, unique_name, max_batch_records=5)


async def test_a_deletion_removes_exactly_its_message_and_replays_change_nothing(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topics = await create_contacts_sink_topics(kafka_bootstrap, unique_name)
    config = _config(kafka_bootstrap, database_url, unique_name)
    emails = [email(message, history_id=4) for message in ("m1", "m2", "m3")]
    labels = [label_change("m2", 9, ["STARRED"])]
    first = await produce_routed(kafka_bootstrap, topics, [*THREE_MESSAGES, *emails, *labels])
    await drain(config, topics.writers(), database_url, first)
    before = read_contacts(database_url)
    assert before == expected_contacts(THREE_MESSAGES)

    second = await produce_routed(kafka_bootstrap, topics, [deletion("m2")])
    await drain(config, topics.writers(), database_url, second)

    after = read_contacts(database_url)
    assert after == expected_contacts([s for s in THREE_MESSAGES if s.message_id != "m2"])
    removed = {("u1", s.address): s.role for s in THREE_MESSAGES if s.message_id == "m2"}
    for key, role in removed.items():
        if key in after:  # each count of the role it had in m2 went down by one, no more
            column = 3 + ROLES.index(role)
            assert after[key][column] == before[key][column] - 1
    assert ("u1", "dave@x.test") not in after  # seen in m2 only
    assert after[("u1", "bob@x.test")][2] == EPOCH + timedelta(minutes=10)  # last seen: m1
    assert after[("u1", "carol@x.test")][1] == EPOCH + timedelta(minutes=30)  # first seen: m3
    assert after[("u1", "erin@x.test")][0] == "Erin"  # the name m2 gave is gone with it
    assert after[("u1", "alice@x.test")][0] == "Alice"
    tables = read_mailbox_tables(database_url)
    assert [row[1] for row in tables["emails"]] == ["m1", "m3"]
    assert tables["message_labels"] == []
    assert {row[3] for row in tables["contact_messages"]} == {"m1", "m3"}
    assert tables == expected_tables([*THREE_MESSAGES, *emails, *labels, deletion("m2")])

    # The deletion twice more, then everything again from the start in a new group.
    third = await produce_routed(kafka_bootstrap, topics, [deletion("m2"), deletion("m2")])
    await drain(config, topics.writers(), database_url, third)
    assert read_mailbox_tables(database_url) == tables
    replay = _config(kafka_bootstrap, database_url, unique_name)
    await drain(replay, topics.writers(), database_url, merge_topic_ends(first, second, third))
    assert read_mailbox_tables(database_url) == tables


@pytest.mark.parametrize("same_batch", [False, True], ids=["later-batch", "same-batch"])
async def test_a_deletion_read_before_its_message_keeps_the_message_out(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str], same_batch: bool
) -> None:
    topics = await create_contacts_sink_topics(kafka_bootstrap, unique_name, partitions=1)
    config = sink_config(kafka_bootstrap, database_url, unique_name)  # batches of 5000
    gone: list[Event] = [
        sighting("m9", "only-m9@x.test", FROM, 90, "Nine"),
        sighting("m9", "both@x.test", TO, 90, "Both Late"),
        email("m9", history_id=2),
        label_change("m9", 5, ["STARRED"]),
    ]
    kept: list[Event] = [sighting("m8", "both@x.test", CC, 80, "Both"), email("m8")]
    first = await produce_routed(kafka_bootstrap, topics, [deletion("m9")])
    if not same_batch:
        await drain(config, topics.writers(), database_url, first)
        assert read_mailbox_tables(database_url)["deleted_messages"] != []
    second = await produce_routed(kafka_bootstrap, topics, [*gone, *kept])
    await drain(config, topics.writers(), database_url, merge_topic_ends(first, second))

    tables = read_mailbox_tables(database_url)
    assert tables == expected_tables([deletion("m9"), *gone, *kept])
    assert {row[3] for row in tables["contact_messages"]} == {"m8"}
    assert [row[1] for row in tables["emails"]] == ["m8"]
    assert tables["message_labels"] == []
    assert read_contacts(database_url) == expected_contacts([kept[0]])  # type: ignore[list-item]


async def test_label_changes_keep_the_highest_history_id_in_any_order(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topics = await create_contacts_sink_topics(kafka_bootstrap, unique_name)
    config = _config(kafka_bootstrap, database_url, unique_name)
    phases: list[list[Event]] = [
        [
            email("m1", history_id=5, labels=["INBOX", "UNREAD"]),  # the row before its changes
            label_change("m2", 20, ["INBOX"]),  # changes before the row, newest first
            label_change("m2", 10, ["INBOX", "UNREAD"]),
            label_change("m3", 20, ["INBOX"]),
            label_change("m4", 7, ["INBOX", "STARRED"]),
        ],
        [
            label_change("m1", 20, ["INBOX"]),
            email("m2", history_id=5, labels=["INBOX", "UNREAD"]),
            email("m3", history_id=30, labels=["TRASH"]),  # fetched after the change: wins
            email("m4", labels=["INBOX"]),  # no history id: any known change wins
        ],
        [
            label_change("m1", 10, ["INBOX", "UNREAD", "STARRED"]),  # older, a batch later
            label_change("m3", 25, ["INBOX"]),  # newer than 20, older than the fetch
            email("m2", history_id=5, labels=["INBOX", "UNREAD"], minutes=5, subject="again"),
        ],
    ]
    ends = []
    for events in phases:
        ends.append(await produce_routed(kafka_bootstrap, topics, events))
        await drain(config, topics.writers(), database_url, ends[-1])

    tables = read_mailbox_tables(database_url)
    emails = {row[1]: (row[3], row[4], row[5]) for row in tables["emails"]}
    assert emails == {
        "m1": ("subject of m1", ["INBOX"], 20),
        "m2": ("again", ["INBOX"], 20),
        "m3": ("subject of m3", ["TRASH"], 30),
        "m4": ("subject of m4", ["INBOX", "STARRED"], 7),
    }
    assert {row[1]: (row[2], row[3]) for row in tables["message_labels"]} == {
        "m1": (["INBOX"], 20),
        "m2": (["INBOX"], 20),
        "m3": (["INBOX"], 25),
        "m4": (["INBOX", "STARRED"], 7),
    }
    assert tables == expected_tables([event for events in phases for event in events])


async def test_a_deletion_for_a_reason_this_sink_does_not_know_is_dead_lettered(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topics = await create_contacts_sink_topics(kafka_bootstrap, unique_name, partitions=1)
    config = sink_config(kafka_bootstrap, database_url, unique_name)
    await create_topic(kafka_bootstrap, config.dlq_topic, partitions=1)
    events: list[Event] = [
        sighting("m1", "a@x.test", FROM, 1),
        sighting("m2", "a@x.test", TO, 2),
        deletion("m1", reason=DeletionReason.UNKNOWN),
        deletion("m2"),
    ]
    ends = await produce_routed(kafka_bootstrap, topics, events)
    await drain(config, topics.writers(), database_url, ends)

    [letter] = await read_topic(kafka_bootstrap, config.dlq_topic, 1)
    assert dict(letter.headers)[topic_headers.ORIGINAL_OFFSET] == b"0"  # the unknown reason
    tables = read_mailbox_tables(database_url)
    assert [row[1] for row in tables["deleted_messages"]] == ["m2"]
    assert {row[3] for row in tables["contact_messages"]} == {"m1"}  # kept until redriven


async def test_shuffled_and_duplicated_delivery_through_kafka_converges(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    rng = random.Random(2026)
    events = mailbox_events(rng, users=4, messages=8)
    topics = await create_contacts_sink_topics(kafka_bootstrap, unique_name)
    ends = await produce_routed(kafka_bootstrap, topics, delivered(rng, events, duplicates=0.5))
    config = sink_config(kafka_bootstrap, database_url, unique_name, max_batch_records=7)
    await drain(config, topics.writers(), database_url, ends)
    expected = expected_tables(events)
    assert read_mailbox_tables(database_url) == expected

    replay = sink_config(kafka_bootstrap, database_url, unique_name, max_batch_records=50)
    await drain(replay, topics.writers(), database_url, ends)
    assert read_mailbox_tables(database_url) == expected
