"""Build and run the staleness scheduler from the settings (``inboxflow scheduler``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

from db import accounts
from inboxflow.settings import Settings
from inboxflow.wiring import catalogue_from, kafka_from, serde_from
from streams.runtime.publisher import KafkaPublisher
from streams.sources.scheduler import SchedulerConfig, SyncScheduler


def scheduler_from(settings: Settings) -> tuple[SyncScheduler, KafkaPublisher]:
    """Return the scheduler the settings describe and the publisher it sends through."""
    publisher = KafkaPublisher(kafka_from(settings, client_id="inboxflow-scheduler"))
    config = SchedulerConfig(
        conninfo=settings.database_url.get_secret_value(),
        sync_requested_topic=catalogue_from(settings).sync_requested.name,
        max_staleness=settings.sync_max_staleness,
        interval=settings.scheduler_interval,
    )
    return SyncScheduler(config, publisher=publisher, serde=serde_from(settings)), publisher


async def run_scheduler(settings: Settings) -> None:
    """Run the scheduler until SIGTERM or SIGINT."""
    scheduler, publisher = scheduler_from(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await scheduler.run(stop)
    finally:
        await publisher.stop()


async def register_accounts(settings: Settings, users: Sequence[str]) -> list[str]:
    """Register ``users`` as active accounts (idempotent); return their account addresses.

    Each is marked as requested now, so the scheduler leaves it to the caller's own request
    instead of racing it with a second sync.
    """
    async with await psycopg.AsyncConnection.connect(
        settings.database_url.get_secret_value()
    ) as conn:
        added = [(await accounts.add_account(conn, user))[0].user_id for user in users]
        await accounts.mark_sync_requested(conn, added, datetime.now(UTC))
    return added
