"""``inboxflow push-receiver``: serve Gmail push notifications as sync requests."""

from __future__ import annotations

import asyncio
import logging

import click

from inboxflow.push import PushSettingsError, run_push_receiver
from inboxflow.settings import Settings

log = logging.getLogger(__name__)


@click.command("push-receiver")
@click.pass_obj
def push_receiver(settings: Settings) -> None:
    """Turn Pub/Sub push deliveries of Gmail notifications into sync requests.

    Serves POST /gmail/push and GET /healthz on INBOXFLOW_PUSH_HOST:INBOXFLOW_PUSH_PORT until
    SIGTERM or Ctrl-C. Point the push subscription (with authentication on) at the public URL of
    /gmail/push; INBOXFLOW_PUSH_AUDIENCE must be the subscription's audience.
    """

    def ready(url: str) -> None:
        log.info("push receiver at %s", url)

    try:
        asyncio.run(run_push_receiver(settings, on_ready=ready))
    except PushSettingsError as exc:
        raise click.ClickException(str(exc)) from exc
