"""The ``inboxflow`` command: assembles each package's thin CLI into one click group."""

from __future__ import annotations

import logging

import click

from devstack.cli import dev
from devstack.gmail_emulator.cli import emulator
from sinks.cli import sink, sink_bench
from streams.gmail.bench import gmail as gmail_bench
from streams.pipeline_cli import pipeline_bench, sync, worker
from streams.run import run
from streams.settings import Settings
from topics.cli import topics
from topics.dlq_cli import OPERATOR_COMMANDS


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
    from sinks.migrate import apply_migrations

    applied = apply_migrations(settings.database_url.get_secret_value())
    click.echo(f"Applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}.")


@cli.group()
def bench() -> None:
    """Benchmarks that print figures against a naive peer measured in the same run."""


cli.add_command(dev)
cli.add_command(run)
cli.add_command(worker)
bench.add_command(pipeline_bench)
cli.add_command(sync)
cli.add_command(topics)
for _command in OPERATOR_COMMANDS:  # dlq, replay, lag (topics/dlq_cli.py)
    cli.add_command(_command)
cli.add_command(emulator)
bench.add_command(gmail_bench)
cli.add_command(sink)
bench.add_command(sink_bench)


def main() -> None:
    """Console-script entry point."""
    cli()
