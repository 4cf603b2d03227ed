"""A stack health check: one keyed record with headers through Kafka, one row through Postgres.

Used by ``inboxflow dev check`` and by tests to prove the services answer for real.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from aiokafka.admin import NewTopic

from topics.kafka import KafkaClients


@dataclass(frozen=True)
class RoundTripResult:
    """What came back, with timings in milliseconds."""

    topic: str
    key: str
    value: str
    headers: dict[str, str]
    kafka_ms: float
    database_ms: float
    database_row: str

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


async def kafka_round_trip(
    kafka: KafkaClients, *, wait_seconds: float = 30.0
) -> tuple[str, str, str, dict[str, str], float]:
    """Create a topic, produce one keyed record with headers, read it back, delete the topic.

    ``kafka`` carries the cluster's security, so the check passes only when the configured
    credentials and TLS files are accepted.
    """
    topic = f"inboxflow.devstack.check-{uuid.uuid4().hex[:8]}"
    kafka = kafka.with_client_id("inboxflow-devstack-check")
    began = time.perf_counter()
    async with kafka.started(kafka.admin()) as admin:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        try:
            key, value = "user-check", f"hello {uuid.uuid4().hex[:6]}"
            async with kafka.started(kafka.producer()) as producer:
                await producer.send_and_wait(
                    topic, value.encode(), key=key.encode(), headers=[("source", b"devstack")]
                )
            async with kafka.started(kafka.consumer(topic)) as consumer:
                batch = await consumer.getmany(timeout_ms=int(wait_seconds * 1000), max_records=1)
            records = [record for records in batch.values() for record in records]
            if not records:
                raise RuntimeError(f"no record came back from {topic} within {wait_seconds}s")
            record = records[0]
            headers = {name: raw.decode() for name, raw in record.headers}
            elapsed = (time.perf_counter() - began) * 1000
            key, value = (record.key or b"").decode(), (record.value or b"").decode()
            return topic, key, value, headers, elapsed
        finally:
            await admin.delete_topics([topic])


def database_round_trip(database_url: str) -> tuple[str, float]:
    """Write and read back a row in a temporary table; return it and the time taken."""
    started = time.perf_counter()
    token = uuid.uuid4().hex
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMPORARY TABLE devstack_check (token text)")
        conn.execute("INSERT INTO devstack_check (token) VALUES (%s)", (token,))
        row = conn.execute("SELECT token FROM devstack_check").fetchone()
    if row is None or row[0] != token:
        raise RuntimeError("database round-trip returned a different row")
    return str(row[0]), (time.perf_counter() - started) * 1000


async def round_trip(kafka: KafkaClients, database_url: str) -> RoundTripResult:
    """Run both round-trips and return what came back."""
    topic, key, value, headers, kafka_ms = await kafka_round_trip(kafka)
    row, database_ms = database_round_trip(database_url)
    return RoundTripResult(topic, key, value, headers, kafka_ms, database_ms, row)
