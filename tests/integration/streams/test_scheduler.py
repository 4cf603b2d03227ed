"""The staleness scheduler as real processes: one acts across replicas, another takes over."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from db import accounts
from devstack.gmail_emulator import GmailEmulator
from inboxflow.supervisor import ProcessGroup
from schemas.models import SyncRequested
from schemas.serde import decode, serde_for
from streams.sources.scheduler import SCHEDULER_LOCK, SchedulerConfig, SyncScheduler
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.gmail.watch import watch
from tests.helpers import wait_until
from tests.memory_publisher import MemoryPublisher
from tests.pipeline_support import read_topic
from topics.admin import ensure_topics
from topics.catalogue import build_catalogue
from topics.kafka import KafkaClients


def requests_for(bootstrap: str, topic: str) -> list[SyncRequested]:
    return [
        decode(r.value or b"", SyncRequested) for r in asyncio.run(read_topic(bootstrap, topic))
    ]


def lock_holder(database_url: str) -> str | None:
    """The application name of the session holding the scheduler lock, if any."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s",
            (SCHEDULER_LOCK,),
        ).fetchone()
    return row[0] if row else None


def register(database_url: str, *users: str) -> None:
    async def add() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for user in users:
                await accounts.add_account(conn, user)

    asyncio.run(add())


@pytest.fixture
def schedulers(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str], tmp_path: Path
) -> Iterator[tuple[ProcessGroup, str]]:
    namespace = unique_name("sched")
    catalogue = build_catalogue(namespace)
    asyncio.run(ensure_topics(KafkaClients(kafka_bootstrap), [catalogue.sync_requested]))
    base: dict[str, Any] = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_SCHEDULER_INTERVAL": "0.2",
        "INBOXFLOW_SYNC_MAX_STALENESS": "3600",
    }
    group = ProcessGroup()
    try:
        for name in ("scheduler-a", "scheduler-b"):
            # libpq reads PGAPPNAME: pg_stat_activity then tells which replica holds the lock.
            env = {**base, "PGAPPNAME": name}
            group.start(
                name, [sys.executable, "-m", "inboxflow", "scheduler"], env=env, log_dir=tmp_path
            )
        yield group, catalogue.sync_requested.name
    finally:
        group.stop()


def test_one_replica_schedules_and_another_takes_over_after_kill_9(
    schedulers: tuple[ProcessGroup, str], kafka_bootstrap: str, database_url: str
) -> None:
    group, topic = schedulers
    register(database_url, "first@x.test", "second@x.test")

    holder = wait_until(lambda: lock_holder(database_url), timeout=60, message="a lock holder")
    first = wait_until(
        lambda: (
            len(requests_for(kafka_bootstrap, topic)) >= 2 and requests_for(kafka_bootstrap, topic)
        ),
        timeout=60,
        message="both new accounts scheduled",
    )
    assert sorted(r.user_id for r in first) == ["first@x.test", "second@x.test"]
    assert not any(r.full for r in first)  # the agent lists in full when there is no checkpoint

    group.kill(holder)  # SIGKILL: no goodbye to Postgres; the server drops the session and lock
    other = wait_until(
        lambda: (h := lock_holder(database_url)) not in (None, holder) and h,
        timeout=60,
        message="the other replica takes the lock",
    )
    assert other in {"scheduler-a", "scheduler-b"} - {holder}
    register(database_url, "third@x.test")
    later = wait_until(
        lambda: [r for r in requests_for(kafka_bootstrap, topic) if r.user_id == "third@x.test"],
        timeout=60,
        message="an account added after the kill is scheduled",
    )
    assert len(later) == 1
    # The accounts scheduled before the kill were not asked for again (staleness is an hour).
    assert len(requests_for(kafka_bootstrap, topic)) == 3


def test_accounts_past_the_staleness_bound_are_asked_for_again(
    schedulers: tuple[ProcessGroup, str], kafka_bootstrap: str, database_url: str
) -> None:
    _, topic = schedulers
    register(database_url, "stale@x.test")
    wait_until(lambda: requests_for(kafka_bootstrap, topic), timeout=60, message="first request")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE accounts SET last_sync_requested_at = now() - interval '2 hours'"
            " WHERE user_id = 'stale@x.test'"
        )
    again = wait_until(
        lambda: len(r := requests_for(kafka_bootstrap, topic)) >= 2 and r,
        timeout=60,
        message="a second request once the account went stale",
    )
    assert [r.user_id for r in again] == ["stale@x.test", "stale@x.test"]
    assert len({r.sync_id for r in again}) == 2


async def test_the_lock_holder_keeps_gmail_watches_alive(
    gmail_emulator: GmailEmulator, database_url: str
) -> None:
    gmail_emulator.add_user("watched@x.test", messages=1, seed=1)
    gmail_emulator.add_user("fresh@x.test", messages=1, seed=2)
    client = GmailClient(GmailClientConfig(api_root=gmail_emulator.url))
    renewed_users: list[str] = []

    async def renew(user: str) -> datetime:
        renewed_users.append(user)
        return (await watch(client, user, "projects/p/topics/gmail")).expiration

    config = SchedulerConfig(database_url, "unused", max_staleness=3600, interval=1)
    scheduler = SyncScheduler(
        config, publisher=MemoryPublisher(), serde=serde_for(None), renew_watch=renew
    )
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for user in ("watched@x.test", "fresh@x.test"):
                await accounts.add_account(conn, user)
            assert await scheduler.renew_watches(conn) == ["fresh@x.test", "watched@x.test"]
            assert gmail_emulator.watching("watched@x.test")
            account = await accounts.get_account(conn, "watched@x.test")
            assert account.watch_expires_at is not None
            assert account.watch_expires_at > datetime.now(UTC) + timedelta(days=6)
            left = REGISTRY.get_sample_value("inboxflow_gmail_watch_expiry_seconds")
            assert left is not None
            assert left > timedelta(days=6).total_seconds()  # what the alert watches

            assert await scheduler.renew_watches(conn) == []  # renewed today: nothing to do
            await conn.execute(  # one watch is about to expire
                "UPDATE accounts SET watch_expires_at = now() + interval '1 hour'"
                " WHERE user_id = 'watched@x.test'"
            )
            earliest = await accounts.earliest_watch_expiry(conn)
            assert earliest is not None
            assert earliest < datetime.now(UTC) + timedelta(hours=1, minutes=1)
            assert await scheduler.renew_watches(conn) == ["watched@x.test"]
            await accounts.set_state(conn, "fresh@x.test", accounts.AccountState.PAUSED)
            await conn.execute("UPDATE accounts SET watch_renewed_at = now() - interval '2 days'")
            assert await scheduler.renew_watches(conn) == ["watched@x.test"]  # not the paused
    finally:
        client.close()
    assert renewed_users == ["fresh@x.test", "watched@x.test", "watched@x.test", "watched@x.test"]
