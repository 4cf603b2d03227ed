"""The emulator as Google's OAuth server, driven by google-auth and google-auth-oauthlib themselves.

Consent and code exchange (PKCE), bearer checks on Gmail calls in Google's error shapes,
transparent refresh, revocation, service accounts' JWT-bearer grant, the gmail.metadata scope.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from google.auth.credentials import Credentials
from google.oauth2 import service_account
from google.oauth2.credentials import Credentials as UserCredentials
from google_auth_oauthlib.flow import Flow

from devstack.gmail_emulator import GmailEmulator, OAuthConfig
from devstack.gmail_emulator.oauth import METADATA, READONLY
from schemas.errors import AccountRevokedError, CredentialsError, PermanentError
from streams.stages.gmail.client import FetchedMessage, GmailClient, GmailClientConfig
from tests.integration.oauth_support import consent
from tests.integration.oauth_support import redirect_location as _location

USER = "ada@inboxflow.test"
OTHER = "bob@inboxflow.test"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GmailEmulator]:
    # oauthlib refuses plain-HTTP token URLs unless told; the emulator is on loopback HTTP.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    emu = GmailEmulator(oauth=OAuthConfig(require_auth=True))
    emu.start_in_thread()
    emu.add_user(USER, messages=5, seed=1)
    emu.add_user(OTHER, messages=2, seed=2)
    try:
        yield emu
    finally:
        emu.stop_thread()


def client_for(emu: GmailEmulator, creds: Credentials, **kwargs: Any) -> GmailClient:
    return GmailClient(
        GmailClientConfig(api_root=emu.url, max_attempts=2),
        credentials_for=lambda _u: creds,
        **kwargs,
    )


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url)  # noqa: S310 - the emulator
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)


def _post_form(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=urlencode(form).encode(), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def test_a_consented_grant_reads_the_users_own_mailbox_only(emulator: GmailEmulator) -> None:
    creds = consent(emulator, USER)
    assert creds.refresh_token  # type: ignore[attr-defined]
    client = client_for(emulator, creds)
    try:
        assert (await client.get_profile(USER)).email_address == USER
        assert (await client.get_profile("me")).email_address == USER
        with pytest.raises(PermanentError, match=f"403 forbidden: Delegation denied for {USER}"):
            await client.get_profile(OTHER)
        fetched = await client.fetch_messages(USER, emulator.message_ids(USER))
        assert all(isinstance(m, FetchedMessage) and m.raw_exact for m in fetched.values())
    finally:
        client.close()
    stats = emulator.oauth.stats
    assert (stats.consents, stats.grants["authorization_code"], stats.forbidden) == (1, 1, 1)


def test_calls_without_a_valid_token_get_googles_401(emulator: GmailEmulator) -> None:
    profile = f"{emulator.url}gmail/v1/users/me/profile"
    status, body, headers = _get(profile)
    assert status == 401
    assert body["error"]["status"] == "UNAUTHENTICATED"
    assert body["error"]["errors"][0]["reason"] == "required"
    assert body["error"]["message"].startswith("Request is missing required authentication")

    token = emulator.oauth.issue_access_token(USER)
    assert _get(profile, token)[0] == 200
    emulator.oauth.expire_access_tokens(USER)
    status, body, headers = _get(profile, token)
    assert status == 401
    assert body["error"]["errors"][0] == {
        "message": "Invalid Credentials",
        "domain": "global",
        "reason": "authError",
        "location": "Authorization",
        "locationType": "header",
    }
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert emulator.oauth.stats.unauthenticated == 2


async def test_an_access_token_expired_early_gets_a_401_and_is_refreshed_transparently(
    emulator: GmailEmulator,
) -> None:
    creds = consent(emulator, USER)
    client = client_for(emulator, creds)
    try:
        await client.get_profile(USER)
        emulator.oauth.expire_access_tokens(USER)  # Gmail answers 401; google-auth refreshes
        assert (await client.get_profile(USER)).email_address == USER
    finally:
        client.close()
    stats = emulator.oauth.stats
    assert (stats.unauthenticated, stats.grants["refresh_token"]) == (1, 1)


async def test_a_token_about_to_expire_is_refreshed_before_calls_and_batches(
    emulator: GmailEmulator,
) -> None:
    creds = consent(emulator, USER)
    client = client_for(emulator, creds)
    try:
        await client.get_profile(USER)
        # Time passes: google-auth refreshes a token once it is within 225 s of its expiry.
        creds.expiry = datetime.now(UTC).replace(tzinfo=None)
        await client.get_profile(USER)
        creds.expiry = datetime.now(UTC).replace(tzinfo=None)
        fetched = await client.fetch_messages(USER, emulator.message_ids(USER))
    finally:
        client.close()
    assert len(fetched) == 5
    assert emulator.oauth.stats.grants["refresh_token"] == 2
    assert emulator.oauth.stats.unauthenticated == 0


async def test_a_revoked_grant_is_invalid_grant_and_account_revoked_in_calls_and_batches(
    emulator: GmailEmulator,
) -> None:
    granted = consent(emulator, USER)
    forgotten: list[str] = []

    def credentials_for(user: str) -> Credentials:
        # As the stored credentials are rebuilt once forgotten: a refresh token, no access token.
        fresh: Credentials = UserCredentials(
            None,
            refresh_token=granted.refresh_token,  # type: ignore[attr-defined]
            token_uri=granted.token_uri,  # type: ignore[attr-defined]
            client_id=granted.client_id,  # type: ignore[attr-defined]
            client_secret=granted.client_secret,  # type: ignore[attr-defined]
            scopes=[READONLY],
        )
        return fresh

    client = GmailClient(
        GmailClientConfig(api_root=emulator.url, max_attempts=2),
        credentials_for=credentials_for,
        forget_credentials=forgotten.append,
    )
    try:
        await client.get_profile(USER)
        assert emulator.oauth.revoke(USER) == 1
        with pytest.raises(AccountRevokedError) as caught:
            await client.get_profile(USER)
        message = str(caught.value)
        assert "invalid_grant: Token has been expired or revoked." in message
        assert f"accounts add {USER} --oauth" in message
        assert "ya29." not in message
        assert "1//" not in message
        with pytest.raises(AccountRevokedError):
            await client.fetch_messages(USER, emulator.message_ids(USER))
    finally:
        client.close()
    assert forgotten == [USER, USER]
    assert emulator.oauth.stats.refused["refresh_token:invalid_grant"] >= 2
    assert emulator.accounting.calls_by_method.get("users.messages.get", 0) == 0


def test_the_revoke_endpoint_revokes_a_grant_once(emulator: GmailEmulator) -> None:
    creds = consent(emulator, USER)
    revoke = f"{emulator.url}revoke"
    refresh: str = creds.refresh_token  # type: ignore[attr-defined]
    assert _post_form(revoke, {"token": refresh}) == (200, {})
    assert _post_form(revoke, {"token": refresh}) == (
        400,
        {"error": "invalid_token", "error_description": "Token expired or revoked"},
    )
    status, body = _post_form(
        f"{emulator.url}token",
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": creds.client_id,  # type: ignore[attr-defined]
            "client_secret": creds.client_secret,  # type: ignore[attr-defined]
        },
    )
    assert (status, body) == (
        400,
        {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
    )


def test_a_code_is_single_use_and_bound_to_its_pkce_verifier(emulator: GmailEmulator) -> None:
    config = emulator.oauth.create_client()
    flow = Flow.from_client_config(config, scopes=[READONLY], redirect_uri="http://127.0.0.1:9/")
    url, _ = flow.authorization_url(access_type="offline", login_hint=USER)
    code = parse_qs(urlsplit(_location(url)).query)["code"][0]
    installed = config["installed"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:9/",
        "client_id": installed["client_id"],
        "client_secret": installed["client_secret"],
    }
    token_url = installed["token_uri"]
    assert _post_form(token_url, form | {"code_verifier": "x" * 43})[1] == {
        "error": "invalid_grant",
        "error_description": "Invalid code verifier.",
    }
    assert _post_form(token_url, form | {"client_secret": "wrong"})[0] == 401
    status, body = _post_form(token_url, form | {"code_verifier": flow.code_verifier})
    assert status == 200
    assert body["scope"] == READONLY
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"].startswith("1//")
    assert _post_form(token_url, form | {"code_verifier": flow.code_verifier})[1] == {
        "error": "invalid_grant",
        "error_description": "Malformed auth code.",
    }


async def test_a_service_account_impersonates_a_user_with_the_jwt_bearer_grant(
    emulator: GmailEmulator,
) -> None:
    key = emulator.oauth.create_service_account(delegated_scopes=[READONLY])
    assert key["token_uri"] == f"{emulator.url}token"

    def as_user(user: str, scope: str = READONLY) -> Credentials:
        creds: Credentials = service_account.Credentials.from_service_account_info(
            key, scopes=[scope], subject=user
        )
        return creds

    client = GmailClient(
        GmailClientConfig(api_root=emulator.url, max_attempts=2), credentials_for=as_user
    )
    try:
        assert (await client.get_profile(USER)).email_address == USER
        assert (await client.get_profile(OTHER)).email_address == OTHER
        with pytest.raises(AccountRevokedError, match="Invalid email or User ID"):
            await client.get_profile("nobody@inboxflow.test")
    finally:
        client.close()
    assert emulator.oauth.stats.grants["jwt_bearer"] == 2

    undelegated = client_for(emulator, as_user(USER, METADATA))
    try:
        with pytest.raises(CredentialsError, match="unauthorized_client"):
            await undelegated.get_profile(USER)
    finally:
        undelegated.close()

    emulator.oauth.delete_service_account_key(key["private_key_id"])
    deleted = client_for(emulator, as_user(USER))
    try:
        with pytest.raises(AccountRevokedError, match="Invalid JWT Signature"):
            await deleted.get_profile(USER)
    finally:
        deleted.close()


async def test_a_metadata_grant_is_fetched_as_headers_since_gmail_refuses_raw(
    emulator: GmailEmulator,
) -> None:
    creds = consent(emulator, USER, METADATA)
    message_id = emulator.add_message(
        USER,
        b"From: Zo\xc3\xab <zoe@example.org>\r\nTo: ada@inboxflow.test\r\nSubject: Hello\r\n"
        b"Message-ID: <m1@example.org>\r\n\r\nthe body Gmail does not give out\r\n",
    )
    token = emulator.oauth.issue_access_token(USER, [METADATA])
    status, body, _ = _get(
        f"{emulator.url}gmail/v1/users/me/messages/{message_id}?format=raw", token
    )
    assert (status, body["error"]["message"]) == (403, "Metadata scope doesn't allow format RAW")

    client = client_for(emulator, creds)
    try:
        assert await client.metadata_only(USER)
        fetched = (await client.fetch_messages(USER, [message_id]))[message_id]
    finally:
        client.close()
    assert isinstance(fetched, FetchedMessage)
    assert fetched.raw is not None
    assert not fetched.raw_exact
    assert b"Subject: Hello\r\n" in fetched.raw
    assert b"=?utf-8?" in fetched.raw  # the non-ASCII name, RFC 2047-encoded
    assert fetched.raw.endswith(b"\r\n\r\n")
    assert b"the body" not in fetched.raw
    assert emulator.oauth.stats.forbidden == 1  # only the direct raw call above
