"""The ``inboxflow`` command: one click group, a module per command group beside this one."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import click
from pydantic import ValidationError

from inboxflow.logs import configure_logging
from inboxflow.settings import Settings
from schemas.errors import safe_error_text

# Command -> "module:attribute". A command's module is imported only when that command runs, so a
# worker process loads the worker, not the local stack, the emulators or the benchmarks.
COMMANDS: Mapping[str, str] = {
    "accounts": "inboxflow.cli.accounts:accounts",
    "backfill": "inboxflow.cli.backfill:backfill",
    "bench": "inboxflow.cli.bench:bench",
    "chaos": "inboxflow.cli.chaos:chaos",
    "console": "inboxflow.cli.console:console",
    "dev": "inboxflow.cli.dev:dev",
    "dlq": "inboxflow.cli.ops:dlq",
    "emulator": "inboxflow.cli.emulator:emulator",
    "lag": "inboxflow.cli.ops:lag",
    "push-receiver": "inboxflow.cli.push:push_receiver",
    "replay": "inboxflow.cli.ops:replay_command",
    "run": "inboxflow.cli.run:run",
    "scheduler": "inboxflow.cli.worker:scheduler",
    "sink": "inboxflow.cli.sink:sink",
    "status": "inboxflow.cli.status:status",
    "sync": "inboxflow.cli.worker:sync",
    "topics": "inboxflow.cli.topics:topics",
    "worker": "inboxflow.cli.worker:worker",
}
# Long-running commands: they log their own INFO lines (one per outcome); libraries stay quiet.
SERVICES = frozenset({"worker", "sink", "scheduler", "push-receiver"})


class _LazyGroup(click.Group):
    """A click group whose subcommands in ``COMMANDS`` are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = COMMANDS[cmd_name].partition(":")
        command: Any = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{COMMANDS[cmd_name]} is not a click command")
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """inboxflow: Gmail mailboxes as clean, replayable Kafka event streams."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    own_level = min(level, logging.INFO) if ctx.invoked_subcommand in SERVICES else level
    try:
        settings = Settings()
    except ValidationError as exc:
        # Never echo the values: a malformed variable may hold a password or a token.
        configure_logging("auto", level=level, own_level=own_level)
        raise click.ClickException(f"invalid settings: {safe_error_text(exc)}") from None
    configure_logging(settings.log_format, level=level, own_level=own_level)
    ctx.obj = settings


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Apply pending migrations to DATABASE_URL (idempotent)."""
    from db.migrate import apply_migrations  # psycopg: not for every command's process

    applied = apply_migrations(settings.database_url.get_secret_value())
    click.echo(f"Applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}.")


def main() -> None:
    """Console-script entry point."""
    cli()
