"""The ``inboxflow`` command: one click group, a module per command group beside this one."""

from __future__ import annotations

import logging

import click

from db.migrate import apply_migrations
from inboxflow.cli.bench import bench
from inboxflow.cli.dev import dev
from inboxflow.cli.emulator import emulator
from inboxflow.cli.ops import OPERATOR_COMMANDS
from inboxflow.cli.run import run
from inboxflow.cli.sink import sink
from inboxflow.cli.topics import topics
from inboxflow.cli.worker import sync, worker
from inboxflow.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """inboxflow: Gmail mailboxes as clean, replayable Kafka event streams."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if verbose == 0:
        # aiokafka warns on every retry while a new topic's leader is being elected.
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
    ctx.obj = Settings()


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Apply pending migrations to DATABASE_URL (idempotent)."""
    applied = apply_migrations(settings.database_url.get_secret_value())
    click.echo(f"Applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}.")


for _command in (dev, run, worker, sync, sink, topics, emulator, bench, *OPERATOR_COMMANDS):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli()
