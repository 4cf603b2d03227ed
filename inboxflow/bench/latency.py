"""``inboxflow bench latency``: p50/p99 from MessageDiscovered to the job row ``done``, at half
of measured capacity.

Every group runs as a worker process (sync's fetch stage against a Gmail emulator in this
process, normalize, extract, embed against the embedding API emulator, insight, both sinks).
MessageDiscovered records for messages that exist in the emulator's mailboxes are produced
straight onto the discovered topic, so no listing is involved:

1. warm-up: a few messages per user through every stage (start-up and group joins left out);
2. capacity: a burst of messages, all produced at once; capacity = messages over the time from
   the first produced to the last job row ``done``;
3. steady: half of that rate, one record at a time on a fixed schedule, for a set duration.

A message's latency runs from its ``discovered_at`` (stamped when it is sent) to the
``updated_at`` of its job rows in Postgres (the worker's clock when the stage finished): to its
``normalize_google_email`` row (fetched and normalized) and to the last of its rows (every
stage). The bench works under its own topic namespace and user ids.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from devstack.gmail_emulator.generator import GeneratedMessage
from devstack.gmail_emulator.quota import QuotaConfig
from devstack.gmail_emulator.server import GmailEmulator
from inboxflow.bench.stages import (
    STAGE_KINDS,
    Workers,
    bench_users,
    create_topics,
    delete_topics,
    embedding_api,
    message_pool,
    running_workers,
    wait_for_done,
    worker_env,
)
from inboxflow.settings import Settings
from inboxflow.wiring import AGENTS, kafka_from, serde_from
from schemas.models import MessageDiscovered
from topics.catalogue import Catalogue

_UNITS = 10**9  # quota out of the way: the bench measures the pipeline, not Gmail's limits
_KINDS = tuple(STAGE_KINDS.values())  # the first: fetched and normalized

DONE_TIMES = """
SELECT user_id, subject_id, kind, updated_at FROM jobs
WHERE user_id = ANY(%(users)s) AND status = 'done' AND kind = ANY(%(kinds)s)
"""


@dataclass(frozen=True)
class LatencyBenchResult:
    """Capacity, the offered rate and latency percentiles in milliseconds."""

    capacity_emails_per_second: float
    offered_emails_per_second: float
    steady_emails: int
    normalized_p50_ms: float
    normalized_p99_ms: float
    all_stages_p50_ms: float
    all_stages_p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class Offered:
    """A message sent as MessageDiscovered, and when."""

    user_id: str
    message_id: str
    thread_id: str
    sent_at: datetime


@contextmanager
def gmail_emulator() -> Iterator[GmailEmulator]:
    """A Gmail emulator on a background thread with quotas out of the way."""
    quota = QuotaConfig(user_units_per_window=_UNITS, project_units_per_window=_UNITS)
    emulator = GmailEmulator(quota=quota).start_in_thread()
    try:
        yield emulator
    finally:
        emulator.stop_thread()


def add_mail(
    emulator: GmailEmulator, users: Sequence[str], pool: Sequence[GeneratedMessage], count: int
) -> list[Offered]:
    """Put ``count`` messages into the users' mailboxes, users in turn; return them unsent."""
    for seed, user in enumerate(users):
        if emulator.state.mailbox_for(user) is None:
            emulator.add_user(user, seed=seed)
    added = []
    with emulator.state.lock:
        for index in range(count):
            user, generated = users[index % len(users)], pool[index % len(pool)]
            stored = emulator.mailbox(user).add(
                generated.raw, generated.label_ids, generated.internal_date, record_history=False
            )
            added.append(Offered(user, stored.id, stored.thread_id, datetime.now(UTC)))
    return added


async def offer(
    settings: Settings, topic: str, messages: Sequence[Offered], rate: float | None
) -> list[Offered]:
    """Send each message as MessageDiscovered, ``rate`` a second (None: all at once).

    Returns the messages stamped with the time each was sent.
    """
    serde = serde_from(settings)
    kafka = kafka_from(settings, client_id="inboxflow-bench")
    sent: list[Offered] = []
    async with kafka.started(kafka.producer(linger_ms=0)) as producer:
        start = time.monotonic()
        for index, message in enumerate(messages):
            if rate is not None:
                # Pacing the offered load on a fixed schedule, not waiting for a condition.
                await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            now = datetime.now(UTC)
            event = MessageDiscovered(
                user_id=message.user_id,
                message_id=message.message_id,
                thread_id=message.thread_id,
                sync_id="bench-latency",
                discovered_at=now,
            )
            await producer.send(topic, serde.encode(event), key=event.kafka_key())
            sent.append(Offered(message.user_id, message.message_id, message.thread_id, now))
        await producer.flush()
    return sent


def done_times(
    database_url: str, users: Sequence[str]
) -> dict[tuple[str, str], dict[str, datetime]]:
    """``updated_at`` of every done row, by (user, message) then kind."""
    times: dict[tuple[str, str], dict[str, datetime]] = {}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(DONE_TIMES, {"users": list(users), "kinds": list(_KINDS)})
        for user, subject, kind, updated in rows:
            times.setdefault((user, subject), {})[kind] = updated
    return times


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (nearest rank). Pure."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def _latencies_ms(
    sent: Sequence[Offered], times: dict[tuple[str, str], dict[str, datetime]]
) -> tuple[list[float], list[float]]:
    normalized, everything = [], []
    for message in sent:
        rows = times[(message.user_id, message.message_id)]
        normalized.append((rows[_KINDS[0]] - message.sent_at).total_seconds() * 1000)
        everything.append((max(rows.values()) - message.sent_at).total_seconds() * 1000)
    return normalized, everything


def _run_phase(
    settings: Settings,
    topic: str,
    messages: Sequence[Offered],
    rate: float | None,
    workers: Workers,
    users: Sequence[str],
    done_before: int,
) -> list[Offered]:
    sent = asyncio.run(offer(settings, topic, messages, rate))
    timeout = 120 + len(messages) / 2 + (len(messages) / rate if rate else 0)
    database_url = settings.database_url.get_secret_value()
    wait_for_done(database_url, users, done_before + len(messages), workers, kinds=_KINDS,
                  timeout=timeout)  # fmt: skip
    return sent


def run_latency_bench(
    settings: Settings, capacity_emails: int = 1000, steady_seconds: float = 30.0
) -> LatencyBenchResult:
    """Measure capacity with a burst, then latency at half of it for ``steady_seconds``."""
    run = uuid.uuid4().hex[:8]
    namespace = f"bench-latency-{run}"
    catalogue = asyncio.run(create_topics(settings, namespace))
    try:
        return _measure(settings, catalogue, run, capacity_emails, steady_seconds)
    finally:
        asyncio.run(delete_topics(settings, catalogue))


def _measure(
    settings: Settings, catalogue: Catalogue, run: str, capacity_emails: int, steady_seconds: float
) -> LatencyBenchResult:
    namespace, topic = catalogue.namespace, catalogue.message_discovered.name
    users, pool = bench_users(run), message_pool()
    database_url = settings.database_url.get_secret_value()
    with gmail_emulator() as gmail, embedding_api() as (_, embed_env):
        env = worker_env(
            settings,
            namespace,
            INBOXFLOW_GMAIL_API_ROOT=gmail.url,
            INBOXFLOW_GMAIL_USER_UNITS_PER_MINUTE=str(_UNITS),
            INBOXFLOW_INSIGHT_INTERVAL_SECONDS="1",
            **embed_env,
        )
        with running_workers(env, agents=AGENTS, sinks=("jobs", "contacts"), replicas=1) as workers:
            warm = add_mail(gmail, users, pool, 2 * len(users))
            _run_phase(settings, topic, warm, None, workers, users, 0)
            burst = add_mail(gmail, users, pool, capacity_emails)
            sent = _run_phase(settings, topic, burst, None, workers, users, len(warm))
            times = done_times(database_url, users)
            last = max(max(times[(m.user_id, m.message_id)].values()) for m in sent)
            capacity = len(sent) / (last - sent[0].sent_at).total_seconds()
            rate = capacity / 2
            steady = add_mail(gmail, users, pool, max(len(users), round(rate * steady_seconds)))
            done = len(warm) + len(burst)
            sent = _run_phase(settings, topic, steady, rate, workers, users, done)
            normalized, everything = _latencies_ms(sent, done_times(database_url, users))
    return LatencyBenchResult(
        capacity_emails_per_second=round(capacity, 1),
        offered_emails_per_second=round(rate, 1),
        steady_emails=len(sent),
        normalized_p50_ms=round(statistics.median(normalized), 1),
        normalized_p99_ms=round(percentile(normalized, 0.99), 1),
        all_stages_p50_ms=round(statistics.median(everything), 1),
        all_stages_p99_ms=round(percentile(everything, 0.99), 1),
    )
