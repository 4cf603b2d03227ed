"""The main job (``inboxflow run``), end to end, on the local default stack.

Starts Kafka and Postgres (or uses ``KAFKA_BOOTSTRAP_SERVERS``/``DATABASE_URL`` and starts
neither, leaving topics and rows in place), a Gmail emulator with generated mailboxes (or real
mail from ``--mbox``), creates the topics, starts every consumer group and sink as processes,
requests a full sync per user, shows progress per stage and prints a summary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from db.migrate import apply_migrations
from devstack.gmail_emulator.mail_files import read_messages
from devstack.gmail_emulator.server import GmailEmulator
from devstack.processes import StackError
from devstack.stack import Stack, start_stack
from inboxflow.progress import (
    TERMINAL,
    TopicCounter,
    dlq_topics,
    job_counts,
    normalized_messages,
    stage_topics,
)
from inboxflow.scheduling import register_accounts
from inboxflow.settings import Settings
from inboxflow.supervisor import ProcessGroup, start_all
from inboxflow.wiring import catalogue_from, kafka_from, request_syncs
from schemas.errors import redact_secrets
from topics.admin import ensure_topics
from topics.kafka import PLAINTEXT, KafkaClients, KafkaConfigError

MESSAGE_KINDS = ("normalize_google_email", "extract_contacts", "embed", "insight")


@contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    """Yield a stack for this command; stop what was started, even on SIGTERM or Ctrl-C."""
    given = settings.model_fields_set  # what the environment set, as opposed to defaults
    external_db = settings.database_url.get_secret_value() if "database_url" in given else None
    external_kafka = (
        settings.kafka_bootstrap_servers if "kafka_bootstrap_servers" in given else None
    )
    try:
        stack = start_stack(
            kafka_bootstrap=external_kafka,
            database_url=external_db,
            mode=settings.stack,
            cache_dir=Path(settings.state_dir).expanduser(),
            die_with_parent=True,
            kafka_security=kafka_from(settings).security if external_kafka else PLAINTEXT,
        )
    except (StackError, KafkaConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        apply_migrations(stack.database_url)
        yield stack
    finally:
        signal.signal(signal.SIGTERM, previous)
        stack.stop()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@dataclass
class RunSummary:
    """What the main job prints at the end (``--json`` prints exactly this)."""

    users: list[str]
    mailbox_messages: int
    records_per_stage: dict[str, int]
    jobs_by_status: dict[str, int]
    jobs_by_kind: dict[str, dict[str, int]]
    dlq_records: dict[str, int]
    gmail_units: int
    gmail_calls: dict[str, int]
    gmail_throttled: int
    elapsed_seconds: float
    complete: bool
    namespace: str
    kafka_bootstrap: str
    database_url: str
    logs: str
    notes: list[str] = field(default_factory=list)


def start_emulator(users: list[str], messages: int, seed: int, mbox: Path | None) -> GmailEmulator:
    """Start a Gmail emulator with generated mailboxes, or the messages of ``mbox``."""
    emulator = GmailEmulator().start_in_thread()
    for index, user in enumerate(users):
        emulator.add_user(user, messages=0 if mbox else messages, seed=seed + index)
    if mbox is not None:
        for raw in read_messages(mbox):
            emulator.add_message(users[0], raw)
    return emulator


def worker_env(
    settings: Settings, stack: Stack, emulator_url: str, namespace: str
) -> dict[str, str]:
    """Return the environment every worker process gets."""
    # The stack's Kafka security replaces the caller's: a local broker speaks PLAINTEXT.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_KAFKA_")}
    return {
        **inherited,
        **stack.client_env(),
        "INBOXFLOW_GMAIL_API_ROOT": emulator_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "INBOXFLOW_INSIGHT_INTERVAL_SECONDS": str(min(settings.insight_interval_seconds, 2.0)),
    }


class Job:
    """One run of the main job: set up, watch, summarize."""

    def __init__(self, settings: Settings, stack: Stack, namespace: str, users: list[str]) -> None:
        self.settings = settings
        self.stack = stack
        self.namespace = namespace
        self.users = users
        self.catalogue = catalogue_from(settings.model_copy(update={"topic_namespace": namespace}))
        self.kafka = KafkaClients(stack.kafka_bootstrap, security=stack.kafka_security)
        self.started = time.monotonic()

    async def create_topics(self) -> None:
        """Create every topic of the catalogue (idempotent)."""
        await ensure_topics(self.kafka, self.catalogue.topics)

    def finished(self) -> bool:
        """True when every sync and every job it led to has reached a final state.

        Each normalize job that ended ``done`` queued one job of each downstream kind, so those
        must all exist (the sink may still be catching up) and be final too.
        """
        counts = job_counts(self.stack.database_url, self.users)
        if counts.count("google_gmail_sync", TERMINAL) < len(self.users):
            return False
        if any(counts.count(kind) != counts.count(kind, TERMINAL) for kind in counts.by_kind):
            return False
        normalized = normalized_messages(self.stack.database_url, self.users)
        return all(counts.count(kind) == normalized for kind in MESSAGE_KINDS[1:])

    async def watch(
        self, workers: ProcessGroup, wait_seconds: float, console: Console | None
    ) -> bool:
        """Show progress until done, a worker dies, or ``wait_seconds``; True when done."""
        labels = stage_topics(self.catalogue)
        progress = _progress(console)
        tasks = {label: progress.add_task(label, total=None) for label in labels}
        deadline = time.monotonic() + wait_seconds
        async with TopicCounter(self.kafka) as counter:
            with progress:
                while time.monotonic() < deadline:
                    counts = await counter.records(labels.values())
                    total = counts[labels["discovered"]] or None
                    for label, topic in labels.items():
                        per_message = label not in ("contacts", "insights")
                        progress.update(
                            tasks[label],
                            completed=counts[topic],
                            total=total if per_message else None,
                        )
                    if await asyncio.to_thread(self.finished):
                        return True
                    exited = workers.exited()
                    if exited:
                        raise click.ClickException(f"worker processes exited early: {exited}")
                    await asyncio.sleep(0.5)
        return False

    async def summary(self, emulator: GmailEmulator, complete: bool, logs: Path) -> RunSummary:
        """Collect the figures the job prints."""
        async with TopicCounter(self.kafka) as counter:
            stages = await counter.records(stage_topics(self.catalogue).values())
            dlqs = await counter.records(dlq_topics(self.catalogue).values())
        labels = {topic: label for label, topic in stage_topics(self.catalogue).items()}
        dlq_labels = {topic: agent for agent, topic in dlq_topics(self.catalogue).items()}
        jobs = job_counts(self.stack.database_url, self.users)
        accounting = emulator.accounting
        return RunSummary(
            users=self.users,
            mailbox_messages=sum(len(emulator.message_ids(u)) for u in self.users),
            records_per_stage={labels[t]: n for t, n in stages.items()},
            jobs_by_status=jobs.by_status(),
            jobs_by_kind=jobs.by_kind,
            dlq_records={dlq_labels[t]: n for t, n in dlqs.items()},
            gmail_units=sum(accounting.units_by_user.values()),
            gmail_calls=dict(accounting.calls_by_method),
            gmail_throttled=sum(accounting.throttled.values()),
            elapsed_seconds=round(time.monotonic() - self.started, 1),
            complete=complete,
            namespace=self.namespace,
            kafka_bootstrap=self.stack.kafka_bootstrap,
            database_url=redact_secrets(self.stack.database_url),  # printed: no password
            logs=str(logs),
        )


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description:>11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=False,
    )


def run_job(
    settings: Settings,
    stack: Stack,
    namespace: str,
    users: list[str],
    emulator: GmailEmulator,
    logs: Path,
    timeout: float,
    console: Console | None,
) -> RunSummary:
    job = Job(settings, stack, namespace, users)
    asyncio.run(job.create_topics())
    workers = start_all(worker_env(settings, stack, emulator.url, namespace), log_dir=logs)
    try:
        security = stack.kafka_security
        env_settings = settings.model_copy(
            update={
                "kafka_bootstrap_servers": stack.kafka_bootstrap,
                "kafka_security_protocol": security.protocol,
                "kafka_sasl_mechanism": security.mechanism,
                "kafka_sasl_username": security.username,
                "kafka_sasl_password": SecretStr(security.password) if security.password else None,
                "kafka_ssl_cafile": security.cafile,
                "kafka_ssl_certfile": security.certfile,
                "kafka_ssl_keyfile": security.keyfile,
                "topic_namespace": namespace,
                "database_url": SecretStr(stack.database_url),
            }
        )
        addresses = asyncio.run(register_accounts(env_settings, users))
        asyncio.run(request_syncs(env_settings, addresses, full=True))
        complete = asyncio.run(job.watch(workers, timeout, console))
    finally:
        workers.stop()
    return asyncio.run(job.summary(emulator, complete, logs))


def run_main_job(
    settings: Settings,
    *,
    user_count: int,
    messages: int,
    seed: int,
    mbox: Path | None,
    timeout: float,
    console: Console | None,
) -> RunSummary:
    """Run the main job on the local stack (or the configured services); return its summary."""
    external = {"kafka_bootstrap_servers", "database_url"} <= settings.model_fields_set
    run_id = time.strftime("%Y%m%d%H%M%S")
    # On services someone else keeps, a run gets its own topics and mailboxes, left for
    # inspection; a fresh local stack uses the plain names.
    namespace = f"{settings.topic_namespace}-run-{run_id}" if external else settings.topic_namespace
    domain = f"run-{run_id}.inboxflow.test" if external else "inboxflow.test"
    users = [f"user{i + 1}@{domain}" for i in range(1 if mbox else user_count)]
    logs = Path(tempfile.mkdtemp(prefix="inboxflow-run-logs-"))
    with running_stack(settings) as stack:
        if console:
            console.print(f"stack ready: kafka={stack.kafka_bootstrap} started={stack.started}")
        emulator = start_emulator(users, messages, seed, mbox)
        try:
            return run_job(settings, stack, namespace, users, emulator, logs, timeout, console)
        finally:
            emulator.stop_thread()
