"""Each worker process's HTTP endpoints: ``/metrics``, ``/healthz`` (liveness), ``/readyz``.

One small aiohttp server per process, on the process's own event loop (the faust worker's, or
the sink's ``asyncio.run``), at ``INBOXFLOW_HEALTH_HOST:INBOXFLOW_METRICS_PORT``:

* ``/metrics``: the process's Prometheus registry, text format.
* ``/healthz``: 200 unless a partition the process owns has had records waiting with no progress
  (ack or commit) for longer than ``INBOXFLOW_LIVENESS_STALL_SECONDS``: then 503 naming each
  stalled partition and its age. Idle partitions are healthy. Restarting is what helps a stalled
  consumer; a dependency outage alone does not fail it (that is readiness).
* ``/readyz``: 200 once the process has joined its consumer group and Postgres and Kafka answer;
  503 listing the failing checks otherwise. Checks are cached for ``CHECK_CACHE_SECONDS`` so a
  probe every second costs one connection every few.

It never changes anything: no commits, no group joins of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from
from schemas.errors import InboxflowError, safe_error_text
from streams.runtime.liveness import StallTracker
from topics.kafka import KafkaClients

if TYPE_CHECKING:
    from sinks.base import PostgresSink

log = logging.getLogger(__name__)

CHECK_CACHE_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 2.0

ReadinessCheck = Callable[[], Awaitable[str]]
"""Return a short detail when the dependency is fine; raise (any exception) when it is not."""


class NotReadyError(InboxflowError):
    """The process is not ready yet."""


class CachedCheck:
    """A readiness check whose answer is reused for ``ttl`` seconds; concurrent calls share it.

    Arguments:
        check: the check to run.
        ttl: seconds an answer (good or bad) is reused.
        clock: monotonic seconds.
    """

    def __init__(
        self, check: ReadinessCheck, ttl: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._check = check
        self._ttl = ttl
        self._clock = clock
        self._answer: tuple[float, bool, str] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> tuple[bool, str]:
        """Return ``(ok, detail)``, from the cache when it is fresh."""
        async with self._lock:
            if self._answer is not None and self._clock() - self._answer[0] < self._ttl:
                return self._answer[1], self._answer[2]
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS + 1):
                    ok, detail = True, await self._check()
            except Exception as exc:  # noqa: BLE001 - any failure is a "not ready" answer
                ok, detail = False, safe_error_text(exc)
            self._answer = (self._clock(), ok, detail)
            return ok, detail


def postgres_check(conninfo: str) -> ReadinessCheck:
    """Return a check that connects to Postgres and runs ``SELECT 1``."""
    # Imported here: an agent that keeps nothing in Postgres never loads psycopg and libpq.
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    # Where, never how: the URL's password stays out of the answer (psycopg's messages are
    # withheld by safe_error_text for the same reason).
    parts = conninfo_to_dict(conninfo)
    where = f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"

    async def check() -> str:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=max(1, int(CHECK_TIMEOUT_SECONDS))
            ) as conn:
                await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise NotReadyError(f"Postgres at {where} unreachable: {type(exc).__name__}") from exc
        return "SELECT 1 answered"

    return check


def kafka_check(kafka: KafkaClients) -> ReadinessCheck:
    """Return a check that connects to a bootstrap server and fetches the cluster's metadata."""

    async def check() -> str:
        await kafka.check(seconds_per_server=CHECK_TIMEOUT_SECONDS)
        return "metadata fetched"

    return check


def faust_group_check(app: faust.App) -> ReadinessCheck:
    """Return a check that passes once the faust app received its first partition assignment.

    A replica with no partitions (more replicas than partitions) has joined too: an empty
    assignment counts.
    """
    assignment: list[int] = []

    def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        assignment[:] = [len(assigned)]

    app.on_partitions_assigned.connect(on_assigned)

    async def check() -> str:
        if not assignment:
            raise NotReadyError(f"not joined group {app.conf.id} yet")
        state = "rebalancing" if app.rebalancing else "joined"
        return f"{state} group={app.conf.id} partitions={assignment[0]}"

    return check


def sink_group_check(sink: PostgresSink, group_id: str) -> ReadinessCheck:
    """Return a check that passes once the sink's consumer received an assignment."""

    async def check() -> str:
        if not sink.joined:
            raise NotReadyError(f"not joined group {group_id} yet")
        return f"joined group={group_id} partitions={len(sink.assigned)}"

    return check


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on one port until stopped.

    Arguments:
        host: interface to listen on (``127.0.0.1``; ``0.0.0.0`` in a container).
        port: TCP port; 0 picks a free one (see ``port`` after ``start``).
        trackers: the stall trackers of the process's consumers (liveness).
        checks: readiness checks by name, each cached.
        registry: the Prometheus registry served at ``/metrics``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        trackers: Sequence[StallTracker],
        checks: Mapping[str, ReadinessCheck],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host = host
        self.port = port
        self._trackers = list(trackers)
        self._checks = {
            name: CachedCheck(check, CHECK_CACHE_SECONDS) for name, check in checks.items()
        }
        self._registry = registry
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; returns once the port is bound (``OSError`` if it is taken)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:  # the bound port, when 0 was asked for
            self.port = int(runner.addresses[0][1])
        log.info("health server listening host=%s port=%s", self.host, self.port)

    async def stop(self) -> None:
        """Close the listener and any open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        stalls = [stall for tracker in self._trackers for stall in tracker.stalled()]
        bound = min((tracker.bound for tracker in self._trackers), default=None)
        if stalls:
            body: dict[str, object] = {
                "status": "stalled",
                "stall_bound_seconds": bound,
                "stalled": [stall.as_json() for stall in stalls],
            }
            return web.json_response(body, status=503)
        waiting = [
            {"group": tracker.group, "topic": topic, "partition": partition, "waiting_records": n}
            for tracker in self._trackers
            for (topic, partition), (n, _) in sorted(tracker.ages().items())
        ]
        body = {"status": "ok", "stall_bound_seconds": bound, "waiting": waiting}
        return web.json_response(body)

    async def _readyz(self, request: web.Request) -> web.Response:
        names = list(self._checks)
        answers = await asyncio.gather(*(self._checks[name]() for name in names))
        checks = {
            name: {"ok": ok, "detail": detail}
            for name, (ok, detail) in zip(names, answers, strict=True)
        }
        failing = [name for name, (ok, _) in zip(names, answers, strict=True) if not ok]
        body = {"status": "not ready" if failing else "ready", "failing": failing, "checks": checks}
        return web.json_response(body, status=503 if failing else 200)


class HealthService(Service):
    """Runs a ``HealthServer`` as a mode service (beside a faust app, in its worker)."""

    def __init__(self, server: HealthServer, **kwargs: Any) -> None:
        self.server = server
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.server.start()

    async def on_stop(self) -> None:
        await self.server.stop()


def agent_health(
    app: faust.App, settings: Settings, stalls: StallTracker, *, postgres: bool
) -> HealthService:
    """Return the health service of one agent process (its faust worker starts it).

    ``postgres``: the group keeps state in Postgres, so it is not ready while Postgres is not.
    """
    checks = {"group": faust_group_check(app)}
    if postgres:
        checks["postgres"] = postgres_check(settings.database_url.get_secret_value())
    checks["kafka"] = kafka_check(kafka_from(settings, client_id=f"{app.conf.id}-health"))
    server = HealthServer(
        settings.health_host, settings.metrics_port, trackers=[stalls], checks=checks
    )
    return HealthService(server)


def sink_health(
    sink: PostgresSink, settings: Settings, *, group_id: str, port: int, stalls: StallTracker
) -> HealthServer:
    """Return the health server of one sink process (start it on the sink's event loop)."""
    checks = {
        "group": sink_group_check(sink, group_id),
        "postgres": postgres_check(settings.database_url.get_secret_value()),
        "kafka": kafka_check(kafka_from(settings, client_id=f"{group_id}-health")),
    }
    return HealthServer(settings.health_host, port, trackers=[stalls], checks=checks)


def scheduler_health(settings: Settings) -> HealthServer:
    """Return the health server of a scheduler process: no partitions, so always live."""
    checks = {
        "postgres": postgres_check(settings.database_url.get_secret_value()),
        "kafka": kafka_check(kafka_from(settings, client_id="inboxflow-scheduler-health")),
    }
    return HealthServer(settings.health_host, settings.metrics_port, trackers=[], checks=checks)
