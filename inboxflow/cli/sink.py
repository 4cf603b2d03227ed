"""``inboxflow sink jobs|contacts``: run a sink until SIGTERM.

Thin: takes the settings the root command read and names from the topic catalogue (options
override them, for tests), builds the writers with the deployment's serde (the one the agents
encode with) and runs ``sinks.base.PostgresSink``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import click
from prometheus_client import start_http_server

from inboxflow.settings import Settings
from inboxflow.wiring import catalogue_from, kafka_from, serde_from
from sinks.base import PostgresSink, RowWriter, SinkConfig
from sinks.contacts import ContactsWriter, EmailsWriter
from sinks.job_state import JobStateWriter, WriteMethod
from sinks.metrics import SinkMetrics
from topics.catalogue import ConsumerGroup


@click.group("sink")
def sink() -> None:
    """Run the Postgres sinks (jobs, contacts); each runs until SIGTERM or Ctrl-C."""


def _common(function: Any) -> Any:
    options = [
        click.option("--namespace", default=None, help="Catalogue namespace (default: settings)."),
        click.option("--group", "group_id", default=None, help="Consumer group override."),
        click.option("--dlq", "dlq_topic", default=None, help="Dead-letter topic override."),
        click.option("--batch-records", default=5000, show_default=True, type=int),
        click.option("--batch-ms", default=200, show_default=True, type=int),
        click.option(
            "--metrics-port", default=None, type=int, help="Prometheus port (default: settings)."
        ),
        click.option(
            "--instance-id",
            default=None,
            help="Static group membership id (e.g. the pod name); unique per running process.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _config(
    settings: Settings, group: ConsumerGroup, options: dict[str, Any], group_id: str | None
) -> SinkConfig:
    return SinkConfig(
        kafka=kafka_from(settings, client_id=group_id or group.group_id),
        conninfo=settings.database_url.get_secret_value(),
        group_id=group_id or group.group_id,
        dlq_topic=options["dlq_topic"] or group.dlq.name,
        max_batch_records=options["batch_records"],
        max_batch_seconds=options["batch_ms"] / 1000,
        group_instance_id=options["instance_id"],
    )


@sink.command("jobs")
@_common
@click.option("--topic", default=None, help="Source topic override (JobStateChanged).")
@click.option(
    "--method", type=click.Choice(["copy", "executemany"]), default="copy", show_default=True
)
@click.pass_obj
def jobs(settings: Settings, /, topic: str | None, method: WriteMethod, **options: Any) -> None:
    """Write JobStateChanged events into the jobs table."""
    catalogue = catalogue_from(settings, namespace=options.pop("namespace"))
    group = catalogue.sink_jobs
    config = _config(settings, group, options, options.pop("group_id"))
    writer = JobStateWriter(method, serde=serde_from(settings))
    writers: dict[str, RowWriter[Any]] = {topic or group.sources[0].name: writer}
    _run(config, writers, "jobs", options["metrics_port"], settings)


@sink.command("contacts")
@_common
@click.option("--topic", default=None, help="Source topic override (ContactExtracted).")
@click.option("--emails/--no-emails", default=None, help="Also write EmailNormalized to emails.")
@click.option("--emails-topic", default=None, help="EmailNormalized topic override.")
@click.pass_obj
def contacts(
    settings: Settings,
    /,
    topic: str | None,
    emails: bool | None,
    emails_topic: str | None,
    **options: Any,
) -> None:
    """Write ContactExtracted events into contacts (and EmailNormalized into emails)."""
    catalogue = catalogue_from(settings, namespace=options.pop("namespace"))
    group = catalogue.sink_contacts
    config = _config(settings, group, options, options.pop("group_id"))
    serde = serde_from(settings)
    writers: dict[str, RowWriter[Any]] = {
        topic or group.sources[0].name: ContactsWriter(serde=serde)
    }
    if settings.sink_emails if emails is None else emails:
        writers[emails_topic or catalogue.email_normalized.name] = EmailsWriter(serde=serde)
    _run(config, writers, "contacts", options["metrics_port"], settings)


def _run(
    config: SinkConfig,
    writers: dict[str, RowWriter[Any]],
    name: str,
    metrics_port: int | None,
    settings: Settings,
) -> None:
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        start_http_server(port)
    click.echo(f"sink {name}: group {config.group_id}, topics {', '.join(sorted(writers))}")
    asyncio.run(_serve(PostgresSink(config, writers, SinkMetrics(name))))
    click.echo(f"sink {name}: stopped")


async def _serve(postgres_sink: PostgresSink) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await postgres_sink.run(stop)
