"""``inboxflow bench sink``: the batched job-state sink against a naive writer, same events.

Both read the same throw-away topic of JobStateChanged events (repeats and shuffled versions
included) into the configured database's ``jobs`` table. The naive peer is the usual first
attempt: an auto-committing consumer that upserts each record in its own transaction. Rates
exclude the consumer-group join, which both pay alike. Everything the run creates (topic, rows
of its bench user, stored offsets) is removed afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiokafka.admin import NewTopic
from prometheus_client import CollectorRegistry

from schemas.models import JobKind, JobStateChanged, JobStatus
from schemas.serde import Serde, serde_for
from sinks.base import Decoded, PostgresSink, SinkConfig
from sinks.job_state import UPSERT_ROW, JobStateWriter, WriteMethod, decode_job_state, job_row
from sinks.metrics import SinkMetrics
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

_PARTITIONS = 6
_STATUSES = (JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.DONE)
_SELECT_STORED = "SELECT partition, next_offset FROM sink_offsets WHERE group_id = %(group_id)s"
_CLEANUP = (
    "DELETE FROM jobs WHERE user_id = %(user_id)s",
    "DELETE FROM sink_offsets WHERE group_id = ANY(%(groups)s)",
)


@dataclass(frozen=True)
class SinkBenchResult:
    """Rates of one run; ``ratio`` is batched over naive."""

    events: int
    batched_seconds: float
    naive_seconds: float
    method: str = "copy"
    naive: bool = True

    @property
    def batched_rows_per_second(self) -> float:
        """Records per second through the batched sink."""
        return self.events / self.batched_seconds

    @property
    def naive_rows_per_second(self) -> float:
        """Records per second through one-row-per-transaction writes."""
        return self.events / self.naive_seconds

    @property
    def ratio(self) -> float:
        """How many times faster the batched sink is."""
        return self.batched_rows_per_second / self.naive_rows_per_second

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as JSON-ready values (``--json``)."""
        if not self.naive:
            return {
                **asdict(self),
                "batched_rows_per_second": round(self.batched_rows_per_second, 1),
            }
        return {
            **asdict(self),
            "batched_rows_per_second": round(self.batched_rows_per_second, 1),
            "naive_rows_per_second": round(self.naive_rows_per_second, 1),
            "ratio": round(self.ratio, 2),
        }


def bench_events(user_id: str, count: int, seed: int = 1) -> list[JobStateChanged]:
    """Return ``count`` state changes of ``count // 4`` jobs, a fifth repeated, shuffled. Pure."""
    rng = random.Random(seed)  # noqa: S311 - test data, not security
    start = datetime(2026, 1, 1, tzinfo=UTC)
    unique = count - count // 5
    events = [
        JobStateChanged(
            user_id=user_id,
            job_id=JobStateChanged.make_job_id(JobKind.EMBED, user_id, f"m{index // 4}"),
            kind=JobKind.EMBED,
            status=_STATUSES[min(index % 4, 2)],
            attempts=index % 4,
            subject_id=f"m{index // 4}",
            version=index % 4 + 1,
            occurred_at=start + timedelta(seconds=index),
        )
        for index in range(unique)
    ]
    events += rng.sample(events, count - unique)
    rng.shuffle(events)
    return events


async def run_sink_bench(
    *,
    kafka: KafkaClients,
    conninfo: str,
    events: int,
    batch_records: int = 5000,
    method: WriteMethod = "copy",
    naive: bool = True,
    serde: Serde | None = None,
) -> SinkBenchResult:
    """Produce ``events`` records, time both writers over them, clean up, return the rates.

    ``naive=False`` skips the slow peer (its time is then reported as infinite). ``serde`` is
    the deployment's wire format (default single-object), used by the producer and both sides.
    """
    serde = serde or serde_for(None)
    run_id = uuid.uuid4().hex[:8]
    topic, user_id = f"inboxflow.bench.sink-{run_id}", f"bench-{run_id}"
    groups = [f"inboxflow-bench-sink-{run_id}", f"inboxflow-bench-naive-{run_id}"]
    async with kafka.started(kafka.admin()) as admin:
        await admin.create_topics([NewTopic(topic, _PARTITIONS, 1)])
        try:
            ends = await _produce(kafka, topic, bench_events(user_id, events), serde)
            config = SinkConfig(
                kafka=kafka,
                conninfo=conninfo,
                group_id=groups[0],
                dlq_topic=f"{topic}.dlq",
                max_batch_records=batch_records,
            )
            writer = JobStateWriter(method, serde=serde)
            batched = await _time_batched(config, writer, topic, ends)
            _cleanup(conninfo, user_id, groups)
            naive_seconds = math.inf
            if naive:
                naive_seconds = await _time_naive(kafka, conninfo, topic, groups[1], events, serde)
        finally:
            _cleanup(conninfo, user_id, groups)
            await admin.delete_topics([topic])
    return SinkBenchResult(
        events=events,
        batched_seconds=batched,
        naive_seconds=naive_seconds,
        method=method,
        naive=naive,
    )


async def _produce(
    kafka: KafkaClients, topic: str, events: list[JobStateChanged], serde: Serde
) -> dict[int, int]:
    async with kafka.started(kafka.producer(linger_ms=10)) as producer:
        futures = [
            await producer.send(topic, key=event.kafka_key(), value=serde.encode(event))
            for event in events
        ]
        delivered = await asyncio.gather(*futures)
    ends: dict[int, int] = {}
    for meta in delivered:
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


async def _time_batched(
    config: SinkConfig, writer: JobStateWriter, topic: str, ends: dict[int, int]
) -> float:
    postgres_sink = PostgresSink(config, {topic: writer}, SinkMetrics("bench", CollectorRegistry()))
    stop = asyncio.Event()
    task = asyncio.create_task(postgres_sink.run(stop))
    try:
        async with (
            asyncio.timeout(600),
            await psycopg.AsyncConnection.connect(config.conninfo, autocommit=True) as conn,
        ):
            while len(postgres_sink.positioned) < _PARTITIONS:
                await _tick(task)
            started = time.perf_counter()
            while not await _caught_up(conn, config.group_id, ends):
                await _tick(task)
            return time.perf_counter() - started
    finally:
        stop.set()
        await task


async def _tick(task: asyncio.Task[None]) -> None:
    if task.done():
        task.result()  # the sink failed: raise its error
    await asyncio.sleep(0.01)  # polling the sink's progress, not waiting for a fixed time


async def _caught_up(
    conn: psycopg.AsyncConnection[Any], group_id: str, ends: dict[int, int]
) -> bool:
    rows = await (await conn.execute(_SELECT_STORED, {"group_id": group_id})).fetchall()
    stored = {int(partition): int(offset) for partition, offset in rows}
    return all(stored.get(partition) == offset for partition, offset in ends.items())


async def _time_naive(
    kafka: KafkaClients, conninfo: str, topic: str, group_id: str, events: int, serde: Serde
) -> float:
    """One transaction per record, offsets auto-committed to Kafka: the naive peer."""
    consumer = kafka.consumer(topic, group_id=group_id, enable_auto_commit=True)
    async with (
        kafka.started(consumer),
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn,
    ):
        seen, began = 0, 0.0
        async with asyncio.timeout(1800):
            while seen < events:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    if not began:
                        began = time.perf_counter()
                    for record in records:
                        event = decode_job_state(record, serde)
                        row = job_row(Decoded(record, event), event.occurred_at)
                        async with conn.transaction():
                            await conn.execute(UPSERT_ROW, row)
                        seen += 1
        return time.perf_counter() - began


def _cleanup(conninfo: str, user_id: str, groups: list[str]) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for statement in _CLEANUP:
            conn.execute(statement, {"user_id": user_id, "groups": groups})
