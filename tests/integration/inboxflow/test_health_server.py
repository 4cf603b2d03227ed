"""The health server on loopback: /metrics text, /healthz from the stall trackers, /readyz checks.

Real sockets, a real Postgres and Kafka for the dependency checks; the trackers' clocks are fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from devstack.stack import Stack
from inboxflow.health import (
    HealthServer,
    NotReadyError,
    ReadinessCheck,
    kafka_check,
    postgres_check,
)
from inboxflow.wiring import kafka_from
from streams.runtime.liveness import StallTracker, export_stalls
from tests.pipeline_support import stack_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ready(detail: str) -> ReadinessCheck:
    async def check() -> str:
        return detail

    return check


def refusing(reason: str) -> ReadinessCheck:
    async def check() -> str:
        raise NotReadyError(reason)

    return check


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def test_metrics_liveness_and_readiness(session: aiohttp.ClientSession) -> None:
    registry = CollectorRegistry()
    Counter("health_test_things", "Things.", registry=registry).inc(3)
    clock = FakeClock()
    tracker = StallTracker("inboxflow-extract", 60, clock=clock)
    export_stalls(tracker, registry)
    checks = {"group": ready("joined"), "postgres": refusing("Postgres is down")}
    server = HealthServer("127.0.0.1", 0, trackers=[tracker], checks=checks, registry=registry)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with session.get(f"{base}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = await response.text()
        assert "health_test_things_total 3.0" in text
        assert "inboxflow_liveness_stall_bound_seconds 60.0" in text

        # Idle: healthy. Waiting within the bound: healthy, and listed.
        assert await get(session, f"{base}/healthz") == (
            200,
            {"status": "ok", "stall_bound_seconds": 60, "waiting": []},
        )
        tracker.arrived("inboxflow.mail.email-normalized.v1", 4, 2)
        clock.now += 30
        status, body = await get(session, f"{base}/healthz")
        assert status == 200
        assert body["waiting"] == [
            {
                "group": "inboxflow-extract",
                "topic": "inboxflow.mail.email-normalized.v1",
                "partition": 4,
                "waiting_records": 2,
            }
        ]
        # Past the bound with no progress: 503 naming the partition and its age.
        clock.now += 31
        assert await get(session, f"{base}/healthz") == (
            503,
            {
                "status": "stalled",
                "stall_bound_seconds": 60,
                "stalled": [
                    {
                        "group": "inboxflow-extract",
                        "topic": "inboxflow.mail.email-normalized.v1",
                        "partition": 4,
                        "waiting_records": 2,
                        "age_seconds": 61.0,
                    }
                ],
            },
        )
        tracker.progressed("inboxflow.mail.email-normalized.v1", 4, 2)
        assert (await get(session, f"{base}/healthz"))[0] == 200

        assert await get(session, f"{base}/readyz") == (
            503,
            {
                "status": "not ready",
                "failing": ["postgres"],
                "checks": {
                    "group": {"ok": True, "detail": "joined"},
                    "postgres": {"ok": False, "detail": "NotReadyError: Postgres is down"},
                },
            },
        )
    finally:
        await server.stop()


async def test_readiness_checks_reach_the_real_dependencies(
    session: aiohttp.ClientSession, stack: Stack, database_url: str
) -> None:
    settings = stack_settings(
        stack,
    )
    checks = {
        "postgres": postgres_check(database_url),
        "kafka": kafka_check(kafka_from(settings)),
        "closed": postgres_check("postgresql://inboxflow:secret-pw@127.0.0.1:9/inboxflow"),
    }
    server = HealthServer("127.0.0.1", 0, trackers=[], checks=checks, registry=CollectorRegistry())
    await server.start()
    try:
        status, body = await get(session, f"http://127.0.0.1:{server.port}/readyz")
    finally:
        await server.stop()
    assert status == 503
    assert body["failing"] == ["closed"]
    checks_body = body["checks"]
    assert isinstance(checks_body, dict)
    assert checks_body["postgres"] == {"ok": True, "detail": "SELECT 1 answered"}
    assert checks_body["kafka"] == {"ok": True, "detail": "metadata fetched"}
    assert "OperationalError" in checks_body["closed"]["detail"]
    assert "secret-pw" not in str(body)


async def test_a_taken_port_fails_at_start() -> None:
    first = HealthServer("127.0.0.1", 0, trackers=[], checks={}, registry=CollectorRegistry())
    await first.start()
    try:
        second = HealthServer(
            "127.0.0.1", first.port, trackers=[], checks={}, registry=CollectorRegistry()
        )
        with pytest.raises(OSError, match="in use"):
            await second.start()
    finally:
        await first.stop()
