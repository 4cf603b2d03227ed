"""The staleness scheduler: the safety net under push notifications.

Every active account whose last sync request is older than the staleness bound gets a
``SyncRequested``, so a dropped notification or a dead watch costs minutes, not data. Exactly one
scheduler acts across replicas: each holds a Postgres connection and tries a session-level
advisory lock on every tick; only the holder schedules. If its process dies, Postgres drops the
connection and with it the lock, and another replica's next tick takes over.

Requests are produced and acknowledged by Kafka before the accounts are marked, so a crash
between the two only repeats a request (the sync agent coalesces and skips known ids).

With push configured, the lock holder also keeps every active account's Gmail watch alive:
renewed daily, and always before its 7-day expiry (Google's advice), so a watch dies only if
the scheduler is down for days, and even then the staleness schedule keeps mail flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from db import accounts
from schemas.models import SyncRequested
from schemas.serde import Serde
from streams.runtime.metrics import gmail_watch_expiry
from streams.runtime.publisher import Publisher
from streams.stages.base import event_record

log = logging.getLogger(__name__)

RenewWatch = Callable[[str], Awaitable[datetime]]
"""Start or renew one mailbox's Gmail watch; return when it expires."""
WATCH_RENEW_EVERY = timedelta(days=1)
WATCH_RENEW_BEFORE_EXPIRY = timedelta(days=2)

# One advisory lock key for the scheduler role (an arbitrary constant: "inbx" in ASCII).
SCHEDULER_LOCK = 0x696E6278


@dataclass(frozen=True)
class SchedulerConfig:
    """How often to look and what counts as stale."""

    conninfo: str
    sync_requested_topic: str
    max_staleness: float  # seconds since the last request before an account is due
    interval: float  # seconds between ticks
    batch: int = 500  # accounts requested per tick at most (the rest wait for the next)


class SyncScheduler:
    """Requests syncs of stale accounts while holding the scheduler lock."""

    def __init__(
        self,
        config: SchedulerConfig,
        *,
        publisher: Publisher,
        serde: Serde,
        renew_watch: RenewWatch | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.serde = serde
        self.renew_watch = renew_watch  # None: no push configured, no watches to keep
        self.clock = clock
        self.holds_lock = False

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a lost database connection is retried with backoff."""
        delay = 1.0
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.config.conninfo, autocommit=True
                ) as conn:
                    delay = 1.0
                    await self._tick_until(conn, stop)
            except psycopg.OperationalError as exc:
                self.holds_lock = False
                if self.renew_watch is not None:
                    gmail_watch_expiry().set(math.nan)  # another replica reports it now
                log.warning("scheduler lost Postgres, retrying in %.0fs: %s", delay, exc)
                await _wait(stop, delay)
                delay = min(delay * 2, 30.0)

    async def _tick_until(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self._take_lock(conn):
                await self.tick(conn)
                await self.renew_watches(conn)
            await _wait(stop, self.config.interval)

    async def _take_lock(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        if not self.holds_lock:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (SCHEDULER_LOCK,))
            row = await cursor.fetchone()
            self.holds_lock = bool(row and row[0])
            if self.holds_lock:
                log.info("this replica now runs the sync scheduler")
        return self.holds_lock

    async def tick(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        """Request a sync of every due account; return their addresses."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        stale_before = now - timedelta(seconds=self.config.max_staleness)
        due = await accounts.due_accounts(conn, stale_before=stale_before, limit=self.config.batch)
        if not due:
            return []
        records = [
            event_record(
                self.serde,
                self.config.sync_requested_topic,
                SyncRequested(
                    user_id=user,
                    sync_id=f"schedule-{uuid.uuid4().hex}",
                    full=False,  # the agent lists in full when the account has no checkpoint
                    requested_at=now,
                ),
            )
            for user in due
        ]
        await self.publisher.publish(records)
        await accounts.mark_sync_requested(conn, due, now)
        log.info("scheduled syncs of %d stale accounts", len(due))
        return due

    async def renew_watches(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        """Renew the watches that are missing, expiring or a day old; return those renewed.

        One mailbox's failure (a revoked grant, a refused topic) is logged and retried on a
        later tick; it does not hold up the others.
        """
        if self.renew_watch is None:
            return []
        now = datetime.fromtimestamp(self.clock(), UTC)
        due = await accounts.watches_due(
            conn,
            renewed_before=now - WATCH_RENEW_EVERY,
            expiring_before=now + WATCH_RENEW_BEFORE_EXPIRY,
            limit=self.config.batch,
        )
        renewed = []
        for user in due:
            try:
                expires = await self.renew_watch(user)
            except Exception as exc:  # noqa: BLE001 - one mailbox must not stop the rest
                log.warning("gmail watch not renewed user=%s: %s", user, exc)
                continue
            await accounts.record_watch(conn, user, expires, now)
            renewed.append(user)
        if renewed:
            log.info("renewed %d gmail watches", len(renewed))
        earliest = await accounts.earliest_watch_expiry(conn)
        left = (earliest - now).total_seconds() if earliest is not None else math.nan
        gmail_watch_expiry().set(left)
        return renewed


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
