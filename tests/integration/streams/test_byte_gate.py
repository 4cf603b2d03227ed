"""A worker's byte budget on a real broker: an agent slower than Kafka holds at most its limit.

The faust app of one worker runs in this process against the session's Kafka, with a budget
small enough that the records waiting for the agent would exceed it many times over.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import faust
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from schemas.models import JobKind
from streams.runtime.stage import JobRef, Outcome, Record
from streams.runtime.worker import BatchConfig, build_worker_app, plan_buffers
from tests.helpers import async_wait_until
from topics.admin import ensure_topics
from topics.catalogue import Catalogue, TopicSpec, build_catalogue
from topics.kafka import KafkaClients

KIB = 1024
LARGEST = 256 * KIB  # the source topic's max.message.bytes
RECORD = 100 * KIB
RECORDS = 120  # 12 MiB: over four times what the agent may hold
BUDGET = 4 * 1024 * KIB


class StuckStage:
    """Holds its first batch until ``ready()``, then runs; remembers what it saw in what order."""

    name = "normalize"
    kind = JobKind.NORMALIZE_GOOGLE_EMAIL
    phase = 0
    timeout = 30.0

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready
        self.seen: list[tuple[int, int]] = []

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        return []

    def job_of(self, record: Record) -> JobRef | None:
        return None

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        if not self.seen:
            await async_wait_until(self.ready, timeout=60, message="the agent holding its limit")
        self.seen.extend((record.partition, record.offset) for record in records)
        return [Outcome() for _ in records]


def sample(name: str, group: str) -> float:
    value = REGISTRY.get_sample_value(name, {"group": group, "stage": "normalize"})
    return 0.0 if value is None else value


async def _source_with_records(
    kafka_bootstrap: str, namespace: str
) -> tuple[Catalogue, TopicSpec, KafkaClients]:
    """A catalogue whose raw-mail topic takes records up to LARGEST, holding RECORDS of them."""
    catalogue = build_catalogue(namespace, partitions=2)
    source = dataclasses.replace(
        catalogue.message_fetched,
        configs={**catalogue.message_fetched.configs, "max.message.bytes": str(LARGEST)},
    )
    catalogue = dataclasses.replace(catalogue, message_fetched=source)
    kafka = KafkaClients(kafka_bootstrap)
    await ensure_topics(kafka, catalogue.topics)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=LARGEST)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send(source.name, key=b"u%d" % (i % 4), value=bytes([i % 256]) * RECORD)
        await producer.flush()
    finally:
        await producer.stop()
    return catalogue, source, kafka


def _worker(catalogue: Catalogue, stage: StuckStage, kafka: KafkaClients) -> faust.App:
    return build_worker_app(
        catalogue=catalogue,
        group=catalogue.normalize,
        stages={catalogue.message_fetched.name: stage},
        kafka=kafka,
        batch=BatchConfig(size=5, within=0.05),
        session_timeout=10,
        buffer_bytes=BUDGET,
    )


async def test_an_agent_slower_than_kafka_never_holds_more_than_its_limit(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue, source, kafka = await _source_with_records(kafka_bootstrap, unique_name("t"))
    plan = plan_buffers(BUDGET, [source])
    group = catalogue.normalize.group_id
    # Kafka delivers while the agent sits on its first batch, until the agent holds its limit.
    stage = StuckStage(lambda: sample("inboxflow_agent_held_bytes", group) >= plan.window_bytes)

    app = _worker(catalogue, stage, kafka)
    await app.start()
    try:
        await async_wait_until(lambda: len(stage.seen) >= RECORDS, timeout=120, message="all run")
    finally:
        with contextlib.suppress(Exception):
            await app.stop()

    peak = sample("inboxflow_agent_held_bytes_peak", group)
    one = RECORD + 2 + 1024  # value, key and objects
    assert plan.window_bytes < RECORDS * one / 3  # without the gate it would all be delivered
    assert 0 < peak <= plan.window_bytes + 2 * one
    assert sample("inboxflow_agent_delivery_waits_total", group) > 0
    # Each record ran once, in offset order within its partition.
    assert len(stage.seen) == len(set(stage.seen)) == RECORDS
    for partition in (0, 1):
        offsets = [offset for p, offset in stage.seen if p == partition]
        assert offsets == sorted(offsets)


async def test_a_member_joining_while_delivery_waits_at_the_gate_loses_nothing(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue, _, kafka = await _source_with_records(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize.group_id
    waits_before = sample("inboxflow_agent_delivery_waits_total", group)
    apps: list[faust.App] = []
    # The first member sits on its first batch until the group rebalances for the second, so
    # the rebalance finds a delivery waiting at the gate.
    first = StuckStage(lambda: apps[0].rebalancing or bool(second.seen))
    second = StuckStage(lambda: True)
    try:
        apps.append(_worker(catalogue, first, kafka))
        await apps[0].start()
        await async_wait_until(
            lambda: sample("inboxflow_agent_delivery_waits_total", group) > waits_before,
            timeout=60,
            message="a delivery waiting at the gate",
        )
        apps.append(_worker(catalogue, second, kafka))
        await apps[1].start()

        def every_record_ran() -> bool:
            return len(set(first.seen) | set(second.seen)) == RECORDS

        await async_wait_until(every_record_ran, timeout=120, message="every record run")
    finally:
        for app in reversed(apps):
            with contextlib.suppress(Exception):
                await app.stop()
    assert second.seen, "the second member took over a partition"
