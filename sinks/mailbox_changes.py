"""Contacts sink, mailbox changes: ``MessageDeleted`` and ``MessageLabelsChanged`` into Postgres.

A deletion leaves a tombstone in ``deleted_messages`` (kept for good) and removes what the sink
derived from the message: its ``emails`` and ``message_labels`` rows and its sightings in the
``contact_messages`` ledger. Exactly the sightings removed are subtracted from their contacts'
counts (a replayed deletion finds none left, so it subtracts nothing); first and last seen, and
the display name if it came from a removed sighting, are recomputed from the sightings that
remain, and a contact with none left is deleted. ``sinks.contacts`` drops any event of a message
that has a tombstone, so a deletion holds in whatever order the topics are read.

A label change keeps the highest ``history_id`` per message in ``message_labels`` and copies it
into the message's ``emails`` row when it is newer than the labels there (``labels_history_id``).

Every writer of the contacts sink takes the advisory locks of the mailboxes in its rows first
(``lock_mailboxes``): a user's events are on four topics whose partitions may belong to different
replicas, and without the locks a deletion and a sighting of the same message committed at the
same time would each miss the other's rows.

This module holds SQL and row shapes only; batching, offsets and dead letters are ``sinks.base``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import sql

from schemas.errors import UndecodableRecordError
from schemas.models import MessageDeleted, MessageLabelsChanged
from schemas.serde import Serde, serde_for
from sinks.base import Connection, Decoded, Record
from sinks.staging import StagingTable

# --- mailbox locks ----------------------------------------------------------------------------

MAILBOX_LOCK_CLASS = 0x6D626F78
"""Advisory lock class ("mbox") of one mailbox: ``pg_advisory_xact_lock(class, key)``."""
EVERY_MAILBOX_LOCK_CLASS = 0x6D62782A
"""Advisory lock class ("mbx*") of the lock over every mailbox; its key is 0."""
MAX_MAILBOX_LOCKS = 64
"""A batch spanning more mailboxes locks every mailbox instead (one lock-table entry, not n)."""

LOCK_EVERY_MAILBOX = sql.SQL("SELECT pg_advisory_xact_lock({cls}, 0)").format(
    cls=sql.Literal(EVERY_MAILBOX_LOCK_CLASS)
)
LOCK_EVERY_MAILBOX_SHARED = sql.SQL("SELECT pg_advisory_xact_lock_shared({cls}, 0)").format(
    cls=sql.Literal(EVERY_MAILBOX_LOCK_CLASS)
)
# unnest keeps the array's order, so every transaction takes its locks in ascending key order.
LOCK_MAILBOXES = sql.SQL(
    "SELECT count(pg_advisory_xact_lock({cls}, key)) FROM unnest(%(keys)s::int4[]) AS key"
).format(cls=sql.Literal(MAILBOX_LOCK_CLASS))


def mailbox_lock_key(user_id: str) -> int:
    """Return the advisory lock key of a mailbox: a stable signed 32-bit hash. Pure.

    Two mailboxes may share a key; they then wait for each other, which costs time, not
    correctness.
    """
    digest = hashlib.blake2b(user_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def mailbox_lock_keys(user_ids: Iterable[str], limit: int = MAX_MAILBOX_LOCKS) -> list[int] | None:
    """Return the sorted lock keys of the mailboxes, or None when there are more than ``limit``.

    None means "lock every mailbox". Pure.
    """
    keys = sorted({mailbox_lock_key(user_id) for user_id in user_ids})
    return None if len(keys) > limit else keys


async def lock_mailboxes(conn: Connection, user_ids: Iterable[str]) -> None:
    """Lock the mailboxes until the transaction ends; call before reading or writing their rows.

    A few mailboxes: the lock over every mailbox in shared mode, then each mailbox's own lock in
    key order. Many: the lock over every mailbox, exclusively (the number of locks a transaction
    holds stays bounded). Two transactions that take some locks in one writer and more in the
    next can deadlock; Postgres then aborts one (``DeadlockDetected``, an OperationalError) and
    the sink retries its batch.
    """
    keys = mailbox_lock_keys(user_ids)
    async with conn.cursor() as cur:
        if keys is None:
            await cur.execute(LOCK_EVERY_MAILBOX)
            return
        await cur.execute(LOCK_EVERY_MAILBOX_SHARED)
        await cur.execute(LOCK_MAILBOXES, {"keys": keys})


# --- deletions --------------------------------------------------------------------------------

DELETION_STAGE = "deletion_stage"
DELETION_COLUMNS = ("user_id", "message_id", "reason", "history_id", "deleted_at")
REMOVED_STAGE = "removed_sighting_stage"

DELETIONS = StagingTable(
    DELETION_STAGE,
    DELETION_COLUMNS,
    sql.SQL(
        "user_id text, message_id text, reason text, history_id numeric(20), deleted_at timestamptz"
    ),
)
# Filled by REMOVE_SIGHTINGS, not by COPY: the sightings a deletion removed.
REMOVED = StagingTable(
    REMOVED_STAGE,
    ("user_id", "address", "role", "occurred_at"),
    sql.SQL("user_id text, address text, role text, occurred_at timestamptz"),
)

# The first report of a deletion stays; a later one (a replay, a reconciliation) changes nothing.
INSERT_TOMBSTONES = """
INSERT INTO deleted_messages (user_id, message_id, reason, history_id, deleted_at)
SELECT user_id, message_id, reason, history_id, deleted_at FROM deletion_stage
ON CONFLICT (user_id, message_id) DO NOTHING
"""
DELETE_EMAILS = """
DELETE FROM emails AS e USING deletion_stage AS s
WHERE e.user_id = s.user_id AND e.message_id = s.message_id
"""
DELETE_MESSAGE_LABELS = """
DELETE FROM message_labels AS l USING deletion_stage AS s
WHERE l.user_id = s.user_id AND l.message_id = s.message_id
"""
# The sightings actually deleted now, kept for the statements below: a replayed deletion finds
# none, so it changes no contact.
REMOVE_SIGHTINGS = """
WITH removed AS (
    DELETE FROM contact_messages AS m USING deletion_stage AS s
    WHERE m.user_id = s.user_id AND m.message_id = s.message_id
    RETURNING m.user_id, m.address, m.role, m.occurred_at
)
INSERT INTO removed_sighting_stage (user_id, address, role, occurred_at)
SELECT user_id, address, role, occurred_at FROM removed
"""
DROP_UNSEEN_CONTACTS = """
DELETE FROM contacts AS c
USING (SELECT DISTINCT user_id, address FROM removed_sighting_stage) AS r
WHERE c.user_id = r.user_id AND c.address = r.address
  AND NOT EXISTS (
      SELECT 1 FROM contact_messages AS m WHERE m.user_id = c.user_id AND m.address = c.address)
"""
# Counts lose exactly the removed sightings. First/last seen come from the remaining ones; so
# does the name, but only when a removed sighting is the one it was taken from (same time):
# otherwise the name's sighting remains and would be chosen again, and ledger rows written
# before display names were recorded cannot lose the name they do not carry.
SUBTRACT_SIGHTINGS = """
WITH removed AS (
    SELECT user_id, address,
           count(*) FILTER (WHERE role = 'from') AS from_count,
           count(*) FILTER (WHERE role = 'to') AS to_count,
           count(*) FILTER (WHERE role = 'cc') AS cc_count,
           count(*) FILTER (WHERE role = 'bcc') AS bcc_count,
           count(*) FILTER (WHERE role = 'reply_to') AS reply_to_count,
           array_agg(occurred_at) AS removed_times
    FROM removed_sighting_stage
    GROUP BY user_id, address
), remaining AS (
    SELECT m.user_id, m.address,
           min(m.occurred_at) AS first_seen_at,
           max(m.occurred_at) AS last_seen_at,
           (array_agg(m.display_name ORDER BY m.occurred_at DESC, m.display_name DESC)
                FILTER (WHERE m.display_name IS NOT NULL))[1] AS display_name,
           max(m.occurred_at) FILTER (WHERE m.display_name IS NOT NULL) AS display_name_seen_at
    FROM contact_messages AS m
    JOIN removed AS r ON r.user_id = m.user_id AND r.address = m.address
    GROUP BY m.user_id, m.address
)
UPDATE contacts AS c SET
    from_count = c.from_count - r.from_count,
    to_count = c.to_count - r.to_count,
    cc_count = c.cc_count - r.cc_count,
    bcc_count = c.bcc_count - r.bcc_count,
    reply_to_count = c.reply_to_count - r.reply_to_count,
    first_seen_at = k.first_seen_at,
    last_seen_at = k.last_seen_at,
    display_name = CASE WHEN c.display_name_seen_at = ANY (r.removed_times)
                        THEN k.display_name ELSE c.display_name END,
    display_name_seen_at = CASE WHEN c.display_name_seen_at = ANY (r.removed_times)
                                THEN k.display_name_seen_at ELSE c.display_name_seen_at END
FROM removed AS r
JOIN remaining AS k ON k.user_id = r.user_id AND k.address = r.address
WHERE c.user_id = r.user_id AND c.address = r.address
"""


def decode_deletion(record: Record, serde: Serde | None = None) -> MessageDeleted:
    """Return the event in a record; raise UndecodableRecordError (PERMANENT) if there is none.

    ``serde`` is the deployment's (default: single-object encoding); a registry-backed one
    reads both framings and raises TransientError while the registry is unreachable.
    """
    if record.value is None:
        raise UndecodableRecordError("MessageDeleted record without a value (tombstone)")
    return (serde or serde_for(None)).decode(record.value, MessageDeleted)


def deletion_rows(items: Sequence[Decoded[MessageDeleted]]) -> list[tuple[Any, ...]]:
    """Return one staging row per deleted message, its first report in the batch. Pure.

    Rows are in ``DELETION_COLUMNS`` order. One user's deletions share a partition, so "first"
    is the same on every replay.
    """
    first: dict[tuple[str, str], MessageDeleted] = {}
    for item in items:
        first.setdefault((item.row.user_id, item.row.message_id), item.row)
    return [
        (event.user_id, event.message_id, str(event.reason), event.history_id, event.deleted_at)
        for event in first.values()
    ]


class DeletionsWriter:
    """``RowWriter`` for ``MessageDeleted``: tombstones, then remove what the message left.

    COPY into a temporary table, then a few statements in the caller's transaction. Idempotent:
    a replayed deletion finds its rows already gone.

    Arguments:
        serde: the deployment's wire format (``inboxflow.wiring.serde_from``); default
            single-object encoding.
    """

    def __init__(self, *, serde: Serde | None = None) -> None:
        self._serde = serde or serde_for(None)

    def decode(self, record: Record) -> MessageDeleted:
        """Return the event in ``record``; raises UndecodableRecordError."""
        return decode_deletion(record, self._serde)

    async def prepare(self, conn: Connection) -> None:
        """Create the session's staging tables (temporary: private to this connection)."""
        await conn.execute(DELETIONS.create)
        await conn.execute(REMOVED.create)

    async def write(self, conn: Connection, rows: Sequence[Decoded[MessageDeleted]]) -> None:
        """Tombstone the messages and remove their rows and sightings; idempotent under replay.

        Raises IntegrityError (the batch is bisected) for a reason this sink does not know.
        """
        await lock_mailboxes(conn, (item.row.user_id for item in rows))
        async with conn.cursor() as cur:
            await cur.execute(REMOVED.truncate)
            await DELETIONS.load(cur, deletion_rows(rows))
            await cur.execute(INSERT_TOMBSTONES)
            await cur.execute(DELETE_EMAILS)
            await cur.execute(DELETE_MESSAGE_LABELS)
            await cur.execute(REMOVE_SIGHTINGS)
            await cur.execute(DROP_UNSEEN_CONTACTS)
            await cur.execute(SUBTRACT_SIGHTINGS)


# --- label changes ----------------------------------------------------------------------------

LABEL_STAGE = "label_stage"
LABEL_COLUMNS = ("user_id", "message_id", "label_ids", "history_id")

LABELS = StagingTable(
    LABEL_STAGE,
    LABEL_COLUMNS,
    sql.SQL("user_id text, message_id text, label_ids text[], history_id numeric(20)"),
)

# The highest history id wins; on a tie the stored set stays. A deleted message gets none.
UPSERT_MESSAGE_LABELS = """
INSERT INTO message_labels AS l (user_id, message_id, label_ids, history_id)
SELECT s.user_id, s.message_id, s.label_ids, s.history_id FROM label_stage AS s
WHERE NOT EXISTS (
    SELECT 1 FROM deleted_messages AS d
    WHERE d.user_id = s.user_id AND d.message_id = s.message_id)
ON CONFLICT (user_id, message_id) DO UPDATE SET
    label_ids = EXCLUDED.label_ids,
    history_id = EXCLUDED.history_id
WHERE l.history_id < EXCLUDED.history_id
"""
# From message_labels (just upserted: the newest set known), into email rows whose labels are
# older or of unknown age.
APPLY_LABELS_TO_EMAILS = """
UPDATE emails AS e SET labels = l.label_ids, labels_history_id = l.history_id
FROM label_stage AS s
JOIN message_labels AS l ON l.user_id = s.user_id AND l.message_id = s.message_id
WHERE e.user_id = s.user_id AND e.message_id = s.message_id
  AND (e.labels_history_id IS NULL OR e.labels_history_id < l.history_id)
"""


def decode_label_change(record: Record, serde: Serde | None = None) -> MessageLabelsChanged:
    """Return the event in a record; raise UndecodableRecordError (PERMANENT) if there is none.

    ``serde`` as for ``decode_deletion``.
    """
    if record.value is None:
        raise UndecodableRecordError("MessageLabelsChanged record without a value (tombstone)")
    return (serde or serde_for(None)).decode(record.value, MessageLabelsChanged)


def label_rows(items: Sequence[Decoded[MessageLabelsChanged]]) -> list[tuple[Any, ...]]:
    """Return one staging row per message: its highest history id (the earlier record on ties).

    Rows are in ``LABEL_COLUMNS`` order. Pure.
    """
    newest: dict[tuple[str, str], MessageLabelsChanged] = {}
    for item in items:
        key = (item.row.user_id, item.row.message_id)
        current = newest.get(key)
        if current is None or item.row.history_id > current.history_id:
            newest[key] = item.row
    return [
        (event.user_id, event.message_id, list(event.label_ids), event.history_id)
        for event in newest.values()
    ]


class LabelsWriter:
    """``RowWriter`` for ``MessageLabelsChanged``: newest label set per message, into emails too.

    COPY into a temporary table, then two statements. Idempotent and order-independent: the
    highest history id wins wherever it is compared.

    Arguments:
        serde: as for ``DeletionsWriter``.
    """

    def __init__(self, *, serde: Serde | None = None) -> None:
        self._serde = serde or serde_for(None)

    def decode(self, record: Record) -> MessageLabelsChanged:
        """Return the event in ``record``; raises UndecodableRecordError."""
        return decode_label_change(record, self._serde)

    async def prepare(self, conn: Connection) -> None:
        """Create the session's staging table (temporary: private to this connection)."""
        await conn.execute(LABELS.create)

    async def write(self, conn: Connection, rows: Sequence[Decoded[MessageLabelsChanged]]) -> None:
        """Keep the newest label set of each message and update its email row if older."""
        await lock_mailboxes(conn, (item.row.user_id for item in rows))
        async with conn.cursor() as cur:
            await LABELS.load(cur, label_rows(rows))
            await cur.execute(UPSERT_MESSAGE_LABELS)
            await cur.execute(APPLY_LABELS_TO_EMAILS)
