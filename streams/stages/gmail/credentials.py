"""Where the Gmail client's credentials come from: Postgres (encrypted), token files, or nobody.

``CredentialsProvider`` is the ``credentials_for`` a wired ``GmailClient`` calls from its worker
threads. For each user, in order:

1. the account's row in ``account_credentials``, decrypted with the key ring: an OAuth grant
   (``google.oauth2.credentials.Credentials``: refresh token, client id and secret, token URI)
   or a service account key with the user as subject (domain-wide delegation);
2. ``<token_dir>/<user>.json``, an authorized-user file, when a token folder is configured;
3. anonymous credentials, only when the Gmail endpoint is not Google's (the emulator).

A user's credentials are built once and shared by every thread (google-auth refreshes the access
token in memory; nothing is written back) until the client forgets them after Google refused
them. An account marked ``revoked`` raises ``AccountRevokedError`` without calling Google, so
messages still queued for it dead-letter at once. Decrypted credentials live only in this
process's memory.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from google.auth.credentials import AnonymousCredentials, Credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from db.credentials import READONLY_SCOPE, CredentialKind, StoredCredential, load_credential
from db.token_cipher import KeyRing
from schemas.errors import AccountRevokedError, CredentialsError, TransientError

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
CONNECT_TIMEOUT_SECONDS = 10


def google_credentials(
    user: str, kind: CredentialKind, scope: str, info: Mapping[str, Any]
) -> Credentials:
    """The google-auth credentials of a stored credential (they refresh themselves when used).

    An authorized user refreshes at the ``token_uri`` it was granted by (google-auth's
    ``from_authorized_user_info`` would always use Google's, which the emulator is not).

    Raises:
        CredentialsError: fields google-auth needs are missing.
    """
    if kind is CredentialKind.SERVICE_ACCOUNT:
        try:
            account: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                dict(info), scopes=[scope], subject=user
            )
        except (KeyError, ValueError) as exc:
            raise CredentialsError(f"the stored service account key of {user} is unusable") from exc
        return account
    missing = [
        name for name in ("refresh_token", "client_id", "client_secret") if not info.get(name)
    ]
    if missing:
        raise CredentialsError(f"the stored grant of {user} lacks {', '.join(missing)}")
    grant: Credentials = user_credentials.Credentials(  # type: ignore[no-untyped-call]
        None,
        refresh_token=info["refresh_token"],
        token_uri=info.get("token_uri") or GOOGLE_TOKEN_URI,
        client_id=info["client_id"],
        client_secret=info["client_secret"],
        scopes=[scope],
    )
    return grant


def token_file_credentials(token_dir: str, user: str) -> Credentials:
    """The authorized-user file ``<token_dir>/<user>.json``, read with the gmail.readonly scope.

    Raises:
        CredentialsError: there is no such file, or it is not an authorized-user file.
    """
    path = Path(token_dir).expanduser() / f"{user}.json"
    try:
        creds: Credentials = user_credentials.Credentials.from_authorized_user_file(  # type: ignore[no-untyped-call]
            str(path), [READONLY_SCOPE]
        )
    except FileNotFoundError as exc:
        raise CredentialsError(
            f"no Gmail credentials for {user}: none stored in Postgres and no {path}. Operator "
            f"action: `inboxflow accounts add {user} --oauth`, then redrive."
        ) from exc
    except ValueError as exc:  # missing fields; the message names them, not their values
        raise CredentialsError(f"{path} is not an authorized-user token file: {exc}") from exc
    return creds


class CredentialsProvider:
    """Each user's google-auth credentials, from the encrypted store first (see the module).

    Args:
        conninfo: Postgres holding ``account_credentials``.
        ring: the token keys (an empty ring still reports rows it cannot open clearly).
        token_dir: folder of ``<user>.json`` authorized-user files, the older way; or None.
        allow_anonymous: a user with no credentials gets anonymous ones (the emulator only).
    """

    def __init__(
        self,
        conninfo: str,
        ring: KeyRing,
        *,
        token_dir: str | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        self._conninfo = conninfo
        self._ring = ring
        self._token_dir = token_dir
        self._allow_anonymous = allow_anonymous
        self._lock = threading.Lock()
        self._cache: dict[str, Credentials] = {}

    def __call__(self, user: str) -> Credentials:
        """Return the user's credentials (blocking; built once, then shared).

        Raises:
            AccountRevokedError: the account is marked revoked.
            CredentialsError: a stored token cannot be opened (key missing, unknown or altered
                row), or there are no credentials where some are needed.
            TransientError: Postgres could not be reached.
        """
        with self._lock:
            cached = self._cache.get(user)
        if cached is not None:
            return cached
        stored = self._stored(user)
        if stored is not None and stored.account_state == "revoked":
            raise AccountRevokedError(user, "the account is marked revoked")
        if stored is not None:
            creds = google_credentials(user, stored.kind, stored.scope, stored.info)
        elif self._token_dir is not None:
            creds = token_file_credentials(self._token_dir, user)
        elif self._allow_anonymous:
            creds = AnonymousCredentials()  # type: ignore[no-untyped-call]
        else:
            raise CredentialsError(
                f"no Gmail credentials stored for {user}. Operator action: `inboxflow accounts "
                f"add {user} --oauth` (or --service-account KEY.json), then redrive."
            )
        with self._lock:
            return self._cache.setdefault(user, creds)

    def forget(self, user: str) -> None:
        """Drop the user's credentials: the next call reads them again."""
        with self._lock:
            self._cache.pop(user, None)

    def _stored(self, user: str) -> StoredCredential | None:
        try:
            with psycopg.connect(self._conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                return load_credential(conn, self._ring, user)
        except psycopg.OperationalError as exc:
            raise TransientError(
                f"the Gmail credentials of {user} could not be read from Postgres: {exc}"
            ) from exc
