"""``inboxflow status`` as a subprocess against hand-made state on the session's Kafka and Postgres.

Each test sets up what status must report (records, committed offsets, retry-tier records with
due times, dead letters and redrive progress, accounts, job rows, a worker's metrics) and reads
the numbers back from ``status --json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from db.accounts import (
    AccountState,
    SyncOutcome,
    add_account,
    record_sync_outcome,
    record_watch,
    set_state,
)
from devstack.processes import free_port
from devstack.stack import Stack
from inboxflow.settings import Settings
from inboxflow.wiring import catalogue_from, kafka_from
from ops.dlq.progress import redrive_group_id
from ops.offsets import commit_offsets
from schemas import headers as h
from topics.admin import ensure_topics
from topics.catalogue import Catalogue

ROOT = Path(__file__).resolve().parents[2]
LADDERS = {agent: [5] for agent in ("sync", "normalize", "extract", "embed", "insight")}


@dataclass
class Deployment:
    settings: Settings
    catalogue: Catalogue
    env: dict[str, str]


@pytest.fixture
def deployment(stack: Stack, database_url: str) -> Deployment:
    namespace = f"t-status-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        database_url=database_url,
        topic_namespace=namespace,
        topic_partitions=2,
        retry_ladders=LADDERS,
    )
    catalogue = catalogue_from(settings)
    asyncio.run(ensure_topics(kafka_from(settings), catalogue.topics))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        **stack.client_env(),
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "2",
        "INBOXFLOW_RETRY_LADDERS": json.dumps(LADDERS),
        "COLUMNS": "200",
    }
    return Deployment(settings, catalogue, env)


def status(deployment: Deployment, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "inboxflow", "status", *args],
        env={**deployment.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


async def produce(
    deployment: Deployment, topic: str, partition: int, count: int, headers: list[Any] | None = None
) -> None:
    kafka = kafka_from(deployment.settings)
    async with kafka.started(kafka.producer()) as producer:
        for i in range(count):
            await producer.send_and_wait(
                topic,
                value=b"not avro %d" % i,
                key=b"u@x.test",
                partition=partition,
                headers=(headers[i] if headers else None),
            )


async def commit(deployment: Deployment, group_id: str, offsets: dict[TopicPartition, int]) -> None:
    kafka = kafka_from(deployment.settings)
    async with kafka.started(kafka.consumer(group_id=group_id)) as consumer:
        await commit_offsets(consumer, group_id, {tp: (o, "") for tp, o in offsets.items()})


@pytest.fixture
def worker_metrics(deployment: Deployment) -> Iterator[str]:
    """A stand-in worker's /metrics: normalize counters, an open breaker, one user's units."""
    registry = CollectorRegistry()
    group = deployment.catalogue.normalize.group_id
    records = Counter(
        "inboxflow_agent_records", "", ["group", "stage", "outcome"], registry=registry
    )
    failures = Counter(
        "inboxflow_agent_failures", "", ["group", "stage", "retry_class"], registry=registry
    )
    breaker = Gauge("inboxflow_breaker_state", "", ["breaker"], registry=registry)
    units = Gauge("inboxflow_gmail_user_units", "", ["user"], registry=registry)
    records.labels(group, "normalize", "done").inc(10)
    failures.labels(group, "normalize", "transient").inc(4)
    breaker.labels("gmail").set(2)
    units.labels("alice@x.test").set(123)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def seed(deployment: Deployment) -> dict[str, int]:
    """Put records, offsets, tier records, dead letters, accounts and jobs in place."""
    catalogue = deployment.catalogue
    normalize = catalogue.normalize
    fetched = catalogue.message_fetched.name
    tier = normalize.retry_topics[0].name
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    dues = [now_ms + 60_000, now_ms + 120_000]

    async def kafka_side() -> None:
        await produce(deployment, fetched, 0, 5)
        await produce(deployment, fetched, 1, 3)
        await commit(deployment, normalize.group_id, {TopicPartition(fetched, 0): 2})
        due_headers = [[(h.DUE_TIMESTAMP, h.encode_text(due))] for due in dues]
        await produce(deployment, tier, 0, 2, due_headers)
        await commit(deployment, normalize.retry_group_id, {TopicPartition(tier, 0): 1})
        class_headers = [[(h.ERROR_CLASS, b"permanent")]] * 3
        await produce(deployment, normalize.dlq.name, 1, 3, class_headers)
        progress = {TopicPartition(normalize.dlq.name, 1): 1}
        await commit(deployment, redrive_group_id(normalize), progress)

    async def postgres_side() -> None:
        conninfo = deployment.settings.database_url.get_secret_value()
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await add_account(conn, "alice@x.test")
            await add_account(conn, "bob@x.test")
            now = datetime.now(UTC)
            await record_sync_outcome(
                conn, "alice@x.test", SyncOutcome.OK, now - timedelta(seconds=10)
            )
            await record_watch(conn, "alice@x.test", now + timedelta(days=1), now)
            await set_state(conn, "bob@x.test", AccountState.PAUSED)
            for i, (kind, state) in enumerate(
                [("normalize_google_email", "done")] * 3 + [("embed", "error")]
            ):
                await conn.execute(
                    "INSERT INTO jobs (id, user_id, kind, status, subject_id, version) "
                    "VALUES (%(id)s, 'alice@x.test', %(kind)s, %(status)s, %(id)s, 1)",
                    {"id": f"job-{i}", "kind": kind, "status": state},
                )

    asyncio.run(kafka_side())
    asyncio.run(postgres_side())
    return {"due": dues[1]}


def test_status_json_reports_lag_tiers_dead_letters_accounts_jobs_and_worker_metrics(
    deployment: Deployment, worker_metrics: str
) -> None:
    seeded = seed(deployment)
    dead_worker = f"http://127.0.0.1:{free_port()}/metrics"

    done = status(
        deployment,
        "--json",
        "--interval",
        "0.3",
        "--metrics",
        worker_metrics,
        "--metrics",
        dead_worker,
    )

    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout)
    assert snapshot["problems"] == []
    groups = {g["agent"]: g for g in snapshot["groups"]}
    assert len(groups) == 7
    normalize = groups["normalize"]
    fetched = deployment.catalogue.message_fetched.name
    assert [
        (p["topic"], p["partition"], p["committed"], p["end"], p["lag"])
        for p in normalize["partitions"]
    ] == [(fetched, 0, 2, 5, 3), (fetched, 1, None, 3, 3)]
    assert normalize["lag"] == 6
    assert normalize["trend"] == "flat"
    assert normalize["in_per_second"] == 0
    tier = normalize["tiers"][0]
    assert (tier["depth"], tier["oldest_due_ms"]) == (1, seeded["due"])  # the first uncommitted
    assert 60 < tier["due_in_seconds"] <= 120
    assert (normalize["dlq"]["records"], normalize["dlq"]["pending"]) == (3, 2)
    assert all(g["dlq"]["pending"] == 0 for a, g in groups.items() if a != "normalize")
    assert normalize["errors_total"] == {"transient": 4.0}
    assert normalize["errors_per_second"] == {"transient": 0.0}
    assert groups["embed"]["errors_total"] is None  # no scraped worker runs it

    accounts = {a["user_id"]: a for a in snapshot["accounts"]}
    alice, bob = accounts["alice@x.test"], accounts["bob@x.test"]
    assert (alice["state"], alice["last_sync_outcome"], alice["stale"]) == ("active", "ok", False)
    assert 9 <= alice["staleness_seconds"] < 120
    assert 86000 < alice["watch_expires_in_seconds"] <= 86400
    assert (alice["quota_units"], alice["quota_ceiling"]) == (123.0, 6000)
    assert (bob["state"], bob["quota_units"], bob["stale"]) == ("paused", 0.0, False)
    assert snapshot["quota"]["known"] is True
    assert snapshot["jobs"] == {"embed": {"error": 1}, "normalize_google_email": {"done": 3}}
    assert snapshot["breakers"] == [
        {"name": "gmail", "state": "open", "value": 2.0, "worker": worker_metrics}
    ]
    workers = {w["url"]: w for w in snapshot["workers"]}
    assert workers[worker_metrics]["up"] is True
    assert workers[worker_metrics]["groups"] == [deployment.catalogue.normalize.group_id]
    assert workers[dead_worker]["up"] is False


def test_status_prints_tables_and_exits_1_when_postgres_is_unreachable(
    deployment: Deployment,
) -> None:
    seed(deployment)
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"

    shown = status(deployment, "--interval", "0")
    broken = status(deployment, "--json", "--interval", "0", env={"DATABASE_URL": unreachable})

    assert shown.returncode == 0, shown.stderr
    for text in ("Consumer groups", deployment.catalogue.normalize.group_id, "alice@x.test"):
        assert text in shown.stdout
    assert broken.returncode == 1
    snapshot = json.loads(broken.stdout)
    assert snapshot["accounts"] is None
    assert snapshot["jobs"] is None
    assert [p.split(":")[0] for p in snapshot["problems"]] == ["postgres"]
    normalize = next(g for g in snapshot["groups"] if g["agent"] == "normalize")
    assert normalize["lag"] == 6  # Kafka is still read
