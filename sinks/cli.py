"""``inboxflow sink jobs|contacts`` (run a sink until SIGTERM) and ``inboxflow bench sink``.

Thin: reads ``Settings`` once, takes names from the topic catalogue (options override them, for
tests), builds the writers and runs ``sinks.base.PostgresSink``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import click
from prometheus_client import start_http_server

from sinks.base import PostgresSink, RowWriter, SinkConfig
from sinks.contacts import ContactsWriter, EmailsWriter
from sinks.job_state import JobStateWriter, WriteMethod
from sinks.metrics import SinkMetrics
from streams.settings import Settings
from topics.catalogue import ConsumerGroup, build_catalogue


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
        bootstrap_servers=settings.kafka_bootstrap_servers,
        conninfo=settings.database_url.get_secret_value(),
        group_id=group_id or group.group_id,
        dlq_topic=options["dlq_topic"] or group.dlq.name,
        max_batch_records=options["batch_records"],
        max_batch_seconds=options["batch_ms"] / 1000,
        group_instance_id=options["instance_id"],
        client_id=group_id or group.group_id,
    )


@sink.command("jobs")
@_common
@click.option("--topic", default=None, help="Source topic override (JobStateChanged).")
@click.option(
    "--method", type=click.Choice(["copy", "executemany"]), default="copy", show_default=True
)
def jobs(topic: str | None, method: WriteMethod, **options: Any) -> None:
    """Write JobStateChanged events into the jobs table."""
    settings = Settings()
    catalogue = build_catalogue(options.pop("namespace") or settings.topic_namespace)
    group = catalogue.sink_jobs
    config = _config(settings, group, options, options.pop("group_id"))
    writers: dict[str, RowWriter[Any]] = {topic or group.sources[0].name: JobStateWriter(method)}
    _run(config, writers, "jobs", options["metrics_port"], settings)


@sink.command("contacts")
@_common
@click.option("--topic", default=None, help="Source topic override (ContactExtracted).")
@click.option("--emails/--no-emails", default=None, help="Also write EmailNormalized to emails.")
@click.option("--emails-topic", default=None, help="EmailNormalized topic override.")
def contacts(
    topic: str | None, emails: bool | None, emails_topic: str | None, **options: Any
) -> None:
    """Write ContactExtracted events into contacts (and EmailNormalized into emails)."""
    settings = Settings()
    catalogue = build_catalogue(options.pop("namespace") or settings.topic_namespace)
    group = catalogue.sink_contacts
    config = _config(settings, group, options, options.pop("group_id"))
    writers: dict[str, RowWriter[Any]] = {topic or group.sources[0].name: ContactsWriter()}
    if settings.sink_emails if emails is None else emails:
        writers[emails_topic or catalogue.email_normalized.name] = EmailsWriter()
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


@click.command("sink")
@click.option("--events", default=20_000, show_default=True, help="JobStateChanged events.")
@click.option("--batch-records", default=5000, show_default=True, type=int)
@click.option(
    "--method", type=click.Choice(["copy", "executemany"]), default="copy", show_default=True
)
@click.option("--naive/--no-naive", default=True, help="Also time the naive peer (slow).")
@click.option("--json", "as_json", is_flag=True, help="Print both rates and their ratio as JSON.")
def sink_bench(
    events: int, batch_records: int, method: WriteMethod, naive: bool, as_json: bool
) -> None:
    """Rows/s of the batched job-state sink against one row per transaction, same events."""
    from sinks.bench import run_sink_bench  # imports test-data builders only when benchmarking

    settings = Settings()
    result = asyncio.run(
        run_sink_bench(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            conninfo=settings.database_url.get_secret_value(),
            events=events,
            batch_records=batch_records,
            method=method,
            naive=naive,
        )
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.events} JobStateChanged events, write method {result.method}")
    click.echo(f"batched sink: {result.batched_rows_per_second:,.0f} rows/s")
    if not result.naive:
        return
    click.echo(
        f"naive writer (one row per transaction): {result.naive_rows_per_second:,.0f} rows/s\n"
        f"ratio: {result.ratio:.1f}x"
    )
