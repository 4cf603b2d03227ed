"""The peers ``inboxflow bench pipeline`` measures the normalize agent against, one per process.

Each peer reads GmailMessageFetched records from a source topic and writes EmailNormalized to a
target topic with the same pure ``normalized_body`` and the same serde as the agent; only the
plumbing differs. A peer runs until it is terminated (SIGTERM), so the bench treats every side
alike: it watches the target topic and reads the process's CPU time and peak RSS from ``/proc``.

- ``naive``: one record at a time, ``send_and_wait``, commit per record.
- ``batched``: a well-written aiokafka loop: ``getmany`` up to 500 records, every result
  produced without awaiting each, the batch awaited, then one commit (at-least-once).
- ``quix``: a Quix Streams application with the at-least-once processing guarantee. Quix
  Streams pins older pydantic releases than inboxflow does, so it usually lives in its own
  virtual environment; the bench takes that interpreter as ``--quix-python``.
- ``ceiling``: no Kafka: the pure function alone over generated events, printed as JSON.

Run one by hand: ``python -m inboxflow.bench.peers batched BOOTSTRAP SOURCE TARGET GROUP
[REGISTRY_URL]``, or ``python -m inboxflow.bench.peers ceiling COUNT``. Kafka security
(TLS, SASL) reaches the aiokafka peers through the usual ``INBOXFLOW_KAFKA_*`` variables; the
Quix peer connects in plaintext.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import ConsumerRecord, TopicPartition

from schemas.models import EmailNormalized, GmailMessageFetched
from schemas.serde import Serde, serde_for
from streams.stages.mime import RawMessage, normalized_body
from topics.kafka import KafkaClients

BATCH_RECORDS = 500
T = TypeVar("T")
WARM_UP_MESSAGES = 200


def normalize_bytes(serde: Serde, value: bytes) -> bytes:
    """Decode a GmailMessageFetched, normalize it, encode the EmailNormalized: the peers' work."""
    fetched = serde.decode(value, GmailMessageFetched)
    body = normalized_body(RawMessage.of(fetched), datetime.now(UTC))
    return serde.frame(EmailNormalized, body)


async def run_naive(
    kafka: KafkaClients, source: str, target: str, group: str, serde: Serde
) -> None:
    """Consume one record, produce its result with ``send_and_wait``, commit; forever."""
    kafka = kafka.with_client_id("naive-peer")
    async with (
        kafka.started(kafka.consumer(source, group_id=group)) as consumer,
        kafka.started(kafka.producer(enable_idempotence=False, linger_ms=0)) as producer,
    ):
        while True:
            record = await consumer.getone()
            value = normalize_bytes(serde, record.value or b"")
            await producer.send_and_wait(target, value, key=record.key)
            tp = TopicPartition(record.topic, record.partition)
            await consumer.commit({tp: record.offset + 1})


async def run_batched(
    kafka: KafkaClients, source: str, target: str, group: str, serde: Serde
) -> None:
    """Take up to 500 records, produce all results, await them, commit the batch; forever."""
    kafka = kafka.with_client_id("batched-peer")
    async with (
        kafka.started(kafka.consumer(source, group_id=group)) as consumer,
        kafka.started(kafka.producer()) as producer,
    ):
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=BATCH_RECORDS)
            if not batch:
                continue
            acks = [
                await producer.send(
                    target, normalize_bytes(serde, record.value or b""), key=record.key
                )
                for records in batch.values()
                for record in records
            ]
            await asyncio.gather(*acks)
            await consumer.commit(_next_offsets(batch))


def _next_offsets(
    batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
) -> dict[TopicPartition, int]:
    return {tp: records[-1].offset + 1 for tp, records in batch.items() if records}


def run_quix(bootstrap: str, source: str, target: str, group: str, serde: Serde) -> None:
    """Run a Quix Streams application doing the same normalize, at-least-once; until SIGTERM."""
    from quixstreams import Application  # a peer's dependency, not inboxflow's: imported here

    # No state is kept, but Quix would make its state folder in the working directory.
    with tempfile.TemporaryDirectory(prefix="quix-peer-") as state_dir:
        app = Application(
            broker_address=bootstrap,
            consumer_group=group,
            auto_offset_reset="earliest",
            processing_guarantee="at-least-once",
            auto_create_topics=False,
            state_dir=state_dir,
        )
        inbound = app.topic(source, key_deserializer="bytes", value_deserializer="bytes")
        outbound = app.topic(target, key_serializer="bytes", value_serializer="bytes")
        frame = app.dataframe(inbound)
        frame = frame.apply(lambda value: normalize_bytes(serde, value))
        frame.to_topic(outbound)
        app.run()


@dataclass(frozen=True)
class CeilingResult:
    """The pure function alone: messages per second and CPU-seconds per 1,000 messages."""

    messages: int
    messages_per_second: float
    cpu_seconds_per_1000: float
    with_serde_messages_per_second: float
    with_serde_cpu_seconds_per_1000: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def measure_ceiling(count: int, serde: Serde) -> CeilingResult:
    """Time ``normalized_body`` alone, then with decode and framing, over the bench's events."""
    from inboxflow.bench.pipeline import fetched_events

    events = fetched_events(count)
    encoded = [serde.encode(event) for event in events]
    # Warm up first (lazy imports, compiled patterns, caches), as the agent and peers are
    # warm by the time their rates start counting.
    for value in encoded[:WARM_UP_MESSAGES]:
        normalize_bytes(serde, value)
    messages = [RawMessage.of(event) for event in events]
    alone = _timed(lambda: _each(lambda raw: normalized_body(raw, datetime.now(UTC)), messages))
    with_serde = _timed(lambda: _each(lambda value: normalize_bytes(serde, value), encoded))
    return CeilingResult(
        messages=count,
        messages_per_second=round(count / alone[0], 1),
        cpu_seconds_per_1000=round(alone[1] * 1000 / count, 3),
        with_serde_messages_per_second=round(count / with_serde[0], 1),
        with_serde_cpu_seconds_per_1000=round(with_serde[1] * 1000 / count, 3),
    )


def _each(work: Callable[[T], object], items: list[T]) -> None:
    """Run ``work`` on every item, keeping no result (as a stream keeps none)."""
    for item in items:
        work(item)


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """Return (wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def _kafka(bootstrap: str) -> KafkaClients:
    # Not inboxflow.wiring: a peer loads what its loop uses (30 MiB less: faust's worker
    # machinery, the Postgres driver), as a user's own loop would.
    from inboxflow.kafka_clients import kafka_from
    from inboxflow.settings import Settings

    return kafka_from(Settings(kafka_bootstrap_servers=bootstrap))


async def _until_terminated(loop: Callable[[], Any]) -> None:
    task = asyncio.ensure_future(loop())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        return


def main(argv: list[str]) -> None:
    """Run the peer named by ``argv[0]``."""
    which, *rest = argv
    if which == "ceiling":
        registry_url = rest[1] if len(rest) > 1 else ""
        result = measure_ceiling(int(rest[0]), serde_for(registry_url or None))
        print(json.dumps(result.to_dict()))  # noqa: T201 - read by the bench
        return
    bootstrap, source, target, group = rest[:4]
    serde = serde_for((rest[4] if len(rest) > 4 else "") or None)
    if which == "quix":
        run_quix(bootstrap, source, target, group, serde)
        return
    peers = {"naive": run_naive, "batched": run_batched}
    peer = peers[which]
    kafka = _kafka(bootstrap)
    asyncio.run(_until_terminated(lambda: peer(kafka, source, target, group, serde)))


if __name__ == "__main__":
    main(sys.argv[1:])
