"""Build and run the staleness scheduler from the settings (``inboxflow scheduler``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

from db import accounts
from inboxflow.health import scheduler_health
from inboxflow.settings import Settings
from inboxflow.wiring import catalogue_from, gmail_client_from, kafka_from, serde_from
from streams.runtime.publisher import KafkaPublisher
from streams.sources.scheduler import RenewWatch, SchedulerConfig, SyncScheduler
from streams.stages.gmail.client import GmailClient
from streams.stages.gmail.watch import watch


def scheduler_from(
    settings: Settings, gmail: GmailClient | None = None
) -> tuple[SyncScheduler, KafkaPublisher]:
    """Return the scheduler the settings describe and the publisher it sends through.

    With ``gmail_pubsub_topic`` set, the scheduler also keeps every active account's Gmail
    watch alive through ``gmail``.
    """
    publisher = KafkaPublisher(kafka_from(settings, client_id="inboxflow-scheduler"))
    config = SchedulerConfig(
        conninfo=settings.database_url.get_secret_value(),
        sync_requested_topic=catalogue_from(settings).sync_requested.name,
        max_staleness=settings.sync_max_staleness,
        interval=settings.scheduler_interval,
    )
    topic = settings.gmail_pubsub_topic
    renew: RenewWatch | None = None
    if topic is not None and gmail is not None:
        client = gmail

        async def renew_watch(user: str) -> datetime:
            return (await watch(client, user, topic)).expiration

        renew = renew_watch
    scheduler = SyncScheduler(
        config, publisher=publisher, serde=serde_from(settings), renew_watch=renew
    )
    return scheduler, publisher


async def run_scheduler(settings: Settings) -> None:
    """Run the scheduler until SIGTERM or SIGINT (with its /metrics, /healthz and /readyz)."""
    gmail = gmail_client_from(settings) if settings.gmail_pubsub_topic else None
    scheduler, publisher = scheduler_from(settings, gmail)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    health = scheduler_health(settings) if settings.metrics_port else None
    if health is not None:
        await health.start()
    try:
        await scheduler.run(stop)
    finally:
        if health is not None:
            await health.stop()
        await publisher.stop()
        if gmail is not None:
            gmail.close()


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
