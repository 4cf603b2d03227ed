"""``inboxflow topics apply | describe | asyncapi``: the topic catalogue from the command line.

Thin: takes the catalogue from ``inboxflow.wiring``, calls ``topics.admin`` or
``topics.asyncapi``, prints.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from inboxflow.settings import Settings
from inboxflow.wiring import catalogue_from, kafka_from
from schemas.errors import InboxflowError, RetryClass, RetryPolicy
from topics.admin import ApplyReport, ensure_topics
from topics.asyncapi import render_asyncapi
from topics.catalogue import DEFAULT_NAMESPACE, Catalogue, TopicSpec, build_catalogue


def _settings() -> Settings:
    settings: Settings = click.get_current_context().find_root().obj
    return settings


def _catalogue(namespace: str | None) -> Catalogue:
    return catalogue_from(_settings(), namespace=namespace)


_namespace_option = click.option(
    "--namespace",
    default=None,
    help="First part of every topic and group name [default: INBOXFLOW_TOPIC_NAMESPACE or "
    f"{DEFAULT_NAMESPACE}].",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def topics() -> None:
    """Create, update and describe the Kafka topics in the catalogue."""


@topics.command()
@_namespace_option
@_json_option
def apply(namespace: str | None, as_json: bool) -> None:
    """Create missing topics and converge configs and partitions (idempotent)."""
    catalogue = _catalogue(namespace)
    try:
        report = asyncio.run(ensure_topics(kafka_from(_settings()), catalogue.topics))
    except InboxflowError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)


def _print_report(report: ApplyReport) -> None:
    for name in report.created:
        click.echo(f"created    {name}")
    for change in report.updated:
        click.echo(f"updated    {change.describe()}")
    for warning in report.warnings:
        click.echo(f"warning    {warning}", err=True)
    click.echo(
        f"{len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.warnings)} warnings"
    )


@topics.command()
@_namespace_option
@_json_option
def describe(namespace: str | None, as_json: bool) -> None:
    """Print the topic map: topics, keys, schemas, retention, groups and retry ladders."""
    catalogue = _catalogue(namespace)
    if as_json:
        click.echo(json.dumps(catalogue.to_dict(), indent=2))
        return
    click.echo(f"Event topics (key: user_id as UTF-8), namespace {catalogue.namespace}:")
    for spec in catalogue.event_topics:
        click.echo(f"  {spec.name}")
        click.echo(f"      value {spec.value_schema}; {_layout(spec)}")
    click.echo("Consumer groups:")
    for group in catalogue.groups:
        click.echo(f"  {group.group_id}: {group.description}")
        click.echo(f"      reads    {', '.join(s.name for s in group.sources)}")
        if group.produces:
            click.echo(f"      writes   {', '.join(s.name for s in group.produces)}")
        ladder = " -> ".join(tier.topic for tier in group.retry_tiers) or "(none)"
        click.echo(f"      retries  {ladder} (relayed by group {group.retry_group_id})")
        click.echo(f"      dead     {group.dlq.name} ({_budgets()})")


def _budgets() -> str:
    budgets = RetryPolicy.default().max_attempts
    tries = ", ".join(
        f"{cls.value} {n}" for cls, n in budgets.items() if cls is not RetryClass.PERMANENT
    )
    return f"permanent at once; else after {tries} attempts"


def _layout(spec: TopicSpec) -> str:
    retention_ms = int(spec.configs["retention.ms"])
    retention = "forever" if retention_ms < 0 else f"{retention_ms / 86_400_000:g} days"
    text = f"{spec.partitions} partitions x{spec.replication}, {spec.configs['cleanup.policy']}"
    text += f", retention {retention}"
    if "max.message.bytes" in spec.configs:
        text += f", max {int(spec.configs['max.message.bytes']) // (1024 * 1024)} MiB"
    return text


@topics.command()
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
def asyncapi(output: Path | None) -> None:
    """Print the AsyncAPI 3.0 document of the production topic map."""
    # The committed document describes the production names, whatever the local settings say.
    text = render_asyncapi(build_catalogue())
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")
