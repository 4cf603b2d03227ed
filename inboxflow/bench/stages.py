"""``inboxflow bench stages``: every stage and both sinks as worker processes, on the same mail.

N generated GmailMessageFetched records go straight onto the fetched topic (Gmail is not
involved) and through normalize, extract, embed (against the embedding API emulator, a process
of its own, so the local model's few chunks a second do not set the pace) and insight into the
Postgres ``jobs`` and ``contacts`` tables, with 1 and then 2 worker processes per consumer group
(sinks included).

Each run first sends a small warm-up batch through every stage and waits for its job rows, so
process start-up and the group joins are left out; only then are the N records produced.
Stage rates come from the ``updated_at`` of each kind's ``done`` job rows (the worker's clock at
the moment the stage finished a message), from that kind's first to its last row; the overall
rate is N over the time from the first record produced to the last row done. CPU seconds are
summed over every worker process and its children (the CPU pool) from ``/proc``, between the
end of the warm-up and the last row.

This module also holds what the memory and latency benches share: process-tree CPU and RSS
readings, the worker environment, the generated-mail stream, job-row waits. It must not change
anything outside its own topic namespace and user ids.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

import psycopg

from devstack.gmail_emulator.generator import GeneratedMessage, generate_messages
from inboxflow.bench.pipeline import as_fetched
from inboxflow.settings import Settings
from inboxflow.supervisor import ProcessGroup, start_all
from inboxflow.wiring import catalogue_from, kafka_from, serde_from
from schemas.models import GmailMessageFetched
from topics.admin import ensure_topics
from topics.catalogue import Catalogue

PARTITIONS = 6  # divisible by 1 and 2 processes per group
USERS = 12  # keys spread over every partition
STAGE_KINDS = {
    "normalize": "normalize_google_email",
    "extract": "extract_contacts",
    "embed": "embed",
    "insight": "insight",
}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_POOL_SIZE = 600  # distinct generated messages, reused with fresh ids (generation is ~1 ms each)

DONE_BY_KIND = """
SELECT kind, count(*), min(updated_at), max(updated_at) FROM jobs
WHERE user_id = ANY(%(users)s) AND status = 'done'
GROUP BY kind
"""


@dataclass(frozen=True)
class StagesRun:
    """Figures of one run at a number of processes per group."""

    processes: int
    emails: int
    overall_emails_per_second: float
    stage_emails_per_second: dict[str, float]
    worker_cpu_seconds_per_1000: float
    emulator_cpu_seconds_per_1000: float
    wall_seconds: float


@dataclass(frozen=True)
class StagesBenchResult:
    """Figures of every run."""

    emails: int
    runs: tuple[StagesRun, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


# --- process readings from /proc --------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and every live descendant (CPU pool workers are children of a worker)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue  # the thread or process ended while we looked
    return found


def cpu_seconds(pid: int) -> float:
    """Return user plus system CPU seconds of one process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_mib(pid: int) -> float:
    """Return the resident set size of one process in MiB (0 when it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_by_process(roots: Sequence[int]) -> dict[int, float]:
    """Return CPU seconds of every process in the trees of ``roots``."""
    return {pid: cpu_seconds(pid) for root in roots for pid in process_tree(root)}


def cpu_used(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds spent between two readings (processes born in between count in full)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


# --- workers and their environment -------------------------------------------------------------


def worker_env(settings: Settings, namespace: str, **extra: str) -> dict[str, str]:
    """Environment of worker processes: this one's (Kafka security included) plus the bench's."""
    env = {**os.environ, **extra}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        DATABASE_URL=settings.database_url.get_secret_value(),
        INBOXFLOW_TOPIC_NAMESPACE=namespace,
        INBOXFLOW_TOPIC_PARTITIONS=str(PARTITIONS),
        INBOXFLOW_METRICS_PORT="0",
    )
    env.pop("INBOXFLOW_SCHEMA_REGISTRY_URL", None)
    if settings.schema_registry_url:
        env["INBOXFLOW_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    return env


def bench_settings(settings: Settings, namespace: str) -> Settings:
    """``settings`` under the bench's namespace and partition count."""
    return settings.model_copy(
        update={"topic_namespace": namespace, "topic_partitions": PARTITIONS}
    )


@dataclass
class Workers:
    """Worker process groups (one per replica) and their log folder."""

    groups: list[ProcessGroup]
    logs: Path

    def roots(self) -> list[int]:
        """Pids of every worker and sink process."""
        return [p.pid for group in self.groups for p in group.processes.values()]

    def check(self) -> None:
        """Raise with the log tails of any worker that exited."""
        for index, group in enumerate(self.groups):
            exited = group.exited()
            if exited:
                tails = {
                    name: (self.logs / str(index) / f"{name}.log").read_text(errors="replace")[
                        -2000:
                    ]
                    for name in exited
                }
                raise RuntimeError(f"bench workers exited {exited}: {tails}")


@contextmanager
def running_workers(
    env: Mapping[str, str], *, agents: Sequence[str], sinks: Sequence[str], replicas: int
) -> Iterator[Workers]:
    """Start ``replicas`` processes of each agent and sink; stop them all on exit."""
    logs = Path(tempfile.mkdtemp(prefix="inboxflow-bench-"))
    workers = Workers([], logs)
    # The workers run in sessions of their own: a SIGTERM to the bench must still stop them.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        for index in range(replicas):
            replica_logs = logs / str(index)
            replica_logs.mkdir()
            workers.groups.append(
                start_all(env, agents=agents, sinks=sinks, sources=(), log_dir=replica_logs)
            )
        yield workers
    finally:
        for group in workers.groups:
            group.stop()
        if main:
            signal.signal(signal.SIGTERM, previous)
    shutil.rmtree(logs, ignore_errors=True)  # kept when the bench failed, for reading


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def embedding_api() -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """Run the embedding API emulator as a process; yield it and the workers' settings for it."""
    port = _free_port()
    process = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "devstack.embedding_emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_http(f"{url}/models", process)
        yield (
            process,
            {
                "INBOXFLOW_EMBEDDING_PROVIDER": "openai",
                "INBOXFLOW_EMBEDDING_API_URL": url,
                "INBOXFLOW_EMBEDDING_MODEL": "emulated-embed",
                "INBOXFLOW_EMBEDDING_DIMENSION": "256",  # the emulator's default
            },
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urlopen(url, timeout=2):  # noqa: S310 - a loopback URL we built
                return
        except (URLError, OSError):
            time.sleep(0.1)  # polling a port that is not open yet
    raise RuntimeError(f"the embedding emulator did not answer at {url}")


# --- mail in, job rows out -----------------------------------------------------------------------


def bench_users(run: str, count: int = USERS) -> list[str]:
    """User ids of one run (each run has its own, so rows never mix)."""
    return [f"u{index:02d}-{run}@bench.inboxflow.test" for index in range(count)]


def message_pool(size: int = _POOL_SIZE, seed: int = 7) -> list[GeneratedMessage]:
    """Generated messages to cycle through (generation costs ~1 ms a message)."""
    return generate_messages(seed, size, "owner@bench.inboxflow.test")


def fetched_stream(
    users: Sequence[str], pool: Sequence[GeneratedMessage], count: int, *, first: int = 0
) -> Iterator[GmailMessageFetched]:
    """Yield ``count`` fetched messages, users in turn, raw MIME cycled from ``pool``."""
    now = datetime.now(UTC)
    for index in range(first, first + count):
        generated = pool[index % len(pool)]
        yield as_fetched(generated, index, users[index % len(users)], now)


async def produce_fetched(
    settings: Settings, topic: str, events: Iterator[GmailMessageFetched]
) -> None:
    """Produce ``events`` onto ``topic``, keyed by user, and wait until Kafka has them all."""
    serde = serde_from(settings)
    kafka = kafka_from(settings, client_id="inboxflow-bench")
    async with kafka.started(kafka.producer()) as producer:
        for chunk in _chunks(events, 1000):
            for event in chunk:
                await producer.send(topic, serde.encode(event), key=event.user_id.encode())
            await producer.flush()


def _chunks(
    events: Iterator[GmailMessageFetched], size: int
) -> Iterator[list[GmailMessageFetched]]:
    while chunk := list(itertools.islice(events, size)):
        yield chunk


@dataclass(frozen=True)
class DoneRows:
    """``done`` job rows of one kind: how many, the first and the last ``updated_at``."""

    count: int
    first: datetime
    last: datetime

    def rate(self) -> float:
        """Rows per second from the first to the last."""
        span = (self.last - self.first).total_seconds()
        return (self.count - 1) / span if span > 0 else 0.0


def done_rows(database_url: str, users: Sequence[str]) -> dict[str, DoneRows]:
    """``done`` job rows of ``users`` by kind."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(DONE_BY_KIND, {"users": list(users)}).fetchall()
    return {kind: DoneRows(n, first, last) for kind, n, first, last in rows}


def wait_for_done(
    database_url: str,
    users: Sequence[str],
    emails: int,
    workers: Workers,
    *,
    kinds: Sequence[str] = tuple(STAGE_KINDS.values()),
    timeout: float,
) -> dict[str, DoneRows]:
    """Wait until every kind has ``emails`` done rows for ``users``; return them.

    Raises:
        RuntimeError: a worker exited.
        TimeoutError: not done within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        workers.check()
        rows = done_rows(database_url, users)
        if all(kind in rows and rows[kind].count >= emails for kind in kinds):
            return rows
        if time.monotonic() > deadline:
            counts = {kind: done.count for kind, done in rows.items()}
            raise TimeoutError(f"{emails} emails not done in {timeout:.0f}s: {counts}")
        time.sleep(0.5)  # polling Postgres for a condition, with a deadline


async def create_topics(settings: Settings, namespace: str) -> Catalogue:
    """Create the bench namespace's topics; return its catalogue."""
    scoped = bench_settings(settings, namespace)
    catalogue = catalogue_from(scoped)
    await ensure_topics(kafka_from(scoped), catalogue.topics)
    return catalogue


async def delete_topics(settings: Settings, catalogue: Catalogue) -> None:
    """Delete the bench namespace's topics (a large run writes gigabytes)."""
    kafka = kafka_from(settings, client_id="inboxflow-bench")
    async with kafka.started(kafka.admin()) as admin:
        await admin.delete_topics([spec.name for spec in catalogue.topics])


# --- the bench ---------------------------------------------------------------------------------

_AGENTS = ("normalize", "extract", "embed", "insight")
_SINKS = ("jobs", "contacts")


def run_stages_once(
    settings: Settings, emails: int, processes: int, pool: Sequence[GeneratedMessage]
) -> StagesRun:
    """Run every stage with ``processes`` processes per group over ``emails`` new messages."""
    run = uuid.uuid4().hex[:8]
    namespace = f"bench-stages-{run}"
    catalogue = asyncio.run(create_topics(settings, namespace))
    try:
        return _measure(settings, catalogue, run, emails, processes, pool)
    finally:
        asyncio.run(delete_topics(settings, catalogue))


def _measure(
    settings: Settings,
    catalogue: Catalogue,
    run: str,
    emails: int,
    processes: int,
    pool: Sequence[GeneratedMessage],
) -> StagesRun:
    database_url = settings.database_url.get_secret_value()
    warm_users, users = bench_users(f"warm-{run}"), bench_users(run)
    topic = catalogue.message_fetched.name
    with embedding_api() as (emulator, embed_env):
        namespace = catalogue.namespace
        env = worker_env(settings, namespace, INBOXFLOW_INSIGHT_INTERVAL_SECONDS="1", **embed_env)
        with running_workers(env, agents=_AGENTS, sinks=_SINKS, replicas=processes) as workers:
            warm = fetched_stream(warm_users, pool, 2 * len(warm_users))
            asyncio.run(produce_fetched(settings, topic, warm))
            wait_for_done(database_url, warm_users, 2 * len(warm_users), workers, timeout=300)
            before = cpu_by_process(workers.roots())
            emulator_before = cpu_seconds(emulator.pid)
            started = datetime.now(UTC)
            asyncio.run(produce_fetched(settings, topic, fetched_stream(users, pool, emails)))
            rows = wait_for_done(database_url, users, emails, workers, timeout=60 + emails / 2)
            cpu = cpu_used(before, cpu_by_process(workers.roots()))
            emulator_cpu = cpu_seconds(emulator.pid) - emulator_before
    last = max(done.last for done in rows.values())
    wall = (last - started).total_seconds()
    return StagesRun(
        processes=processes,
        emails=emails,
        overall_emails_per_second=round(emails / wall, 1),
        stage_emails_per_second={
            stage: round(rows[kind].rate(), 1) for stage, kind in STAGE_KINDS.items()
        },
        worker_cpu_seconds_per_1000=round(cpu * 1000 / emails, 2),
        emulator_cpu_seconds_per_1000=round(emulator_cpu * 1000 / emails, 2),
        wall_seconds=round(wall, 1),
    )


def run_stages_bench(
    settings: Settings, emails: int = 2000, processes: Sequence[int] = (1, 2)
) -> StagesBenchResult:
    """Run the whole pipeline once per process count on the same generated mail."""
    pool = message_pool()
    runs = tuple(run_stages_once(settings, emails, count, pool) for count in processes)
    return StagesBenchResult(emails=emails, runs=runs)
