"""``inboxflow worker`` and ``inboxflow sync``: run consumer groups, request syncs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from datetime import UTC, datetime

import click

from schemas.models import SyncRequested
from schemas.serde import serde_for
from streams.agents import AGENTS, catalogue_from
from streams.runner import Publisher
from streams.settings import Settings
from streams.stage import Outgoing
from streams.supervisor import run_agent, start_all


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


async def request_syncs(settings: Settings, users: list[str], *, full: bool) -> list[str]:
    """Produce one SyncRequested per user; return the sync ids."""
    catalogue = catalogue_from(settings)
    serde = serde_for(settings.schema_registry_url)
    publisher = Publisher(settings.kafka_bootstrap_servers, client_id="inboxflow-cli")
    sync_ids = [uuid.uuid4().hex for _ in users]
    now = datetime.now(UTC)
    records = [
        Outgoing(
            catalogue.sync_requested.name,
            user.encode(),
            serde.encode(SyncRequested(user_id=user, sync_id=sync_id, full=full, requested_at=now)),
        )
        for user, sync_id in zip(users, sync_ids, strict=True)
    ]
    try:
        await publisher.publish(records)
    finally:
        await publisher.stop()
    return sync_ids


@click.command()
@click.argument("users", nargs=-1, required=True)
@click.option("--full", is_flag=True, help="List the whole mailbox instead of the history.")
@click.pass_obj
def sync(settings: Settings, users: tuple[str, ...], full: bool) -> None:
    """Request a sync of each USER's mailbox (their Gmail address, or `me`)."""
    sync_ids = asyncio.run(request_syncs(settings, list(users), full=full))
    for user, sync_id in zip(users, sync_ids, strict=True):
        click.echo(f"sync requested user={user} sync_id={sync_id} full={full}")


@click.command("pipeline")
@click.option("--messages", default=2000, show_default=True, help="Generated messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def pipeline_bench(settings: Settings, messages: int, as_json: bool) -> None:
    """The normalize agent against a naive consume-produce-commit loop, same messages."""
    from streams.bench import run_pipeline_bench

    result = asyncio.run(run_pipeline_bench(settings, messages))
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.messages} messages through normalize")
    click.echo(
        f"inboxflow agent: {result.inboxflow_messages_per_second:,.0f} msg/s "
        f"(start-up {result.inboxflow_startup_seconds:.1f}s, "
        f"peak RSS {result.inboxflow_peak_rss_mib:.0f} MiB)"
    )
    click.echo(
        f"naive peer:      {result.naive_messages_per_second:,.0f} msg/s "
        f"(peak RSS {result.naive_peak_rss_mib:.0f} MiB)"
    )
    click.echo(f"ratio: {result.ratio:.2f}x")
