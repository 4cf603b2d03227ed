"""``inboxflow sink jobs|contacts``: run a sink until SIGTERM.

Thin: takes the settings the root command read and names from the topic catalogue (options
override them, for tests), builds the writers with the deployment's serde (the one the agents
encode with) and runs ``sinks.base.PostgresSink``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from inboxflow.health import HealthServer, sink_health
from inboxflow.logs import bind
from inboxflow.settings import Settings
from inboxflow.supervisor import check_kafka
from inboxflow.wiring import catalogue_from, kafka_from, serde_from
from schemas.errors import InboxflowError
from schemas.serde import Serde
from sinks.base import PostgresSink, RowWriter, SinkConfig
from sinks.contacts import ContactsWriter, EmailsWriter
from sinks.job_state import JobStateWriter, WriteMethod
from sinks.mailbox_changes import DeletionsWriter, LabelsWriter
from sinks.metrics import SinkMetrics
from streams.runtime.liveness import StallTracker, export_stalls
from topics.catalogue import Catalogue, ConsumerGroup

log = logging.getLogger(__name__)


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
@click.option("--deleted-topic", default=None, help="MessageDeleted topic override.")
@click.option("--labels-topic", default=None, help="MessageLabelsChanged topic override.")
@click.pass_obj
def contacts(
    settings: Settings,
    /,
    topic: str | None,
    emails: bool | None,
    emails_topic: str | None,
    deleted_topic: str | None,
    labels_topic: str | None,
    **options: Any,
) -> None:
    """Write ContactExtracted events into contacts (and EmailNormalized into emails).

    Also applies MessageDeleted (tombstones; the message's rows and sightings go) and
    MessageLabelsChanged (newest labels per message), with or without the emails table.
    """
    catalogue = catalogue_from(settings, namespace=options.pop("namespace"))
    group = catalogue.sink_contacts
    config = _config(settings, group, options, options.pop("group_id"))
    writers = contacts_writers(
        catalogue,
        serde_from(settings),
        emails=settings.sink_emails if emails is None else emails,
        contacts_topic=topic,
        emails_topic=emails_topic,
        deleted_topic=deleted_topic,
        labels_topic=labels_topic,
    )
    _run(config, writers, "contacts", options["metrics_port"], settings)


def contacts_writers(
    catalogue: Catalogue,
    serde: Serde,
    *,
    emails: bool,
    contacts_topic: str | None = None,
    emails_topic: str | None = None,
    deleted_topic: str | None = None,
    labels_topic: str | None = None,
) -> dict[str, RowWriter[Any]]:
    """Return the contacts sink's writer per topic.

    Deletions and label changes are always applied: a deletion must reach the contacts even
    when the emails table is off.

    Arguments:
        catalogue: names the source topics.
        serde: the deployment's wire format.
        emails: also write EmailNormalized into ``emails``.
        contacts_topic, emails_topic, deleted_topic, labels_topic: topic overrides (tests);
            None keeps the catalogue's name.

    Raises:
        click.UsageError: two roles were given the same topic.
    """
    chosen: list[tuple[str, RowWriter[Any]]] = [
        (contacts_topic or catalogue.contact_extracted.name, ContactsWriter(serde=serde)),
        (deleted_topic or catalogue.message_deleted.name, DeletionsWriter(serde=serde)),
        (labels_topic or catalogue.message_labels_changed.name, LabelsWriter(serde=serde)),
    ]
    if emails:
        chosen.append((emails_topic or catalogue.email_normalized.name, EmailsWriter(serde=serde)))
    writers = dict(chosen)
    if len(writers) != len(chosen):
        topics = [topic for topic, _ in chosen]
        raise click.UsageError(f"the contacts sink needs a different topic per event: {topics}")
    return writers


def _run(
    config: SinkConfig,
    writers: dict[str, RowWriter[Any]],
    name: str,
    metrics_port: int | None,
    settings: Settings,
) -> None:
    try:
        check_kafka(settings)  # refused credentials: one clear line, not a traceback
    except InboxflowError as exc:
        raise click.ClickException(str(exc)) from exc
    port = settings.metrics_port if metrics_port is None else metrics_port
    bind(sink=name, group=config.group_id)
    topics = ", ".join(sorted(writers))
    log.info("sink started sink=%s group=%s topics=%s", name, config.group_id, topics)
    stalls = StallTracker(config.group_id, settings.stall_bound())
    export_stalls(stalls)
    postgres_sink = PostgresSink(config, writers, SinkMetrics(name), progress=stalls)
    health = (
        sink_health(postgres_sink, settings, group_id=config.group_id, port=port, stalls=stalls)
        if port
        else None
    )
    asyncio.run(_serve(postgres_sink, health))
    log.info("sink stopped sink=%s group=%s", name, config.group_id)


async def _serve(postgres_sink: PostgresSink, health: HealthServer | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if health is not None:
        await health.start()  # /metrics, /healthz, /readyz on the sink's own loop
    try:
        await postgres_sink.run(stop)
    finally:
        if health is not None:
            await health.stop()
