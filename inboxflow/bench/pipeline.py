"""``inboxflow bench pipeline``: the normalize agent against a naive consumer, same messages.

Both turn the same GmailMessageFetched records (generated mail, realistic MIME) into
EmailNormalized with the same pure ``normalize_message``; only the plumbing differs:

- **inboxflow**: ``inboxflow worker --agent normalize`` as a process: faust, batches with manual
  acks, job-state events, failure routing, outputs acknowledged before the ack.
- **naive peer**: the usual first attempt, an aiokafka loop that consumes one record, produces
  its result with ``send_and_wait`` and commits, record by record (at-least-once too).

Rates count from each side's first output to its last, so process start-up and the group join,
which both pay, are left out (start-up is printed apart). Peak memory is the process's VmHWM.
Everything runs under a throw-away topic namespace on the configured Kafka.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from devstack.gmail_emulator.generator import generate_messages
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from, serde_from
from schemas.models import GmailMessageFetched
from schemas.serde import Serde, serde_for
from streams.stages.mime import normalized_event
from topics.admin import ensure_topics
from topics.catalogue import Catalogue, build_catalogue
from topics.kafka import KafkaClients

_PARTITIONS = 3


@dataclass(frozen=True)
class PipelineBenchResult:
    """Figures of one run."""

    messages: int
    inboxflow_messages_per_second: float
    naive_messages_per_second: float
    ratio: float
    inboxflow_startup_seconds: float
    inboxflow_peak_rss_mib: float
    naive_peak_rss_mib: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def fetched_events(count: int, user: str = "bench@inboxflow.test") -> list[GmailMessageFetched]:
    """Return ``count`` generated messages as GmailMessageFetched events."""
    now = datetime.now(UTC)
    return [
        GmailMessageFetched(
            user_id=user,
            message_id=f"m{index:06d}",
            thread_id=f"t{index // 3:06d}",
            sync_id="bench",
            label_ids=list(generated.label_ids),
            internal_date=datetime.fromtimestamp(generated.internal_date / 1000, UTC),
            size_estimate=len(generated.raw),
            snippet="",
            raw=generated.raw,
            fetched_at=now,
        )
        for index, generated in enumerate(generate_messages(7, count, user))
    ]


async def _produce(
    kafka: KafkaClients, topic: str, events: list[GmailMessageFetched], serde: Serde
) -> None:
    async with kafka.started(kafka.producer()) as producer:
        for index, event in enumerate(events):
            # Spread over partitions (one user id would put everything on one).
            await producer.send(topic, serde.encode(event), key=f"u{index % 12}".encode())
        await producer.flush()


async def _output_times(
    kafka: KafkaClients, topic: str, count: int, deadline: float
) -> list[float]:
    """Arrival time of each output record, read as they come."""
    arrivals: list[float] = []
    async with kafka.started(kafka.consumer(topic)) as consumer:
        while len(arrivals) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            arrivals += [now for records in batch.values() for _ in records]
    if len(arrivals) < count:
        raise TimeoutError(f"only {len(arrivals)} of {count} outputs on {topic}")
    return arrivals


async def _naive_peer(
    kafka: KafkaClients, source: str, target: str, count: int, group: str, serde: Serde
) -> None:
    kafka = kafka.with_client_id("naive-peer")
    async with (
        kafka.started(kafka.consumer(source, group_id=group)) as consumer,
        kafka.started(kafka.producer(enable_idempotence=False, linger_ms=0)) as producer,
    ):
        for _ in range(count):
            record = await consumer.getone()
            fetched = serde.decode(record.value or b"", GmailMessageFetched)
            normalized = normalized_event(fetched, datetime.now(UTC))
            await producer.send_and_wait(target, serde.encode(normalized), key=record.key)
            tp = TopicPartition(record.topic, record.partition)
            await consumer.commit({tp: record.offset + 1})


def _rate(count: int, arrivals: list[float]) -> float:
    span = max(arrivals[-1] - arrivals[0], 1e-6)
    return (count - 1) / span


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _run_inboxflow(
    settings: Settings, catalogue: Catalogue, count: int
) -> tuple[float, float, float]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "INBOXFLOW_TOPIC_NAMESPACE": catalogue.namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": str(_PARTITIONS),
    }
    env.pop("INBOXFLOW_SCHEMA_REGISTRY_URL", None)
    if settings.schema_registry_url:
        env["INBOXFLOW_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    started = time.monotonic()
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inboxflow", "worker", "--agent", "normalize",
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        arrivals = await _output_times(
            kafka_from(settings),
            catalogue.email_normalized.name,
            count,
            time.monotonic() + 600,
        )
        peak = _peak_rss_mib(worker.pid)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), timeout=60)
    return _rate(count, arrivals), arrivals[0] - started, peak


async def run_pipeline_bench(settings: Settings, messages: int = 2000) -> PipelineBenchResult:
    """Run both sides on the same generated messages; return the figures."""
    events = fetched_events(messages)
    # Both sides speak the deployment's wire format (a registry URL in the settings: Confluent).
    serde = serde_from(settings)
    ours = build_catalogue(f"bench-{uuid.uuid4().hex[:8]}", partitions=_PARTITIONS)
    peer = build_catalogue(f"bench-peer-{uuid.uuid4().hex[:8]}", partitions=_PARTITIONS)
    kafka = kafka_from(settings)
    for catalogue in (ours, peer):
        await ensure_topics(kafka, catalogue.topics)
        await _produce(kafka, catalogue.message_fetched.name, events, serde)

    rate, startup, peak = await _run_inboxflow(settings, ours, messages)

    watcher = asyncio.create_task(
        _output_times(kafka, peer.email_normalized.name, messages, time.monotonic() + 600)
    )
    # The peer inherits this environment, so it takes the same INBOXFLOW_KAFKA_* security.
    argv = [kafka.bootstrap_servers, peer.message_fetched.name, peer.email_normalized.name]
    argv += [str(messages)]
    argv += [peer.normalize.group_id, settings.schema_registry_url or ""]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inboxflow.bench.pipeline", *argv,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await process.communicate()
    naive_rate = _rate(messages, await watcher)
    naive_peak = float(stdout.decode().strip() or 0)
    return PipelineBenchResult(
        messages=messages,
        inboxflow_messages_per_second=round(rate, 1),
        naive_messages_per_second=round(naive_rate, 1),
        ratio=round(rate / naive_rate, 2),
        inboxflow_startup_seconds=round(startup, 1),
        inboxflow_peak_rss_mib=round(peak, 1),
        naive_peak_rss_mib=round(naive_peak, 1),
    )


def _peer_main(argv: list[str]) -> None:
    """Run the naive peer in its own process and print its peak RSS (MiB)."""
    bootstrap, source, target, count, group, registry_url = argv
    serde = serde_for(registry_url or None)
    kafka = kafka_from(Settings(kafka_bootstrap_servers=bootstrap))
    asyncio.run(_naive_peer(kafka, source, target, int(count), group, serde))
    print(_peak_rss_mib(os.getpid()))  # noqa: T201 - read by the parent process


if __name__ == "__main__":
    _peer_main(sys.argv[1:])
