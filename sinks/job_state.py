"""Job-state sink: ``JobStateChanged`` events into the ``jobs`` table, version-guarded.

A row only moves forward: an event whose ``version`` is not above the stored one changes
nothing (except pulling ``created_at`` back to the earliest event seen), so replays,
duplicates and out-of-order delivery all converge on the same table. ``updated_at`` is the
``occurred_at`` of the winning version; ``created_at`` the earliest ``occurred_at`` of the job.

Two write paths, chosen per sink: ``copy`` (COPY into a temporary table, then one
``INSERT ... SELECT ... ON CONFLICT``) and ``executemany`` (psycopg pipelines it). This module
holds the SQL and the row shape; batching, offsets and dead letters are ``sinks.base``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Literal

from psycopg import sql

from schemas.errors import UndecodableRecordError
from schemas.models import JobStateChanged
from schemas.serde import Serde, serde_for
from sinks.base import Connection, Decoded, Record
from sinks.staging import StagingTable

WriteMethod = Literal["copy", "executemany"]

# Columns a newer version overwrites; the rest (id, created_at) follow their own rules.
VERSIONED_COLUMNS = (
    "user_id",
    "kind",
    "status",
    "attempts",
    "batch_id",
    "subject_id",
    "last_error",
    "last_error_class",
    "updated_at",
    "version",
    "source_topic",
    "source_partition",
    "source_offset",
)
COLUMNS = ("id", "created_at", *VERSIONED_COLUMNS)
STAGE = StagingTable.like("job_state_stage", "jobs", COLUMNS)

# Each versioned column takes the new value only when the version grows; the WHERE skips the
# update (and its dead tuple) when nothing would change.
_CONFLICT = sql.SQL(
    "ON CONFLICT (id) DO UPDATE SET created_at = LEAST(jobs.created_at, EXCLUDED.created_at), "
    "{assignments} "
    "WHERE jobs.version < EXCLUDED.version OR jobs.created_at > EXCLUDED.created_at"
).format(
    assignments=sql.SQL(", ").join(
        sql.SQL(
            "{col} = CASE WHEN jobs.version < EXCLUDED.version THEN EXCLUDED.{col} "
            "ELSE jobs.{col} END"
        ).format(col=sql.Identifier(column))
        for column in VERSIONED_COLUMNS
    )
)
_INSERT_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))

UPSERT_FROM_STAGE = (
    sql.SQL("INSERT INTO jobs ({columns}) SELECT {columns} FROM {stage} ").format(
        columns=_INSERT_COLUMNS, stage=sql.Identifier(STAGE.name)
    )
    + _CONFLICT
)

UPSERT_ROW = (
    sql.SQL("INSERT INTO jobs ({columns}) VALUES ({values}) ").format(
        columns=_INSERT_COLUMNS,
        values=sql.SQL(", ").join(map(sql.Placeholder, COLUMNS)),
    )
    + _CONFLICT
)


def decode_job_state(record: Record, serde: Serde | None = None) -> JobStateChanged:
    """Return the event in a record; raise UndecodableRecordError (PERMANENT) if there is none.

    ``serde`` is the deployment's (default: single-object encoding). A registry-backed serde
    reads Confluent and single-object frames alike, and raises TransientError while the
    registry is unreachable.
    """
    if record.value is None:
        raise UndecodableRecordError("JobStateChanged record without a value (tombstone)")
    return (serde or serde_for(None)).decode(record.value, JobStateChanged)


def latest_job_states(items: Sequence[Decoded[JobStateChanged]]) -> list[dict[str, Any]]:
    """Return one row per job: its highest version, with the earliest ``occurred_at`` seen.

    Pure. ``ON CONFLICT DO UPDATE`` cannot touch a row twice in one statement, so a batch must
    carry each job once; on equal versions the later record wins.
    """
    winners: dict[str, Decoded[JobStateChanged]] = {}
    earliest: dict[str, datetime] = {}
    for item in items:
        event = item.row
        current = winners.get(event.job_id)
        if current is None or event.version >= current.row.version:
            winners[event.job_id] = item
        first = earliest.get(event.job_id)
        earliest[event.job_id] = (
            event.occurred_at if first is None else min(first, event.occurred_at)
        )
    return [job_row(item, earliest[job_id]) for job_id, item in winners.items()]


def job_row(item: Decoded[JobStateChanged], created_at: datetime) -> dict[str, Any]:
    """Return the ``jobs`` row of one event, keyed by column name. Pure."""
    event, record = item.row, item.record
    return {
        "id": event.job_id,
        "created_at": created_at,
        "user_id": event.user_id,
        "kind": str(event.kind),
        "status": str(event.status),
        "attempts": event.attempts,
        "batch_id": event.batch_id,
        "subject_id": event.subject_id,
        "last_error": event.last_error,
        "last_error_class": None if event.last_error_class is None else str(event.last_error_class),
        "updated_at": event.occurred_at,
        "version": event.version,
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
    }


class JobStateWriter:
    """``RowWriter`` for the jobs table.

    Arguments:
        method: ``copy`` (default, faster on batches) or ``executemany`` (pipelined).
        decode: record -> event; ``decode_job_state`` with ``serde`` unless a test needs another.
        serde: the deployment's wire format (``inboxflow.wiring.serde_from``); default
            single-object encoding.
    """

    def __init__(
        self,
        method: WriteMethod = "copy",
        decode: Callable[[Record], JobStateChanged] | None = None,
        *,
        serde: Serde | None = None,
    ) -> None:
        self._method = method
        self._decode = decode or partial(decode_job_state, serde=serde or serde_for(None))

    def decode(self, record: Record) -> JobStateChanged:
        """Return the event in ``record``; raises UndecodableRecordError."""
        return self._decode(record)

    async def prepare(self, conn: Connection) -> None:
        """Create the session's staging table (temporary: private to this connection)."""
        if self._method == "copy":
            await conn.execute(STAGE.create)

    async def write(self, conn: Connection, rows: Sequence[Decoded[JobStateChanged]]) -> None:
        """Upsert the latest state of each job in ``rows``; idempotent and version-guarded."""
        latest = latest_job_states(rows)
        async with conn.cursor() as cur:
            if self._method == "executemany":
                await cur.executemany(UPSERT_ROW, latest)
                return
            await STAGE.load(cur, ([row[column] for column in COLUMNS] for row in latest))
            await cur.execute(UPSERT_FROM_STAGE)
