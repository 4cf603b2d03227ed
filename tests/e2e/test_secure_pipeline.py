"""The pipeline end to end on the secure stack: Kafka over SASL_SSL, Postgres over TLS, Gmail
over OAuth with tokens encrypted at rest.

Every worker and sink runs as a real process with only the stack's client settings
(``Stack.client_env``: SCRAM-SHA-512 credentials, the CA file, a ``verify-full`` database URL)
and the token key, so faust agents, retry relays, sinks, the scheduler and the operator's reads
all authenticate, and every Gmail call carries an access token refreshed from a stored grant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest

from db import accounts
from db.credentials import CredentialKind, save_credential
from db.token_cipher import KeyRing, new_key, parse_key
from devstack.gmail_emulator.mailbox import ListQuery
from devstack.gmail_emulator.oauth import OAuthConfig
from devstack.gmail_emulator.server import GmailEmulator
from devstack.stack import Stack
from inboxflow.progress import dlq_topics
from schemas.models import EmailNormalized
from streams.stages.gmail.client import READONLY_SCOPE
from tests.helpers import wait_until
from tests.integration.oauth_support import consent, grant_info
from tests.pipeline_support import Pipeline, running_pipeline

pytestmark = pytest.mark.timeout(600)

TOKEN_KEY = new_key()


@pytest.fixture(scope="module")
def emulator() -> Iterator[GmailEmulator]:
    # Gmail answers only calls with a valid access token for the mailbox, as Google does.
    running = GmailEmulator(oauth=OAuthConfig(require_auth=True)).start_in_thread()
    try:
        yield running
    finally:
        running.stop_thread()


@pytest.fixture(scope="module")
def secure_pipeline(secure_stack: Stack, emulator: GmailEmulator) -> Iterator[Pipeline]:
    assert secure_stack.kafka_security.protocol == "SASL_SSL"
    with running_pipeline(
        secure_stack, emulator, env={"INBOXFLOW_TOKEN_KEY": TOKEN_KEY}
    ) as running:
        yield running


def grant(
    pipeline: Pipeline, emulator: GmailEmulator, user: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Consent as ``user`` and store the grant encrypted, as ``accounts add --oauth`` does."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator's token URL is http
    info = grant_info(consent(emulator, user))
    with psycopg.connect(pipeline.database_url) as conn:
        save_credential(
            conn,
            KeyRing(parse_key(TOKEN_KEY)),
            user,
            CredentialKind.AUTHORIZED_USER,
            READONLY_SCOPE,
            info,
            auth_kind="oauth",
            label_filter=accounts.DEFAULT_LABEL_FILTER,
        )
    return info


def test_every_job_is_done_over_sasl_ssl_tls_and_oauth_with_no_dead_letters(
    secure_pipeline: Pipeline, emulator: GmailEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = secure_pipeline
    assert pipeline.settings.kafka_security_protocol == "SASL_SSL"
    assert "sslmode=verify-full" in pipeline.database_url
    user = f"u{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(user, messages=20, seed=31)
    grant(pipeline, emulator, user, monkeypatch)
    with emulator.state.lock:
        expected = {m.id for m in emulator.mailbox(user).list(ListQuery())}

    pipeline.sync([user], full=True)
    pipeline.wait_settled([user], messages=len(expected), timeout=300)

    jobs = pipeline.jobs([user])
    assert jobs["google_gmail_sync"] == {"done": 1}
    for kind in ("normalize_google_email", "extract_contacts", "embed", "insight"):
        assert jobs[kind] == {"done": len(expected)}, kind
    normalized = pipeline.events(pipeline.catalogue.email_normalized.name, EmailNormalized)
    assert {e.message_id for e in normalized if e.user_id == user} == expected
    assert emulator.oauth.stats.grants["refresh_token"] >= 1  # workers refreshed the grant
    dead = {
        agent: len(pipeline.read(topic)) for agent, topic in dlq_topics(pipeline.catalogue).items()
    }
    assert set(dead.values()) == {0}, dead
    pipeline.check_workers()


def canary_message(canary: str, user: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = f"Sender {canary}name <{canary}from@example.org>"
    mail["To"] = f"{user}, {canary}to@example.org"
    mail["Subject"] = f"Quarterly plan {canary}subject"
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    mail.set_content(f"Hello,\n\nthe body says {canary}body and nothing else.\n")
    mail.add_alternative(f"<p>the html says <b>{canary}html</b></p>", subtype="html")
    return bytes(mail)


def broken_message(canary: str, user: str) -> bytes:
    # Declares a charset no codec knows and base64 that is not base64: decoders that quote
    # their input would put the canary into an error text.
    return (
        f"From: {canary}broken@example.org\r\nTo: {user}\r\nSubject: =?x-{canary}?B?{canary}?=\r\n"
        f"Content-Type: text/plain; charset=x-{canary}\r\nContent-Transfer-Encoding: base64\r\n"
        f"\r\n{canary}!!not base64 {canary}\r\n"
    ).encode()


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, secret in secrets.items() if secret and secret in text]


def test_no_secret_or_mail_reaches_logs_dead_letter_headers_or_job_errors(
    secure_pipeline: Pipeline,
    secure_stack: Stack,
    emulator: GmailEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = secure_pipeline
    canary = f"cnry{uuid.uuid4().hex[:10]}"
    user = f"c{uuid.uuid4().hex[:8]}@inboxflow.test"
    emulator.add_user(user, messages=3, seed=5)
    info = grant(pipeline, emulator, user, monkeypatch)
    ids = [
        emulator.add_message(user, canary_message(canary, user)),
        emulator.add_message(user, broken_message(canary, user)),
    ]
    # An undecodable record with the canary in its bytes, straight onto normalize's source.
    pipeline.produce(pipeline.catalogue.message_fetched.name, user, f"{canary}raw".encode())

    pipeline.sync([user], full=True)
    emulator.oauth.expire_access_tokens(user)  # the workers must refresh mid-run
    pipeline.wait_settled([user], messages=5, timeout=300)
    wait_until(
        lambda: len(pipeline.read(dlq_topics(pipeline.catalogue)["normalize"])) >= 1,
        timeout=120,
        message="the undecodable record dead-lettered",
    )
    assert all(pipeline.query("SELECT 1 FROM jobs WHERE subject_id = %(m)s", m=m) for m in ids)

    security = secure_stack.kafka_security
    secrets = {
        "mail": canary,
        "database password": secure_stack.postgres.tls.password
        if secure_stack.postgres is not None and secure_stack.postgres.tls is not None
        else "",
        "kafka password": security.password or "",
        "token key": TOKEN_KEY,
        "refresh token": str(info["refresh_token"]),
        "client secret": str(info["client_secret"]),
        **{f"issued token {i}": t for i, t in enumerate(sorted(emulator.oauth.issued_tokens()))},
    }
    assert len(secrets["database password"]) >= 8
    assert len(secrets["kafka password"]) >= 8

    found: dict[str, list[str]] = {}
    log_files = [p for p in Path(pipeline.logs).rglob("*") if p.is_file()]
    assert log_files, "the workers wrote no logs"
    for path in log_files:
        hit = leaks(path.read_text(errors="replace"), secrets)
        if hit:
            found[f"log {path.name}"] = hit
    letters = 0
    failure_topics = [t.name for g in pipeline.catalogue.groups for t in g.failure_topics]
    for topic in failure_topics:
        for record in pipeline.read(topic):
            letters += 1
            for key, value in record.headers:
                hit = leaks(f"{key}={value.decode(errors='replace')}", secrets)
                if hit:
                    found[f"header {key} on {topic}@{record.offset}"] = hit
    assert letters >= 1  # the undecodable record at least
    for (error,) in pipeline.query("SELECT last_error FROM jobs WHERE last_error IS NOT NULL"):
        hit = leaks(str(error), secrets)
        if hit:
            found[f"jobs.last_error {error[:80]!r}"] = hit
    for (error,) in pipeline.query(
        "SELECT last_sync_error FROM accounts WHERE last_sync_error IS NOT NULL"
    ):
        hit = leaks(str(error), secrets)
        if hit:
            found["accounts.last_sync_error"] = hit
    assert not found, found
