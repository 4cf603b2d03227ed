"""``inboxflow push-receiver`` as a subprocess, configured by environment variables only."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from db import accounts
from devstack.gmail_emulator import GmailEmulator, PushConfig
from schemas.models import SyncRequested
from schemas.serde import serde_for
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.gmail.watch import watch
from tests.helpers import wait_until
from tests.pipeline_support import read_topic
from topics.admin import ensure_topics
from topics.catalogue import build_catalogue
from topics.kafka import KafkaClients

ROOT = Path(__file__).resolve().parents[2]
USER = "cli-push@inboxflow.test"
AUDIENCE = "https://push.inboxflow.test/gmail/push"
SERVICE_ACCOUNT = "gmail-push@inboxflow-test.iam.gserviceaccount.com"
MAIL = b"From: a@example.com\r\nTo: cli-push@inboxflow.test\r\nSubject: hi\r\n\r\nhello\r\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def emulator() -> Iterator[GmailEmulator]:
    emu = GmailEmulator().start_in_thread()
    try:
        yield emu
    finally:
        emu.stop_thread()


async def _add_account(database_url: str, user: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await accounts.add_account(conn, user, auth_kind="anonymous")


def _receiver(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "inboxflow", "-v", "push-receiver"],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_receiver_turns_a_signed_push_into_a_sync_request(
    kafka_bootstrap: str,
    database_url: str,
    emulator: GmailEmulator,
    unique_name: Callable[..., str],
) -> None:
    namespace = unique_name("t")
    topic = build_catalogue(namespace, partitions=1).sync_requested
    asyncio.run(ensure_topics(KafkaClients(kafka_bootstrap), [topic]))
    asyncio.run(_add_account(database_url, USER))
    port = _free_port()
    process = _receiver(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": database_url,
            "INBOXFLOW_TOPIC_NAMESPACE": namespace,
            "INBOXFLOW_PUSH_PORT": str(port),
            "INBOXFLOW_PUSH_AUDIENCE": AUDIENCE,
            "INBOXFLOW_PUSH_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
            "INBOXFLOW_PUSH_CERTS_URL": emulator.certs_url,
            "INBOXFLOW_PUSH_COALESCE_MS": "200",
        }
    )
    try:
        wait_until(lambda: _healthy(port) or process.poll() is not None, timeout=60)
        assert process.poll() is None, process.communicate()[1][-3000:]
        emulator.set_push(
            PushConfig(
                endpoint=f"http://127.0.0.1:{port}/gmail/push",
                audience=AUDIENCE,
                service_account=SERVICE_ACCOUNT,
            )
        )
        emulator.add_user(USER, messages=2)
        client = GmailClient(GmailClientConfig(api_root=emulator.url))
        try:
            asyncio.run(watch(client, USER, "projects/inboxflow-test/topics/gmail"))
        finally:
            client.close()
        emulator.add_message(USER, MAIL)

        records = wait_until(
            lambda: asyncio.run(read_topic(kafka_bootstrap, topic.name)),
            timeout=30,
            message="a SyncRequested",
        )
        requests = [serde_for(None).decode(r.value or b"", SyncRequested) for r in records]
        assert [(r.user_id, r.full, r.reason) for r in requests] == [(USER, False, "push")]
        wait_until(lambda: emulator.push_stats.acknowledged == 1, timeout=10)
        assert emulator.push_stats.statuses == {204: 1}
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-3000:]
    assert "push receiver at http://127.0.0.1:" in stderr


def test_verification_without_an_audience_is_refused_at_start() -> None:
    process = _receiver({"INBOXFLOW_PUSH_PORT": str(_free_port())})
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "INBOXFLOW_PUSH_AUDIENCE is not set" in stderr
