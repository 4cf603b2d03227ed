"""``inboxflow status``: the whole deployment on one screen (``--json`` for tools).

Thin: builds the snapshot with ``inboxflow.status`` and renders it with rich tables. It reads
Kafka, Postgres and the workers' metrics and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from inboxflow.settings import Settings
from inboxflow.status import collect_status, default_metrics_urls
from ops.status import GroupStatus, Snapshot
from schemas.errors import InboxflowError

JOB_STATUSES = ("queued", "processing", "retrying", "done", "error", "dead")


# Shared with ``inboxflow console``: both scrape the same workers.
metrics_option = click.option(
    "--metrics",
    "metrics_urls",
    multiple=True,
    metavar="URL",
    help="A worker's Prometheus endpoint (repeatable) [default: the ports `inboxflow worker` "
    "serves from INBOXFLOW_METRICS_PORT].",
)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between the two samples rates and trends come from (0: one sample, no rates).",
)
@metrics_option
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also list partitions without lag and empty retry tiers and dead-letter topics.",
)
@click.pass_obj
def status(
    settings: Settings,
    as_json: bool,
    interval: float,
    metrics_urls: tuple[str, ...],
    everything: bool,
) -> None:
    """Show lag, rates, errors, retry tiers, DLQs, breakers, accounts and jobs; change nothing.

    Exits 1 when Kafka or Postgres could not be read (what could be read is still shown).
    """
    urls = list(metrics_urls) or default_metrics_urls(settings)
    try:
        snapshot = asyncio.run(collect_status(settings, metrics_urls=urls, interval=interval))
    except InboxflowError as exc:  # contradictory INBOXFLOW_KAFKA_* settings
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(snapshot.to_dict(), indent=2))
    else:
        render(snapshot, Console(), everything=everything)
    if snapshot.problems:
        raise SystemExit(1)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if value != int(value) else str(int(value))


def _per_class(values: dict[str, float] | None) -> str:
    if values is None:
        return "-"
    shown = [f"{k}={_num(v, 2)}" for k, v in sorted(values.items()) if v]
    return ", ".join(shown) or "0"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    left = abs(value)
    if left >= 3600:
        return f"{sign}{left / 3600:.1f}h"
    if left >= 60:
        return f"{sign}{left / 60:.1f}m"
    return f"{sign}{left:.0f}s"


def _trend(group: GroupStatus) -> str:
    if group.lag_change is None:
        return "-"
    arrow = {"rising": "↑", "falling": "↓"}.get(group.trend or "", "→")
    return f"{arrow} {group.lag_change:+d}"


def _table(title: str, *columns: str, numeric: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    return table


def render(snapshot: Snapshot, console: Console, *, everything: bool = False) -> None:
    """Print the snapshot as tables (idle partitions and empty tiers only with ``everything``)."""
    interval = _num(snapshot.interval_seconds, 1) + " s" if snapshot.interval_seconds else "none"
    console.print(
        f"[bold]inboxflow status[/] {snapshot.namespace} at {snapshot.taken_at} "
        f"(rates over {interval})"
    )
    for problem in snapshot.problems:
        console.print(f"[red]cannot read {problem}[/]")
    numbers = ("lag", "trend", "in/s", "out/s", "retrying", "dlq pending/all")
    groups = _table(
        "Consumer groups",
        "group",
        "state",
        "lag",
        "trend",
        "in/s",
        "out/s",
        "errors/s",
        "retrying",
        "dlq pending/all",
        numeric=numbers,
    )
    for g in snapshot.groups:
        state = f"{g.state} ({g.members})" if g.state is not None else "-"
        groups.add_row(
            g.group_id,
            state,
            str(g.lag),
            _trend(g),
            _num(g.in_per_second),
            _num(g.out_per_second),
            _per_class(g.errors_per_second),
            str(sum(t.depth for t in g.tiers)),
            f"{g.dlq.pending}/{g.dlq.records}" if g.dlq.exists else "missing",
        )
    console.print(groups)
    _render_partitions(snapshot, console, everything)
    _render_tiers(snapshot, console, everything)
    _render_topics(snapshot, console)
    _render_workers(snapshot, console)
    _render_accounts(snapshot, console)
    _render_jobs(snapshot, console)


def _render_partitions(snapshot: Snapshot, console: Console, everything: bool) -> None:
    columns = ("group", "partition", "committed", "end", "lag", "change")
    table = _table("Lag per partition", *columns, numeric=columns[2:])
    hidden = 0
    for g in snapshot.groups:
        for p in g.partitions:
            if not (everything or p.lag or p.lag_change):
                hidden += 1
                continue
            change = "-" if p.lag_change is None else f"{p.lag_change:+d}"
            committed = "-" if p.committed is None else str(p.committed)
            table.add_row(
                g.group_id, f"{p.topic}[{p.partition}]", committed, str(p.end), str(p.lag), change
            )
    if table.row_count:
        console.print(table)
    if hidden:
        console.print(f"{hidden} partition(s) without lag not shown (--all shows them)")


def _render_tiers(snapshot: Snapshot, console: Console, everything: bool) -> None:
    columns = ("topic", "records", "oldest due", "due in")
    table = _table("Retry tiers and dead letters", *columns, numeric=("records", "due in"))
    hidden = 0
    for g in snapshot.groups:
        for t in g.tiers:
            if not (everything or t.depth or not t.exists):
                hidden += 1
                continue
            due = "-" if t.oldest_due_ms is None else _when_ms(t.oldest_due_ms)
            depth = f"{t.depth} waiting" if t.exists else "missing"
            table.add_row(t.topic, depth, due, _seconds(t.due_in_seconds))
        if not (everything or g.dlq.records or not g.dlq.exists):
            hidden += 1
            continue
        pending = f"{g.dlq.pending} pending of {g.dlq.records}" if g.dlq.exists else "missing"
        table.add_row(g.dlq.topic, pending, "", "")
    if table.row_count:
        console.print(table)
    if hidden:
        console.print(f"{hidden} empty retry tier(s) and dead-letter topic(s) not shown")


def _render_topics(snapshot: Snapshot, console: Console) -> None:
    table = _table("Event topics", "topic", "records", "per s", numeric=("records", "per s"))
    for t in snapshot.topics:
        if t.role == "event":
            table.add_row(t.name, str(t.records) if t.exists else "missing", _num(t.per_second))
    console.print(table)


def _render_workers(snapshot: Snapshot, console: Console) -> None:
    if not snapshot.workers:
        console.print("workers: no metrics URLs (--metrics URL, or INBOXFLOW_METRICS_PORT)")
        return
    table = _table("Workers and breakers", "metrics", "state", "groups / breaker")
    for w in snapshot.workers:
        table.add_row(w.url, "up" if w.up else f"down: {w.error}", ", ".join(w.groups) or "-")
    for b in snapshot.breakers:
        table.add_row(b.worker, f"breaker {b.state}", b.name)
    console.print(table)


def _render_accounts(snapshot: Snapshot, console: Console) -> None:
    if snapshot.accounts is None:
        return
    quota = snapshot.quota
    title = f"Accounts (quota: units in the last {_seconds(quota.window_seconds)})"
    columns = ("account", "state", "last sync", "staleness", "watch expires", "quota units")
    table = _table(title, *columns, numeric=("staleness", "quota units"))
    for a in snapshot.accounts:
        stale = (
            f"[red]{_seconds(a.staleness_seconds)}[/]" if a.stale else _seconds(a.staleness_seconds)
        )
        units = "?" if a.quota_units is None else _num(a.quota_units, 0)
        synced = a.last_synced_at or "never"
        if a.last_sync_outcome:
            synced += f" ({a.last_sync_outcome})"
        table.add_row(
            a.user_id,
            a.state,
            synced,
            stale,
            a.watch_expires_at or "-",
            f"{units}/{a.quota_ceiling}",
        )
    console.print(table)
    if quota.note:
        console.print(f"quota {quota.note}")


def _render_jobs(snapshot: Snapshot, console: Console) -> None:
    if snapshot.jobs is None:
        return
    statuses = _ordered(JOB_STATUSES, (s for rows in snapshot.jobs.values() for s in rows))
    table = _table("Job rows", "kind", *statuses, numeric=tuple(statuses))
    for kind, rows in snapshot.jobs.items():
        table.add_row(kind, *(str(rows.get(s, 0)) for s in statuses))
    console.print(table)


def _ordered(known: tuple[str, ...], seen: Iterable[str]) -> list[str]:
    extra = sorted(set(seen) - set(known))
    return [*known, *extra]


def _when_ms(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")
