"""Real agent and sink processes serve /metrics, /healthz and /readyz on their metrics port.

One run is healthy (joins, processes a record, stays live); the other stalls on purpose: the
extract agent's output topic does not exist (the broker creates none), so its batch waits for
Kafka forever with nothing acked, and its database URL points at a closed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from devstack.stack import Stack
from inboxflow.settings import Settings
from inboxflow.supervisor import ProcessGroup, start_all
from inboxflow.wiring import catalogue_from, kafka_from
from schemas.examples import example_events
from schemas.models import Address, EmailNormalized
from schemas.serde import serde_for
from tests.helpers import wait_until
from tests.pipeline_support import stack_settings
from topics.admin import ensure_topics

USER = "owner@health.test"


def free_ports(count: int) -> int:
    """Return a port P such that P .. P + count - 1 are free now (the supervisor adds i)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError("no run of free ports")


def settings_for(stack: Stack, namespace: str) -> Settings:
    return stack_settings(
        stack,
        topic_namespace=namespace,
        topic_partitions=2,
    )


def process_env(stack: Stack, namespace: str, port: int, database_url: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        **stack.client_env(),
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "2",
        "INBOXFLOW_METRICS_PORT": str(port),
    }


def mail() -> EmailNormalized:
    example = example_events()[EmailNormalized]
    assert isinstance(example, EmailNormalized)
    return example.model_copy(
        update={"user_id": USER, "to": [Address(address=USER)], "cc": [], "reply_to": []}
    )


async def produce(settings: Settings, topic: str) -> int:
    """Produce one mail for USER; return the partition Kafka put it on."""
    producer = kafka_from(settings).producer()
    await producer.start()
    try:
        value = serde_for(None).encode(mail())
        metadata = await producer.send_and_wait(topic, value, key=USER.encode())
        return int(metadata.partition)
    finally:
        await producer.stop()


def http_get(url: str) -> tuple[int, str]:
    """GET ``url``; (0, reason) when nothing listens yet."""

    async def fetch() -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            return response.status, await response.text()

    try:
        return asyncio.run(fetch())
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, repr(exc)


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, text = http_get(url)
    return status, (json.loads(text) if status else {"error": text})


def alive(group: ProcessGroup, logs: Path) -> None:
    exited = group.exited()
    assert not exited, f"{exited}: " + "\n".join(p.read_text() for p in logs.glob("*.log"))


def sample(text: str, name: str, **labels: str) -> float | None:
    """Return the value of the sample ``name{labels}`` in Prometheus text, if present."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return None


def test_agent_sink_and_scheduler_serve_metrics_liveness_and_readiness(
    stack: Stack, database_url: str, tmp_path: Path
) -> None:
    namespace = f"health-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, namespace)
    catalogue = catalogue_from(settings)
    asyncio.run(ensure_topics(kafka_from(settings), catalogue.topics))
    port = free_ports(3)
    agent_url, sink_url, scheduler_url = (f"http://127.0.0.1:{port + i}" for i in range(3))
    env = process_env(stack, namespace, port, database_url)
    group = start_all(
        env, agents=["extract"], sinks=("jobs",), sources=("scheduler",), log_dir=tmp_path
    )
    try:

        def ready() -> bool:
            alive(group, tmp_path)
            urls = (agent_url, sink_url, scheduler_url)
            return all(get_json(f"{url}/readyz")[0] == 200 for url in urls)

        wait_until(ready, timeout=120, interval=0.5, message="agent, sink and scheduler ready")
        _, body = get_json(f"{scheduler_url}/readyz")
        assert set(body["checks"]) == {"postgres", "kafka"}  # no consumer group of its own
        assert get_json(f"{scheduler_url}/healthz") == (
            200,
            {"status": "ok", "stall_bound_seconds": None, "waiting": []},
        )
        status, body = get_json(f"{agent_url}/readyz")
        assert status == 200
        assert body["status"] == "ready"
        assert body["failing"] == []
        assert body["checks"]["group"]["detail"].startswith(
            ("joined group=" + catalogue.extract.group_id, "rebalancing")
        )
        assert set(body["checks"]) == {"group", "kafka"}  # extract keeps nothing in Postgres
        assert get_json(f"{agent_url}/healthz") == (
            200,
            {"status": "ok", "stall_bound_seconds": 480.0, "waiting": []},
        )
        assert get_json(f"{sink_url}/healthz")[0] == 200

        partition = asyncio.run(produce(settings, catalogue.email_normalized.name))
        source = catalogue.email_normalized.name

        def processed() -> str | None:
            alive(group, tmp_path)
            status, text = http_get(f"{agent_url}/metrics")
            done = sample(text, "inboxflow_agent_records_total", outcome="done")
            return text if status == 200 and done and done >= 1 else None

        text = wait_until(processed, timeout=60, interval=0.5, message="the record is done")
        for family in (
            "# TYPE inboxflow_agent_commit_age_seconds gauge",
            "# TYPE inboxflow_liveness_stall_bound_seconds gauge",
            "# TYPE inboxflow_agent_batch_seconds histogram",
            "# TYPE inboxflow_agent_failures_total counter",
            "# TYPE inboxflow_breaker_state gauge",
        ):
            assert family in text
        assert sample(text, "inboxflow_liveness_stall_bound_seconds") == 480
        # The partition that held the record was seen, and is idle again after the ack.
        age = sample(
            text, "inboxflow_agent_commit_age_seconds", topic=source, partition=str(partition)
        )
        assert age == 0
        assert get_json(f"{agent_url}/healthz")[0] == 200

        def sink_wrote() -> bool:
            alive(group, tmp_path)
            _, sink_text = http_get(f"{sink_url}/metrics")
            rows = sample(sink_text, "inboxflow_sink_rows_total", sink="jobs")
            return bool(rows and rows >= 1)

        wait_until(sink_wrote, timeout=60, interval=0.5, message="the sink wrote the job")
        assert get_json(f"{sink_url}/healthz")[0] == 200
    finally:
        group.stop()
    assert group.exited() == {"agent-extract": 0, "sink-jobs": 0, "scheduler": 0}


def test_a_stalled_partition_fails_liveness_and_a_lost_database_readiness(
    stack: Stack, tmp_path: Path
) -> None:
    namespace = f"stall-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, namespace)
    catalogue = catalogue_from(settings)
    output = catalogue.contact_extracted.name
    topics = [spec for spec in catalogue.topics if spec.name != output]  # extract cannot publish
    asyncio.run(ensure_topics(kafka_from(settings), topics))
    port = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    insight_url = f"http://127.0.0.1:{port + 1}"  # a group that keeps its state in Postgres
    env = {
        **process_env(stack, namespace, port, "postgresql://inboxflow@127.0.0.1:9/inboxflow"),
        # Deadlines short enough to allow a 5 s bound (it must exceed every stage's).
        **{
            f"INBOXFLOW_TIMEOUTS__{name}": "1"
            for name in ("NORMALIZE", "NORMALIZE_RECORD", "EMBED", "EMBED_RECORD", "INSIGHT")
        },
        "INBOXFLOW_TIMEOUTS__EXTRACT": "2",
        "INBOXFLOW_TIMEOUTS__SYNC_BASE": "1",
        "INBOXFLOW_TIMEOUTS__SYNC_PER_1000_MESSAGES": "0",
        "INBOXFLOW_LIVENESS_STALL_SECONDS": "5",
    }
    group = start_all(env, agents=["extract", "insight"], sinks=(), sources=(), log_dir=tmp_path)
    try:

        def joined(at: str) -> dict[str, Any] | None:
            alive(group, tmp_path)
            status, body = get_json(f"{at}/readyz")
            checks = body.get("checks", {})
            return body if status and checks["group"]["ok"] and checks["kafka"]["ok"] else None

        body = wait_until(lambda: joined(insight_url), timeout=120, interval=0.5, message="joined")
        # Joined and Kafka answers, but Postgres, where insight keeps its state, does not.
        assert get_json(f"{insight_url}/readyz")[0] == 503
        assert body["status"] == "not ready"
        assert body["failing"] == ["postgres"]
        assert "127.0.0.1" in body["checks"]["postgres"]["detail"]
        assert get_json(f"{insight_url}/healthz")[0] == 200  # idle: live
        # Extract never touches Postgres: ready without it.
        body = wait_until(lambda: joined(url), timeout=120, interval=0.5, message="joined")
        assert get_json(f"{url}/readyz")[0] == 200
        assert "postgres" not in body["checks"]

        source = catalogue.email_normalized.name
        partition = asyncio.run(produce(settings, source))

        def stalled() -> dict[str, Any] | None:
            alive(group, tmp_path)
            status, body = get_json(f"{url}/healthz")
            return body if status == 503 else None

        body = wait_until(stalled, timeout=90, interval=0.5, message="/healthz fails")
        assert body["status"] == "stalled"
        assert body["stall_bound_seconds"] == 5
        [stall] = body["stalled"]
        assert stall["group"] == catalogue.extract.group_id
        assert (stall["topic"], stall["partition"], stall["waiting_records"]) == (
            source,
            partition,
            1,
        )
        assert stall["age_seconds"] > 5
        _, text = http_get(f"{url}/metrics")
        age = sample(
            text, "inboxflow_agent_commit_age_seconds", topic=source, partition=str(partition)
        )
        assert age is not None
        assert age > 5
    finally:
        group.stop(timeout=20)
