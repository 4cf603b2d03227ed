"""Two job-state sinks in one group through rebalances: every record lands exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from schemas.models import JobStateChanged
from sinks.base import Connection, Decoded, Record, SinkConfig
from sinks.job_state import JobStateWriter
from tests.helpers import async_wait_until
from tests.integration.sink_support import (
    create_topic,
    expected_jobs,
    job_events,
    merge_ends,
    produce_events,
    read_jobs,
    running_sink,
    shuffled_with_duplicates,
    stored_offsets,
)
from topics.kafka import KafkaClients


class LedgerWriter:
    """Job-state writer that also records each written Kafka position in the same transaction.

    A position committed twice (a stale owner's write landing) shows up as a repeated row.
    """

    def __init__(self) -> None:
        self._inner = JobStateWriter()

    def decode(self, record: Record) -> JobStateChanged:
        return self._inner.decode(record)

    async def prepare(self, conn: Connection) -> None:
        await self._inner.prepare(conn)

    async def write(self, conn: Connection, rows: Sequence[Decoded[JobStateChanged]]) -> None:
        await self._inner.write(conn, rows)
        async with (
            conn.cursor() as cur,
            cur.copy("COPY applied_records (topic, partition, record_offset) FROM STDIN") as copy,
        ):
            for item in rows:
                await copy.write_row((item.record.topic, item.record.partition, item.record.offset))


def _ledger(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (topic, partition, record_offset))"
            " FROM applied_records"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _caught_up(database_url: str, group_id: str, ends: dict[int, int]) -> bool:
    stored = stored_offsets(database_url, group_id)
    return all(stored.get(partition) == offset for partition, offset in ends.items())


async def test_two_sinks_in_one_group_commit_each_record_once(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE applied_records (topic text, partition int, record_offset bigint)"
        )
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic, partitions=6)
    events = job_events(jobs=6000, versions=3, seed=3)
    mixed = shuffled_with_duplicates(events, 0.2)
    chunks = [mixed[i::3] for i in range(3)]
    config = SinkConfig(
        kafka=KafkaClients(kafka_bootstrap),
        conninfo=database_url,
        group_id=unique_name("g"),
        dlq_topic=unique_name("dlq"),
        max_batch_records=300,  # many small batches: more of them are in flight at a rebalance
        backoff_initial=0.05,
        backoff_max=0.5,
    )
    writers: dict[str, Any] = {topic: LedgerWriter()}

    ends = await produce_events(kafka_bootstrap, topic, chunks[0])
    async with running_sink(config, writers) as first:
        await async_wait_until(lambda: first.value("inboxflow_sink_rows_total") > 0)
        async with running_sink(config, {topic: LedgerWriter()}) as second:
            await async_wait_until(
                lambda: second.sink.positioned,
                timeout=60,
                message="the second sink is given partitions",
            )
            ends = merge_ends(ends, await produce_events(kafka_bootstrap, topic, chunks[1]))
            await async_wait_until(
                lambda: second.value("inboxflow_sink_rows_total") > 0,
                timeout=60,
                message="the second sink gets partitions and writes",
            )
        # The second sink left: its partitions go back to the first one.
        ends = merge_ends(ends, await produce_events(kafka_bootstrap, topic, chunks[2]))
        await async_wait_until(
            lambda: _caught_up(database_url, config.group_id, ends),
            timeout=60,
            message="the first sink writes everything after the rebalances",
        )

    total, distinct = _ledger(database_url)
    assert total == distinct == len(mixed)
    assert read_jobs(database_url) == expected_jobs(events)


class GatedLedgerWriter(LedgerWriter):
    """Ledger writer whose first write waits for a gate, holding its batch's transaction open."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def write(self, conn: Connection, rows: Sequence[Decoded[JobStateChanged]]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().write(conn, rows)


async def test_batch_of_a_partition_moved_during_the_write_is_not_applied_twice(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE applied_records (topic text, partition int, record_offset bigint)"
        )
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic, partitions=2)
    events = job_events(jobs=400, versions=2, seed=9)
    config = SinkConfig(
        kafka=KafkaClients(kafka_bootstrap),
        conninfo=database_url,
        group_id=unique_name("g"),
        dlq_topic=unique_name("dlq"),
        backoff_initial=0.05,
        backoff_max=0.5,
    )
    ends = await produce_events(kafka_bootstrap, topic, events)
    assert len(ends) == 2
    gated = GatedLedgerWriter()

    async with running_sink(config, {topic: gated}):
        await asyncio.wait_for(gated.entered.wait(), timeout=30)  # first sink is mid-batch
        async with running_sink(config, {topic: LedgerWriter()}) as second:
            await async_wait_until(
                lambda: second.sink.positioned,
                timeout=60,
                message="the second sink takes a partition from the busy one",
            )
            gated.gate.set()  # the first sink's batch commits; the second one's must not
            await async_wait_until(
                lambda: second.value("inboxflow_sink_stale_batches_total") >= 1,
                message="the second sink's batch finds the offset moved and rolls back",
            )
            await async_wait_until(lambda: _caught_up(database_url, config.group_id, ends))

    total, distinct = _ledger(database_url)
    assert total == distinct == len(events)
    assert read_jobs(database_url) == expected_jobs(events)
