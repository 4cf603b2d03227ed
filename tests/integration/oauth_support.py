"""Playing the user in a browser against the Gmail emulator's OAuth side, for tests."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.oauth2.credentials import Credentials
from google_auth_oauthlib.flow import Flow

from devstack.gmail_emulator import GmailEmulator
from devstack.gmail_emulator.oauth import READONLY


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def redirect_location(url: str) -> str:
    """GET ``url`` and return the Location of its 302 (not followed)."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(url, timeout=10).close()
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 302:
                return str(exc.headers["Location"])
            raise
    raise AssertionError(f"{url} did not redirect")


def consent(
    emu: GmailEmulator, user: str, scope: str = READONLY, client: dict[str, Any] | None = None
) -> Credentials:
    """Consent as ``user`` (login_hint), follow the redirect, exchange the code (with PKCE).

    Needs ``OAUTHLIB_INSECURE_TRANSPORT`` set: the emulator's token URL is plain HTTP.
    """
    flow = Flow.from_client_config(
        client or emu.oauth.create_client(), scopes=[scope], redirect_uri="http://127.0.0.1:9/"
    )
    url, state = flow.authorization_url(access_type="offline", login_hint=user)
    redirected = parse_qs(urlsplit(redirect_location(url)).query)
    assert redirected["state"] == [state]
    flow.fetch_token(code=redirected["code"][0])
    flow.oauth2session.close()
    creds: Credentials = flow.credentials
    return creds


def grant_info(creds: Credentials) -> dict[str, Any]:
    """What ``accounts add --oauth`` stores of a grant (an authorized-user file's fields)."""
    return {
        "type": "authorized_user",
        "refresh_token": creds.refresh_token,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "token_uri": creds.token_uri,
    }
