"""The push receiver on real Kafka and Postgres, fed by the Gmail emulator's signed pushes."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import psycopg
import pytest
from aiokafka import TopicPartition

from db import accounts
from db.accounts import AccountState
from devstack.gmail_emulator import GmailEmulator, OidcSigner, PushConfig
from schemas.models import SyncRequested
from schemas.serde import serde_for
from streams.runtime.publisher import KafkaPublisher
from streams.sources.push import (
    OidcPushVerifier,
    PostgresAccounts,
    PushReceiver,
    PushReceiverConfig,
)
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.gmail.watch import watch
from tests.helpers import async_wait_until
from topics.admin import ensure_topics
from topics.catalogue import build_catalogue
from topics.kafka import KafkaClients

USER = "pushed@inboxflow.test"
AUDIENCE = "https://push.inboxflow.test/gmail/push"
SERVICE_ACCOUNT = "gmail-push@inboxflow-test.iam.gserviceaccount.com"
TOPIC = "projects/inboxflow-test/topics/gmail"
MAIL = b"From: a@example.com\r\nTo: pushed@inboxflow.test\r\nSubject: hi\r\n\r\nhello\r\n"
SERDE = serde_for(None)


@dataclass
class PushStack:
    """A serving receiver, its topic and database, and an emulator that pushes to it."""

    url: str
    topic: str
    kafka_bootstrap: str
    database_url: str
    emulator: GmailEmulator
    receiver: PushReceiver

    def token(self, **overrides: object) -> str:
        """A token as the emulator signs them (``overrides`` change claims)."""
        return self.emulator.push_signer.token(
            audience=AUDIENCE, email=SERVICE_ACCOUNT, **overrides
        )

    async def post(self, body: bytes, token: str | None = None) -> int:
        """POST one delivery; return the status."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, data=body, headers=headers) as response,
        ):
            return response.status

    async def requests(self) -> list[SyncRequested]:
        """Every SyncRequested on the topic so far."""
        kafka = KafkaClients(self.kafka_bootstrap, client_id="push-test-reader")
        consumer = kafka.consumer()
        async with kafka.started(consumer):
            partitions = [TopicPartition(self.topic, 0)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = (await consumer.end_offsets(partitions))[partitions[0]]
            records = []
            while await consumer.position(partitions[0]) < end:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return [SERDE.decode(r.value, SyncRequested) for r in records]

    async def account_requested_at(self, user: str = USER) -> datetime | None:
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            return (await accounts.get_account(conn, user)).last_sync_requested_at


def envelope(user: str = USER, history_id: int = 1234, message_id: str = "1") -> bytes:
    data = json.dumps({"emailAddress": user, "historyId": history_id}).encode()
    return json.dumps(
        {
            "message": {"data": base64.b64encode(data).decode(), "messageId": message_id},
            "subscription": "projects/inboxflow-test/subscriptions/gmail",
        }
    ).encode()


async def add_accounts(database_url: str, *users: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for user in users:
            await accounts.add_account(conn, user, auth_kind="anonymous")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def stack_factory(
    kafka_bootstrap: str,
    database_url: str,
    gmail_emulator: GmailEmulator,
    unique_name: Callable[..., str],
) -> Callable[..., AbstractAsyncContextManager[PushStack]]:
    """Start receivers; the default one talks to the session's Kafka and the test's database."""
    catalogue = build_catalogue(unique_name("t"), partitions=1)
    await ensure_topics(KafkaClients(kafka_bootstrap), [catalogue.sync_requested])
    await add_accounts(database_url, USER)
    gmail_emulator.add_user(USER, messages=2, seed=3)

    @asynccontextmanager
    async def start(
        *, bootstrap: str = kafka_bootstrap, conninfo: str = database_url, coalesce: float = 0.3
    ) -> AsyncIterator[PushStack]:
        publisher = KafkaPublisher(KafkaClients(bootstrap, client_id="push-test"))
        directory = PostgresAccounts(conninfo, timeout=2.0)
        verifier = OidcPushVerifier(
            audience=AUDIENCE, service_account=SERVICE_ACCOUNT, certs_url=gmail_emulator.certs_url
        )
        receiver = PushReceiver(
            PushReceiverConfig(
                catalogue.sync_requested.name, coalesce_seconds=coalesce, produce_timeout=5.0
            ),
            publisher=publisher,
            serde=SERDE,
            accounts=directory,
            verifier=verifier,
        )
        try:
            async with receiver.serving() as url:
                gmail_emulator.set_push(
                    PushConfig(
                        endpoint=url,
                        audience=AUDIENCE,
                        service_account=SERVICE_ACCOUNT,
                        min_interval_seconds=0.2,
                    )
                )
                yield PushStack(
                    url,
                    catalogue.sync_requested.name,
                    kafka_bootstrap,
                    database_url,
                    gmail_emulator,
                    receiver,
                )
        finally:
            await publisher.stop()
            await directory.close()
            await verifier.close()

    return start


@pytest.fixture
async def push(
    stack_factory: Callable[..., AbstractAsyncContextManager[PushStack]],
) -> AsyncIterator[PushStack]:
    async with stack_factory() as running:
        yield running


async def test_a_change_in_a_watched_mailbox_becomes_a_sync_request(push: PushStack) -> None:
    client = GmailClient(GmailClientConfig(api_root=push.emulator.url))
    try:
        await watch(client, USER, TOPIC)
    finally:
        client.close()
    before = datetime.now(UTC).replace(microsecond=0)
    push.emulator.add_message(USER, MAIL)

    found = await async_wait_until(push.requests, timeout=20, message="a SyncRequested")
    assert len(found) == 1
    request = found[0]
    assert request.user_id == USER
    assert request.full is False
    assert request.reason == "push"
    assert request.sync_id.startswith("push-")
    await async_wait_until(lambda: push.emulator.push_stats.acknowledged == 1, timeout=10)
    assert push.emulator.push_stats.statuses == {204: 1}
    requested_at = await push.account_requested_at()
    assert requested_at is not None
    assert requested_at >= before


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda s: OidcSigner(key_id=s.emulator.push_signer.key_id).token(
                audience=AUDIENCE, email=SERVICE_ACCOUNT
            ),
            id="signed-by-another-key",
        ),
        pytest.param(
            lambda s: OidcSigner().token(audience=AUDIENCE, email=SERVICE_ACCOUNT),
            id="unknown-key",
        ),
        pytest.param(lambda s: s.token(issued_at=time.time() - 7200), id="expired"),
        pytest.param(
            lambda s: s.emulator.push_signer.token(
                audience="https://elsewhere.test/push", email=SERVICE_ACCOUNT
            ),
            id="wrong-audience",
        ),
        pytest.param(
            lambda s: s.emulator.push_signer.token(audience=AUDIENCE, email="me@evil.test"),
            id="wrong-service-account",
        ),
        pytest.param(lambda s: s.token(iss="https://evil.test"), id="wrong-issuer"),
        pytest.param(lambda s: "not-a-jwt", id="garbage"),
        pytest.param(lambda s: None, id="missing"),
    ],
)
async def test_refused_tokens_get_401_and_produce_nothing(
    push: PushStack, forge: Callable[[PushStack], str | None]
) -> None:
    assert await push.post(envelope(), forge(push)) == 401
    assert await push.requests() == []
    assert await push.account_requested_at() is None


async def test_a_malformed_body_gets_400_and_produces_nothing(push: PushStack) -> None:
    for body in (b"{", b'{"message": {"data": "eyJ9"}}', envelope(user="no-at-sign")):
        assert await push.post(body, push.token()) == 400
    assert await push.requests() == []


async def test_unknown_and_inactive_accounts_are_acked_and_dropped(push: PushStack) -> None:
    await add_accounts(push.database_url, "paused@inboxflow.test")
    async with await psycopg.AsyncConnection.connect(push.database_url) as conn:
        await accounts.set_state(conn, "paused@inboxflow.test", AccountState.PAUSED)
    assert await push.post(envelope(user="stranger@inboxflow.test"), push.token()) == 204
    assert await push.post(envelope(user="paused@inboxflow.test"), push.token()) == 204
    assert await push.requests() == []


async def test_a_burst_for_one_user_is_coalesced_but_the_last_one_is_covered(
    stack_factory: Callable[..., AbstractAsyncContextManager[PushStack]],
) -> None:
    async with stack_factory(coalesce=1.0) as push:

        async def wave(size: int) -> list[int]:
            posts = (push.post(envelope(message_id=str(i)), push.token()) for i in range(size))
            return await asyncio.gather(*posts)

        assert await wave(10) == [204] * 10  # one request at once, one for the rest
        second_wave_at = datetime.now(UTC).replace(microsecond=0)
        assert await wave(10) == [204] * 10  # within the window: one follow-up after it

        found = await push.requests()
    assert 2 <= len(found) <= 3
    assert all(r.user_id == USER for r in found)
    # Every 204 waited for a request produced after the notification arrived.
    assert max(r.requested_at for r in found) >= second_wave_at


async def test_an_upper_case_address_maps_to_the_account(push: PushStack) -> None:
    assert await push.post(envelope(user=USER.upper()), push.token()) == 204
    assert [r.user_id for r in await push.requests()] == [USER]


async def test_health(push: PushStack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(push.url.replace("/gmail/push", "/healthz")) as response,
    ):
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_unreachable_kafka_gets_503_so_pubsub_redelivers(
    stack_factory: Callable[..., AbstractAsyncContextManager[PushStack]],
) -> None:
    async with stack_factory(bootstrap=f"127.0.0.1:{_closed_port()}") as running:
        assert await running.post(envelope(), running.token()) == 503
        assert await running.account_requested_at() is None


async def test_unreachable_postgres_gets_503(
    stack_factory: Callable[..., AbstractAsyncContextManager[PushStack]],
) -> None:
    conninfo = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing?connect_timeout=1"
    async with stack_factory(conninfo=conninfo) as running:
        assert await running.post(envelope(), running.token()) == 503
        assert await running.requests() == []
