"""Build and run the Gmail push receiver from the settings (``inboxflow push-receiver``).

Also starts Gmail watches on the configured Pub/Sub topic (``watch_mailboxes``); renewing them
on a schedule and recording their expiry is the caller's job.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

from inboxflow.settings import Settings
from inboxflow.wiring import catalogue_from, gmail_client_from, kafka_from, serde_from
from streams.runtime.publisher import KafkaPublisher
from streams.sources.push import (
    OidcPushVerifier,
    PostgresAccounts,
    PushReceiver,
    PushReceiverConfig,
    PushVerifier,
    UnverifiedPush,
)
from streams.stages.gmail.watch import WatchResult, watch

log = logging.getLogger(__name__)


class PushSettingsError(ValueError):
    """The push settings do not describe a receiver that can run."""


@dataclass
class PushParts:
    """A receiver and the clients it owns; ``close`` releases them."""

    receiver: PushReceiver
    publisher: KafkaPublisher
    accounts: PostgresAccounts
    verifier: PushVerifier

    async def close(self) -> None:
        """Stop the producer, the database pool and the certificate fetcher."""
        await self.publisher.stop()
        await self.accounts.close()
        if isinstance(self.verifier, OidcPushVerifier):
            await self.verifier.close()


def push_verifier_from(settings: Settings) -> PushVerifier:
    """Return the token check the settings ask for.

    Raises:
        PushSettingsError: verification is on but no audience is set.
    """
    if not settings.push_verify:
        log.warning("push tokens are NOT verified (INBOXFLOW_PUSH_VERIFY=false)")
        return UnverifiedPush()
    if not settings.push_audience:
        raise PushSettingsError(
            "INBOXFLOW_PUSH_AUDIENCE is not set. Operator action: set it to the audience of the "
            "Pub/Sub push subscription (its push endpoint URL unless you chose another), or set "
            "INBOXFLOW_PUSH_VERIFY=false on a receiver no one else can reach."
        )
    return OidcPushVerifier(
        audience=settings.push_audience,
        service_account=settings.push_service_account,
        certs_url=settings.push_certs_url,
    )


def push_receiver_from(settings: Settings) -> PushParts:
    """Return the receiver the settings describe, with its Kafka, Postgres and token check.

    Build it inside the running event loop (the Kafka producer binds to it on first use).
    """
    publisher = KafkaPublisher(kafka_from(settings, client_id="inboxflow-push"))
    accounts = PostgresAccounts(settings.database_url.get_secret_value())
    verifier = push_verifier_from(settings)
    receiver = PushReceiver(
        PushReceiverConfig(
            sync_requested_topic=catalogue_from(settings).sync_requested.name,
            coalesce_seconds=settings.push_coalesce_ms / 1000,
        ),
        publisher=publisher,
        serde=serde_from(settings),
        accounts=accounts,
        verifier=verifier,
    )
    return PushParts(receiver, publisher, accounts, verifier)


async def run_push_receiver(
    settings: Settings, *, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve push deliveries on ``push_host:push_port`` until SIGTERM or SIGINT.

    ``on_ready`` gets the push endpoint's URL once the port is bound.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parts = push_receiver_from(settings)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(parts.close)
        url = await stack.enter_async_context(
            parts.receiver.serving(settings.push_host, settings.push_port)
        )
        if on_ready is not None:
            on_ready(url)
        await stop.wait()


async def watch_mailboxes(
    settings: Settings, users: Sequence[str], label_ids: list[str] | None = None
) -> dict[str, WatchResult]:
    """Start or renew the Gmail watch of each user on ``gmail_pubsub_topic``.

    Returns each user's watch (history id and expiry); nothing when no topic is configured.
    """
    topic = settings.gmail_pubsub_topic
    if topic is None:
        return {}
    client = gmail_client_from(settings)
    try:
        results = {user: await watch(client, user, topic, label_ids) for user in users}
    finally:
        client.close()
    for user, result in results.items():
        log.info("gmail watch user=%s expires=%s", user, result.expiration.isoformat())
    return results
