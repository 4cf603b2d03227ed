"""A whole pipeline for end-to-end tests: Gmail emulator, topics, every worker and sink as
real processes on the session's Kafka and a database of its own.

The workers get the stack's client settings (``Stack.client_env``), so on a secure stack
(``secure_stack``) they speak SASL_SSL to Kafka and TLS to Postgres like any other client.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from psycopg import sql

from devstack.embedding_emulator import EmbeddingEmulator
from devstack.gmail_emulator.server import GmailEmulator
from devstack.stack import Stack
from inboxflow.progress import TERMINAL, job_counts
from inboxflow.scheduling import register_accounts
from inboxflow.settings import Settings
from inboxflow.supervisor import ProcessGroup, start_all
from inboxflow.wiring import catalogue_from, kafka_from, request_syncs, serde_from
from schemas.models import Event
from schemas.serde import Serde, serde_for
from tests.conftest import TEMPLATE_DATABASE, _with_database
from tests.helpers import wait_until
from topics.admin import ensure_topics
from topics.catalogue import Catalogue
from topics.kafka import PLAINTEXT, KafkaClients, KafkaSecurity

E = TypeVar("E", bound=Event)


@dataclass
class Pipeline:
    """A running pipeline and what tests need to drive and inspect it."""

    settings: Settings
    catalogue: Catalogue
    emulator: GmailEmulator
    workers: ProcessGroup
    database_url: str
    logs: Path
    serde: Serde = field(default_factory=lambda: serde_for(None))  # the workers' wire format

    def sync(self, users: list[str], *, full: bool = False) -> list[str]:
        """Register each user as an account (once) and request a sync of it; return the ids."""
        addresses = asyncio.run(register_accounts(self.settings, users))
        return asyncio.run(request_syncs(self.settings, addresses, full=full))

    def jobs(self, users: list[str]) -> dict[str, dict[str, int]]:
        """Job rows per kind and status."""
        return job_counts(self.database_url, users).by_kind

    def wait_settled(self, users: list[str], *, messages: int, timeout: float = 180) -> None:
        """Wait until every job of ``users`` is final and all ``messages`` went all the way."""

        def settled() -> bool:
            self.check_workers()
            counts = job_counts(self.database_url, users)
            if any(counts.count(k) != counts.count(k, TERMINAL) for k in counts.by_kind):
                return False
            kinds = ("normalize_google_email", "extract_contacts", "embed", "insight")
            return counts.count("google_gmail_sync", TERMINAL) > 0 and all(
                counts.count(kind, ("done",)) >= messages for kind in kinds
            )

        wait_until(settled, timeout=timeout, interval=0.5, message=f"pipeline settled {users}")

    def check_workers(self) -> None:
        """Fail with the logs of any worker that died."""
        exited = self.workers.exited()
        if exited:
            tails = {
                name: (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                for name in exited
            }
            raise AssertionError(f"workers exited {exited}: {json.dumps(tails, indent=1)}")

    def read(self, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
        """Every record currently in ``topic``."""
        kafka = kafka_from(self.settings)
        return asyncio.run(read_topic(kafka.bootstrap_servers, topic, security=kafka.security))

    def produce(self, topic: str, key: str, value: bytes) -> None:
        """Write one raw record to ``topic`` (bytes the workers may not be able to read)."""

        async def send() -> None:
            kafka = kafka_from(self.settings)
            async with kafka.started(kafka.producer()) as producer:
                await producer.send_and_wait(topic, value, key=key.encode())

        asyncio.run(send())

    def events(self, topic: str, model: type[E]) -> list[E]:
        """Every event currently in ``topic``, decoded."""
        return [self.serde.decode(record.value or b"", model) for record in self.read(topic)]

    def query(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of a query on the pipeline's database."""
        with psycopg.connect(self.database_url) as conn:
            return list(conn.execute(statement, params))  # type: ignore[arg-type]


def emulated_embeddings_env(
    api: EmbeddingEmulator, model: str = "emulated-embed"
) -> dict[str, str]:
    """Worker settings that embed through ``api`` (an OpenAI-compatible emulator)."""
    return {
        "INBOXFLOW_EMBEDDING_PROVIDER": "openai",
        "INBOXFLOW_EMBEDDING_API_URL": api.url,
        "INBOXFLOW_EMBEDDING_MODEL": model,
        "INBOXFLOW_EMBEDDING_DIMENSION": str(api.dimension),
    }


async def read_topic(
    bootstrap: str, topic: str, *, security: KafkaSecurity = PLAINTEXT
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the start up to its current end offsets."""
    consumer = KafkaClients(bootstrap, security=security).consumer()
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while not await _reached(consumer, ends):
            batch = await consumer.getmany(timeout_ms=1000)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


def stack_settings(stack: Stack, **fields: Any) -> Settings:
    """Settings that reach ``stack``'s Kafka (with its security) plus ``fields``."""
    security = stack.kafka_security
    return Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        kafka_security_protocol=security.protocol,
        kafka_sasl_mechanism=security.mechanism,
        kafka_sasl_username=security.username,
        kafka_sasl_password=security.password,
        kafka_ssl_cafile=security.cafile,
        kafka_ssl_certfile=security.certfile,
        kafka_ssl_keyfile=security.keyfile,
        **fields,
    )


def _create_database(stack: Stack) -> str:
    name = f"pipeline_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DATABASE)
            )
        )
    return _with_database(stack.database_url, name)


@contextmanager
def running_pipeline(
    stack: Stack,
    emulator: GmailEmulator,
    *,
    env: dict[str, str] | None = None,
    retry_ladders: dict[str, list[int]] | None = None,
    schema_registry_url: str | None = None,
) -> Iterator[Pipeline]:
    """Start every worker and sink against ``emulator`` under a fresh namespace and database.

    ``schema_registry_url``: run in registry mode (Confluent framing) instead of single-object.
    """
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    database_url = _create_database(stack)
    settings = stack_settings(
        stack,
        database_url=database_url,
        topic_namespace=namespace,
        topic_partitions=3,
        gmail_api_root=emulator.url,
        retry_ladders=retry_ladders or {},
        insight_interval_seconds=0.5,
        schema_registry_url=schema_registry_url,
    )
    catalogue = catalogue_from(settings)
    asyncio.run(ensure_topics(kafka_from(settings), catalogue.topics))
    worker_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        **stack.client_env(),  # Kafka bootstrap and security (TLS, SASL) as the stack needs
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "3",
        "INBOXFLOW_GMAIL_API_ROOT": emulator.url,
        "INBOXFLOW_INSIGHT_INTERVAL_SECONDS": "0.5",
        "INBOXFLOW_RETRY_LADDERS": json.dumps(retry_ladders or {}),
        **({"INBOXFLOW_SCHEMA_REGISTRY_URL": schema_registry_url} if schema_registry_url else {}),
        **(env or {}),
    }
    logs = Path(tempfile.mkdtemp(prefix=f"inboxflow-{namespace}-"))
    workers = start_all(worker_env, log_dir=logs)
    try:
        yield Pipeline(
            settings, catalogue, emulator, workers, database_url, logs, serde_from(settings)
        )
    finally:
        workers.stop()
    # Reached only when the tests passed: a failure keeps the worker logs for reading.
    shutil.rmtree(logs, ignore_errors=True)
