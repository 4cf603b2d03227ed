"""Contacts sink: ``ContactExtracted`` into ``contacts``; optionally ``EmailNormalized`` too.

The ``emails`` table is written only when the sink is given an ``EmailsWriter`` (config switch).
Deletions and label changes are ``sinks.mailbox_changes``; both writers here drop the events of
a message that has a tombstone in ``deleted_messages``, whichever arrived first, and take the
mailbox locks of ``sinks.mailbox_changes.lock_mailboxes`` before touching shared rows.

Counting must survive replays: a (contact, role, message) sighting is first inserted into the
``contact_messages`` ledger with ``ON CONFLICT DO NOTHING``, and only the sightings actually
inserted add to the counts, in the same statement. First and last seen are LEAST/GREATEST; the
display name is the one of the latest named sighting (ties broken by the name), so the table
does not depend on arrival order. Emails: one row per message, the latest ``normalized_at``
wins, except for the labels: the row takes the event's labels or the message's newest label
change in ``message_labels``, whichever has the higher Gmail history id (an event without one
loses), and records that id in ``labels_history_id``.

This module holds SQL and row shapes only; batching, offsets and dead letters are ``sinks.base``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from schemas.errors import UndecodableRecordError
from schemas.models import Address, ContactExtracted, EmailNormalized
from schemas.serde import Serde, serde_for
from sinks.base import Connection, Decoded, Record
from sinks.mailbox_changes import lock_mailboxes
from sinks.staging import StagingTable

STAGE_TABLE = "contact_stage"
STAGE_COLUMNS = (
    "user_id",
    "address",
    "display_name",
    "role",
    "message_id",
    "thread_id",
    "occurred_at",
)

STAGE = StagingTable(
    STAGE_TABLE,
    STAGE_COLUMNS,
    sql.SQL(
        "user_id text, address text, display_name text, role text, message_id text, "
        "thread_id text, occurred_at timestamptz"
    ),
)

# One statement: sightings of messages without a tombstone, ledger insert (new sightings only),
# per-contact facts of the batch, upsert. The ledger's DO NOTHING tolerates repeats inside the
# batch; the contacts insert groups by contact, so ON CONFLICT DO UPDATE never meets one row twice.
UPSERT_CONTACTS = """
WITH live AS (
    SELECT * FROM contact_stage AS s
    WHERE NOT EXISTS (
        SELECT 1 FROM deleted_messages AS d
        WHERE d.user_id = s.user_id AND d.message_id = s.message_id)
), new_sightings AS (
    INSERT INTO contact_messages (
        user_id, address, role, message_id, thread_id, occurred_at, display_name)
    SELECT user_id, address, role, message_id, thread_id, occurred_at, display_name FROM live
    ON CONFLICT DO NOTHING
    RETURNING user_id, address, role
), counts AS (
    SELECT user_id, address,
           count(*) FILTER (WHERE role = 'from') AS from_count,
           count(*) FILTER (WHERE role = 'to') AS to_count,
           count(*) FILTER (WHERE role = 'cc') AS cc_count,
           count(*) FILTER (WHERE role = 'bcc') AS bcc_count,
           count(*) FILTER (WHERE role = 'reply_to') AS reply_to_count
    FROM new_sightings
    GROUP BY user_id, address
), facts AS (
    SELECT user_id, address,
           min(occurred_at) AS first_seen_at,
           max(occurred_at) AS last_seen_at,
           (array_agg(display_name ORDER BY occurred_at DESC, display_name DESC)
                FILTER (WHERE display_name IS NOT NULL))[1] AS display_name,
           max(occurred_at) FILTER (WHERE display_name IS NOT NULL) AS display_name_seen_at
    FROM live
    GROUP BY user_id, address
)
INSERT INTO contacts AS c (
    user_id, address, display_name, display_name_seen_at, first_seen_at, last_seen_at,
    from_count, to_count, cc_count, bcc_count, reply_to_count)
SELECT f.user_id, f.address, f.display_name, f.display_name_seen_at, f.first_seen_at,
       f.last_seen_at, coalesce(n.from_count, 0), coalesce(n.to_count, 0),
       coalesce(n.cc_count, 0), coalesce(n.bcc_count, 0), coalesce(n.reply_to_count, 0)
FROM facts AS f
LEFT JOIN counts AS n USING (user_id, address)
ON CONFLICT (user_id, address) DO UPDATE SET
    first_seen_at = LEAST(c.first_seen_at, EXCLUDED.first_seen_at),
    last_seen_at = GREATEST(c.last_seen_at, EXCLUDED.last_seen_at),
    display_name = CASE
        WHEN EXCLUDED.display_name IS NOT NULL AND (c.display_name_seen_at IS NULL
             OR (EXCLUDED.display_name_seen_at, EXCLUDED.display_name)
                > (c.display_name_seen_at, c.display_name))
        THEN EXCLUDED.display_name ELSE c.display_name END,
    display_name_seen_at = CASE
        WHEN EXCLUDED.display_name IS NOT NULL AND (c.display_name_seen_at IS NULL
             OR (EXCLUDED.display_name_seen_at, EXCLUDED.display_name)
                > (c.display_name_seen_at, c.display_name))
        THEN EXCLUDED.display_name_seen_at ELSE c.display_name_seen_at END,
    from_count = c.from_count + EXCLUDED.from_count,
    to_count = c.to_count + EXCLUDED.to_count,
    cc_count = c.cc_count + EXCLUDED.cc_count,
    bcc_count = c.bcc_count + EXCLUDED.bcc_count,
    reply_to_count = c.reply_to_count + EXCLUDED.reply_to_count
"""

EMAIL_COLUMNS = (
    "user_id",
    "message_id",
    "thread_id",
    "sync_id",
    "subject",
    "sender",
    "recipients",
    "sent_at",
    "labels",
    "labels_history_id",
    "snippet",
    "body_text",
    "size_bytes",
    "attachments",
    "normalized_at",
    "source_topic",
    "source_partition",
    "source_offset",
)
EMAIL_STAGE_TABLE = "email_stage"

EMAIL_STAGE = StagingTable.like(EMAIL_STAGE_TABLE, "emails", EMAIL_COLUMNS)

# The message's newest label change is newer than the event's labels: a higher history id, or
# the event has none.
_LABEL_CHANGE_IS_NEWER = sql.SQL(
    "l.history_id IS NOT NULL "
    "AND (s.labels_history_id IS NULL OR l.history_id > s.labels_history_id)"
)
_EMAIL_VALUES = {
    "labels": sql.SQL("CASE WHEN {newer} THEN l.label_ids ELSE s.labels END").format(
        newer=_LABEL_CHANGE_IS_NEWER
    ),
    "labels_history_id": sql.SQL(
        "CASE WHEN {newer} THEN l.history_id ELSE s.labels_history_id END"
    ).format(newer=_LABEL_CHANGE_IS_NEWER),
}
# One row per message (``latest_emails``), none of a message with a tombstone; the latest
# normalization wins the whole row, its labels merged with message_labels above.
UPSERT_EMAILS = sql.SQL(
    "INSERT INTO emails AS e ({columns}) SELECT {values} FROM {stage} AS s "
    "LEFT JOIN message_labels AS l ON l.user_id = s.user_id AND l.message_id = s.message_id "
    "WHERE NOT EXISTS (SELECT 1 FROM deleted_messages AS d "
    "WHERE d.user_id = s.user_id AND d.message_id = s.message_id) "
    "ON CONFLICT (user_id, message_id) DO UPDATE SET {assignments} "
    "WHERE e.normalized_at < EXCLUDED.normalized_at"
).format(
    columns=sql.SQL(", ").join(map(sql.Identifier, EMAIL_COLUMNS)),
    values=sql.SQL(", ").join(
        _EMAIL_VALUES.get(column, sql.SQL("s.{col}").format(col=sql.Identifier(column)))
        for column in EMAIL_COLUMNS
    ),
    stage=sql.Identifier(EMAIL_STAGE_TABLE),
    assignments=sql.SQL(", ").join(
        sql.SQL("{col} = EXCLUDED.{col}").format(col=sql.Identifier(column))
        for column in EMAIL_COLUMNS[2:]
    ),
)


def decode_contact(record: Record, serde: Serde | None = None) -> ContactExtracted:
    """Return the event in a record; raise UndecodableRecordError (PERMANENT) if there is none.

    ``serde`` is the deployment's (default: single-object encoding); a registry-backed one
    reads both framings and raises TransientError while the registry is unreachable.
    """
    if record.value is None:
        raise UndecodableRecordError("ContactExtracted record without a value (tombstone)")
    return (serde or serde_for(None)).decode(record.value, ContactExtracted)


def decode_email(record: Record, serde: Serde | None = None) -> EmailNormalized:
    """Return the event in a record; raise UndecodableRecordError (PERMANENT) if there is none.

    ``serde`` as for ``decode_contact``.
    """
    if record.value is None:
        raise UndecodableRecordError("EmailNormalized record without a value (tombstone)")
    return (serde or serde_for(None)).decode(record.value, EmailNormalized)


def contact_row(event: ContactExtracted) -> tuple[Any, ...]:
    """Return the staging row of one sighting, in ``STAGE_COLUMNS`` order. Pure."""
    return (
        event.user_id,
        event.address,
        event.display_name,
        str(event.role),
        event.message_id,
        event.thread_id,
        event.occurred_at,
    )


class ContactsWriter:
    """``RowWriter`` for ``contacts``: COPY the sightings into a temporary table, one upsert.

    Arguments:
        serde: the deployment's wire format (``inboxflow.wiring.serde_from``); default
            single-object encoding.
    """

    def __init__(self, *, serde: Serde | None = None) -> None:
        self._serde = serde or serde_for(None)

    def decode(self, record: Record) -> ContactExtracted:
        """Return the event in ``record``; raises UndecodableRecordError."""
        return decode_contact(record, self._serde)

    async def prepare(self, conn: Connection) -> None:
        """Create the session's staging table (temporary: private to this connection)."""
        await conn.execute(STAGE.create)

    async def write(self, conn: Connection, rows: Sequence[Decoded[ContactExtracted]]) -> None:
        """Record the sightings and upsert their contacts; idempotent under replay.

        Sightings of a message with a tombstone are dropped.
        """
        await lock_mailboxes(conn, (item.row.user_id for item in rows))
        async with conn.cursor() as cur:
            await STAGE.load(cur, (contact_row(item.row) for item in rows))
            await cur.execute(UPSERT_CONTACTS)


def _address_text(address: Address | None) -> str | None:
    return None if address is None else address.address


def email_row(item: Decoded[EmailNormalized]) -> dict[str, Any]:
    """Return the ``emails`` row of one event, keyed by column name. Pure."""
    event, record = item.row, item.record
    recipients = {
        role: [entry.model_dump() for entry in getattr(event, role)]
        for role in ("to", "cc", "bcc", "reply_to")
    }
    return {
        "user_id": event.user_id,
        "message_id": event.message_id,
        "thread_id": event.thread_id,
        "sync_id": event.sync_id,
        "subject": event.subject,
        "sender": _address_text(event.sender),
        "recipients": Jsonb(recipients),
        "sent_at": event.sent_at,
        "labels": list(event.labels),
        "labels_history_id": event.history_id,
        "snippet": event.snippet,
        "body_text": event.text,
        "size_bytes": event.size,
        "attachments": Jsonb([attachment.model_dump() for attachment in event.attachments]),
        "normalized_at": event.normalized_at,
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
    }


def latest_emails(items: Sequence[Decoded[EmailNormalized]]) -> list[dict[str, Any]]:
    """Return one row per message, its latest normalization (later record on ties). Pure."""
    latest: dict[tuple[str, str], Decoded[EmailNormalized]] = {}
    for item in items:
        key = (item.row.user_id, item.row.message_id)
        current = latest.get(key)
        if current is None or item.row.normalized_at >= current.row.normalized_at:
            latest[key] = item
    return [email_row(item) for item in latest.values()]


class EmailsWriter:
    """``RowWriter`` for ``emails``: COPY into a temporary table, one upsert.

    Arguments:
        serde: as for ``ContactsWriter``.
    """

    def __init__(self, *, serde: Serde | None = None) -> None:
        self._serde = serde or serde_for(None)

    def decode(self, record: Record) -> EmailNormalized:
        """Return the event in ``record``; raises UndecodableRecordError."""
        return decode_email(record, self._serde)

    async def prepare(self, conn: Connection) -> None:
        """Create the session's staging table (temporary: private to this connection)."""
        await conn.execute(EMAIL_STAGE.create)

    async def write(self, conn: Connection, rows: Sequence[Decoded[EmailNormalized]]) -> None:
        """Upsert the latest normalization of each message; idempotent under replay.

        Messages with a tombstone are skipped; labels are the newer of the event's and the
        message's latest label change.
        """
        await lock_mailboxes(conn, (item.row.user_id for item in rows))
        async with conn.cursor() as cur:
            emails = latest_emails(rows)
            await EMAIL_STAGE.load(cur, ([row[c] for c in EMAIL_COLUMNS] for row in emails))
            await cur.execute(UPSERT_EMAILS)
