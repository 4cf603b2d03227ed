"""The ``accounts`` table: the mailboxes inboxflow serves and where each one's sync stands.

The operator's commands (``inboxflow accounts ...``), the staleness scheduler, the push receiver
and the sync agent all read and write accounts through these functions. Each takes an open
async connection and runs in its transaction; none commits, so a caller can group them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

DEFAULT_LABEL_FILTER = ("SPAM", "TRASH")

# Every table holding a user's rows, in the order ``remove --purge`` empties them.
USER_TABLES = (
    "jobs",
    "contact_messages",
    "contacts",
    "emails",
    "deleted_messages",
    "message_labels",
    "discovered_messages",
    "sync_state",
    "sync_listings",
    "sync_listed_ids",
    "insight_state",
    "chunk_vectors",
    "account_credentials",
    "accounts",
)


class AccountState(enum.StrEnum):
    """Whether a mailbox is synced: only ``active`` ones are."""

    ACTIVE = "active"
    PAUSED = "paused"  # by an operator; ``resume`` brings it back
    REVOKED = "revoked"  # the user withdrew the grant; a new one is needed


class SyncOutcome(enum.StrEnum):
    """How the last sync of an account ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # the account was not active when the request arrived


class AccountNotFoundError(LookupError):
    """No account with that address."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"no account {user_id!r}; add it with `inboxflow accounts add {user_id}`")
        self.user_id = user_id


@dataclass(frozen=True)
class Account:
    """One row of ``accounts``, with the sync checkpoint from ``sync_state``."""

    user_id: str
    state: AccountState
    auth_kind: str
    label_filter: tuple[str, ...]
    history_id: str | None
    watch_expires_at: datetime | None
    last_sync_requested_at: datetime | None
    last_synced_at: datetime | None
    last_sync_outcome: SyncOutcome | None
    last_sync_error: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The account as JSON-ready values (times in ISO 8601)."""
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in asdict(self).items()
        } | {"label_filter": list(self.label_filter)}


SELECT_ACCOUNTS = """
SELECT a.user_id, a.state, a.auth_kind, a.label_filter, s.history_id::text AS history_id,
       a.watch_expires_at, a.last_sync_requested_at, a.last_synced_at, a.last_sync_outcome,
       a.last_sync_error, a.created_at
FROM accounts a LEFT JOIN sync_state s USING (user_id)
"""
INSERT_ACCOUNT = """
INSERT INTO accounts (user_id, auth_kind, label_filter)
VALUES (%(user_id)s, %(auth_kind)s, %(label_filter)s)
ON CONFLICT (user_id) DO NOTHING
"""
UPDATE_STATE = """
UPDATE accounts SET state = %(state)s, updated_at = now() WHERE user_id = %(user_id)s
"""
DUE_ACCOUNTS = """
SELECT user_id FROM accounts
WHERE state = 'active'
  AND (last_sync_requested_at IS NULL OR last_sync_requested_at < %(stale_before)s)
ORDER BY last_sync_requested_at NULLS FIRST, user_id
LIMIT %(limit)s
"""
MARK_REQUESTED = """
UPDATE accounts SET last_sync_requested_at = %(at)s, updated_at = now()
WHERE user_id = ANY(%(users)s)
  AND (last_sync_requested_at IS NULL OR last_sync_requested_at < %(at)s)
"""
WATCHES_DUE = """
SELECT user_id FROM accounts
WHERE state = 'active'
  AND (watch_expires_at IS NULL OR watch_expires_at < %(expiring_before)s
       OR watch_renewed_at IS NULL OR watch_renewed_at < %(renewed_before)s)
ORDER BY watch_expires_at NULLS FIRST, user_id
LIMIT %(limit)s
"""
EARLIEST_WATCH_EXPIRY = """
SELECT min(watch_expires_at) FROM accounts WHERE state = 'active' AND watch_expires_at IS NOT NULL
"""
RECORD_WATCH = """
UPDATE accounts
SET watch_expires_at = %(expires_at)s, watch_renewed_at = %(at)s, updated_at = now()
WHERE user_id = %(user_id)s
"""
RECORD_OUTCOME = """
UPDATE accounts
SET last_synced_at = %(at)s, last_sync_outcome = %(outcome)s, last_sync_error = %(error)s,
    updated_at = now()
WHERE user_id = %(user_id)s
"""


def normalize_address(user_id: str) -> str:
    """Return the account key for a Gmail address: trimmed and lower-cased."""
    address = user_id.strip().lower()
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise ValueError(f"{user_id!r} is not an email address")
    return address


async def add_account(
    conn: psycopg.AsyncConnection[Any],
    user_id: str,
    *,
    auth_kind: str = "token_file",
    label_filter: Sequence[str] = DEFAULT_LABEL_FILTER,
) -> tuple[Account, bool]:
    """Register a mailbox (active); return it and whether it was new (adding twice is a no-op)."""
    address = normalize_address(user_id)
    cursor = await conn.execute(
        INSERT_ACCOUNT,
        {"user_id": address, "auth_kind": auth_kind, "label_filter": list(label_filter)},
    )
    return await get_account(conn, address), cursor.rowcount == 1


async def get_account(conn: psycopg.AsyncConnection[Any], user_id: str) -> Account:
    """Return one account; raise AccountNotFoundError if there is none."""
    found = await _select(conn, "WHERE a.user_id = %(user_id)s", {"user_id": user_id.lower()})
    if not found:
        raise AccountNotFoundError(user_id)
    return found[0]


async def find_accounts(conn: psycopg.AsyncConnection[Any], users: Sequence[str]) -> list[Account]:
    """Return the registered accounts among ``users`` (any state), in address order."""
    lowered = [user.lower() for user in users]
    return await _select(conn, "WHERE a.user_id = ANY(%(users)s)", {"users": lowered})


async def list_accounts(conn: psycopg.AsyncConnection[Any]) -> list[Account]:
    """Return every account, in address order."""
    return await _select(conn, "", {})


async def set_state(
    conn: psycopg.AsyncConnection[Any], user_id: str, state: AccountState
) -> Account:
    """Move an account to ``state``; raise AccountNotFoundError if there is none."""
    cursor = await conn.execute(UPDATE_STATE, {"user_id": user_id.lower(), "state": state.value})
    if cursor.rowcount == 0:
        raise AccountNotFoundError(user_id)
    return await get_account(conn, user_id)


async def remove_account(
    conn: psycopg.AsyncConnection[Any], user_id: str, *, purge: bool
) -> dict[str, int]:
    """Delete an account (its syncs stop); with ``purge`` also its rows in every table.

    Returns the rows deleted per table. Events already in Kafka stay until retention.
    """
    address = user_id.lower()
    tables = USER_TABLES if purge else ("accounts",)
    deleted: dict[str, int] = {}
    for table in tables:
        statement = sql.SQL("DELETE FROM {} WHERE user_id = %(user_id)s").format(
            sql.Identifier(table)
        )
        cursor = await conn.execute(statement, {"user_id": address})
        deleted[table] = cursor.rowcount
    if deleted["accounts"] == 0:
        raise AccountNotFoundError(user_id)
    return deleted


async def due_accounts(
    conn: psycopg.AsyncConnection[Any], *, stale_before: datetime, limit: int
) -> list[str]:
    """Return active accounts whose last sync request is older than ``stale_before``."""
    cursor = await conn.execute(DUE_ACCOUNTS, {"stale_before": stale_before, "limit": limit})
    return [row[0] for row in await cursor.fetchall()]


async def mark_sync_requested(
    conn: psycopg.AsyncConnection[Any], users: Sequence[str], at: datetime
) -> None:
    """Note that a SyncRequested for each of ``users`` was acknowledged by Kafka at ``at``."""
    await conn.execute(MARK_REQUESTED, {"users": [u.lower() for u in users], "at": at})


async def watches_due(
    conn: psycopg.AsyncConnection[Any],
    *,
    renewed_before: datetime,
    expiring_before: datetime,
    limit: int,
) -> list[str]:
    """Return active accounts whose Gmail watch is missing, expiring or not renewed lately."""
    params = {"renewed_before": renewed_before, "expiring_before": expiring_before, "limit": limit}
    cursor = await conn.execute(WATCHES_DUE, params)
    return [row[0] for row in await cursor.fetchall()]


async def earliest_watch_expiry(conn: psycopg.AsyncConnection[Any]) -> datetime | None:
    """Return when the first active account's Gmail watch expires (None: no watches)."""
    cursor = await conn.execute(EARLIEST_WATCH_EXPIRY)
    row = await cursor.fetchone()
    return row[0] if row else None


async def record_watch(
    conn: psycopg.AsyncConnection[Any], user_id: str, expires_at: datetime | None, at: datetime
) -> None:
    """Note a renewed watch (or, with ``expires_at`` None, a stopped one) on the account."""
    params = {"user_id": user_id.lower(), "expires_at": expires_at, "at": at}
    await conn.execute(RECORD_WATCH, params)


async def record_sync_outcome(
    conn: psycopg.AsyncConnection[Any],
    user_id: str,
    outcome: SyncOutcome,
    at: datetime,
    error: str | None = None,
) -> None:
    """Note how a sync of ``user_id`` ended (no-op for an unregistered user)."""
    params = {"user_id": user_id.lower(), "outcome": outcome.value, "at": at, "error": error}
    await conn.execute(RECORD_OUTCOME, params)


async def _select(
    conn: psycopg.AsyncConnection[Any], where: str, params: dict[str, Any]
) -> list[Account]:
    query = SELECT_ACCOUNTS + where + " ORDER BY a.user_id"
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        rows = await cursor.fetchall()
    return [_account(row) for row in rows]


def _account(row: dict[str, Any]) -> Account:
    outcome = row["last_sync_outcome"]
    return Account(
        user_id=row["user_id"],
        state=AccountState(row["state"]),
        auth_kind=row["auth_kind"],
        label_filter=tuple(row["label_filter"]),
        history_id=row["history_id"],
        watch_expires_at=row["watch_expires_at"],
        last_sync_requested_at=row["last_sync_requested_at"],
        last_synced_at=row["last_synced_at"],
        last_sync_outcome=SyncOutcome(outcome) if outcome else None,
        last_sync_error=row["last_sync_error"],
        created_at=row["created_at"],
    )
