"""``inboxflow worker``, ``scheduler`` and ``sync``: run consumer groups, ask for syncs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING

import click

from inboxflow.settings import Settings
from inboxflow.supervisor import check_kafka, run_agent, start_all
from inboxflow.wiring import AGENTS, request_syncs
from schemas.errors import InboxflowError

# Postgres is imported by the commands that read accounts: an agent process never does.
if TYPE_CHECKING:
    from db.accounts import Account


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
    try:
        # Before faust or any child starts, so refused credentials are one clear line.
        check_kafka(settings)
    except InboxflowError as exc:  # refused credentials, bad TLS files: one line, exit 1
        raise click.ClickException(str(exc)) from exc
    if agent is not None:
        run_agent(agent, settings)
        return
    # Forked from this process, which runs no thread: the children share what it imports.
    group = start_all(dict(os.environ), fork=True)
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
@click.pass_obj
def scheduler(settings: Settings) -> None:
    """Request syncs of accounts not synced within INBOXFLOW_SYNC_MAX_STALENESS.

    Run one per replica: they elect one (a Postgres advisory lock), and another takes over when
    it dies. `inboxflow worker` starts one beside the agents.
    """
    # Here, not at the top: the scheduler renews Gmail watches, and an agent process (this
    # module starts them too) should not hold Google's client library for nothing.
    from inboxflow.scheduling import run_scheduler

    try:
        check_kafka(settings)  # refused credentials: one clear line, not a traceback
    except InboxflowError as exc:
        raise click.ClickException(str(exc)) from exc
    asyncio.run(run_scheduler(settings))


@click.command()
@click.argument("users", nargs=-1, required=True)
@click.option("--full", is_flag=True, help="List the whole mailbox instead of the history.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="List only messages with this label (repeatable): backfill a label enabled later.",
)
@click.option(
    "--reemit",
    is_flag=True,
    help="With --full: emit ids emitted before too, for a downstream that lost data.",
)
@click.pass_obj
def sync(
    settings: Settings, users: tuple[str, ...], full: bool, labels: tuple[str, ...], reemit: bool
) -> None:
    """Request a sync of each USER's mailbox now (a registered, active account)."""
    if reemit and not full:
        raise click.UsageError("--reemit needs --full: it re-emits what a full listing finds")
    addresses = [a.user_id for a in require_active(asyncio.run(_accounts(settings, users)), users)]
    sync_ids = asyncio.run(
        request_syncs(settings, addresses, full=full, label_ids=labels, reemit=reemit)
    )
    for user, sync_id in zip(addresses, sync_ids, strict=True):
        click.echo(f"sync requested user={user} sync_id={sync_id} full={full or bool(labels)}")


def require_active(accounts: list[Account], users: tuple[str, ...]) -> list[Account]:
    """Return the accounts of ``users`` (in their order, once each), all registered and active.

    Raises:
        click.ClickException: a user is not registered or not active, with the command to fix it.
    """
    from db.accounts import AccountState

    found = {a.user_id: a for a in accounts}
    for user in users:
        account = found.get(user.lower())
        if account is None:
            raise click.ClickException(
                f"{user} is not a registered account; add it with `inboxflow accounts add {user}`"
            )
        if account.state is not AccountState.ACTIVE:
            raise click.ClickException(
                f"{user} is {account.state.value}; `inboxflow accounts resume {user}` first"
            )
    return [found[user.lower()] for user in dict.fromkeys(users)]


async def _accounts(settings: Settings, users: tuple[str, ...]) -> list[Account]:
    import psycopg

    from db.accounts import find_accounts

    conninfo = settings.database_url.get_secret_value()
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        return await find_accounts(conn, users)
