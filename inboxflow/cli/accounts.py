"""``inboxflow accounts``: register, list, pause, resume and remove the mailboxes served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import psycopg

from db import accounts as store
from db.accounts import Account, AccountNotFoundError, AccountState
from inboxflow.settings import Settings
from inboxflow.wiring import gmail_client_from
from schemas.errors import InboxflowError
from streams.stages.gmail.watch import stop_watch

T = TypeVar("T")

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group()
def accounts() -> None:
    """The mailboxes inboxflow serves: only active accounts are synced."""


@accounts.command()
@click.argument("users", nargs=-1, required=True)
@click.option(
    "--skip-label",
    "skip_labels",
    multiple=True,
    help="Do not emit messages with this label (repeatable; default: SPAM and TRASH).",
)
@_JSON
@click.pass_obj
def add(
    settings: Settings, users: tuple[str, ...], skip_labels: tuple[str, ...], as_json: bool
) -> None:
    """Register each USER (a Gmail address) as an active account; adding twice changes nothing."""
    labels = skip_labels or store.DEFAULT_LABEL_FILTER

    async def add_all(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Account, bool]]:
        return [await store.add_account(conn, user, label_filter=labels) for user in users]

    try:
        added = _run(settings, add_all)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="USERS") from exc
    if as_json:
        click.echo(json.dumps([account.to_json() | {"new": new} for account, new in added]))
        return
    for account, new in added:
        click.echo(f"{'added' if new else 'already registered'} {account.user_id}")


@accounts.command(name="list")
@_JSON
@click.pass_obj
def list_command(settings: Settings, as_json: bool) -> None:
    """Every account with its state and where its sync stands."""
    found = _run(settings, store.list_accounts)
    if as_json:
        click.echo(json.dumps([account.to_json() for account in found]))
        return
    if not found:
        click.echo("No accounts. Add one with `inboxflow accounts add USER`.")
        return
    click.echo(f"{'ACCOUNT':<36} {'STATE':<8} {'LAST SYNC':<26} {'OUTCOME':<8} HISTORY")
    for account in found:
        synced = (
            account.last_synced_at.isoformat(timespec="seconds") if account.last_synced_at else "-"
        )
        click.echo(
            f"{account.user_id:<36} {account.state.value:<8} {synced:<26} "
            f"{(account.last_sync_outcome or '-'):<8} {account.history_id or '-'}"
        )


def _state_command(name: str, state: AccountState, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument("users", nargs=-1, required=True)
    @_JSON
    @click.pass_obj
    def command(settings: Settings, users: tuple[str, ...], as_json: bool) -> None:
        async def move(conn: psycopg.AsyncConnection[Any]) -> list[Account]:
            return [await store.set_state(conn, user, state) for user in users]

        moved = _run(settings, move)
        if state is not AccountState.ACTIVE:
            _stop_watches(settings, [account.user_id for account in moved])
        if as_json:
            click.echo(json.dumps([account.to_json() for account in moved]))
            return
        for account in moved:
            click.echo(f"{account.user_id} is {account.state.value}")

    return command


accounts.add_command(
    _state_command("pause", AccountState.PAUSED, "Stop syncing each USER until it is resumed.")
)
accounts.add_command(
    _state_command("resume", AccountState.ACTIVE, "Sync each USER again (from where it stopped).")
)


@accounts.command()
@click.argument("users", nargs=-1, required=True)
@click.option("--purge", is_flag=True, help="Also delete the account's rows in every table.")
@_JSON
@click.pass_obj
def remove(settings: Settings, users: tuple[str, ...], purge: bool, as_json: bool) -> None:
    """Stop serving each USER; with --purge, delete all its data in Postgres too."""

    async def remove_all(conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, int]]:
        return {user: await store.remove_account(conn, user, purge=purge) for user in users}

    removed = _run(settings, remove_all)
    _stop_watches(settings, list(removed))
    if as_json:
        click.echo(json.dumps(removed))
        return
    for user, deleted in removed.items():
        rows = ", ".join(f"{table} {count}" for table, count in deleted.items() if count)
        click.echo(f"removed {user}" + (f" (rows deleted: {rows})" if purge else ""))


def _stop_watches(settings: Settings, users: list[str]) -> None:
    """Tell Gmail to stop pushing changes of ``users`` (when push is configured); best effort.

    A watch left behind only costs notifications the receiver drops (the account is not active).
    """
    if settings.gmail_pubsub_topic is None or not users:
        return

    async def stop_all() -> None:
        client = gmail_client_from(settings)
        try:
            for user in users:
                try:
                    await stop_watch(client, user)
                except InboxflowError as exc:
                    click.echo(f"warning: Gmail watch of {user} not stopped: {exc}", err=True)
        finally:
            client.close()

    asyncio.run(stop_all())


def _run(settings: Settings, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction; an unknown account is a usage error, not a traceback."""

    async def run() -> T:
        conninfo = settings.database_url.get_secret_value()
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            return await work(conn)

    try:
        return asyncio.run(run())
    except AccountNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    except psycopg.OperationalError as exc:
        raise click.ClickException(f"cannot reach Postgres: {exc}") from exc
