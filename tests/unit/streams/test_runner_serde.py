"""Job states leave the runner in the deployment's wire format, not always single-object.

The registry here is an in-memory stand-in for ``SchemaRegistryClient`` (no sockets); the real
registry's HTTP side is tested in ``tests/integration/schemas/test_registry.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry

from schemas.models import JobKind, JobStateChanged, JobStatus
from schemas.registry import SchemaRegistryClient
from schemas.serde import SOE_MAGIC, RegistrySerde, Serde, serde_for
from streams.runtime.metrics import AgentMetrics
from streams.runtime.routing import job_state
from streams.runtime.runner import StageRunner
from streams.runtime.stage import JobRef, Outcome, Outgoing, Record
from tests.memory_publisher import MemoryPublisher
from topics.catalogue import build_catalogue

CATALOGUE = build_catalogue("unit")
JOBS = CATALOGUE.job_state_changed.name
OUTPUT = CATALOGUE.email_normalized.name
NOW = 1_767_225_600.0


class InMemoryRegistry:
    """Answers ``register`` and ``get_schema`` as a registry would: one id per distinct schema."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        return self.ids.setdefault(json.dumps(schema, sort_keys=True), len(self.ids) + 1)

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        [text] = [text for text, known in self.ids.items() if known == schema_id]
        schema: dict[str, Any] = json.loads(text)
        return schema


def registry_serde() -> RegistrySerde:
    return RegistrySerde(cast(SchemaRegistryClient, InMemoryRegistry()))


class QueueingStage:
    """Finishes each record and queues one follow-up job for another stage."""

    name = "normalize"
    kind = JobKind.NORMALIZE_GOOGLE_EMAIL
    phase = 1
    timeout = 5.0

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        return []

    def job_of(self, record: Record) -> JobRef | None:
        return JobRef("user-1", record.value.decode(), "s-1")

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        return [
            Outcome(
                outputs=[Outgoing(OUTPUT, b"user-1", b"out")],
                queued=[(JobKind.EMBED, JobRef("user-1", r.value.decode(), "s-1"))],
            )
            for r in records
        ]


async def _job_state_values(serde: Serde | None) -> list[bytes]:
    publisher = MemoryPublisher()
    runner = StageRunner(
        QueueingStage(),
        CATALOGUE.normalize,
        job_topic=JOBS,
        publisher=publisher,
        clock=lambda: NOW,
        metrics=AgentMetrics(CollectorRegistry()),
        serde=serde,
        processing_state_after=0,  # every kind of job state, `processing` included
    )
    await runner.run([Record(CATALOGUE.message_fetched.name, 0, 3, 0, b"user-1", b"m-1")])
    return [record.value for record in publisher.on(JOBS)]


async def test_runner_encodes_every_job_state_with_the_serde_it_is_given() -> None:
    serde = registry_serde()

    values = await _job_state_values(serde)

    assert {value[:1] for value in values} == {b"\x00"}  # Confluent framing, each of them
    states = [serde.decode(value, JobStateChanged) for value in values]
    assert sorted((s.kind.value, s.status.value) for s in states) == [
        ("embed", "queued"),
        ("normalize_google_email", "done"),
        ("normalize_google_email", "processing"),
    ]


async def test_runner_without_a_serde_writes_single_object_frames() -> None:
    values = await _job_state_values(None)

    assert values
    assert {value[:2] for value in values} == {SOE_MAGIC}


def test_job_state_uses_the_serde_passed_in() -> None:
    serde = registry_serde()
    ref = JobRef("user-1", "m-1")

    confluent = job_state(JOBS, JobKind.EMBED, ref, JobStatus.DONE, attempt=1, now=NOW, serde=serde)
    single = job_state(
        JOBS, JobKind.EMBED, ref, JobStatus.DONE, attempt=1, now=NOW, serde=serde_for(None)
    )

    assert confluent.value[:1] == b"\x00"
    assert single.value[:2] == SOE_MAGIC
    assert serde.decode(confluent.value, JobStateChanged) == serde.decode(
        single.value, JobStateChanged
    )
