"""Stored, encrypted Gmail credentials through the provider, the client and the sync stage.

A real Postgres and the emulator requiring bearer tokens: the grant stored encrypted is used and
refreshed; a revoked one marks the account revoked and stops its syncs; key rotation, a wrong
key, a missing key and altered rows are refused with clear messages that show no secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from db import accounts
from db.accounts import AccountState, SyncOutcome
from db.agent_state import AgentState
from db.credentials import (
    READONLY_SCOPE,
    CredentialKind,
    load_credential,
    rotate_credentials,
    save_credential,
)
from db.token_cipher import (
    KeyRing,
    TokenAuthenticationError,
    TokenKeyMissingError,
    UnknownTokenKeyError,
    new_key,
    parse_key,
)
from devstack.gmail_emulator import GmailEmulator, OAuthConfig
from schemas.errors import AccountRevokedError, CredentialsError, RetryClass, classify
from schemas.models import SyncRequested
from schemas.serde import encode, serde_for
from streams.runtime.stage import Record
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.gmail.credentials import CredentialsProvider
from streams.stages.sync import SyncStage
from tests.integration.oauth_support import consent, grant_info

USER = "grace@inboxflow.test"
OTHER = "linus@inboxflow.test"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GmailEmulator]:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator's token URL is http
    emu = GmailEmulator(oauth=OAuthConfig(require_auth=True))
    emu.start_in_thread()
    emu.add_user(USER, messages=4, seed=3)
    emu.add_user(OTHER, messages=1, seed=4)
    try:
        yield emu
    finally:
        emu.stop_thread()


def store_grant(database_url: str, ring: KeyRing, user: str, info: dict[str, Any]) -> None:
    with psycopg.connect(database_url) as conn:
        save_credential(
            conn,
            ring,
            user,
            CredentialKind.AUTHORIZED_USER,
            READONLY_SCOPE,
            info,
            auth_kind="oauth",
            label_filter=accounts.DEFAULT_LABEL_FILTER,
        )


def wired_client(emu: GmailEmulator, database_url: str, ring: KeyRing) -> GmailClient:
    provider = CredentialsProvider(database_url, ring)
    return GmailClient(
        GmailClientConfig(api_root=emu.url, max_attempts=2),
        credentials_for=provider,
        forget_credentials=provider.forget,
    )


def request(offset: int) -> Record:
    event = SyncRequested(
        user_id=USER, sync_id=f"s-{offset}", full=False, requested_at=datetime.now(UTC)
    )
    return Record("requests", 0, offset, 0, USER.encode(), encode(event))


async def account_of(database_url: str, user: str = USER) -> accounts.Account:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await accounts.get_account(conn, user)


async def test_a_stored_grant_syncs_and_a_revoked_one_marks_the_account_and_stops_its_syncs(
    emulator: GmailEmulator, database_url: str
) -> None:
    ring = KeyRing(parse_key(new_key()))
    store_grant(database_url, ring, USER, grant_info(consent(emulator, USER)))
    client = wired_client(emulator, database_url, ring)
    state = AgentState(database_url)
    stage = SyncStage(
        serde=serde_for(None),
        gmail=client,
        state=state,
        requests_topic="requests",
        discovered_topic="discovered",
        deleted_topic="deleted",
        labels_topic="labels",
        deadline_for=lambda _messages: 60.0,
    )
    try:
        [listed] = await stage.process([request(0)])
        assert listed.error is None
        assert listed.outputs  # discovered messages
        assert listed.after_publish is not None
        await listed.after_publish()  # as the agent does once Kafka acknowledged the outputs
        assert emulator.oauth.stats.grants["refresh_token"] == 1  # the stored grant, refreshed

        emulator.oauth.revoke(USER)
        [refused] = await stage.process([request(1)])
        assert isinstance(refused.error, AccountRevokedError)
        assert classify(refused.error).retry_class is RetryClass.PERMANENT  # dead-letters once
        revoked = await account_of(database_url)
        assert revoked.state is AccountState.REVOKED
        assert revoked.last_sync_outcome is SyncOutcome.FAILED
        assert "invalid_grant" in (revoked.last_sync_error or "")

        emulator.reset_accounting()
        refusals = emulator.oauth.stats.refused["refresh_token:invalid_grant"]
        [skipped] = await stage.process([request(2)])
        assert skipped.error is None
        assert "skipped" in (skipped.note or "")
        # Messages still queued for it fail at once, without asking Google again.
        with pytest.raises(AccountRevokedError, match="marked revoked"):
            await client.fetch_messages(USER, emulator.message_ids(USER))
        assert emulator.accounting.requests == 0
        assert emulator.oauth.stats.refused["refresh_token:invalid_grant"] == refusals

        # A new consent brings the account back, and the running client picks it up.
        store_grant(database_url, ring, USER, grant_info(consent(emulator, USER)))
        assert (await account_of(database_url)).state is AccountState.ACTIVE
        [again] = await stage.process([request(3)])
        assert again.error is None
        assert again.note is None  # an incremental sync from the checkpoint, not a skip
    finally:
        client.close()
        await state.close()


async def test_rotation_moves_every_token_to_the_new_key_and_the_old_one_is_then_unneeded(
    emulator: GmailEmulator, database_url: str
) -> None:
    old, new = parse_key(new_key()), parse_key(new_key())
    for user in (USER, OTHER):
        store_grant(database_url, KeyRing(old), user, grant_info(consent(emulator, user)))

    with psycopg.connect(database_url) as conn:
        assert load_credential(conn, KeyRing(new, [old]), USER) is not None  # old still opens
        report = rotate_credentials(conn, KeyRing(new, [old]))
    assert (report.key_id, report.rotated, report.already_current) == (new.key_id, [USER, OTHER], 0)

    with psycopg.connect(database_url) as conn:
        assert rotate_credentials(conn, KeyRing(new)).rotated == []
        key_ids = conn.execute("SELECT DISTINCT key_id FROM account_credentials").fetchall()
        assert key_ids == [(new.key_id,)]
        with pytest.raises(UnknownTokenKeyError, match=new.key_id):
            load_credential(conn, KeyRing(old), USER)

    client = wired_client(emulator, database_url, KeyRing(new))
    try:
        assert (await client.get_profile(USER)).email_address == USER
        assert (await client.get_profile(OTHER)).email_address == OTHER
    finally:
        client.close()


async def test_a_missing_a_wrong_or_an_unrotated_key_is_refused_clearly(
    emulator: GmailEmulator, database_url: str
) -> None:
    right = new_key()
    store_grant(database_url, KeyRing(parse_key(right)), USER, grant_info(consent(emulator, USER)))
    stored_id = parse_key(right).key_id
    wrong = new_key()

    for ring, error, text in [
        (KeyRing(None), TokenKeyMissingError, "INBOXFLOW_TOKEN_KEY is not set"),
        (KeyRing(parse_key(wrong)), UnknownTokenKeyError, f"key id {stored_id}"),
    ]:
        client = wired_client(emulator, database_url, ring)
        try:
            with pytest.raises(error) as caught:
                await client.get_profile(USER)
        finally:
            client.close()
        message = str(caught.value)
        assert text in message
        assert "INBOXFLOW_TOKEN_KEY" in message
        assert right not in message
        assert wrong not in message
        assert caught.value.retry_class is RetryClass.PERMANENT
    assert "INBOXFLOW_TOKEN_PREVIOUS_KEYS" in message  # the unknown key names both variables
    assert emulator.accounting.requests == 0


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE account_credentials SET ciphertext = overlay(ciphertext placing "
        "decode(lpad(to_hex(get_byte(ciphertext, 5) # 1), 2, '0'), 'hex') from 6 for 1)",
        "UPDATE account_credentials SET nonce = decode('000000000000000000000000', 'hex')",
        "UPDATE account_credentials SET kind = 'service_account'",
    ],
    ids=["ciphertext", "nonce", "kind"],
)
async def test_an_altered_row_is_refused_and_never_decrypted(
    emulator: GmailEmulator, database_url: str, tamper: str
) -> None:
    ring = KeyRing(parse_key(new_key()))
    store_grant(database_url, ring, USER, grant_info(consent(emulator, USER)))
    with psycopg.connect(database_url) as conn:
        conn.execute(tamper)
    client = wired_client(emulator, database_url, ring)
    try:
        with pytest.raises(TokenAuthenticationError) as caught:
            await client.get_profile(USER)
    finally:
        client.close()
    assert str(caught.value).startswith(
        f"the stored token for {USER} failed authentication: altered, or written under another key"
    )
    assert isinstance(caught.value, CredentialsError)


async def test_a_token_copied_onto_another_users_row_is_refused(
    emulator: GmailEmulator, database_url: str
) -> None:
    ring = KeyRing(parse_key(new_key()))
    store_grant(database_url, ring, USER, grant_info(consent(emulator, USER)))
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO accounts (user_id, auth_kind) VALUES (%s, 'oauth')", (OTHER,))
        conn.execute(
            "INSERT INTO account_credentials (user_id, kind, scope, key_id, nonce, ciphertext)"
            " SELECT %s, kind, scope, key_id, nonce, ciphertext FROM account_credentials"
            " WHERE user_id = %s",
            (OTHER, USER),
        )
        with pytest.raises(TokenAuthenticationError, match=f"stored token for {OTHER}"):
            load_credential(conn, ring, OTHER)
        assert load_credential(conn, ring, USER) is not None


async def test_the_ciphertext_holds_no_token_in_clear(
    emulator: GmailEmulator, database_url: str
) -> None:
    creds = consent(emulator, USER)
    store_grant(database_url, KeyRing(parse_key(new_key())), USER, grant_info(creds))
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT scope, nonce, ciphertext FROM account_credentials").fetchone()
    assert row is not None
    scope, nonce, ciphertext = row
    assert scope == READONLY_SCOPE
    assert len(bytes(nonce)) == 12
    for secret in (creds.refresh_token, creds.client_secret, creds.token):
        assert secret.encode() not in bytes(ciphertext)
