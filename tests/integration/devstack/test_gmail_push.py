"""The emulator's users.watch/users.stop over real HTTP, and its Pub/Sub push deliveries."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from google.auth import jwt

from devstack.gmail_emulator import GmailEmulator, PushConfig
from devstack.gmail_emulator.push import Watch
from schemas.errors import PermanentError
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.gmail.watch import stop_watch, watch
from tests.helpers import async_wait_until
from tests.integration.conftest import EmulatorFactory

USER = "watched@inboxflow.test"
TOPIC = "projects/inboxflow-test/topics/gmail"
MAIL = b"From: a@example.com\r\nTo: watched@inboxflow.test\r\nSubject: hi\r\n\r\nhello\r\n"


@dataclass
class Capture:
    """A push endpoint that records every delivery and answers ``statuses`` in turn, then 204."""

    url: str = ""
    deliveries: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def notifications(self) -> list[dict[str, Any]]:
        return [json.loads(base64.b64decode(b["message"]["data"])) for _, b in self.deliveries]


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    found = Capture()

    async def push(request: web.Request) -> web.Response:
        found.deliveries.append((dict(request.headers), await request.json()))
        return web.Response(status=found.statuses.pop(0) if found.statuses else 204)

    app = web.Application()
    app.router.add_post("/push", push)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/push"
    try:
        yield found
    finally:
        await runner.cleanup()


@pytest.fixture
def emulator_for(
    gmail_emulator_factory: EmulatorFactory,
) -> Callable[..., GmailEmulator]:
    def make(endpoint: str, **knobs: Any) -> GmailEmulator:
        emu = gmail_emulator_factory()
        emu.set_push(PushConfig(endpoint=endpoint, **{"min_interval_seconds": 0.2, **knobs}))
        emu.add_user(USER, messages=3, seed=5)
        return emu

    return make


@pytest.fixture
def client(gmail_emulator: GmailEmulator) -> Iterator[GmailClient]:
    gmail = GmailClient(GmailClientConfig(api_root=gmail_emulator.url))
    yield gmail
    gmail.close()


async def test_watch_answers_like_google_and_costs_100_units(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=3, seed=5)
    history_id = await client.get_history_id(USER)
    gmail_emulator.reset_accounting()
    result = await watch(client, USER, TOPIC, ["INBOX"])
    assert result.history_id == history_id
    expected = datetime.now(UTC) + timedelta(days=7)
    assert abs((result.expiration - expected).total_seconds()) < 60
    assert gmail_emulator.watching(USER)
    await stop_watch(client, USER)
    assert not gmail_emulator.watching(USER)
    seen = gmail_emulator.accounting
    assert seen.calls_by_method == {"users.watch": 1, "users.stop": 1}
    assert seen.units == 150
    assert client.stats.units == 1 + 150  # the limiter was charged what Google charges


async def test_watch_refuses_a_topic_that_is_not_a_pubsub_name(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER)
    with pytest.raises(ValueError, match="not a Pub/Sub topic name"):
        await watch(client, USER, "gmail-topic")
    with pytest.raises(PermanentError, match="400 invalidArgument: Invalid topicName"):
        await watch(client, USER, "projects/inboxflow-test/topics/x")  # topic ids have 3+ chars
    assert not gmail_emulator.watching(USER)


async def test_a_watched_change_is_pushed_with_a_verifiable_token(
    capture: Capture, emulator_for: Callable[..., GmailEmulator]
) -> None:
    emu = emulator_for(capture.url, audience="https://receiver.test/gmail/push")
    client = GmailClient(GmailClientConfig(api_root=emu.url))
    try:
        await watch(client, USER, TOPIC)
    finally:
        client.close()
    emu.add_message(USER, MAIL)
    await async_wait_until(lambda: capture.deliveries, timeout=10, message="push delivered")
    headers, body = capture.deliveries[0]
    assert capture.notifications() == [
        {"emailAddress": USER, "historyId": emu.mailbox(USER).history_id}
    ]
    assert body["subscription"] == "projects/inboxflow-emulator/subscriptions/gmail-push"
    assert body["message"]["messageId"].isdigit()
    scheme, token = headers["Authorization"].split()
    assert scheme == "Bearer"
    async with aiohttp.ClientSession() as session, session.get(emu.certs_url) as response:
        certs = await response.json()
        assert "max-age" in response.headers["Cache-Control"]
    claims = jwt.decode(token, certs=certs, audience="https://receiver.test/gmail/push")
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["email"] == PushConfig().service_account
    assert claims["email_verified"] is True


async def test_a_burst_of_changes_is_coalesced_and_the_last_state_announced(
    capture: Capture, emulator_for: Callable[..., GmailEmulator]
) -> None:
    emu = emulator_for(capture.url, min_interval_seconds=0.3)
    with emu.state.lock:
        emu.state.watches[USER] = _watch()
    started = time.monotonic()
    for _ in range(20):
        emu.add_message(USER, MAIL)
    final = emu.mailbox(USER).history_id
    await async_wait_until(
        lambda: final in [n["historyId"] for n in capture.notifications()],
        timeout=10,
        message="the last change announced",
    )
    # One at the start of the burst, one for the rest once the interval has passed.
    assert 1 <= len(capture.deliveries) <= 3
    assert time.monotonic() - started >= 0.3 or len(capture.deliveries) == 1
    stats = emu.push_stats
    assert stats.changes == 20
    assert stats.coalesced + stats.notifications == 20


async def test_stop_and_label_filters_silence_notifications(
    capture: Capture, emulator_for: Callable[..., GmailEmulator]
) -> None:
    emu = emulator_for(capture.url)
    client = GmailClient(GmailClientConfig(api_root=emu.url))
    try:
        await watch(client, USER, TOPIC, ["INBOX"])
        emu.add_message(USER, MAIL, label_ids=["SPAM"])
        assert emu.push_stats.changes == 0
        emu.add_message(USER, MAIL, label_ids=["INBOX"])
        assert emu.push_stats.changes == 1
        await stop_watch(client, USER)
        emu.add_message(USER, MAIL, label_ids=["INBOX"])
        assert emu.push_stats.changes == 1
    finally:
        client.close()
    await async_wait_until(lambda: emu.push_stats.acknowledged == 1, timeout=10)
    assert len(capture.deliveries) == 1


async def test_dropped_notifications_are_never_sent(
    capture: Capture, emulator_for: Callable[..., GmailEmulator]
) -> None:
    emu = emulator_for(capture.url, drop_rate=1.0)
    with emu.state.lock:
        emu.state.watches[USER] = _watch()
    emu.add_message(USER, MAIL)
    await async_wait_until(lambda: emu.push_stats.dropped == 1, timeout=10)
    assert emu.push_stats.attempts == 0
    assert capture.deliveries == []


async def test_unacknowledged_pushes_are_redelivered_with_the_same_message_id(
    capture: Capture, emulator_for: Callable[..., GmailEmulator]
) -> None:
    capture.statuses = [503, 500]
    emu = emulator_for(capture.url, retry_seconds=0.05, max_attempts=3)
    with emu.state.lock:
        emu.state.watches[USER] = _watch()
    emu.add_message(USER, MAIL)
    await async_wait_until(lambda: emu.push_stats.acknowledged == 1, timeout=10)
    ids = {body["message"]["messageId"] for _, body in capture.deliveries}
    assert len(capture.deliveries) == 3
    assert len(ids) == 1
    assert emu.push_stats.statuses == {503: 1, 500: 1, 204: 1}


async def test_an_unreachable_endpoint_never_blocks_the_api(
    emulator_for: Callable[..., GmailEmulator],
) -> None:
    emu = emulator_for("http://127.0.0.1:9/push", retry_seconds=0.01, max_attempts=2)
    with emu.state.lock:
        emu.state.watches[USER] = _watch()
    started = time.monotonic()
    emu.add_message(USER, MAIL)
    assert time.monotonic() - started < 0.5
    await async_wait_until(lambda: emu.push_stats.undelivered == 1, timeout=10)
    assert emu.push_stats.statuses == {0: 2}


def _watch() -> Watch:
    """A live watch of every change, set without a users.watch call."""
    return Watch(TOPIC, (), "include", int((time.time() + 3600) * 1000))
