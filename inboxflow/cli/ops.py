"""``inboxflow dlq list|show|redrive|purge``, ``inboxflow replay`` and ``inboxflow lag``.

Thin: reads the settings the root command put in ``ctx.obj`` (through ``OperatorSettings``, so
``topics`` never imports ``streams``), builds the catalogue, calls ``ops.dlq``, ``ops.replay``
and ``ops.lag``, prints. Everything that changes Kafka is a dry run unless ``--execute``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from inboxflow.settings import Settings
from inboxflow.wiring import catalogue_from, kafka_from
from ops import dlq as dlq_lib
from ops import lag as lag_lib
from ops import replay as replay_lib
from schemas.errors import InboxflowError, RetryClass
from topics.catalogue import Catalogue, ConsumerGroup
from topics.kafka import KafkaClients

T = TypeVar("T")


def _settings() -> Settings:
    settings: Settings = click.get_current_context().find_root().obj
    return settings


def _catalogue() -> Catalogue:
    return catalogue_from(_settings())


def _kafka() -> KafkaClients:
    """The cluster and its security, as every client of the project gets them."""
    try:
        return kafka_from(_settings())
    except InboxflowError as exc:  # contradictory INBOXFLOW_KAFKA_* settings
        raise click.ClickException(str(exc)) from exc


def _group(name: str) -> ConsumerGroup:
    try:
        return _catalogue().group(name)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="GROUP") from exc


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except InboxflowError as exc:
        raise click.ClickException(str(exc)) from exc


def _when(millis: int | None) -> str:
    if millis is None:
        return "-"
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_execute_option = click.option(
    "--execute", is_flag=True, help="Make the change; without it, only print what would happen."
)
_group_argument = click.argument("group", metavar="GROUP")


@click.group()
def dlq() -> None:
    """Inspect, redrive and purge dead-letter topics (GROUP: agent name or group id)."""


@dlq.command("list")
@_json_option
def list_command(as_json: bool) -> None:
    """Print every dead-letter topic: pending records per error class, oldest and newest."""
    summaries = _run(dlq_lib.list_dlqs(_kafka(), _catalogue()))
    if as_json:
        _echo_json([summary.to_dict() for summary in summaries])
        return
    click.echo(f"{'GROUP':<28} {'PENDING':>8} {'IN TOPIC':>8}  OLDEST / NEWEST PENDING   CLASSES")
    for s in summaries:
        if not s.exists:
            click.echo(f"{s.group_id:<28} {'-':>8} {'-':>8}  topic {s.topic} missing")
            continue
        classes = ", ".join(f"{k}={v}" for k, v in sorted(s.by_error_class.items())) or "-"
        click.echo(
            f"{s.group_id:<28} {s.pending:>8} {s.records:>8}  "
            f"{_when(s.oldest_ms)} / {_when(s.newest_ms)}   {classes}"
        )


@dlq.command()
@_group_argument
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Most records."
)
@click.option("--partition", type=click.IntRange(min=0), help="Only this partition.")
@click.option("--offset", type=click.IntRange(min=0), help="Start here (needs --partition).")
@_json_option
def show(group: str, limit: int, partition: int | None, offset: int | None, as_json: bool) -> None:
    """Print dead letters of GROUP with their decoded context, oldest first."""
    if offset is not None and partition is None:
        raise click.UsageError("--offset needs --partition")
    topic = _group(group).dlq.name
    letters = _run(
        dlq_lib.read_dlq(
            _kafka(),
            topic,
            limit=limit,
            partition=partition,
            offset=offset,
        )
    )
    if as_json:
        _echo_json([letter.to_dict() for letter in letters])
        return
    for letter in letters:
        d = letter.to_dict()
        click.echo(
            f"{topic}[{d['partition']}]@{d['offset']} {_when(d['timestamp_ms'])} key={d['key']} "
            f"value={d['value_size']}B"
        )
        click.echo(
            f"    from {d['original_topic']}[{d['original_partition']}]@{d['original_offset']} "
            f"attempts={d['attempts']} class={d['error_class']} handler={d['handler']}"
        )
        click.echo(f"    {d['exception_message']}")
    click.echo(f"{len(letters)} record(s)")


@dlq.command("redrive")
@_group_argument
@_execute_option
@click.option(
    "--rate",
    default=50.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Most records sent per second.",
)
@click.option(
    "--error-class",
    type=click.Choice([c.value for c in RetryClass]),
    help="Only records whose last failure had this class.",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (a canary).")
@click.option("--replay-id", help="x-replay-id of the copies [default: redrive-<random>].")
@_json_option
def redrive_command(
    group: str,
    execute: bool,
    rate: float,
    error_class: str | None,
    limit: int | None,
    replay_id: str | None,
    as_json: bool,
) -> None:
    """Send GROUP's dead letters to its first retry tier, due now (dry run unless --execute)."""
    report = _run(
        dlq_lib.redrive(
            _kafka(),
            _group(group),
            dry_run=not execute,
            rate_per_second=rate,
            error_class=error_class,
            limit=limit,
            replay_id=replay_id,
        )
    )
    if as_json:
        _echo_json(report.to_dict())
        return
    verb = "sent" if execute else "would send"
    where = "first retry tier" if report.target_is_retry_tier else "source topic (no retry tiers)"
    click.echo(
        f"{verb} {report.moved} record(s) {report.dlq_topic} -> {report.target_topic} ({where})"
    )
    for name, count in sorted(report.by_error_class.items()):
        click.echo(f"    {name}: {count}")
    click.echo(
        f"skipped: {report.already_redriven} already redriven or purged, "
        f"{report.other_class} of other classes; replay id {report.replay_id}"
    )
    if report.stopped:
        click.echo(f"stopped early: {report.stopped}")
    if not execute:
        click.echo("dry run: nothing sent; add --execute")


@dlq.command("purge")
@_group_argument
@_execute_option
@click.option("--delete", is_flag=True, help="Also delete the records (irreversible).")
@_json_option
def purge_command(group: str, execute: bool, delete: bool, as_json: bool) -> None:
    """Mark every record now in GROUP's DLQ handled, so no redrive sends it."""
    report = _run(dlq_lib.purge(_kafka(), _group(group), dry_run=not execute, delete=delete))
    if as_json:
        _echo_json(report.to_dict())
        return
    verb = "purged" if execute else "would purge"
    click.echo(f"{verb} {report.total} pending record(s) of {report.dlq_topic}")
    if report.deleted:
        click.echo("records deleted from Kafka")
    elif execute:
        click.echo("records kept in Kafka until retention (`dlq show` still reads them)")
    else:
        click.echo("dry run: nothing changed; add --execute")


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"not ISO 8601: {text}", param_hint="--from") from exc
    # No zone means UTC, as in kafka-consumer-groups --to-datetime.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@click.command("replay")
@_group_argument
@click.option("--from", "from_text", metavar="ISO8601", help="Reprocess from this time (UTC).")
@click.option("--earliest", is_flag=True, help="Reprocess everything still retained.")
@_execute_option
@_json_option
def replay_command(
    group: str, from_text: str | None, earliest: bool, execute: bool, as_json: bool
) -> None:
    """Rewind GROUP's offsets on its source topics; it reprocesses when restarted."""
    if (from_text is None) == (not earliest):
        raise click.UsageError("give exactly one of --from ISO8601 or --earliest")
    consumer_group = _group(group)
    plan = _run(
        replay_lib.replay(
            _kafka(),
            group_id=consumer_group.group_id,
            topics=[source.name for source in consumer_group.sources],
            from_timestamp=_parse_time(from_text) if from_text else None,
            to_earliest=earliest,
            dry_run=not execute,
        )
    )
    if as_json:
        _echo_json(plan.to_dict())
        return
    for move in plan.moves:
        current = "(never committed)" if move.current is None else move.current
        click.echo(f"{move.topic}[{move.partition}] {current} -> {move.target}")
    verb = "rewound" if execute else "would rewind"
    click.echo(
        f"{verb} {plan.group_id} ({plan.group_state}): "
        f"{plan.records_to_reprocess} record(s) to reprocess"
    )
    if not execute:
        click.echo("dry run: nothing changed; add --execute")


@click.command()
@_json_option
def lag(as_json: bool) -> None:
    """Print each consumer group's lag on its sources and its retry relay's lag on its tiers."""
    rows = _run(_all_lags(_kafka(), _catalogue()))
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['group_id']:<36} {row['lag']:>10}  {', '.join(row['topics'])}")


async def _all_lags(kafka: KafkaClients, catalogue: Catalogue) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for group in catalogue.groups:
        pairs = [(group.group_id, [s.name for s in group.sources])]
        if group.retry_topics:
            pairs.append((group.retry_group_id, [t.name for t in group.retry_topics]))
        for group_id, topics in pairs:
            lags = await lag_lib.group_lag(kafka, group_id, topics)
            rows.append(
                {
                    "group_id": group_id,
                    "topics": topics,
                    "lag": lag_lib.total_lag(lags),
                    "partitions": [
                        {"topic": tp.topic, "partition": tp.partition, **lag.to_dict()}
                        for tp, lag in sorted(lags.items())
                    ],
                }
            )
    return rows
