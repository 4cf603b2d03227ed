"""The ``account_credentials`` table: each account's Gmail credential, encrypted (``token_cipher``).

A credential is the JSON Google's libraries read: an authorized user (refresh token, OAuth
client id and secret, token URI, from the installed-app consent flow or a token file) or a
service account key (domain-wide delegation; the account is the subject). It is sealed as a
whole with ``KeyRing.seal``; the row keeps the key id and nonce beside the ciphertext and the
granted scope in clear. Plaintext never reaches Postgres.

Blocking psycopg: the Gmail client asks for credentials from its worker threads, and the
operator's commands run one short transaction. Each function takes an open connection and runs in
its transaction; none commits, so a caller can group them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from db.token_cipher import KeyRing, Sealed

READONLY_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
METADATA_SCOPE = "https://www.googleapis.com/auth/gmail.metadata"
_PAYLOAD_VERSION = 1


class CredentialKind(enum.StrEnum):
    """What a stored credential is; part of the ciphertext's associated data."""

    AUTHORIZED_USER = "authorized_user"  # OAuth grant: refresh token + client id and secret
    SERVICE_ACCOUNT = "service_account"  # Workspace domain-wide delegation key


@dataclass(frozen=True)
class StoredCredential:
    """A decrypted credential and the state of its account. ``repr`` hides the secret parts."""

    user_id: str
    kind: CredentialKind
    scope: str
    key_id: str
    account_state: str  # accounts.state: active, paused or revoked
    auth_kind: str  # accounts.auth_kind: how it was granted (oauth, service_account, token_file)
    info: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class RotationReport:
    """What ``rotate_credentials`` did: users re-encrypted, and rows already under the key."""

    key_id: str
    rotated: list[str]
    already_current: int


REGISTER_ACCOUNT = """
INSERT INTO accounts (user_id, auth_kind, label_filter)
VALUES (%(user_id)s, %(auth_kind)s, %(label_filter)s)
ON CONFLICT (user_id) DO UPDATE
SET auth_kind = EXCLUDED.auth_kind,
    -- A new grant brings a revoked account back; a paused one stays paused.
    state = CASE WHEN accounts.state = 'revoked' THEN 'active' ELSE accounts.state END,
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""
UPSERT_CREDENTIAL = """
INSERT INTO account_credentials (user_id, kind, scope, key_id, nonce, ciphertext)
VALUES (%(user_id)s, %(kind)s, %(scope)s, %(key_id)s, %(nonce)s, %(ciphertext)s)
ON CONFLICT (user_id) DO UPDATE
SET kind = EXCLUDED.kind, scope = EXCLUDED.scope, key_id = EXCLUDED.key_id,
    nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = now()
"""
SELECT_CREDENTIAL = """
SELECT c.user_id, c.kind, c.scope, c.key_id, c.nonce, c.ciphertext, a.state, a.auth_kind
FROM account_credentials c JOIN accounts a USING (user_id)
WHERE c.user_id = %(user_id)s
"""
SELECT_FOR_ROTATION = """
SELECT user_id, kind, key_id, nonce, ciphertext FROM account_credentials
WHERE key_id <> %(key_id)s ORDER BY user_id FOR UPDATE
"""
COUNT_CURRENT = "SELECT count(*) FROM account_credentials WHERE key_id = %(key_id)s"
UPDATE_SEALED = """
UPDATE account_credentials
SET key_id = %(key_id)s, nonce = %(nonce)s, ciphertext = %(ciphertext)s, updated_at = now()
WHERE user_id = %(user_id)s
"""


def seal_credential(
    ring: KeyRing, user_id: str, kind: CredentialKind, scope: str, info: Mapping[str, Any]
) -> Sealed:
    """Encrypt a credential for its row (pure)."""
    payload = {"v": _PAYLOAD_VERSION, "kind": kind.value, "scope": scope, "info": dict(info)}
    plaintext = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return ring.seal(plaintext, user_id=user_id, kind=kind.value)


def open_credential(
    ring: KeyRing, user_id: str, kind: CredentialKind, sealed: Sealed
) -> tuple[str, dict[str, Any]]:
    """Decrypt a row's credential; return its scope and info (pure; see ``KeyRing.open``)."""
    payload = json.loads(ring.open(sealed, user_id=user_id, kind=kind.value))
    return str(payload["scope"]), dict(payload["info"])


def save_credential(
    conn: psycopg.Connection[Any],
    ring: KeyRing,
    user_id: str,
    kind: CredentialKind,
    scope: str,
    info: Mapping[str, Any],
    *,
    auth_kind: str,
    label_filter: Sequence[str],
) -> bool:
    """Register the account (or update its auth kind) and store its credential, encrypted.

    A revoked account becomes active again: this is a new grant. ``label_filter`` applies only to
    a new account. Returns whether the account is new.
    """
    cursor = conn.execute(
        REGISTER_ACCOUNT,
        {"user_id": user_id, "auth_kind": auth_kind, "label_filter": list(label_filter)},
    )
    row = cursor.fetchone()
    sealed = seal_credential(ring, user_id, kind, scope, info)
    conn.execute(
        UPSERT_CREDENTIAL,
        {
            "user_id": user_id,
            "kind": kind.value,
            "scope": scope,
            "key_id": sealed.key_id,
            "nonce": sealed.nonce,
            "ciphertext": sealed.ciphertext,
        },
    )
    return bool(row and row[0])


def load_credential(
    conn: psycopg.Connection[Any], ring: KeyRing, user_id: str
) -> StoredCredential | None:
    """Return the user's decrypted credential, or None when none is stored.

    Raises:
        CredentialsError: the key is missing or unknown, or the row failed authentication.
    """
    row = conn.execute(SELECT_CREDENTIAL, {"user_id": user_id}).fetchone()
    if row is None:
        return None
    user, kind_text, _scope, key_id, nonce, ciphertext, state, auth_kind = row
    kind = CredentialKind(kind_text)
    scope, info = open_credential(ring, user, kind, Sealed(key_id, bytes(nonce), bytes(ciphertext)))
    return StoredCredential(user, kind, scope, key_id, state, auth_kind, info)


def rotate_credentials(conn: psycopg.Connection[Any], ring: KeyRing) -> RotationReport:
    """Re-encrypt every credential not under the ring's current key with it (rows locked).

    All or nothing within the caller's transaction: a row that cannot be opened raises.

    Raises:
        TokenKeyMissingError: the ring has no current key.
        CredentialsError: a row's key is not configured, or it failed authentication.
    """
    current = ring.current_key().key_id
    rows = conn.execute(SELECT_FOR_ROTATION, {"key_id": current}).fetchall()
    rotated = []
    for user, kind, key_id, nonce, ciphertext in rows:
        sealed_before = Sealed(key_id, bytes(nonce), bytes(ciphertext))
        plaintext = ring.open(sealed_before, user_id=user, kind=kind)
        sealed = ring.seal(plaintext, user_id=user, kind=kind)
        conn.execute(
            UPDATE_SEALED,
            {
                "user_id": user,
                "key_id": sealed.key_id,
                "nonce": sealed.nonce,
                "ciphertext": sealed.ciphertext,
            },
        )
        rotated.append(user)
    count_row = conn.execute(COUNT_CURRENT, {"key_id": current}).fetchone()
    already = (int(count_row[0]) if count_row else 0) - len(rotated)
    return RotationReport(current, rotated, already)
