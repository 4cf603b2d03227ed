"""Agent state kept in Postgres: sync checkpoints, discovered ids, insight aggregates.

Agents keep no faust tables (their changelog recovery is the least reliable part of faust:
bug #176); the owner of a user's partition reads and writes that user's rows here. Every write is
an idempotent upsert. ``psycopg.OperationalError`` becomes ``TransientError`` so a database
restart retries the record instead of killing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from db import accounts
from db.accounts import Account, SyncOutcome
from db.pool import LazyPool

SELECT_SYNC_STATE = """
SELECT history_id::text, full_synced FROM sync_state WHERE user_id = %(user_id)s
"""
UPSERT_SYNC_STATE = """
INSERT INTO sync_state (user_id, history_id, last_sync_id, full_synced, updated_at)
VALUES (%(user_id)s, %(history_id)s, %(sync_id)s, %(full)s, now())
ON CONFLICT (user_id) DO UPDATE SET
    history_id = GREATEST(sync_state.history_id, EXCLUDED.history_id),
    last_sync_id = EXCLUDED.last_sync_id,
    full_synced = sync_state.full_synced OR EXCLUDED.full_synced,
    updated_at = now()
"""
SELECT_KNOWN_IDS = """
SELECT message_id FROM discovered_messages
WHERE user_id = %(user_id)s AND message_id = ANY(%(ids)s)
"""
INSERT_DISCOVERED = """
INSERT INTO discovered_messages (user_id, message_id, sync_id)
SELECT %(user_id)s, id, %(sync_id)s FROM unnest(%(ids)s::text[]) AS id
ON CONFLICT DO NOTHING
"""
FORGET_DISCOVERED = """
DELETE FROM discovered_messages WHERE user_id = %(user_id)s AND message_id = ANY(%(ids)s)
"""
UPSERT_LISTING = """
INSERT INTO sync_listings (user_id, sync_id, listing_phase, updated_at)
VALUES (%(user_id)s, %(sync_id)s, %(listing_phase)s, now())
ON CONFLICT (user_id) DO UPDATE
SET sync_id = EXCLUDED.sync_id, listing_phase = EXCLUDED.listing_phase, updated_at = now()
"""
SELECT_LISTING = """
SELECT sync_id FROM sync_listings
WHERE user_id = %(user_id)s AND updated_at > now() - %(idle)s * interval '1 second'
"""
END_LISTING = """
DELETE FROM sync_listings WHERE user_id = %(user_id)s AND sync_id = %(sync_id)s
"""
INSERT_LISTED = """
INSERT INTO sync_listed_ids (user_id, sync_id, message_id)
SELECT %(user_id)s, %(sync_id)s, id FROM unnest(%(ids)s::text[]) AS id
ON CONFLICT DO NOTHING
"""
SELECT_UNLISTED = """
SELECT d.message_id FROM discovered_messages d
WHERE d.user_id = %(user_id)s AND NOT EXISTS (
    SELECT 1 FROM sync_listed_ids l
    WHERE l.user_id = d.user_id AND l.sync_id = %(sync_id)s AND l.message_id = d.message_id)
ORDER BY d.message_id
"""
FORGET_LISTED = """
DELETE FROM sync_listed_ids WHERE user_id = %(user_id)s AND sync_id = %(sync_id)s
"""
ENSURE_INSIGHTS_ROW = """
INSERT INTO insight_state (user_id, state) VALUES (%(user_id)s, 'null'::jsonb)
ON CONFLICT (user_id) DO NOTHING
"""
LOCK_INSIGHTS = """
SELECT state FROM insight_state WHERE user_id = %(user_id)s FOR UPDATE
"""
UPDATE_INSIGHTS = """
UPDATE insight_state
SET state = %(state)s::jsonb, state_version = state_version + 1, updated_at = now()
WHERE user_id = %(user_id)s
"""
PENDING_INSIGHTS = """
SELECT user_id, state, state_version FROM insight_state
WHERE state_version > emitted_version
  AND (last_emitted_at IS NULL OR last_emitted_at <= %(now)s - %(interval)s * interval '1 second')
ORDER BY user_id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
MARK_EMITTED = """
UPDATE insight_state
SET emitted_version = GREATEST(emitted_version, %(version)s), last_emitted_at = %(now)s
WHERE user_id = %(user_id)s
"""

InsightFold = Callable[[dict[str, Any] | None], str | None]
"""Given the stored aggregate (None at first), return the new one as JSON, or None if unchanged."""
PublishInsights = Callable[[list[tuple[str, dict[str, Any]]]], Awaitable[None]]


@dataclass(frozen=True)
class SyncCheckpoint:
    """Where a user's incremental sync resumes."""

    history_id: str
    full_synced: bool


class AgentState:
    """Postgres access for agents, over a small async connection pool."""

    def __init__(self, conninfo: str, *, max_size: int = 4) -> None:
        self._pool = LazyPool(conninfo, what="agent state database", max_size=max_size, timeout=30)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def account(self, user_id: str) -> Account | None:
        """Return the user's account, or None if the mailbox is not registered."""
        async with self._pool.connection() as conn:
            found = await accounts.find_accounts(conn, [user_id])
        return found[0] if found else None

    async def record_sync_outcome(
        self, user_id: str, outcome: SyncOutcome, at: datetime, error: str | None = None
    ) -> None:
        """Note on the user's account how its last sync ended."""
        async with self._pool.connection() as conn:
            await accounts.record_sync_outcome(conn, user_id, outcome, at, error)

    async def revoke_account(self, user_id: str) -> None:
        """Mark the user's account revoked (Google refused its grant): nothing syncs it any more.

        A no-op for an account that is not registered.
        """
        async with self._pool.connection() as conn:
            with contextlib.suppress(accounts.AccountNotFoundError):
                await accounts.set_state(conn, user_id, accounts.AccountState.REVOKED)

    async def sync_checkpoint(self, user_id: str) -> SyncCheckpoint | None:
        """Return the user's checkpoint, or None before the first sync."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(SELECT_SYNC_STATE, {"user_id": user_id})
            row = await cursor.fetchone()
        return SyncCheckpoint(row[0], row[1]) if row else None

    async def save_sync_checkpoint(
        self, user_id: str, history_id: str, sync_id: str, *, full: bool
    ) -> None:
        """Record that everything up to ``history_id`` was emitted; never moves backwards."""
        params = {"user_id": user_id, "history_id": history_id, "sync_id": sync_id, "full": full}
        async with self._pool.connection() as conn:
            await conn.execute(UPSERT_SYNC_STATE, params)

    async def known_message_ids(self, user_id: str, ids: list[str]) -> set[str]:
        """Return which of ``ids`` a sync already emitted for this user."""
        if not ids:
            return set()
        async with self._pool.connection() as conn:
            cursor = await conn.execute(SELECT_KNOWN_IDS, {"user_id": user_id, "ids": ids})
            return {row[0] for row in await cursor.fetchall()}

    async def remember_message_ids(self, user_id: str, sync_id: str, ids: Iterable[str]) -> None:
        """Record ids as emitted (idempotent)."""
        params = {"user_id": user_id, "sync_id": sync_id, "ids": list(ids)}
        async with self._pool.connection() as conn:
            await conn.execute(INSERT_DISCOVERED, params)

    async def note_listing(self, user_id: str, sync_id: str, listing_phase: str) -> None:
        """Mark a full listing of the user as in progress (refreshed at every page)."""
        params = {"user_id": user_id, "sync_id": sync_id, "listing_phase": listing_phase}
        async with self._pool.connection() as conn:
            await conn.execute(UPSERT_LISTING, params)

    async def listing_in_progress(self, user_id: str, idle_seconds: float) -> str | None:
        """Return the sync id of a listing that moved within ``idle_seconds``, if any."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(SELECT_LISTING, {"user_id": user_id, "idle": idle_seconds})
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def end_listing(self, user_id: str, sync_id: str) -> None:
        """Forget a finished listing and the ids its reconcile pass collected."""
        params = {"user_id": user_id, "sync_id": sync_id}
        async with self._pool.connection() as conn:
            await conn.execute(END_LISTING, params)
            await conn.execute(FORGET_LISTED, params)

    async def note_listed_ids(self, user_id: str, sync_id: str, ids: Iterable[str]) -> None:
        """Record ids a reconcile pass found in Gmail (idempotent)."""
        params = {"user_id": user_id, "sync_id": sync_id, "ids": list(ids)}
        async with self._pool.connection() as conn:
            await conn.execute(INSERT_LISTED, params)

    async def unlisted_known_ids(self, user_id: str, sync_id: str) -> list[str]:
        """Ids emitted before that the reconcile pass ``sync_id`` did not find in Gmail."""
        params = {"user_id": user_id, "sync_id": sync_id}
        async with self._pool.connection() as conn:
            cursor = await conn.execute(SELECT_UNLISTED, params)
            return [row[0] for row in await cursor.fetchall()]

    async def forget_message_ids(self, user_id: str, ids: Iterable[str]) -> None:
        """Drop ids of messages gone from Gmail, so no later reconciliation reports them again."""
        params = {"user_id": user_id, "ids": list(ids)}
        async with self._pool.connection() as conn:
            await conn.execute(FORGET_DISCOVERED, params)

    async def update_insights(self, user_id: str, fold: InsightFold) -> None:
        """Apply ``fold`` to the user's aggregate under a row lock (no lost update between the
        live agent, the retry relay and other replicas), counting the change."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(ENSURE_INSIGHTS_ROW, {"user_id": user_id})
            cursor = await conn.execute(LOCK_INSIGHTS, {"user_id": user_id})
            row = await cursor.fetchone()
            stored = row[0] if row else None
            changed = fold(stored if isinstance(stored, dict) else None)
            if changed is not None:
                await conn.execute(UPDATE_INSIGHTS, {"user_id": user_id, "state": changed})

    async def emit_pending_insights(
        self, now: datetime, interval_seconds: float, publish: PublishInsights, limit: int = 500
    ) -> int:
        """Publish every aggregate changed since its last emission whose interval has passed.

        The rows stay locked while ``publish`` runs and are marked emitted only after it
        returned (Kafka acknowledged); if it raises nothing is marked and the next call tries
        again. ``SKIP LOCKED`` keeps two workers from emitting the same aggregate.
        """
        async with self._pool.connection() as conn, conn.transaction():
            params = {"now": now, "interval": interval_seconds, "limit": limit}
            rows = await (await conn.execute(PENDING_INSIGHTS, params)).fetchall()
            ready = [(user, state, version) for user, state, version in rows if state]
            if not ready:
                return 0
            await publish([(user, state) for user, state, _ in ready])
            for user, _, version in ready:
                await conn.execute(MARK_EMITTED, {"user_id": user, "version": version, "now": now})
        return len(ready)
