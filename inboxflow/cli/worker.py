"""``inboxflow worker`` and ``inboxflow sync``: run consumer groups, request syncs."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import click

from inboxflow.settings import Settings
from inboxflow.supervisor import run_agent, start_all
from inboxflow.wiring import AGENTS, request_syncs


@click.command()
@click.option(
    "--agent",
    type=click.Choice(AGENTS),
    help="Run this one consumer group here (scale with replicas); default: every group and sink "
    "as child processes.",
)
@click.pass_obj
def worker(settings: Settings, agent: str | None) -> None:
    """Run the pipeline's consumer groups against the configured Kafka, Postgres and Gmail."""
    if agent is not None:
        run_agent(agent, settings)
        return
    group = start_all(dict(os.environ))
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop:
            exited = group.exited()
            if exited:
                raise click.ClickException(f"worker processes exited: {exited}")
            time.sleep(0.5)
    finally:
        group.stop()


@click.command()
@click.argument("users", nargs=-1, required=True)
@click.option("--full", is_flag=True, help="List the whole mailbox instead of the history.")
@click.pass_obj
def sync(settings: Settings, users: tuple[str, ...], full: bool) -> None:
    """Request a sync of each USER's mailbox (their Gmail address, or `me`)."""
    sync_ids = asyncio.run(request_syncs(settings, list(users), full=full))
    for user, sync_id in zip(users, sync_ids, strict=True):
        click.echo(f"sync requested user={user} sync_id={sync_id} full={full}")
