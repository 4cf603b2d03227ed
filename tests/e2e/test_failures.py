"""Failure handling end to end: throttling and 5xx, poison records, redrive, breakers, timeouts.

Real workers on real Kafka and Postgres; Gmail and the embedding API are emulators with faults.
Retry ladders are short (1-4 s) so the ladder is walked within the test.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from devstack.embedding_emulator import EmbeddingEmulator, EmulatorFaults
from devstack.gmail_emulator.faults import FaultConfig
from devstack.gmail_emulator.mailbox import ListQuery
from devstack.gmail_emulator.server import GmailEmulator
from devstack.processes import free_port_block
from devstack.stack import Stack
from inboxflow.supervisor import SINKS
from inboxflow.wiring import AGENTS, kafka_from
from ops.dlq import redrive
from schemas import headers as h
from schemas.models import EmailNormalized, JobStateChanged, MessageDiscovered
from schemas.serde import decode
from streams.runtime.stage import Outgoing
from tests.e2e.test_pipeline import new_user
from tests.helpers import wait_until
from tests.pipeline_support import Pipeline, emulated_embeddings_env, running_pipeline

LADDERS = {agent: [1, 2, 4] for agent in ("sync", "normalize", "extract", "embed", "insight")}
EMBED_AGENT_INDEX = 3  # position of `embed` among the worker processes (metrics port offset)


def listed(emulator: GmailEmulator, user: str) -> int:
    with emulator.state.lock:
        return len(emulator.mailbox(user).list(ListQuery()))


def dead_or_error(pipeline: Pipeline, users: list[str]) -> int:
    return sum(
        n
        for statuses in pipeline.jobs(users).values()
        for status, n in statuses.items()
        if status in ("dead", "error")
    )


@pytest.fixture(scope="module")
def embedding_api() -> Iterator[EmbeddingEmulator]:
    with EmbeddingEmulator(dimension=64).run_in_thread() as emulator:
        yield emulator


# --- Gmail throttling and server errors ---------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_gmail() -> Iterator[GmailEmulator]:
    emulator = GmailEmulator(
        faults=FaultConfig(rate_429=0.3, rate_500=0.05, rate_503=0.05, throttle_seconds=0.5, seed=3)
    ).start_in_thread()
    try:
        yield emulator
    finally:
        emulator.stop_thread()


@pytest.fixture(scope="module")
def gmail_pipeline(
    stack: Stack, faulty_gmail: GmailEmulator, embedding_api: EmbeddingEmulator
) -> Iterator[Pipeline]:
    # The emulated embedding API keeps the CPU for the Gmail side; the local model has its own
    # end-to-end test in test_pipeline.py.
    env = emulated_embeddings_env(embedding_api)
    with running_pipeline(stack, faulty_gmail, env=env, retry_ladders=LADDERS) as running:
        yield running


def test_under_throttling_and_5xx_every_message_ends_done_and_none_early(
    gmail_pipeline: Pipeline, faulty_gmail: GmailEmulator
) -> None:
    users = [new_user(faulty_gmail, 15, seed=51), new_user(faulty_gmail, 15, seed=52)]
    total = sum(listed(faulty_gmail, user) for user in users)

    gmail_pipeline.sync(users, full=True)
    gmail_pipeline.wait_settled(users, messages=total, timeout=240)

    accounting = faulty_gmail.accounting
    assert sum(accounting.throttled.values()) > 0, "faults were injected"
    assert accounting.early_requests == 0, "no request before a Retry-After time"
    assert dead_or_error(gmail_pipeline, users) == 0
    for kind in ("normalize_google_email", "extract_contacts", "embed", "insight"):
        assert gmail_pipeline.jobs(users)[kind] == {"done": total}
    discovered = gmail_pipeline.events(
        gmail_pipeline.catalogue.message_discovered.name, MessageDiscovered
    )
    assert len({e.message_id for e in discovered if e.user_id in users}) == total
    assert_no_retry_ran_early(gmail_pipeline)


def assert_no_retry_ran_early(pipeline: Pipeline) -> None:
    """Each record taken from a retry tier started processing no earlier than its due time."""
    states = pipeline.events(pipeline.catalogue.job_state_changed.name, JobStateChanged)
    started = {
        (s.job_id, s.attempts): s.occurred_at.timestamp() * 1000
        for s in states
        if s.status.value == "processing"
    }
    for group in pipeline.catalogue.groups:
        for tier in group.retry_tiers:
            for record in pipeline.read(tier.topic):
                headers = list(record.headers)
                due = h.header_int(headers, h.DUE_TIMESTAMP)
                attempts = h.header_int(headers, h.ATTEMPTS)
                job = job_of_tier_record(pipeline, headers, record.value or b"")
                if job is None or due is None or attempts is None:
                    continue
                begun = started.get((job, attempts + 1))
                if begun is not None:
                    assert begun >= due - 1, f"{job} attempt {attempts + 1} ran before due"


def job_of_tier_record(pipeline: Pipeline, headers: list, value: bytes) -> str | None:  # type: ignore[type-arg]
    source = h.header_value(headers, h.ORIGINAL_TOPIC)
    catalogue = pipeline.catalogue
    if source == catalogue.message_discovered.name:
        event = decode(value, MessageDiscovered)
        return f"normalize_google_email:{event.user_id}:{event.message_id}"
    if source == catalogue.email_normalized.name:
        handler = h.header_value(headers, h.HANDLER)
        kind = {"extract": "extract_contacts", "embed": "embed", "insight": "insight"}[
            handler or ""
        ]
        normalized = decode(value, EmailNormalized)
        return f"{kind}:{normalized.user_id}:{normalized.message_id}"
    return None


def test_poison_record_lands_in_the_dead_letter_topic_while_the_rest_flows(
    gmail_pipeline: Pipeline, faulty_gmail: GmailEmulator
) -> None:
    catalogue = gmail_pipeline.catalogue
    user = new_user(faulty_gmail, 10, seed=61)
    poison_key = user.encode()
    poison = b"\x00\x01 definitely not avro"
    asyncio.run(
        publish(gmail_pipeline, Outgoing(catalogue.email_normalized.name, poison_key, poison))
    )
    gmail_pipeline.sync([user], full=True)
    gmail_pipeline.wait_settled([user], messages=listed(faulty_gmail, user), timeout=240)

    for agent in ("extract", "embed", "insight"):
        dlq = catalogue.group(agent).dlq.name

        def landed(dlq: str = dlq) -> list:  # type: ignore[type-arg]
            return [r for r in gmail_pipeline.read(dlq) if r.value == poison]

        letters = wait_until(landed, timeout=60, message=f"poison in {dlq}")
        assert len(letters) == 1
        headers = dict(letters[0].headers)
        assert letters[0].key == poison_key
        assert headers[h.ORIGINAL_TOPIC] == catalogue.email_normalized.name.encode()
        assert headers[h.ERROR_CLASS] == b"permanent"
        assert headers[h.ORIGINAL_CONSUMER_GROUP] == catalogue.group(agent).group_id.encode()
        assert b"UndecodableRecordError" in headers[h.EXCEPTION_MESSAGE]


async def publish(pipeline: Pipeline, record: Outgoing) -> None:
    from streams.runtime.publisher import KafkaPublisher
    from topics.kafka import KafkaClients

    publisher = KafkaPublisher(KafkaClients(pipeline.settings.kafka_bootstrap_servers))
    try:
        await publisher.publish([record])
    finally:
        await publisher.stop()


# --- the embedding API: breaker, timeouts, fix and redrive -------------------------------------


@pytest.fixture(scope="module")
def plain_gmail() -> Iterator[GmailEmulator]:
    emulator = GmailEmulator().start_in_thread()
    try:
        yield emulator
    finally:
        emulator.stop_thread()


@pytest.fixture(scope="module")
def metrics_base() -> int:
    # Every agent and sink process serves metrics on base + its index (see supervisor.start_all).
    return free_port_block(len(AGENTS) + len(SINKS))


@pytest.fixture(scope="module")
def embed_pipeline(
    stack: Stack, plain_gmail: GmailEmulator, embedding_api: EmbeddingEmulator, metrics_base: int
) -> Iterator[Pipeline]:
    env = {
        **emulated_embeddings_env(embedding_api),
        "INBOXFLOW_TIMEOUTS__EMBED": "2",
        "INBOXFLOW_METRICS_PORT": str(metrics_base),
    }
    with running_pipeline(stack, plain_gmail, env=env, retry_ladders=LADDERS) as running:
        yield running


def breaker_state(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = re.search(r'inboxflow_breaker_state\{breaker="embedding:[^"]*"\} (\S+)', text)
    return float(found.group(1)) if found else None


def test_breaker_opens_while_the_embedding_api_is_down_and_closes_after(
    embed_pipeline: Pipeline,
    plain_gmail: GmailEmulator,
    embedding_api: EmbeddingEmulator,
    metrics_base: int,
) -> None:
    port = metrics_base + EMBED_AGENT_INDEX
    user = new_user(plain_gmail, 25, seed=71)
    embedding_api.faults = EmulatorFaults(down=True)
    try:
        embed_pipeline.sync([user], full=True)
        wait_until(lambda: breaker_state(port) == 2.0, timeout=120, message="breaker open")
    finally:
        embedding_api.faults = EmulatorFaults()
    embed_pipeline.wait_settled([user], messages=listed(plain_gmail, user), timeout=240)
    wait_until(lambda: breaker_state(port) == 0.0, timeout=60, message="breaker closed")
    assert dead_or_error(embed_pipeline, [user]) == 0
    assert embedding_api.counters().statuses.get(503, 0) > 0


def test_a_hung_call_times_out_and_is_retried(
    embed_pipeline: Pipeline, plain_gmail: GmailEmulator, embedding_api: EmbeddingEmulator
) -> None:
    user = new_user(plain_gmail, 6, seed=81)
    embedding_api.faults = EmulatorFaults(latency=5.0)  # past the 2 s embed timeout
    try:
        embed_pipeline.sync([user], full=True)

        def timed_out() -> bool:
            rows = embed_pipeline.query(
                "SELECT count(*) FROM jobs WHERE user_id = %(u)s AND kind = 'embed' "
                "AND last_error_class = 'timeout'",
                u=user,
            )
            return rows[0][0] > 0

        wait_until(timed_out, timeout=120, message="an embed job failed with a timeout")
    finally:
        embedding_api.faults = EmulatorFaults()
    embed_pipeline.wait_settled([user], messages=listed(plain_gmail, user), timeout=240)
    assert dead_or_error(embed_pipeline, [user]) == 0


def test_after_the_cause_is_fixed_redrive_completes_dead_records(
    embed_pipeline: Pipeline, plain_gmail: GmailEmulator, embedding_api: EmbeddingEmulator
) -> None:
    user = new_user(plain_gmail, 5, seed=91)
    total = listed(plain_gmail, user)
    embedding_api._api_key = f"rotated-{uuid.uuid4().hex}"  # our key is now refused: 401
    try:
        embed_pipeline.sync([user], full=True)

        def all_embeds_failed() -> bool:
            return embed_pipeline.jobs([user]).get("embed", {}).get("error", 0) == total

        wait_until(all_embeds_failed, timeout=120, message="embed jobs in error")
    finally:
        embedding_api._api_key = None  # the operator fixes the key
    group = embed_pipeline.catalogue.group("embed")
    report = asyncio.run(redrive(kafka_from(embed_pipeline.settings), group, dry_run=False))
    assert report.moved >= total
    embed_pipeline.wait_settled([user], messages=total, timeout=180)
    assert embed_pipeline.jobs([user])["embed"] == {"done": total}
