"""The two sides of ``inboxflow bench legacy``: the old polling design and inboxflow, each run
on fresh emulators and a database of its own, measured the same way (``legacy_measure``).

Each side: start the Gmail and embedding emulators with the plan's faults, create a database,
start the side's processes and wait until they are ready, request a full sync of every user,
wait until every job is final, read the figures, stop everything, drop the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg.rows import TupleRow
from pydantic import SecretStr

from db.migrate import apply_migrations
from devstack.embedding_emulator import EmbeddingEmulator, EmulatorFaults
from devstack.gmail_emulator.faults import FaultConfig
from devstack.gmail_emulator.server import GmailEmulator
from inboxflow.bench import legacy_design as design
from inboxflow.bench.legacy_measure import (
    cpu_between,
    create_database,
    drop_database,
    transactions,
    tree_cpu_seconds,
)
from inboxflow.progress import JOBS_BY_KIND_AND_STATUS, NORMALIZED_MESSAGES, TERMINAL
from inboxflow.scheduling import register_accounts
from inboxflow.settings import Settings
from inboxflow.supervisor import start_all
from inboxflow.wiring import catalogue_from, kafka_from, request_syncs
from ops.offsets import group_state
from streams.runtime.routing import PHASE_WEIGHT
from topics.admin import ensure_topics
from topics.catalogue import Catalogue

EMBEDDING_MODEL = "emulated-embed"
INBOXFLOW_MESSAGE_KINDS = ("normalize_google_email", "extract_contacts", "embed", "insight")


@dataclass(frozen=True)
class Faults:
    """What both sides suffer.

    Attributes:
        gmail_429: share of Gmail (sub-)requests answered 429 with a Retry-After.
        gmail_5xx: share answered 500 or 503 (half each).
        gmail_retry_after: seconds ahead the injected 429s say to come back.
        embedding_throttle: share of embedding requests answered 429 (0.5: every second one,
            i.e. the API serves half the offered rate).
    """

    gmail_429: float = 0.3
    gmail_5xx: float = 0.1
    gmail_retry_after: float = 1.0
    embedding_throttle: float = 0.5


@dataclass(frozen=True)
class Plan:
    """One run's work: the same for both sides."""

    conninfo: str  # the configured database; sides create theirs next to it
    users: tuple[str, ...]
    messages_per_user: int
    faults: Faults
    seed: int
    timeout: float
    gmail_user_units_per_minute: int
    retry_delays: tuple[int, ...]  # inboxflow's ladder for every agent (the old backoff's)


@dataclass
class SideRun:
    """What one side did, raw (``legacy.side_figures`` turns it into per-message figures)."""

    messages: int
    messages_done: int
    jobs_by_status: dict[str, int]
    jobs_failed: int
    latencies: list[float]
    elapsed_seconds: float
    transactions: int
    statements: int | None
    gmail_units: int
    gmail_throttled: int
    cpu_seconds: float
    settled: bool
    notes: list[str] = field(default_factory=list)


@contextmanager
def emulators(plan: Plan) -> Iterator[tuple[GmailEmulator, EmbeddingEmulator]]:
    """Gmail and embedding emulators with the plan's mailboxes and faults, on threads."""
    f = plan.faults
    gmail = GmailEmulator(
        faults=FaultConfig(
            rate_429=f.gmail_429,
            rate_500=f.gmail_5xx / 2,
            rate_503=f.gmail_5xx / 2,
            throttle_seconds=f.gmail_retry_after,
            seed=plan.seed,
        )
    ).start_in_thread()
    try:
        for index, user in enumerate(plan.users):
            gmail.add_user(user, messages=plan.messages_per_user, seed=plan.seed + index)
        embedding = EmbeddingEmulator(
            faults=EmulatorFaults(rate_limit_ratio=f.embedding_throttle, retry_after=1.0)
        )
        with embedding.run_in_thread():
            yield gmail, embedding
    finally:
        gmail.stop_thread()


class Monitor:
    """The harness's own connection to a side's database; its statements are counted so they
    can be taken out of the side's transactions (autocommit: one statement, one transaction)."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.statements = 0

    def rows(self, query: LiteralString, params: dict[str, Any] | None = None) -> list[TupleRow]:
        """Run one statement; return its rows (none for a statement without a result)."""
        self.statements += 1
        cursor = self.conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        """Close the connection (its counts reach pg_stat_database when its backend exits)."""
        self.conn.close()


def _wait(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


SKIPPED_LABELS = frozenset({"SPAM", "TRASH"})  # a full listing leaves them out, on both sides


def _mailbox_size(gmail: GmailEmulator, users: Sequence[str]) -> int:
    """Messages a full sync lists: every message outside spam and trash."""
    with gmail.state.lock:
        return sum(
            not SKIPPED_LABELS & set(message.label_ids)
            for user in users
            for message in gmail.mailbox(user).messages.values()
        )


def _gmail_figures(gmail: GmailEmulator) -> tuple[int, int]:
    accounting = gmail.accounting
    return sum(accounting.units_by_user.values()), sum(accounting.throttled.values())


def _call_notes(gmail: GmailEmulator, embedding: EmbeddingEmulator) -> list[str]:
    """What each side asked of the two APIs, for the reader of the figures."""
    calls = ", ".join(f"{m}={n}" for m, n in sorted(gmail.accounting.calls_by_method.items()))
    statuses = embedding.counters().statuses
    return [f"Gmail calls admitted: {calls}", f"embedding responses by status: {statuses}"]


def _latencies(rows: list[TupleRow], kinds: int) -> tuple[list[float], int, datetime | None]:
    """Discovery-to-done seconds of each message whose ``kinds`` jobs are all done."""
    latencies: list[float] = []
    last: datetime | None = None
    for discovered, finished, done, _total in rows:
        if done == kinds and discovered is not None and finished is not None:
            latencies.append((finished - discovered).total_seconds())
            last = finished if last is None else max(last, finished)
    return latencies, len(latencies), last


@dataclass
class _Driven:
    """What the harness saw of a side's processes between ready and settled."""

    requested: datetime
    settled: bool
    cpu_seconds: float
    exited: dict[str, int]
    statements: int | None = None  # counted by the processes themselves


def _exit_notes(run: _Driven, logs: Path) -> list[str]:
    """Say where the logs are when something went wrong; otherwise remove them."""
    if run.exited or not run.settled:
        exited = run.exited or "none"
        return [f"logs in {logs} (settled: {run.settled}; exited early: {exited})"]
    shutil.rmtree(logs, ignore_errors=True)
    return []


# --- the old design ------------------------------------------------------------------------------

LEGACY_STATUS: LiteralString = (
    "SELECT kind, status, count(*) FROM legacy_jobs GROUP BY kind, status"
)
LEGACY_MESSAGES: LiteralString = """
SELECT min(created_at) FILTER (WHERE kind = 'fetch'), max(finished_at),
       count(*) FILTER (WHERE status = 'done'), count(*)
FROM legacy_jobs WHERE kind <> 'sync' GROUP BY user_id, message_id
"""
SEED_SYNC: LiteralString = (
    "INSERT INTO legacy_jobs (kind, user_id, status) VALUES ('sync', %(user_id)s, 'ready')"
)


def _legacy_settled(monitor: Monitor, users: int) -> bool:
    counts: dict[str, int] = {}
    syncs_final = 0
    for kind, status, n in monitor.rows(LEGACY_STATUS):
        counts[status] = counts.get(status, 0) + n
        if kind == design.SYNC and status in ("done", "failed"):
            syncs_final += n
    live = sum(counts.get(s, 0) for s in ("blocked", "ready", "running"))
    return syncs_final >= users and live == 0


def _start_legacy(config: design.LegacyConfig, logs: Path) -> dict[str, subprocess.Popen[str]]:
    processes: dict[str, subprocess.Popen[str]] = {}
    for kind in (*design.WORKER_KINDS, design.DEPENDENCY_MANAGER):
        log = (logs / f"legacy-{kind}.log").open("ab")
        processes[kind] = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "inboxflow.bench.legacy_design", kind, config.to_json()],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    for kind, process in processes.items():
        if process.stdout is None or process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"legacy {kind} process did not start; see {logs}")
    return processes


def _stop_legacy(processes: dict[str, subprocess.Popen[str]]) -> int:
    """Stop every process; return the statements they sent."""
    for process in processes.values():
        process.terminate()
    statements = 0
    for kind, process in processes.items():
        stdout, _ = process.communicate(timeout=60)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"legacy {kind} process ended without its report")
        statements += int(json.loads(lines[-1])["statements"])
    return statements


def _drive_legacy(config: design.LegacyConfig, plan: Plan, monitor: Monitor, logs: Path) -> _Driven:
    """Start the old design's processes, seed a sync job per user, wait until settled."""
    processes = _start_legacy(config, logs)
    try:
        before = tree_cpu_seconds(p.pid for p in processes.values())
        requested = datetime.now().astimezone()
        for user in plan.users:
            monitor.rows(SEED_SYNC, {"user_id": user})
        settled = _wait(lambda: _legacy_settled(monitor, len(plan.users)), plan.timeout)
        cpu = cpu_between(before, tree_cpu_seconds(p.pid for p in processes.values()))
        exited = {k: code for k, p in processes.items() if (code := p.poll()) is not None}
    finally:
        statements = _stop_legacy(processes)
    return _Driven(requested, settled, cpu, exited, statements)


def run_legacy_side(plan: Plan) -> SideRun:
    """Run the old polling design on the plan's mailboxes."""
    with emulators(plan) as (gmail, embedding):
        database = create_database(plan.conninfo, "legacy_bench")
        try:
            design.create_schema(database)
            baseline = transactions(plan.conninfo, database)
            config = design.LegacyConfig(
                conninfo=database,
                gmail_url=gmail.url,
                gmail_user_units_per_minute=plan.gmail_user_units_per_minute,
                embedding_url=embedding.url,
                embedding_model=EMBEDDING_MODEL,
                embedding_dimension=embedding.dimension,
            )
            logs = Path(tempfile.mkdtemp(prefix="inboxflow-bench-legacy-"))
            with closing(Monitor(database)) as monitor:
                run = _drive_legacy(config, plan, monitor, logs)
                by_status: dict[str, int] = {}
                for _kind, status, n in monitor.rows(LEGACY_STATUS):
                    by_status[status] = by_status.get(status, 0) + n
                latencies, done, last = _latencies(
                    monitor.rows(LEGACY_MESSAGES), len(design.MESSAGE_KINDS)
                )
            used = transactions(plan.conninfo, database) - baseline - monitor.statements
        finally:
            drop_database(plan.conninfo, database)
        units, throttled = _gmail_figures(gmail)
        return SideRun(
            messages=_mailbox_size(gmail, plan.users),
            messages_done=done,
            jobs_by_status=by_status,
            jobs_failed=by_status.get("failed", 0),
            latencies=latencies,
            elapsed_seconds=((last or run.requested) - run.requested).total_seconds(),
            transactions=used,
            statements=run.statements,
            gmail_units=units,
            gmail_throttled=throttled,
            cpu_seconds=run.cpu_seconds,
            settled=run.settled,
            notes=_call_notes(gmail, embedding) + _exit_notes(run, logs),
        )


# --- inboxflow -----------------------------------------------------------------------------------

FLOW_MESSAGES: LiteralString = """
SELECT min(created_at) FILTER (WHERE kind = 'normalize_google_email'), max(updated_at),
       count(*) FILTER (WHERE status = 'done'), count(*)
FROM jobs WHERE user_id = ANY(%(users)s) AND kind <> 'google_gmail_sync'
GROUP BY user_id, subject_id
"""


def _flow_counts(monitor: Monitor, users: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for kind, status, n in monitor.rows(JOBS_BY_KIND_AND_STATUS, {"users": users}):
        counts.setdefault(kind, {})[status] = n
    return counts


def _flow_settled(monitor: Monitor, users: list[str]) -> bool:
    """Every sync and every job it led to is final (``inboxflow.main_job.Job.finished``)."""
    counts = _flow_counts(monitor, users)

    def count(kind: str, statuses: Sequence[str] | None = None) -> int:
        rows = counts.get(kind, {})
        return sum(n for status, n in rows.items() if statuses is None or status in statuses)

    if count("google_gmail_sync", TERMINAL) < len(users):
        return False
    if any(count(kind) != count(kind, TERMINAL) for kind in counts):
        return False
    rows = monitor.rows(NORMALIZED_MESSAGES, {"users": users, "phase": PHASE_WEIGHT})
    normalized = int(rows[0][0]) if rows else 0
    return all(count(kind) == normalized for kind in INBOXFLOW_MESSAGE_KINDS[1:])


def _flow_env(
    settings: Settings,
    plan: Plan,
    database: str,
    namespace: str,
    gmail: str,
    embedding: EmbeddingEmulator,
) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INBOXFLOW_") or k.startswith("INBOXFLOW_KAFKA_")
    }
    return {
        **inherited,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": database,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "3",
        "INBOXFLOW_GMAIL_API_ROOT": gmail,
        "INBOXFLOW_GMAIL_USER_UNITS_PER_MINUTE": str(plan.gmail_user_units_per_minute),
        "INBOXFLOW_INSIGHT_INTERVAL_SECONDS": "1",
        "INBOXFLOW_EMBEDDING_PROVIDER": "openai",
        "INBOXFLOW_EMBEDDING_API_URL": embedding.url,
        "INBOXFLOW_EMBEDDING_MODEL": EMBEDDING_MODEL,
        "INBOXFLOW_EMBEDDING_DIMENSION": str(embedding.dimension),
        "INBOXFLOW_RETRY_LADDERS": json.dumps(_ladders(plan)),
        **(
            {"INBOXFLOW_SCHEMA_REGISTRY_URL": settings.schema_registry_url}
            if settings.schema_registry_url
            else {}
        ),
    }


_AGENTS = ("sync", "normalize", "extract", "embed", "insight")


def _ladders(plan: Plan) -> dict[str, list[int]]:
    """The old design's backoff as every agent's retry ladder."""
    return {agent: list(plan.retry_delays) for agent in _AGENTS}


async def _groups_ready(settings: Settings, catalogue: Catalogue) -> None:
    """Return once every consumer group has a member and is Stable."""
    admin = kafka_from(settings, client_id="inboxflow-bench-legacy").admin()
    await admin.start()
    try:
        while True:
            states = [await group_state(admin, group.group_id) for group in catalogue.groups]
            if all(state == "Stable" and members > 0 for state, members in states):
                return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def _ready_within(settings: Settings, catalogue: Catalogue, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await _groups_ready(settings, catalogue)
    except TimeoutError:
        return False
    return True


def _flow_settings(
    settings: Settings, plan: Plan, database: str, namespace: str, gmail: str
) -> Settings:
    """The workers' settings as seen by the harness (the catalogue needs the ladder's tiers)."""
    return settings.model_copy(
        update={
            "database_url": SecretStr(database),
            "topic_namespace": namespace,
            "topic_partitions": 3,
            "gmail_api_root": gmail,
            "retry_ladders": _ladders(plan),
        }
    )


def _drive_flow(
    flow: Settings, env: dict[str, str], plan: Plan, monitor: Monitor, logs: Path
) -> _Driven:
    """Start every worker and sink, wait until ready, request the syncs, wait until settled."""
    catalogue = catalogue_from(flow)
    workers = start_all(env, log_dir=logs)
    try:
        if not asyncio.run(_ready_within(flow, catalogue, 180)):
            raise RuntimeError(f"inboxflow workers not ready in 180s; see {logs}")
        pids = [p.pid for p in workers.processes.values()]
        before = tree_cpu_seconds(pids)
        requested = datetime.now().astimezone()
        asyncio.run(request_syncs(flow, list(plan.users), full=True))
        settled = _wait(lambda: _flow_settled(monitor, list(plan.users)), plan.timeout)
        cpu = cpu_between(before, tree_cpu_seconds(pids))
        return _Driven(requested, settled, cpu, workers.exited())
    finally:
        workers.stop()


def _prepare_flow(settings: Settings, plan: Plan, database: str, gmail: str) -> Settings:
    """Migrate the database, create the topics, register the accounts; return the settings."""
    namespace = f"legacy-bench-{uuid.uuid4().hex[:8]}"
    flow = _flow_settings(settings, plan, database, namespace, gmail)
    apply_migrations(database)
    asyncio.run(ensure_topics(kafka_from(flow), catalogue_from(flow).topics))
    asyncio.run(register_accounts(flow, list(plan.users)))
    return flow


def run_inboxflow_side(settings: Settings, plan: Plan) -> SideRun:
    """Run the real pipeline (every agent and sink as a process) on the plan's mailboxes."""
    users = list(plan.users)
    with emulators(plan) as (gmail, embedding):
        database = create_database(plan.conninfo, "flow_bench")
        try:
            flow = _prepare_flow(settings, plan, database, gmail.url)
            baseline = transactions(plan.conninfo, database)
            env = _flow_env(settings, plan, database, flow.topic_namespace, gmail.url, embedding)
            logs = Path(tempfile.mkdtemp(prefix="inboxflow-bench-flow-"))
            with closing(Monitor(database)) as monitor:
                run = _drive_flow(flow, env, plan, monitor, logs)
                counts = _flow_counts(monitor, users)
                latencies, done, last = _latencies(
                    monitor.rows(FLOW_MESSAGES, {"users": users}), len(INBOXFLOW_MESSAGE_KINDS)
                )
            used = transactions(plan.conninfo, database) - baseline - monitor.statements
        finally:
            drop_database(plan.conninfo, database)
        by_status: dict[str, int] = {}
        for rows in counts.values():
            for status, n in rows.items():
                by_status[status] = by_status.get(status, 0) + n
        units, throttled = _gmail_figures(gmail)
        return SideRun(
            messages=_mailbox_size(gmail, plan.users),
            messages_done=done,
            jobs_by_status=by_status,
            jobs_failed=by_status.get("error", 0) + by_status.get("dead", 0),
            latencies=latencies,
            elapsed_seconds=((last or run.requested) - run.requested).total_seconds(),
            transactions=used,
            statements=None,
            gmail_units=units,
            gmail_throttled=throttled,
            cpu_seconds=run.cpu_seconds,
            settled=run.settled,
            notes=_call_notes(gmail, embedding) + _exit_notes(run, logs),
        )
