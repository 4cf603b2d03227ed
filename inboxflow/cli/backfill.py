"""``inboxflow backfill``: full resyncs on the backfill lane, at a capped share of the quota."""

from __future__ import annotations

import asyncio
import json
import time

import click
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from db.accounts import Account, AccountState, find_accounts, list_accounts
from inboxflow.backfill import (
    BackfillEstimate,
    backfill_progress,
    estimate_backfill,
    format_duration,
    total_estimate,
)
from inboxflow.cli.worker import require_active
from inboxflow.settings import Settings
from inboxflow.wiring import gmail_client_from, request_backfills
from schemas.errors import InboxflowError, safe_error_text
from streams.stages.gmail.costs import CostTable

POLL_SECONDS = 1.0


@click.command()
@click.argument("users", nargs=-1)
@click.option("--all", "all_users", is_flag=True, help="Backfill every active account.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Ask Gmail how many messages each mailbox holds and print what the backfill would "
    "cost in quota units and time; request nothing.",
)
@click.option(
    "--reemit",
    is_flag=True,
    help="Fetch messages discovered before too (for a downstream that lost data).",
)
@click.option(
    "--no-progress", is_flag=True, help="Request the backfills and return at once (no bar)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def backfill(
    settings: Settings,
    users: tuple[str, ...],
    all_users: bool,
    dry_run: bool,
    reemit: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Resync each USER's whole mailbox (or --all) without slowing live mail down.

    The listing and fetches go through the backfill lane: at most
    INBOXFLOW_BACKFILL_QUOTA_SHARE of each user's Gmail quota and
    INBOXFLOW_BACKFILL_MESSAGES_PER_SECOND messages a second per sync worker, so push-triggered
    syncs and new mail keep theirs. A backfill survives crashes and restarts (it goes on from
    its last page and its last fetched message); Ctrl-C here only stops watching it.
    """
    if bool(users) == all_users:
        raise click.UsageError("name USER... or give --all, not both")
    accounts = asyncio.run(_active_accounts(settings, users, all_users))
    addresses = [account.user_id for account in accounts]
    if not addresses:
        raise click.ClickException("no active account to backfill")
    if dry_run:
        _dry_run(settings, addresses, as_json)
        return
    sync_ids = asyncio.run(request_backfills(settings, addresses, reemit=reemit))
    requested = [
        {"user_id": user, "sync_id": sync_id}
        for user, sync_id in zip(addresses, sync_ids, strict=True)
    ]
    if not as_json:
        for row in requested:
            click.echo(f"backfill requested user={row['user_id']} sync_id={row['sync_id']}")
    if no_progress:
        if as_json:
            click.echo(json.dumps({"backfills": requested}, indent=2))
        return
    _follow(settings, requested, as_json)


async def _active_accounts(
    settings: Settings, users: tuple[str, ...], all_users: bool
) -> list[Account]:
    conninfo = settings.database_url.get_secret_value()
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        if all_users:
            return [a for a in await list_accounts(conn) if a.state is AccountState.ACTIVE]
        found = await find_accounts(conn, users)
    return require_active(found, users)


def _dry_run(settings: Settings, users: list[str], as_json: bool) -> None:
    try:
        totals = asyncio.run(_messages_totals(settings, users))
    except InboxflowError as exc:
        raise click.ClickException(f"Gmail: {safe_error_text(exc)}") from exc
    costs = CostTable(settings.gmail_quota_table)
    share = settings.backfill_quota_share
    estimates = [
        estimate_backfill(
            user,
            totals[user],
            costs=costs,
            user_units_per_minute=settings.gmail_user_units_per_minute,
            share=share,
        )
        for user in users
    ]
    total = total_estimate(estimates, messages_per_second=settings.backfill_messages_per_second)
    if as_json:
        document = {
            "quota_share": share,
            "user_units_per_minute": settings.gmail_user_units_per_minute,
            "messages_per_second": settings.backfill_messages_per_second,
            "users": [e.to_dict() for e in estimates],
            "total": total.to_dict(),
        }
        click.echo(json.dumps(document, indent=2))
        return
    rate = settings.gmail_user_units_per_minute * share
    click.echo(
        f"backfill dry run: {share:.0%} of {settings.gmail_user_units_per_minute} units/min per "
        f"user ({rate:.0f} units/min), at most {settings.backfill_messages_per_second:g} "
        "messages/s per sync worker"
    )
    for e in estimates:
        click.echo(_estimate_line(e))
    click.echo(
        f"total: {total.messages} messages, {total.units} units, "
        f"{format_duration(total.seconds)} (quota {format_duration(total.quota_seconds)}, "
        f"message cap {format_duration(total.pace_seconds)} with one sync worker)"
    )


def _estimate_line(e: BackfillEstimate) -> str:
    return (
        f"  {e.user_id}: {e.messages} messages, {e.units} units "
        f"({e.list_calls} messages.list, {e.get_calls} messages.get), "
        f"{format_duration(e.seconds)}"
    )


async def _messages_totals(settings: Settings, users: list[str]) -> dict[str, int]:
    gmail = gmail_client_from(settings)
    try:
        profiles = await asyncio.gather(*(gmail.get_profile(user) for user in users))
    finally:
        gmail.close()
    return {user: p.messages_total for user, p in zip(users, profiles, strict=True)}


def _follow(settings: Settings, requested: list[dict[str, str]], as_json: bool) -> None:
    """Show a bar until every backfill is done; Ctrl-C stops watching, not the backfill.

    With ``as_json`` the bar goes to stderr and the summary to stdout.
    """
    sync_ids = [row["sync_id"] for row in requested]
    database_url = settings.database_url.get_secret_value()
    console = Console(stderr=as_json)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("listing", total=None, detail="")
            while True:
                progress = backfill_progress(database_url, sync_ids)
                listing = progress.listings_done < progress.backfills
                bar.update(
                    task,
                    description="listing + fetching" if listing else "fetching",
                    completed=progress.finished,
                    total=None if listing else progress.discovered,
                    detail=f"discovered {progress.discovered}, failed {progress.failed}",
                )
                if progress.done:
                    break
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        console.print("stopped watching; the backfill goes on (`inboxflow status` shows it)")
        return
    summary = {
        "backfills": requested,
        "discovered": progress.discovered,
        "normalized": progress.normalized,
        "gone": progress.gone,
        "failed": progress.failed,
        "seconds": round(time.monotonic() - started, 1),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(
            f"backfill done: {progress.normalized} messages normalized, {progress.gone} gone "
            f"from Gmail, {progress.failed} failed, in {summary['seconds']}s"
        )
