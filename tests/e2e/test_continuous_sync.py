"""Mailboxes that stay in sync by themselves: nobody calls `inboxflow sync` in these tests.

The whole pipeline runs with the scheduler and the push receiver (as `inboxflow worker` starts
them when a Pub/Sub topic is configured); the Gmail emulator watches mailboxes and posts signed
push notifications to the receiver, as Google would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from db import accounts
from devstack.gmail_emulator import GmailEmulator, PushConfig
from devstack.gmail_emulator.mailbox import ListQuery
from devstack.processes import free_port
from devstack.stack import Stack
from tests.helpers import wait_until
from tests.pipeline_support import Pipeline, running_pipeline

NEW_MAIL = (
    "From: Dana <dana@example.com>\r\nTo: {user}\r\nSubject: {subject}\r\n"
    "Message-ID: <{subject}@example.com>\r\n\r\nhello\r\n"
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[GmailEmulator]:
    gmail = GmailEmulator().start_in_thread()
    try:
        yield gmail
    finally:
        gmail.stop_thread()


@pytest.fixture(scope="module")
def endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}/gmail/push"


@pytest.fixture(scope="module")
def pipeline(stack: Stack, emulator: GmailEmulator, endpoint: str) -> Iterator[Pipeline]:
    emulator.set_push(PushConfig(endpoint=endpoint))
    env = {
        "INBOXFLOW_GMAIL_PUBSUB_TOPIC": "projects/inboxflow-test/topics/gmail",
        "INBOXFLOW_PUSH_PORT": str(urlsplit(endpoint).port),
        "INBOXFLOW_PUSH_AUDIENCE": endpoint,
        "INBOXFLOW_PUSH_CERTS_URL": emulator.certs_url,
        "INBOXFLOW_SCHEDULER_INTERVAL": "0.5",
        "INBOXFLOW_SYNC_MAX_STALENESS": "3600",  # push, not the schedule, must bring new mail
        "INBOXFLOW_SINK_EMAILS": "true",
    }
    with running_pipeline(stack, emulator, env=env) as running:
        yield running


def register(pipeline: Pipeline, user: str) -> None:
    async def add() -> None:
        async with await psycopg.AsyncConnection.connect(
            pipeline.database_url, autocommit=True
        ) as conn:
            await accounts.add_account(conn, user)

    asyncio.run(add())


def listed_ids(emulator: GmailEmulator, user: str) -> set[str]:
    """What messages.list returns for the user (spam and trash excluded, as Gmail does)."""
    with emulator.state.lock:
        return {m.id for m in emulator.mailbox(user).list(ListQuery())}


def emails(pipeline: Pipeline, user: str) -> set[str]:
    rows = pipeline.query("SELECT message_id FROM emails WHERE user_id = %(u)s", u=user)
    return {row[0] for row in rows}


def sync_ids(pipeline: Pipeline, user: str) -> list[str]:
    rows = pipeline.query(
        "SELECT subject_id FROM jobs WHERE user_id = %(u)s AND kind = 'google_gmail_sync'"
        " ORDER BY created_at",
        u=user,
    )
    return [row[0] for row in rows]


def new_mail(emulator: GmailEmulator, user: str) -> str:
    subject = f"s{uuid.uuid4().hex[:8]}"
    return emulator.add_message(user, NEW_MAIL.format(user=user, subject=subject).encode())


def test_a_registered_mailbox_is_synced_then_new_mail_arrives_by_push(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    user = f"u{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(user, messages=8, seed=5)
    register(pipeline, user)  # and nothing else: the scheduler syncs it and watches it

    expected = listed_ids(emulator, user)  # spam and trash are not synced
    first = wait_until(
        lambda: emails(pipeline, user) == expected and expected, timeout=120, message="first sync"
    )
    wait_until(lambda: emulator.watching(user), timeout=60, message="a Gmail watch")
    assert [s.split("-")[0] for s in sync_ids(pipeline, user)] == ["schedule"]

    added = new_mail(emulator, user)
    wait_until(lambda: added in emails(pipeline, user), timeout=60, message="pushed mail")
    assert emails(pipeline, user) == first | {added}
    assert any(s.startswith("push-") for s in sync_ids(pipeline, user))


def test_with_push_lost_the_staleness_schedule_brings_new_mail(
    pipeline: Pipeline, emulator: GmailEmulator, endpoint: str
) -> None:
    user = f"u{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(user, messages=3, seed=6)
    register(pipeline, user)
    expected = listed_ids(emulator, user)
    wait_until(lambda: emails(pipeline, user) == expected, timeout=120, message="first sync")
    emulator.set_push(PushConfig(endpoint=endpoint, drop_rate=1.0))  # Gmail drops every push
    try:
        added = new_mail(emulator, user)
        before = sync_ids(pipeline, user)
        # The account's last request ages past the staleness bound (as an hour would).
        pipeline.query(
            "UPDATE accounts SET last_sync_requested_at = now() - interval '2 hours'"
            " WHERE user_id = %(u)s RETURNING user_id",
            u=user,
        )
        wait_until(lambda: added in emails(pipeline, user), timeout=60, message="scheduled mail")
    finally:
        emulator.set_push(PushConfig(endpoint=endpoint))
    later = [s for s in sync_ids(pipeline, user) if s not in before]
    assert later
    assert all(s.startswith("schedule-") for s in later)


def test_deletions_and_label_changes_in_gmail_reach_postgres_by_push(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    user = f"u{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(user, messages=0, seed=7)
    kept = new_mail(emulator, user)
    gone = emulator.add_message(
        user, b"From: Eve <eve@example.com>\r\nTo: x@y.test\r\nSubject: bye\r\n\r\nhi\r\n"
    )
    register(pipeline, user)
    wait_until(lambda: emails(pipeline, user) == {kept, gone}, timeout=120, message="first sync")
    wait_until(lambda: contact(pipeline, user, "eve@example.com"), timeout=60, message="eve")

    emulator.delete_message(user, gone)
    emulator.modify_labels(user, kept, add=["STARRED"], remove=["UNREAD"])

    wait_until(lambda: emails(pipeline, user) == {kept}, timeout=60, message="deletion applied")
    wait_until(
        lambda: "STARRED" in labels(pipeline, user, kept), timeout=60, message="labels applied"
    )
    assert "UNREAD" not in labels(pipeline, user, kept)
    # Eve was seen only in the deleted message: her contact row goes with it.
    wait_until(
        lambda: not contact(pipeline, user, "eve@example.com"), timeout=60, message="eve gone"
    )


def labels(pipeline: Pipeline, user: str, message_id: str) -> list[str]:
    rows = pipeline.query(
        "SELECT labels FROM emails WHERE user_id = %(u)s AND message_id = %(m)s",
        u=user,
        m=message_id,
    )
    return list(rows[0][0]) if rows else []


def contact(pipeline: Pipeline, user: str, address: str) -> bool:
    rows = pipeline.query(
        "SELECT 1 FROM contacts WHERE user_id = %(u)s AND address = %(a)s", u=user, a=address
    )
    return bool(rows)
