"""Kafka offsets kept in Postgres, next to the rows a sink wrote from them.

A sink reads its stored offsets when it is assigned partitions and seeks there; each batch
advances them with a compare-and-set in the batch's own transaction. If the stored offset is no
longer the one the writer read, another consumer owns the partition now (or an earlier commit
of this one landed after a lost connection): the whole transaction must roll back.

This module only runs SQL on a connection it is given; it never opens, commits or retries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import psycopg
from aiokafka import TopicPartition
from psycopg.rows import TupleRow

from schemas.errors import InboxflowError

# Stored when a partition has never been written: read it from its beginning.
FROM_BEGINNING = -1

ENSURE_OFFSETS = """
INSERT INTO sink_offsets (group_id, topic, partition, next_offset)
SELECT %(group_id)s, t.topic, t.partition, %(initial)s
FROM unnest(%(topics)s::text[], %(partitions)s::integer[]) AS t(topic, partition)
ON CONFLICT (group_id, topic, partition) DO NOTHING
"""

SELECT_OFFSETS = """
SELECT o.topic, o.partition, o.next_offset
FROM sink_offsets AS o
JOIN unnest(%(topics)s::text[], %(partitions)s::integer[]) AS t(topic, partition)
  ON o.topic = t.topic AND o.partition = t.partition
WHERE o.group_id = %(group_id)s
"""

# The row lock taken here is held until the batch commits, so two owners of one partition
# serialise on it and the second one re-reads a moved offset: zero rows, a rollback.
ADVANCE_OFFSETS = """
UPDATE sink_offsets AS o
SET next_offset = t.next_offset, updated_at = now()
FROM unnest(
    %(topics)s::text[], %(partitions)s::integer[], %(expected)s::bigint[], %(next)s::bigint[]
) AS t(topic, partition, expected, next_offset)
WHERE o.group_id = %(group_id)s
  AND o.topic = t.topic
  AND o.partition = t.partition
  AND o.next_offset = t.expected
RETURNING o.topic, o.partition
"""


class StaleOffsetError(InboxflowError):
    """The stored offset moved under this consumer: another owner wrote the partition.

    The batch's transaction must roll back; the consumer re-reads the stored offsets and
    seeks there before it writes anything for these partitions again.
    """

    def __init__(self, partitions: Iterable[TopicPartition]) -> None:
        self.partitions = frozenset(partitions)
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(self.partitions))
        super().__init__(f"stored offsets moved for {names}; another consumer owns them")


async def load_offsets(
    conn: psycopg.AsyncConnection[TupleRow], group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Return the stored next offset of each partition, creating missing rows.

    A partition never written gets ``FROM_BEGINNING``. Reads without waiting for a batch that
    another owner has in flight (plain MVCC read); the compare-and-set of the first batch
    catches an offset that moves afterwards. Runs inside the caller's transaction.
    """
    wanted = sorted(set(partitions))
    found = await _select_offsets(conn, group_id, wanted)
    missing = [tp for tp in wanted if tp not in found]
    if missing:
        async with conn.cursor() as cur:
            await cur.execute(ENSURE_OFFSETS, _params(group_id, missing, initial=FROM_BEGINNING))
        found.update(await _select_offsets(conn, group_id, missing))
    return found


async def _select_offsets(
    conn: psycopg.AsyncConnection[TupleRow], group_id: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    async with conn.cursor() as cur:
        await cur.execute(SELECT_OFFSETS, _params(group_id, partitions))
        rows = await cur.fetchall()
    return {TopicPartition(str(t), int(p)): int(o) for t, p, o in rows}


def _params(group_id: str, partitions: list[TopicPartition], **extra: object) -> dict[str, object]:
    return {
        "group_id": group_id,
        "topics": [tp.topic for tp in partitions],
        "partitions": [tp.partition for tp in partitions],
        **extra,
    }


async def advance_offsets(
    conn: psycopg.AsyncConnection[TupleRow],
    group_id: str,
    moves: Mapping[TopicPartition, tuple[int, int]],
) -> None:
    """Move stored offsets with a compare-and-set: ``moves`` is ``{tp: (expected, next)}``.

    Must run inside the batch's transaction, before its rows are written (the row locks it
    takes fence a second owner). Raises StaleOffsetError, naming the partitions whose stored
    offset was not ``expected``; the caller then rolls the transaction back.
    """
    ordered = sorted(moves)
    params = _params(
        group_id,
        ordered,
        expected=[moves[tp][0] for tp in ordered],
        next=[moves[tp][1] for tp in ordered],
    )
    async with conn.cursor() as cur:
        await cur.execute(ADVANCE_OFFSETS, params)
        moved = {TopicPartition(str(t), int(p)) for t, p in await cur.fetchall()}
    stale = set(ordered) - moved
    if stale:
        raise StaleOffsetError(stale)
