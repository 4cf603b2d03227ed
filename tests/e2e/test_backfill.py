"""A backfill of a large mailbox leaves live traffic its latency and the user its quota share.

The whole pipeline runs as processes on a scaled-down Gmail quota (a 10 s window of 2,000 units:
12,000 units a minute, so the backfill's half is about 5 messages a second). The latency of new
mail in another mailbox (incremental sync request to its normalize and extract jobs `done`) is
measured without a backfill, then while a backfill of 1,200 messages runs, which is still running
when the measurement ends. The backfill is requested with the CLI, as an operator would; another
one is followed by the CLI's progress to its end through a kill -9 of the sync agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from devstack.embedding_emulator import EmbeddingEmulator
from devstack.gmail_emulator.mailbox import ListQuery
from devstack.gmail_emulator.quota import QuotaConfig
from devstack.gmail_emulator.server import GmailEmulator
from devstack.stack import Stack
from inboxflow.scheduling import register_accounts
from inboxflow.wiring import request_syncs
from streams.runtime.routing import PHASE_WEIGHT
from tests.helpers import wait_until
from tests.pipeline_support import Pipeline, emulated_embeddings_env, running_pipeline

WINDOW_SECONDS = 10.0
UNITS_PER_WINDOW = 2_000  # 12,000 units a minute per user
SHARE = 0.5
BACKFILL_BATCH = 10
LARGE_MAILBOX = 1_200
SAMPLES = 4
# One batch of the dearest fetch calls (threads.get, 40 units) the lane may overshoot by.
BATCH_SLACK = BACKFILL_BATCH * 40
NEW_MAIL = (
    "From: Dana <dana@example.com>\r\nTo: {user}\r\nSubject: {subject}\r\n"
    "Message-ID: <{subject}@example.com>\r\n\r\nhello\r\n"
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[GmailEmulator]:
    quota = QuotaConfig(user_units_per_window=UNITS_PER_WINDOW, window_seconds=WINDOW_SECONDS)
    gmail = GmailEmulator(quota=quota).start_in_thread()
    try:
        yield gmail
    finally:
        gmail.stop_thread()


@pytest.fixture(scope="module")
def pipeline(stack: Stack, emulator: GmailEmulator) -> Iterator[Pipeline]:
    env = {
        "INBOXFLOW_GMAIL_QUOTA_WINDOW_SECONDS": str(WINDOW_SECONDS),
        "INBOXFLOW_GMAIL_USER_UNITS_PER_MINUTE": str(int(UNITS_PER_WINDOW * 60 / WINDOW_SECONDS)),
        "INBOXFLOW_BACKFILL_QUOTA_SHARE": str(SHARE),
        "INBOXFLOW_BACKFILL_BATCH_SIZE": str(BACKFILL_BATCH),
        # Only the tests ask for syncs: the scheduler's tick at start finds no account yet.
        "INBOXFLOW_SCHEDULER_INTERVAL": "3600",
        "INBOXFLOW_SESSION_TIMEOUT_SECONDS": "6",  # a killed agent's partitions move soon
    }
    with EmbeddingEmulator(dimension=32).run_in_thread() as embeddings:
        env.update(emulated_embeddings_env(embeddings))
        with running_pipeline(stack, emulator, env=env) as running:
            yield running


def cli_env(pipeline: Pipeline) -> dict[str, str]:
    """The environment a CLI run against the pipeline needs (the stack is plain: no TLS)."""
    settings = pipeline.settings
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": pipeline.database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": settings.topic_namespace,
        "INBOXFLOW_GMAIL_API_ROOT": settings.gmail_api_root,
    }


def message_done(pipeline: Pipeline, user: str, message_id: str) -> bool:
    """Whether the message's normalize job (in the normalize phase) and extract job are done."""
    rows = pipeline.query(
        "SELECT kind, status, version FROM jobs WHERE user_id = %(u)s AND subject_id = %(m)s",
        u=user,
        m=message_id,
    )
    done = {
        kind
        for kind, status, version in rows
        if status == "done" and (kind != "normalize_google_email" or version >= PHASE_WEIGHT)
    }
    return {"normalize_google_email", "extract_contacts"} <= done


def normalized(pipeline: Pipeline, user: str) -> int:
    rows = pipeline.query(
        "SELECT count(*) FROM jobs WHERE user_id = %(u)s AND kind = 'normalize_google_email'"
        " AND status = 'done' AND version >= %(phase)s",
        u=user,
        phase=PHASE_WEIGHT,
    )
    return int(rows[0][0])


def live_latency(pipeline: Pipeline, emulator: GmailEmulator, user: str) -> float:
    """Seconds from new mail and an incremental sync request to its jobs `done`."""
    subject = f"s{uuid.uuid4().hex[:8]}"
    message_id = emulator.add_message(user, NEW_MAIL.format(user=user, subject=subject).encode())
    started = time.monotonic()
    asyncio.run(request_syncs(pipeline.settings, [user], full=False))
    wait_until(
        lambda: message_done(pipeline, user, message_id),
        timeout=60,
        interval=0.05,
        message=f"new mail {message_id} of {user} done",
    )
    return time.monotonic() - started


def most_units_in_a_window(emulator: GmailEmulator, user: str) -> int:
    """The most units charged to ``user`` in any window of WINDOW_SECONDS (sliding)."""
    charges = sorted((c.at, c.units) for c in emulator.accounting.charges if c.user == user)
    most = total = start = 0
    for at, units in charges:
        total += units
        while charges[start][0] <= at - WINDOW_SECONDS:
            total -= charges[start][1]
            start += 1
        most = max(most, total)
    return most


# First: records of one partition are fetched in order, so a backfill whose user shares a
# partition with the large one of the next test would wait for it to end.
@pytest.mark.chaos
def test_a_backfill_survives_kill_9_of_the_sync_agent_and_the_cli_follows_it_to_the_end(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    user = f"resumed{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(user, messages=60, seed=13)
    with emulator.state.lock:  # what messages.list gives: spam and trash are not backfilled
        expected = {m.id for m in emulator.mailbox(user).list(ListQuery())}
    asyncio.run(register_accounts(pipeline.settings, [user]))

    with subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "inboxflow", "backfill", user, "--json"],
        env=cli_env(pipeline),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as cli:
        try:
            wait_until(lambda: normalized(pipeline, user) >= 10, timeout=60, message="started")
            pipeline.workers.kill("agent-sync")  # mid-backfill: it dies holding work
            pipeline.workers.restart("agent-sync")
            out, err = cli.communicate(timeout=180)
        finally:
            cli.kill()

    assert cli.returncode == 0, err
    summary = json.loads(out)
    assert [b["user_id"] for b in summary["backfills"]] == [user]
    assert (summary["discovered"], summary["normalized"]) == (len(expected), len(expected))
    assert (summary["gone"], summary["failed"]) == (0, 0)
    assert "fetching" in err  # the bar, on stderr beside the JSON
    # The bar ends when every message is normalized; extract runs after that, so wait for it.
    wanted = {"done": len(expected)}
    kinds = ("normalize_google_email", "extract_contacts")
    wait_until(
        lambda: all(pipeline.jobs([user]).get(kind) == wanted for kind in kinds),
        timeout=120,
        message=f"every job done: {pipeline.jobs([user])}",
    )
    rows = pipeline.query(
        "SELECT subject_id FROM jobs WHERE user_id = %(u)s AND kind = 'normalize_google_email'",
        u=user,
    )
    assert {row[0] for row in rows} == expected


def test_live_mail_keeps_its_latency_while_a_large_mailbox_is_backfilled(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    live = f"live{uuid.uuid4().hex[:8]}@inboxflow.test"
    large = f"large{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(live, messages=3, seed=11)
    emulator.add_user(large, messages=LARGE_MAILBOX, seed=12)
    pipeline.sync([live])  # its first, full sync: a checkpoint for incremental ones
    pipeline.wait_settled([live], messages=3, timeout=120)

    baseline = [live_latency(pipeline, emulator, live) for _ in range(SAMPLES)]

    asyncio.run(register_accounts(pipeline.settings, [large]))
    started = time.monotonic()
    requested = subprocess.run(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "inboxflow", "backfill", large, "--no-progress"],
        env=cli_env(pipeline),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert requested.returncode == 0, requested.stderr
    assert f"backfill requested user={large}" in requested.stdout
    # The backfill is under way: its messages go all the way through the pipeline.
    wait_until(lambda: normalized(pipeline, large) >= 20, timeout=60, message="backfill flowing")

    during = [live_latency(pipeline, emulator, live) for _ in range(SAMPLES)]
    # New mail of the mailbox being backfilled takes the live lane too (the backfill stored a
    # checkpoint after its first page), inside the half of the quota the backfill leaves.
    own = live_latency(pipeline, emulator, large)

    backfilled = normalized(pipeline, large)
    elapsed = time.monotonic() - started
    assert backfilled < LARGE_MAILBOX, "the backfill ended before the measurement did"
    ratio = statistics.median(during) / statistics.median(baseline)
    print(
        f"live latency without a backfill {[round(s, 2) for s in baseline]} s, "
        f"during one {[round(s, 2) for s in during]} s: median ratio {ratio:.2f}; "
        f"backfill {backfilled}/{LARGE_MAILBOX} messages normalized in {elapsed:.1f}s"
    )
    print(f"new mail of the backfilled mailbox itself: {own:.2f} s")
    assert statistics.median(during) <= 3 * statistics.median(baseline) + 2.0
    assert own <= 3 * statistics.median(baseline) + 2.0
    assert max(during) <= 3 * max(baseline) + 4.0

    # The backfill kept to its share of the large mailbox's quota, and Gmail never throttled.
    ceiling = UNITS_PER_WINDOW
    most = most_units_in_a_window(emulator, large)
    print(f"backfill units in its busiest {WINDOW_SECONDS:.0f}s window: {most} of {ceiling}")
    assert most <= SHARE * ceiling + BATCH_SLACK
    assert most >= SHARE * ceiling / 2, "the backfill did not use its share"
    assert emulator.accounting.throttled_total == 0
