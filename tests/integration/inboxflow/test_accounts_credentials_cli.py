"""``inboxflow accounts`` and Gmail credentials: consent, service accounts, import, rotation.

The emulator plays Google (consent screen, token and revocation endpoints, Gmail requiring bearer
tokens); Postgres is real. The consent flow runs the CLI as a subprocess and plays the browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from db import accounts
from db.agent_state import AgentState
from db.credentials import METADATA_SCOPE, READONLY_SCOPE, CredentialKind, save_credential
from db.token_cipher import KeyRing, new_key, parse_key
from devstack.gmail_emulator import GmailEmulator, OAuthConfig
from inboxflow.cli import cli
from inboxflow.settings import Settings
from inboxflow.wiring import gmail_client_from
from schemas.errors import AccountRevokedError
from schemas.models import SyncRequested
from schemas.serde import encode, serde_for
from streams.runtime.stage import Outcome, Record
from streams.stages.sync import SyncStage
from tests.helpers import wait_until
from tests.integration.oauth_support import consent, grant_info

USER = "ada@inboxflow.test"
OTHER = "bob@inboxflow.test"
ENTRY = "from inboxflow.cli import main; main()"


@pytest.fixture
def emulator() -> Iterator[GmailEmulator]:
    emu = GmailEmulator(oauth=OAuthConfig(require_auth=True))
    emu.start_in_thread()
    emu.add_user(USER, messages=3, seed=5)
    emu.add_user(OTHER, messages=2, seed=6)
    try:
        yield emu
    finally:
        emu.stop_thread()


def cli_env(database_url: str, emu: GmailEmulator, **settings: str) -> dict[str, str]:
    env = {"DATABASE_URL": database_url, "INBOXFLOW_GMAIL_API_ROOT": emu.url}
    return env | {f"INBOXFLOW_{name.upper()}": value for name, value in settings.items()}


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def rows(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, params).fetchall()


def sync_stage(settings: Settings, state: AgentState) -> SyncStage:
    return SyncStage(
        serde=serde_for(None),
        gmail=gmail_client_from(settings),
        state=state,
        requests_topic="requests",
        discovered_topic="discovered",
        deleted_topic="deleted",
        labels_topic="labels",
        deadline_for=lambda _messages: 60.0,
    )


async def sync(stage: SyncStage, offset: int) -> Outcome:
    event = SyncRequested(
        user_id=USER, sync_id=f"s-{offset}", full=False, requested_at=datetime.now(UTC)
    )
    [outcome] = await stage.process(
        [Record("requests", 0, offset, 0, USER.encode(), encode(event))]
    )
    if outcome.after_publish is not None:
        await outcome.after_publish()  # as the agent does once Kafka acknowledged the outputs
    return outcome


def test_oauth_consent_end_to_end_from_the_cli_to_a_revoked_account(
    emulator: GmailEmulator, database_url: str, tmp_path: Path
) -> None:
    key = new_key()
    client_file = tmp_path / "client_secret.json"
    client_file.write_text(json.dumps(emulator.oauth.create_client()))
    env = {k: v for k, v in os.environ.items() if k != "OAUTHLIB_INSECURE_TRANSPORT"}
    env |= cli_env(database_url, emulator, token_key=key, gmail_oauth_client_file=str(client_file))
    command = [sys.executable, "-c", ENTRY, "accounts", "add", USER, "--oauth", "--json"]
    command += ["--timeout", "60"]
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        url = wait_until(
            lambda: next((s.strip() for s in stderr if s.strip().startswith("http")), None),
            timeout=60,
            message="the consent URL on stderr",
        )
        assert url.startswith(emulator.oauth.auth_url)
        assert "access_type=offline" in url
        # Play the browser: consent, then follow Google's redirect to the CLI's loopback server.
        with urllib.request.urlopen(url, timeout=30) as page:  # noqa: S310 - the emulator
            assert b"You can close this window" in page.read()
        stdout = (proc.stdout.read() if proc.stdout else "").strip()
        assert proc.wait(60) == 0, "".join(stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    [entry] = json.loads(stdout)
    assert entry == {
        "user_id": USER,
        "new": True,
        "auth_kind": "oauth",
        "scope": READONLY_SCOPE,
        "key_id": parse_key(key).key_id,
    }
    # The code became tokens, and the CLI checked the grant with one users.getProfile.
    assert emulator.oauth.stats.grants["authorization_code"] == 1
    assert emulator.accounting.calls_by_method == {"users.getProfile": 1}
    assert rows(database_url, "SELECT state, auth_kind FROM accounts") == [("active", "oauth")]
    assert rows(database_url, "SELECT user_id, kind, scope, key_id FROM account_credentials") == [
        (USER, "authorized_user", READONLY_SCOPE, parse_key(key).key_id)
    ]

    # A worker wired from the same settings syncs with the stored grant.
    settings = Settings(database_url=database_url, token_key=key, gmail_api_root=emulator.url)
    asyncio.run(syncs_until_revoked(emulator, database_url, settings))


async def syncs_until_revoked(
    emulator: GmailEmulator, database_url: str, settings: Settings
) -> None:
    """Sync with the stored grant, across an expired access token, until the grant is revoked."""
    state = AgentState(database_url)
    stage = sync_stage(settings, state)
    try:
        first = await sync(stage, 0)
        assert first.error is None
        assert first.outputs
        refreshes = emulator.oauth.stats.grants["refresh_token"]
        assert refreshes == 1  # only the refresh token is stored: the worker gets its own token

        emulator.oauth.expire_access_tokens(USER)  # the access token expires: refreshed at once
        second = await sync(stage, 1)
        assert second.error is None
        assert emulator.oauth.stats.grants["refresh_token"] == refreshes + 1

        emulator.oauth.revoke(USER)  # the user withdraws access in their Google Account
        third = await sync(stage, 2)
        assert isinstance(third.error, AccountRevokedError)
        assert "invalid_grant" in str(third.error)
        assert rows(database_url, "SELECT state, last_sync_outcome FROM accounts") == [
            ("revoked", "failed")
        ]

        emulator.reset_accounting()
        fourth = await sync(stage, 3)  # its syncs stop: skipped without calling Gmail
        assert "skipped" in (fourth.note or "")
        assert emulator.accounting.requests == 0
        assert emulator.oauth.stats.refused["refresh_token:invalid_grant"] == 1
    finally:
        stage.gmail.close()
        await state.close()


def test_credentials_are_refused_without_a_token_key(
    emulator: GmailEmulator, database_url: str, tmp_path: Path
) -> None:
    client_file = tmp_path / "client_secret.json"
    client_file.write_text(json.dumps(emulator.oauth.create_client()))
    env = cli_env(database_url, emulator, gmail_oauth_client_file=str(client_file))
    refused = run(env, "accounts", "add", USER, "--oauth")
    assert refused.exit_code == 1
    assert "INBOXFLOW_TOKEN_KEY is not set" in refused.output
    assert "inboxflow accounts new-key" in refused.output
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    assert "INBOXFLOW_TOKEN_KEY is not set" in run(env, "accounts", "import", str(tokens)).output
    bad_key = run(env | {"INBOXFLOW_TOKEN_KEY": "not-a-key"}, "accounts", "add", USER, "--oauth")
    assert bad_key.exit_code == 1
    assert "INBOXFLOW_TOKEN_KEY is not a token key" in bad_key.output
    assert "not-a-key" not in bad_key.output
    assert emulator.oauth.stats.consents == 0
    assert rows(database_url, "SELECT count(*) FROM accounts") == [(0,)]


def test_a_service_account_is_stored_per_user_and_checked_with_gmail(
    emulator: GmailEmulator, database_url: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(emulator.oauth.create_service_account()))
    token_key = new_key()
    env = cli_env(database_url, emulator, token_key=token_key)

    added = run(
        env, "accounts", "add", USER, OTHER, "--service-account", str(key_file),
        "--scope", "metadata",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert f"added {USER} (service_account, gmail.metadata, key id " in added.output
    assert emulator.oauth.stats.grants["jwt_bearer"] == 2
    assert rows(database_url, "SELECT user_id, kind, scope FROM account_credentials") == [
        (USER, "service_account", METADATA_SCOPE),
        (OTHER, "service_account", METADATA_SCOPE),
    ]
    stored = b"".join(
        bytes(r[0]) for r in rows(database_url, "SELECT ciphertext FROM account_credentials")
    )
    assert b"PRIVATE KEY" not in stored

    outsider = run(
        env, "accounts", "add", "nobody@inboxflow.test", "--service-account", str(key_file)
    )
    assert outsider.exit_code == 1
    assert "does not work with Gmail" in outsider.output
    assert "Invalid email or User ID" in outsider.output
    assert rows(database_url, "SELECT count(*) FROM accounts") == [(2,)]


def test_import_encrypts_token_files_and_rotation_moves_them_to_the_new_key(
    emulator: GmailEmulator, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # consent() below, in this process
    folder = tmp_path / "tokens"
    folder.mkdir()
    for user in (USER, OTHER):
        (folder / f"{user}.json").write_text(json.dumps(grant_info(consent(emulator, user))))
    (folder / "broken@inboxflow.test.json").write_text('{"type": "authorized_user"}')
    old, new = new_key(), new_key()
    old_id, new_id = parse_key(old).key_id, parse_key(new).key_id

    imported = run(
        cli_env(database_url, emulator, token_key=old), "accounts", "import", str(folder)
    )
    assert imported.exit_code == 1  # one file could not be imported; the others were
    assert f"imported {USER} (gmail.readonly, key id {old_id})" in imported.output
    assert "skipped broken@inboxflow.test.json: broken@inboxflow.test.json lacks" in imported.output
    assert rows(database_url, "SELECT user_id, key_id FROM account_credentials ORDER BY 1") == [
        (USER, old_id),
        (OTHER, old_id),
    ]
    assert rows(database_url, "SELECT DISTINCT auth_kind FROM accounts") == [("token_file",)]

    new_only = cli_env(database_url, emulator, token_key=new)
    unknown = run(new_only, "accounts", "rotate-key")
    assert unknown.exit_code == 1
    assert f"encrypted under key id {old_id}" in unknown.output
    assert "INBOXFLOW_TOKEN_PREVIOUS_KEYS" in unknown.output
    assert "Nothing was re-encrypted" in unknown.output
    assert old not in unknown.output
    assert new not in unknown.output

    rotating = cli_env(database_url, emulator, token_key=new, token_previous_keys=old)
    rotated = run(rotating, "accounts", "rotate-key", "--json")
    assert json.loads(rotated.output) == {
        "key_id": new_id,
        "rotated": [USER, OTHER],
        "already_current": 0,
    }
    assert rows(database_url, "SELECT DISTINCT key_id FROM account_credentials") == [(new_id,)]
    assert "re-encrypted 0 token(s)" in run(rotating, "accounts", "rotate-key").output

    settings = Settings(database_url=database_url, token_key=new, gmail_api_root=emulator.url)
    client = gmail_client_from(settings)  # the old key is no longer needed
    try:
        profile = asyncio.run(client.get_profile(OTHER))
    finally:
        client.close()
    assert profile.email_address == OTHER


def test_new_key_prints_only_a_fresh_key_on_stdout() -> None:
    first = CliRunner().invoke(cli, ["accounts", "new-key"], catch_exceptions=False)
    second = CliRunner().invoke(cli, ["accounts", "new-key"], catch_exceptions=False)
    key = first.stdout.strip()
    assert key != second.stdout.strip()
    assert parse_key(key).key_id
    assert f"key id {parse_key(key).key_id}" in first.stderr


def test_remove_deletes_the_credentials_and_revokes_the_oauth_grant(
    emulator: GmailEmulator, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # consent() below, in this process
    key = new_key()
    with psycopg.connect(database_url) as conn:
        save_credential(
            conn,
            KeyRing(parse_key(key)),
            USER,
            CredentialKind.AUTHORIZED_USER,
            READONLY_SCOPE,
            grant_info(consent(emulator, USER)),
            auth_kind="oauth",
            label_filter=accounts.DEFAULT_LABEL_FILTER,
        )
    removed = run(cli_env(database_url, emulator, token_key=key), "accounts", "remove", USER)
    assert removed.exit_code == 0, removed.output
    assert f"revoked the Google grant of {USER}" in removed.stderr
    assert f"removed {USER}" in removed.stdout
    assert emulator.oauth.stats.revocations == 1
    assert rows(database_url, "SELECT count(*) FROM account_credentials") == [(0,)]

    # A token file's grant is not inboxflow's own: removing its account leaves it alone.
    with psycopg.connect(database_url) as conn:
        save_credential(
            conn,
            KeyRing(parse_key(key)),
            OTHER,
            CredentialKind.AUTHORIZED_USER,
            READONLY_SCOPE,
            grant_info(consent(emulator, OTHER)),
            auth_kind="token_file",
            label_filter=accounts.DEFAULT_LABEL_FILTER,
        )
    kept = run(cli_env(database_url, emulator, token_key=key), "accounts", "remove", OTHER)
    assert kept.exit_code == 0, kept.output
    assert "revoked" not in kept.stderr
    assert emulator.oauth.stats.revocations == 1
