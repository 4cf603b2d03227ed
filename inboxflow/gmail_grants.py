"""Getting and giving back Gmail grants: the installed-app consent flow, service account keys,
token files, and revocation. Used by ``inboxflow accounts``; what it yields is stored encrypted
(``db.credentials``).

The consent flow is Google's own (google-auth-oauthlib's ``InstalledAppFlow.run_local_server``):
it prints the consent URL, listens on a loopback port for the browser's redirect, exchanges the
code (with PKCE) for a refresh token. Offline access and ``prompt=consent`` make Google return a
refresh token even for a user who consented before.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from google.oauth2.credentials import Credentials as UserCredentials
from google_auth_oauthlib.flow import InstalledAppFlow  # type: ignore[import-untyped]

from db.credentials import METADATA_SCOPE, READONLY_SCOPE

SCOPES = {"readonly": READONLY_SCOPE, "metadata": METADATA_SCOPE}
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# The authorized-user fields google-auth needs to refresh; the access token is not kept (the
# first call refreshes one), so less secret material sits in Postgres.
_AUTHORIZED_USER_FIELDS = ("refresh_token", "client_id", "client_secret", "token_uri")
_PROMPT = (
    "To let inboxflow read {user}'s Gmail, open this URL in a browser signed in as {user}, "
    "and consent:\n\n    {{url}}\n\nWaiting for Google to redirect to this machine..."
)
_SUCCESS = "inboxflow has the Gmail grant it asked for. You can close this window."
REVOKE_TIMEOUT_SECONDS = 10


class GrantError(Exception):
    """A grant could not be obtained or read; the message says what to fix."""


def load_client_config(path: str) -> dict[str, Any]:
    """Read the OAuth client JSON (Desktop app, "installed") from the Google Cloud console.

    Raises:
        GrantError: unreadable, or not an installed-app client.
    """
    try:
        config = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GrantError(f"cannot read the OAuth client file {path}: {exc}") from exc
    installed = config.get("installed") if isinstance(config, dict) else None
    required = ("client_id", "client_secret", "auth_uri", "token_uri")
    if not isinstance(installed, dict) or any(not installed.get(k) for k in required):
        raise GrantError(
            f'{path} is not an OAuth client of type Desktop app: expected an "installed" object '
            f"with {', '.join(required)} (Google Cloud console > Credentials > Create OAuth "
            "client ID > Desktop app > Download JSON)"
        )
    return dict(config)


def allow_loopback_http(*uris: str) -> None:
    """Let oauthlib use plain-HTTP endpoints, only when every one is on this machine.

    oauthlib refuses ``http://`` authorization and token URLs (``InsecureTransportError``)
    unless ``OAUTHLIB_INSECURE_TRANSPORT`` is set. Google's are HTTPS; the Gmail emulator's are
    loopback HTTP, where nothing crosses a network. Anything else keeps oauthlib's refusal.
    """
    parts = [urlsplit(uri) for uri in uris]
    if all(p.scheme == "http" and (p.hostname or "") in _LOOPBACK_HOSTS for p in parts):
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"


def run_consent_flow(
    client_config: Mapping[str, Any],
    scope: str,
    *,
    user: str,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_seconds: float | None = None,
) -> UserCredentials:
    """Run Google's installed-app flow for ``user`` and return its credentials (with a refresh
    token). The consent URL goes to stderr; the browser's redirect comes back to
    ``http://<host>:<port>/`` (``port`` 0: any free one).

    Raises:
        GrantError: no consent in time, Google refused the code, or no refresh token came back.
    """
    installed = client_config["installed"]
    allow_loopback_http(installed["auth_uri"], installed["token_uri"])
    flow = InstalledAppFlow.from_client_config(dict(client_config), scopes=[scope])
    try:
        # run_local_server prints the prompt to stdout; stderr keeps stdout for results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            creds = flow.run_local_server(
                host=host,
                port=port,
                open_browser=False,
                authorization_prompt_message=_PROMPT.format(user=user),
                success_message=_SUCCESS,
                timeout_seconds=timeout_seconds,
                access_type="offline",
                prompt="consent",
                login_hint=user,
            )
    except Exception as exc:  # oauthlib, requests and wsgiref raise many kinds
        raise GrantError(f"the consent flow for {user} failed: {_describe(exc)}") from exc
    if not isinstance(creds, UserCredentials) or not creds.refresh_token:
        raise GrantError(
            f"Google returned no refresh token for {user}: the OAuth client must be a Desktop "
            "app and the flow must ask for offline access"
        )
    return creds


def _describe(exc: BaseException) -> str:
    # oauthlib's errors carry the OAuth error code and description; none carries a token.
    description = getattr(exc, "description", None) or str(exc)
    return f"{type(exc).__name__}: {description}"[:300]


def authorized_user_info(creds: UserCredentials, scope: str) -> dict[str, Any]:
    """What is stored of a consent: the refresh token, the OAuth client and the token URI."""
    info = {
        "type": "authorized_user",
        "refresh_token": creds.refresh_token,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "token_uri": creds.token_uri,
        "scopes": [scope],
    }
    return {k: v for k, v in info.items() if v}


def read_token_file(path: Path) -> tuple[dict[str, Any], str]:
    """Read an authorized-user token file; return what is stored of it and its Gmail scope.

    Raises:
        GrantError: unreadable, not an authorized-user file, or no Gmail read scope.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GrantError(f"cannot read {path.name}: {type(exc).__name__}") from exc
    if not isinstance(data, dict) or data.get("type", "authorized_user") != "authorized_user":
        raise GrantError(f"{path.name} is not an authorized-user token file")
    missing = [k for k in ("refresh_token", "client_id", "client_secret") if not data.get(k)]
    if missing:
        raise GrantError(f"{path.name} lacks {', '.join(missing)}")
    scopes = data.get("scopes") or [READONLY_SCOPE]
    if isinstance(scopes, str):
        scopes = scopes.split()
    metadata_only = METADATA_SCOPE in scopes and READONLY_SCOPE not in scopes
    scope = METADATA_SCOPE if metadata_only else READONLY_SCOPE
    info = {k: data[k] for k in _AUTHORIZED_USER_FIELDS if data.get(k)}
    info.setdefault("token_uri", "https://oauth2.googleapis.com/token")
    return info | {"type": "authorized_user", "scopes": [scope]}, scope


def load_service_account_key(path: str) -> dict[str, Any]:
    """Read a service account key JSON (for domain-wide delegation).

    Raises:
        GrantError: unreadable, or not a service account key.
    """
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GrantError(
            f"cannot read the service account key {path}: {type(exc).__name__}"
        ) from exc
    required = ("client_email", "private_key", "private_key_id", "token_uri")
    if (
        not isinstance(data, dict)
        or data.get("type") != "service_account"
        or any(not data.get(k) for k in required)
    ):
        raise GrantError(
            f"{path} is not a service account key: expected type service_account with "
            f"{', '.join(required)}"
        )
    return data


def revoke_url_for(token_uri: str) -> str:
    """Google's revocation endpoint beside a token endpoint (``.../token`` -> ``.../revoke``)."""
    parts = urlsplit(token_uri)
    path = parts.path.rsplit("/", 1)[0] + "/revoke"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def revoke_grant(info: Mapping[str, Any]) -> None:
    """Revoke an authorized user's grant (its refresh token) at the issuer's revoke endpoint.

    Raises:
        GrantError: the endpoint refused or could not be reached.
    """
    token = info.get("refresh_token")
    token_uri = str(info.get("token_uri") or "https://oauth2.googleapis.com/token")
    if not token:
        raise GrantError("no refresh token to revoke")
    url = revoke_url_for(token_uri)
    request = urllib.request.Request(  # noqa: S310 - the issuer's own https (or loopback) URL
        url,
        data=urlencode({"token": token}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REVOKE_TIMEOUT_SECONDS):  # noqa: S310
            return
    except urllib.error.HTTPError as exc:
        raise GrantError(f"{url} answered {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise GrantError(f"{url} could not be reached: {type(exc).__name__}") from exc
