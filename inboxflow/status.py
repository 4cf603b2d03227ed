"""Collect status snapshots of the deployment the settings describe (``status``, ``console``).

Reads Kafka through ``ops.status.KafkaSampler``, the workers' metrics through
``ops.status.scrape_workers`` and Postgres (the accounts and the job rows by kind and status),
then assembles a ``Snapshot`` with ``ops.status.assemble_snapshot``. A source that cannot be
read becomes a line in ``Snapshot.problems`` and the rest is still shown. It changes nothing:
no commits, no group joins, no writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
from aiokafka.errors import KafkaError

from db.accounts import list_accounts
from inboxflow.settings import Settings
from inboxflow.supervisor import SINKS
from inboxflow.wiring import AGENTS, catalogue_from, kafka_from
from ops.status import (
    AccountRow,
    KafkaSample,
    KafkaSampler,
    MetricsSample,
    Samples,
    Snapshot,
    StatusLimits,
    assemble_snapshot,
    scrape_workers,
)
from schemas.errors import InboxflowError, safe_error_text

log = logging.getLogger(__name__)

JOBS_BY_KIND_AND_STATUS = "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status"
POSTGRES_TIMEOUT_MS = 5000
"""Statement timeout of the status queries: a slow count must not hold a console tick."""


def default_metrics_urls(settings: Settings) -> list[str]:
    """Return the metrics URLs ``inboxflow worker`` serves with these settings (none if off).

    The supervisor gives each agent and sink process ``INBOXFLOW_METRICS_PORT`` plus its index,
    on the loopback interface.
    """
    if not settings.metrics_port:
        return []
    count = len(AGENTS) + len(SINKS)
    return [f"http://127.0.0.1:{settings.metrics_port + i}/metrics" for i in range(count)]


def limits_from(settings: Settings) -> StatusLimits:
    """Return the thresholds the snapshot compares against.

    An active account is stale when it has gone longer than ``INBOXFLOW_SYNC_MAX_STALENESS``
    plus one scheduler interval without a finished sync: the scheduler asks for a sync at that
    age, so only a sync that does not finish leaves an account stale for long.
    """
    window = settings.gmail_quota_window_seconds
    return StatusLimits(
        max_staleness=settings.sync_max_staleness,
        stale_after=settings.sync_max_staleness + settings.scheduler_interval,
        quota_ceiling=int(settings.gmail_user_units_per_minute * window / 60),
        quota_window=window,
    )


class StatusCollector:
    """Takes snapshots one after another, each compared with the one before (rates, trends).

    Use as ``async with``; ``collect()`` may be called as often as wanted (the console calls
    it every tick). Kafka clients stay open between snapshots and are rebuilt after a failure.

    Args:
        settings: the deployment.
        metrics_urls: the workers' Prometheus endpoints; absent workers are reported down.
        jobs_every: seconds a job count is reused (the count scans the jobs table); 0: always.
    """

    def __init__(
        self, settings: Settings, *, metrics_urls: Sequence[str], jobs_every: float = 0.0
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue_from(settings)
        self.metrics_urls = list(metrics_urls)
        self._jobs_every = jobs_every
        self._limits = limits_from(settings)
        self._sampler: KafkaSampler | None = None
        self._session: aiohttp.ClientSession | None = None
        self._kafka: KafkaSample | None = None
        self._metrics: MetricsSample | None = None
        self._jobs: tuple[float, dict[str, dict[str, int]]] | None = None

    async def __aenter__(self) -> StatusCollector:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close_sampler()
        if self._session is not None:
            await self._session.close()

    async def collect(self) -> Snapshot:
        """Return a snapshot now, with rates against the previous call's samples."""
        problems: list[str] = []
        previous_kafka, previous_metrics = self._kafka, self._metrics
        kafka, metrics = await asyncio.gather(self._sample_kafka(problems), self._scrape())
        accounts, jobs = await self._read_postgres(problems)
        snapshot = assemble_snapshot(
            self.catalogue,
            Samples(kafka, previous_kafka, metrics, previous_metrics),
            accounts=accounts,
            jobs=jobs,
            limits=self._limits,
            now=datetime.now(UTC),
            problems=problems,
        )
        if kafka is not None:
            self._kafka = kafka
        self._metrics = metrics
        return snapshot

    async def sample(self) -> None:
        """Take Kafka and metrics samples only: the base the next ``collect`` compares with."""
        problems: list[str] = []
        kafka, metrics = await asyncio.gather(self._sample_kafka(problems), self._scrape())
        if kafka is not None:
            self._kafka = kafka
        self._metrics = metrics

    async def _sample_kafka(self, problems: list[str]) -> KafkaSample | None:
        try:
            if self._sampler is None:
                sampler = KafkaSampler(kafka_from(self.settings), self.catalogue)
                self._sampler = await sampler.__aenter__()
            return await self._sampler.read()
        except (InboxflowError, KafkaError, OSError) as exc:
            problems.append(f"kafka: {exc}")
            log.warning("status: kafka not read: %s", exc)
            await self._close_sampler()
            return None

    async def _close_sampler(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            try:
                await sampler.__aexit__(None, None, None)
            except (InboxflowError, KafkaError, OSError) as exc:
                log.debug("status: closing kafka clients: %s", exc)

    async def _scrape(self) -> MetricsSample | None:
        if not self.metrics_urls:
            return None
        return await scrape_workers(self.metrics_urls, session=self._session)

    async def _read_postgres(
        self, problems: list[str]
    ) -> tuple[list[AccountRow] | None, dict[str, dict[str, int]] | None]:
        conninfo = self.settings.database_url.get_secret_value()
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, connect_timeout=5, options=f"-c statement_timeout={POSTGRES_TIMEOUT_MS}"
            ) as conn:
                accounts = [
                    AccountRow(
                        user_id=a.user_id,
                        state=a.state.value,
                        last_sync_requested_at=a.last_sync_requested_at,
                        last_synced_at=a.last_synced_at,
                        last_sync_outcome=a.last_sync_outcome.value
                        if a.last_sync_outcome
                        else None,
                        last_sync_error=a.last_sync_error,
                        watch_expires_at=a.watch_expires_at,
                    )
                    for a in await list_accounts(conn)
                ]
                jobs = await self._job_counts(conn)
        except psycopg.Error as exc:
            # psycopg's messages name host and user, never the password.
            problems.append(f"postgres: {safe_error_text(exc)}")
            log.warning("status: postgres not read: %s", safe_error_text(exc))
            return None, None
        return accounts, jobs

    async def _job_counts(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, int]]:
        now = time.monotonic()
        if self._jobs is not None and now - self._jobs[0] < self._jobs_every:
            return self._jobs[1]
        counts: dict[str, dict[str, int]] = {}
        cursor = await conn.execute(JOBS_BY_KIND_AND_STATUS)
        for kind, status, n in await cursor.fetchall():
            counts.setdefault(kind, {})[status] = n
        self._jobs = (now, counts)
        return counts


async def collect_status(
    settings: Settings, *, metrics_urls: Sequence[str], interval: float
) -> Snapshot:
    """Return one snapshot whose rates and trends span ``interval`` seconds (0: none)."""
    async with StatusCollector(settings, metrics_urls=metrics_urls) as collector:
        if interval > 0:
            await collector.sample()
            await asyncio.sleep(interval)
        return await collector.collect()
