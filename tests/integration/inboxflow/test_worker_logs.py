"""Real worker and sink processes' log files: JSON lines, no control codes, no ERROR, no mail."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import psycopg

from devstack.stack import Stack
from inboxflow.settings import Settings
from inboxflow.supervisor import start_all
from inboxflow.wiring import catalogue_from, kafka_from
from schemas.examples import example_events
from schemas.models import Address, ContactExtracted, EmailNormalized
from schemas.serde import serde_for
from tests.helpers import wait_until
from tests.pipeline_support import read_topic, stack_settings
from topics.admin import ensure_topics

CANARY = "canary-4be1c0"  # in the subject, the body, a correspondent's address and the secrets
USER = "owner@logs.test"  # the account's own address: an id, which logs may carry


def canary_mail() -> EmailNormalized:
    example = example_events()[EmailNormalized]
    assert isinstance(example, EmailNormalized)
    return example.model_copy(
        update={
            "user_id": USER,
            "subject": f"Subject {CANARY}",
            "text": f"Body {CANARY}\n",
            "snippet": f"Body {CANARY}",
            "sender": Address(name=f"Sender {CANARY}", address=f"{CANARY}@example.org"),
            "to": [Address(address=USER)],
            "cc": [],
            "reply_to": [],
        }
    )


async def produce(settings: Settings, topic: str, value: bytes) -> None:
    producer = kafka_from(settings).producer()
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=USER.encode())
    finally:
        await producer.stop()


def clean_lines(path: Path, secrets: list[str]) -> list[dict[str, Any]]:
    """Return the JSON lines of a process's log after checking what no log may hold."""
    log = path.read_bytes()
    assert b"\x1b" not in log, f"terminal control codes in {path.name}"
    for secret in (CANARY, *secrets):
        assert secret.encode() not in log, f"mail or a secret in {path.name}"
    lines = [json.loads(line) for line in log.decode("ascii").splitlines()]
    assert lines, f"{path.name} is empty"
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert [line for line in lines if line["level"] in ("ERROR", "CRITICAL")] == []
    return lines


def test_workers_log_json_lines_without_codes_errors_or_mail(
    stack: Stack, database_url: str, tmp_path: Path
) -> None:
    namespace = f"logs-{uuid.uuid4().hex[:8]}"
    security = stack.kafka_security
    settings = stack_settings(
        stack,
        topic_namespace=namespace,
        topic_partitions=2,
    )
    catalogue = catalogue_from(settings)
    asyncio.run(ensure_topics(kafka_from(settings), catalogue.topics))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        **stack.client_env(),  # Kafka bootstrap and security, as the stack needs
        "DATABASE_URL": database_url,
        "INBOXFLOW_EMBEDDING_API_KEY": f"sk-{CANARY}",
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "2",
    }
    # extract never opens the database: its URL is there only to prove secrets stay unwritten.
    secret_db = f"postgresql://inboxflow:{CANARY}@127.0.0.1:9/inboxflow"
    agent = start_all(
        {**env, "DATABASE_URL": secret_db},
        agents=["extract"],
        sinks=(),
        sources=(),
        log_dir=tmp_path,
    )
    sink = start_all(env, agents=(), sinks=("jobs",), sources=(), log_dir=tmp_path)
    logs = [tmp_path / "agent-extract.log", tmp_path / "sink-jobs.log"]
    try:
        value = serde_for(None).encode(canary_mail())
        asyncio.run(produce(settings, catalogue.email_normalized.name, value))

        def extracted() -> bool:
            assert not agent.exited(), logs[0].read_text()
            assert not sink.exited(), logs[1].read_text()
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    "SELECT status FROM jobs WHERE kind = 'extract_contacts' AND user_id = %s",
                    (USER,),
                ).fetchone()
            return row is not None and row[0] == "done"

        # Both joined their groups: the agent extracted the contacts, the sink wrote its job.
        wait_until(extracted, timeout=120, interval=0.5, message="the extract job is done")

        def settled() -> bool:
            # A wait for the group coordinator (a fresh cluster) ends with a line of its own.
            texts = [path.read_text() for path in logs]
            return all("waiting for Kafka" not in t or "Kafka ready after" in t for t in texts)

        wait_until(settled, timeout=30, interval=0.5, message="the Kafka waits are over")
    finally:
        agent.stop()
        sink.stop()

    assert agent.exited() == {"agent-extract": 0}
    assert sink.exited() == {"sink-jobs": 0}
    secrets = [security.password] if security.password else []
    lines = clean_lines(logs[0], secrets)
    started = [line for line in lines if line["msg"].startswith("worker buffers")]
    assert [(line["agent"], line["group"]) for line in started] == [
        ("extract", catalogue.extract.group_id)
    ]
    sink_lines = clean_lines(logs[1], secrets)
    assert {line.get("sink") for line in sink_lines} == {"jobs"}
    topic = catalogue.contact_extracted.name
    contacts = asyncio.run(read_topic(stack.kafka_bootstrap, topic, security=security))
    decoded = [serde_for(None).decode(r.value or b"", ContactExtracted) for r in contacts]
    assert f"{CANARY}@example.org" in {contact.address for contact in decoded}
