"""A message whose event exceeds email-normalized's max.message.bytes, through a real normalize
worker process on the session's Kafka: the event is published cut and flagged, nothing is
dead-lettered (Kafka used to refuse it and the runner dead-lettered the message as PERMANENT)."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from devstack.stack import Stack
from inboxflow.settings import Settings
from inboxflow.supervisor import start_all
from inboxflow.wiring import catalogue_from, kafka_from
from schemas.models import EmailNormalized, GmailMessageFetched
from schemas.serde import serde_for
from tests.helpers import wait_until
from tests.pipeline_support import read_topic, stack_settings
from topics.admin import ensure_topics

USER = "owner@oversized.test"
NOW = datetime(2026, 11, 10, tzinfo=UTC)
PARTS = 200
REFERENCES = 500_000


def oversized_raw() -> bytes:
    """18.8 MB of mail: 200 long-named parts and a References header of 500,000 Message-IDs.

    Its event takes about 17.5 MiB; the References make it large quickly (a 1.5 s parse), the
    parts show the order of the cuts: every attachment entry goes first, then References.
    """
    ids = [f"<thread-{i:07d}@lists.example.org>" for i in range(REFERENCES)]
    folded = "\r\n ".join(" ".join(ids[i : i + 2]) for i in range(0, REFERENCES, 2))
    chunks = [
        b"From: Ana Lima <ana@example.org>\r\nTo: bo@example.org\r\nSubject: a long thread\r\n",
        f"References: {folded}\r\n".encode(),
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nThe files, one part each.\r\n",
    ]
    for i in range(PARTS):
        name = f"{i:05d}-" + "quarterly-report-" * 230
        chunks.append(
            b"--B\r\nContent-Type: application/octet-stream\r\n"
            + f'Content-Disposition: attachment; filename="{name}.bin"\r\n\r\nx\r\n'.encode()
        )
    chunks.append(b"--B--\r\n")
    return b"".join(chunks)


async def produce(settings: Settings, topic: str, value: bytes) -> None:
    producer = kafka_from(settings).producer()
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=USER.encode())
    finally:
        await producer.stop()


def test_an_event_over_the_topic_limit_is_published_cut_not_dead_lettered(
    stack: Stack, database_url: str, tmp_path: Path
) -> None:
    namespace = f"oversized-{uuid.uuid4().hex[:8]}"
    settings = stack_settings(stack, topic_namespace=namespace, topic_partitions=1)
    catalogue = catalogue_from(settings)
    asyncio.run(ensure_topics(kafka_from(settings), catalogue.topics))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        **stack.client_env(),
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "1",
        "INBOXFLOW_CPU_WORKERS": "1",
    }
    raw = oversized_raw()
    serde = serde_for(None)
    limit = int(catalogue.email_normalized.configs["max.message.bytes"])
    fetched = GmailMessageFetched(
        user_id=USER,
        message_id="m-oversized",
        thread_id="t-oversized",
        sync_id="s-1",
        label_ids=["INBOX"],
        internal_date=NOW,
        size_estimate=len(raw),
        snippet="",
        raw=raw,
        fetched_at=NOW,
    )
    agent = start_all(env, agents=["normalize"], sinks=(), sources=(), log_dir=tmp_path)
    log = tmp_path / "agent-normalize.log"
    security = stack.kafka_security
    try:
        asyncio.run(produce(settings, catalogue.message_fetched.name, serde.encode(fetched)))

        def published() -> list[bytes]:
            assert not agent.exited(), log.read_text()
            for spec in catalogue.normalize.failure_topics:  # retry tiers and the DLQ
                failed = asyncio.run(
                    read_topic(stack.kafka_bootstrap, spec.name, security=security)
                )
                assert failed == [], f"the message went to {spec.name}"
            records = asyncio.run(
                read_topic(
                    stack.kafka_bootstrap, catalogue.email_normalized.name, security=security
                )
            )
            return [r.value or b"" for r in records]

        [value] = wait_until(published, timeout=120, interval=1.0, message="the event is out")
    finally:
        agent.stop()

    assert len(value) + len(USER) < limit
    event = serde.decode(value, EmailNormalized)
    assert event.truncated
    assert (event.attachments, event.attachments_dropped) == ([], PARTS)
    assert 0 < len(event.references) < REFERENCES
    assert event.references[-1] == f"<thread-{REFERENCES - 1:07d}@lists.example.org>"
    assert event.text == "The files, one part each."
