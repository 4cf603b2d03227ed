"""``inboxflow run``: the main job on the local default stack.

Starts Kafka and Postgres (or uses ``KAFKA_BOOTSTRAP_SERVERS``/``DATABASE_URL`` and starts
neither), applies migrations, runs the job, prints a summary, and stops what it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

from devstack.cli import print_round_trip
from devstack.processes import StackError
from devstack.roundtrip import round_trip
from devstack.stack import Stack, start_stack
from sinks.migrate import apply_migrations
from streams.settings import Settings


@contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    """Yield a stack for this command; stop what was started, even on SIGTERM or Ctrl-C."""
    external_db = settings.database_url.get_secret_value() if _given("DATABASE_URL") else None
    external_kafka = settings.kafka_bootstrap_servers if _given("KAFKA_BOOTSTRAP_SERVERS") else None
    try:
        stack = start_stack(
            kafka_bootstrap=external_kafka,
            database_url=external_db,
            mode=settings.stack,
            cache_dir=Path(settings.state_dir).expanduser(),
            die_with_parent=True,
        )
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        apply_migrations(stack.database_url)
        yield stack
    finally:
        signal.signal(signal.SIGTERM, previous)
        stack.stop()


def _given(name: str) -> bool:
    return bool(os.environ.get(name) or os.environ.get(f"INBOXFLOW_{name}"))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def run(settings: Settings, as_json: bool) -> None:
    """Run the main job end to end on the local stack and print a summary."""
    with running_stack(settings) as stack:
        if not as_json:
            click.echo(
                f"Stack ready: kafka={stack.kafka_bootstrap} started={stack.started or 'none'}"
            )
        result = asyncio.run(round_trip(stack.kafka_bootstrap, stack.database_url))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        print_round_trip(result.as_dict())
