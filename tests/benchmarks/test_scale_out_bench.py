"""Throughput of the extract group with 1, 2 and 3 worker processes on a 6-partition topic.

For each count, the processes start on an empty topic under a namespace of their own and are
left to form a stable group; then a backlog is produced at once and the rate is taken from the
first output to the last (start-up and the group join are left out). Printed, never asserted:
on a machine with fewer cores than processes the ratio says more about the box than the code.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from devstack.stack import Stack
from inboxflow.settings import Settings
from inboxflow.supervisor import ProcessGroup
from inboxflow.wiring import catalogue_from, kafka_from, serde_from
from ops.offsets import group_state
from tests.e2e.test_scale_out import PARTITIONS, USERS, email, settings_for
from tests.helpers import wait_until
from topics.admin import ensure_topics
from topics.kafka import KafkaClients

pytestmark = pytest.mark.benchmark

ROUNDS = 200  # one message per user a round: 6,000 records a run
WORKER = [sys.executable, "-m", "inboxflow", "worker", "--agent", "extract"]


async def _produce_backlog(kafka: KafkaClients, topic: str, settings: Settings) -> None:
    serde = serde_from(settings)
    now = datetime.now(UTC)
    async with kafka.started(kafka.producer()) as producer:
        for seq in range(ROUNDS):
            for user in USERS:
                await producer.send(topic, serde.encode(email(user, seq, now)), key=user.encode())
        await producer.flush()


async def _output_span(kafka: KafkaClients, topic: str, count: int, timeout: float) -> float:
    """Seconds from the first output on ``topic`` to the ``count``-th (end offsets, polled)."""
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    first: float | None = None
    deadline = time.monotonic() + timeout
    async with kafka.started(kafka.consumer()) as consumer:
        while time.monotonic() < deadline:
            written = sum((await consumer.end_offsets(tps)).values())
            now = time.monotonic()
            if written and first is None:
                first = now
            if written >= count and first is not None:
                return max(now - first, 1e-3)
            await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {count} outputs on {topic} within {timeout}s")


async def _stable(kafka: KafkaClients, group_id: str) -> tuple[str, int]:
    async with kafka.started(kafka.admin()) as admin:
        return await group_state(admin, group_id)


def _rate_with(processes: int, stack: Stack, database_url: str, logs: Path) -> float:
    namespace = f"scale-bench-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, database_url, namespace)
    catalogue = catalogue_from(settings)
    kafka = kafka_from(settings)
    asyncio.run(ensure_topics(kafka, catalogue.topics))
    env = {
        **os.environ,
        **stack.client_env(),
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": str(PARTITIONS),
        "INBOXFLOW_CPU_WORKERS": "1",
    }
    group = ProcessGroup()
    try:
        for index in range(processes):
            group.start(f"{namespace}-{index}", WORKER, env=env, log_dir=logs)

        def stable() -> bool:
            assert not group.exited(), f"workers exited: {group.exited()}"
            state = asyncio.run(_stable(kafka, catalogue.extract.group_id))
            return state == ("Stable", processes)

        wait_until(stable, timeout=120, interval=0.25, message=f"{processes} processes stable")
        asyncio.run(_produce_backlog(kafka, catalogue.email_normalized.name, settings))
        count = ROUNDS * len(USERS)
        span = asyncio.run(_output_span(kafka, catalogue.contact_extracted.name, count, 300))
        return (count - 1) / span
    finally:
        group.stop()


def test_extract_throughput_with_one_two_and_three_processes(
    stack: Stack, database_url: str
) -> None:
    logs = Path(tempfile.mkdtemp(prefix="inboxflow-scale-bench-"))
    rates = {n: _rate_with(n, stack, database_url, logs) for n in (1, 2, 3)}
    shutil.rmtree(logs, ignore_errors=True)
    base = rates[1]
    print(
        f"\nextract, {ROUNDS * len(USERS)} records, {PARTITIONS} partitions, "
        f"{os.cpu_count()} cores: "
        + ", ".join(f"{n} proc {rate:.0f} rec/s ({rate / base:.2f}x)" for n, rate in rates.items())
    )
    assert all(rate > 0 for rate in rates.values())
