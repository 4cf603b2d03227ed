"""``inboxflow bench memory``: worker RSS as events flow through normalize, extract and the sinks.

Generated GmailMessageFetched records are produced straight onto the fetched topic up to each
checkpoint (e.g. 100,000 then 1,000,000); at each checkpoint the bench waits until every group
has caught up (normalize and extract have no lag, both sinks stored offsets at the end of their
topics), waits for the agents' idle check to give freed memory back, and reads the RSS of every
process: the agents, the normalize CPU pool's workers and both sinks. Growth is from the first
checkpoint to the last, so start-up allocations and warmed caches are left out; the goal is flat
within 10 %. Peak RSS under load is the pipeline bench's figure.

The bench works under a throw-away topic namespace and user ids of its own, and deletes its
topics at the end (a large run writes gigabytes).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from inboxflow.bench.stages import (
    Workers,
    bench_settings,
    bench_users,
    create_topics,
    delete_topics,
    fetched_stream,
    message_pool,
    process_tree,
    produce_fetched,
    rss_mib,
    running_workers,
    worker_env,
)
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from
from ops.lag import group_lag, total_lag
from streams.runtime.worker import TRIM_SECONDS
from topics.catalogue import Catalogue, ConsumerGroup
from topics.kafka import KafkaClients

_AGENTS = ("normalize", "extract")
_SINKS = ("jobs", "contacts")

SINK_POSITIONS = """
SELECT topic, partition, next_offset FROM sink_offsets WHERE group_id = %(group_id)s
"""


@dataclass(frozen=True)
class MemoryBenchResult:
    """RSS of every process at each checkpoint and its growth from the first to the last."""

    checkpoints: tuple[int, ...]
    rss_mib: dict[str, list[float]]  # process name -> RSS at each checkpoint
    growth_percent: dict[str, float]
    max_growth_percent: float
    total_growth_percent: float
    events_per_second: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def named_processes(workers: Workers) -> dict[str, int]:
    """Every worker process and its descendants by a readable name (``agent-normalize+1``)."""
    names: dict[str, int] = {}
    for group in workers.groups:
        for name, process in group.processes.items():
            root, *children = process_tree(process.pid)
            names[name] = root
            names.update({f"{name}+{i}": pid for i, pid in enumerate(sorted(children), 1)})
    return names


async def _sink_lag(kafka: KafkaClients, group: ConsumerGroup, database_url: str) -> int:
    topics = [source.name for source in group.sources]
    async with kafka.started(kafka.consumer()) as consumer:
        partitions = [tp for topic in topics for tp in await _partitions(consumer, topic)]
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(SINK_POSITIONS, {"group_id": group.group_id})
        stored = {(topic, part): offset for topic, part, offset in await cursor.fetchall()}
    # A partition never written is stored as -1 (read from the beginning).
    positions = {tp: max(stored.get((tp.topic, tp.partition), -1), starts[tp]) for tp in ends}
    return sum(max(0, ends[tp] - position) for tp, position in positions.items())


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()  # a fresh consumer knows no topics yet
        found = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(found)]


async def pipeline_lag(settings: Settings, catalogue: Catalogue) -> int:
    """Records normalize, extract and both sinks still have to consume."""
    kafka = kafka_from(settings, client_id="inboxflow-bench")
    lag = 0
    for group in (catalogue.normalize, catalogue.extract):
        lag += total_lag(await group_lag(kafka, group.group_id, [s.name for s in group.sources]))
    database_url = settings.database_url.get_secret_value()
    for sink in (catalogue.sink_jobs, catalogue.sink_contacts):
        lag += await _sink_lag(kafka, sink, database_url)
    return lag


def wait_drained(
    settings: Settings, catalogue: Catalogue, workers: Workers, timeout: float
) -> None:
    """Wait until every group has consumed everything produced so far.

    Raises:
        RuntimeError: a worker exited.
        TimeoutError: still behind after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        workers.check()
        lag = asyncio.run(pipeline_lag(settings, catalogue))
        if lag == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pipeline still {lag} records behind after {timeout:.0f}s")
        time.sleep(1.0)  # polling the groups' positions for a condition, with a deadline


def _growth(first: float, last: float) -> float:
    return round((last - first) * 100 / first, 1) if first else 0.0


def run_memory_bench(
    settings: Settings, checkpoints: Sequence[int] = (5_000, 15_000)
) -> MemoryBenchResult:
    """Feed events up to each checkpoint, let the pipeline drain, read every process's RSS.

    ``checkpoints`` are cumulative event counts, ascending (e.g. 100,000 and 1,000,000).
    """
    marks = sorted(checkpoints)
    run = uuid.uuid4().hex[:8]
    namespace = f"bench-memory-{run}"
    catalogue = asyncio.run(create_topics(settings, namespace))
    scoped = bench_settings(settings, namespace)
    users, pool = bench_users(run), message_pool()
    topic = catalogue.message_fetched.name
    samples: dict[str, list[float]] = {}
    produced = 0
    idle = 0.0  # seconds waited for the idle check, left out of the rate
    started = time.monotonic()
    try:
        env = worker_env(settings, namespace)
        with running_workers(env, agents=_AGENTS, sinks=_SINKS, replicas=1) as workers:
            for mark in marks:
                events = fetched_stream(users, pool, mark - produced, first=produced)
                asyncio.run(produce_fetched(settings, topic, events))
                produced = mark
                wait_drained(scoped, catalogue, workers, timeout=600 + mark / 10)
                # An agent worker gives freed memory back at its next idle check: read what an
                # idle worker holds after the burst, not what the allocator kept meanwhile.
                time.sleep(TRIM_SECONDS + 1)
                idle += TRIM_SECONDS + 1
                for name, pid in named_processes(workers).items():
                    samples.setdefault(name, []).append(round(rss_mib(pid), 1))
            elapsed = time.monotonic() - started - idle
    finally:
        asyncio.run(delete_topics(settings, catalogue))
    full = {name: rss for name, rss in samples.items() if len(rss) == len(marks)}
    growth = {name: _growth(rss[0], rss[-1]) for name, rss in full.items()}
    totals = [sum(rss[i] for rss in full.values()) for i in range(len(marks))]
    return MemoryBenchResult(
        checkpoints=tuple(marks),
        rss_mib=samples,
        growth_percent=growth,
        max_growth_percent=max(growth.values(), default=0.0),
        total_growth_percent=_growth(totals[0], totals[-1]),
        events_per_second=round(marks[-1] / elapsed, 1),
    )
