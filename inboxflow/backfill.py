"""Backfills: what one will cost (``inboxflow backfill --dry-run``) and how far running ones are.

A backfill is a full listing of a mailbox on the backfill lane (``backfill-requested`` and
``backfill-discovered``, both read by the sync group), fetched at
``INBOXFLOW_BACKFILL_QUOTA_SHARE`` of the user's Gmail quota and at most
``INBOXFLOW_BACKFILL_MESSAGES_PER_SECOND`` messages a second per sync worker; requests are
produced by ``inboxflow.wiring.request_backfills``. ``estimate_backfill`` is pure; the progress
functions only read the ``jobs`` table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from streams.runtime.routing import PHASE_WEIGHT
from streams.stages.gmail.costs import CostTable

LIST_PAGE_SIZE = 500  # ids per messages.list page, as the sync agent asks for


@dataclass(frozen=True)
class BackfillEstimate:
    """What backfilling one mailbox costs, at most, and how long it takes at its quota share."""

    user_id: str
    messages: int
    list_calls: int
    get_calls: int
    units: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return asdict(self)


def estimate_backfill(
    user_id: str,
    messages_total: int,
    *,
    costs: CostTable,
    user_units_per_minute: int,
    share: float,
) -> BackfillEstimate:
    """Return the cost of backfilling a mailbox of ``messages_total`` messages. Pure.

    One ``users.getProfile``, one ``messages.list`` per 500 ids and one ``messages.get`` per
    message: an upper bound, since the fetch planner takes one ``threads.get`` for a thread of
    three or more wanted messages when that is cheaper. The time is the units over the share of
    the per-user ceiling (the limiter aims at 98 % of it, so expect a little longer).
    """
    if messages_total < 0:
        raise ValueError(f"a mailbox cannot hold {messages_total} messages")
    if not 0 < share <= 1:
        raise ValueError(f"the quota share must be in (0, 1], got {share}")
    pages = max(1, math.ceil(messages_total / LIST_PAGE_SIZE))
    units = (
        costs.cost("users.getProfile")
        + pages * costs.cost("users.messages.list")
        + messages_total * costs.cost("users.messages.get")
    )
    seconds = units / (user_units_per_minute * share) * 60
    return BackfillEstimate(user_id, messages_total, pages, messages_total, units, seconds)


@dataclass(frozen=True)
class BackfillTotal:
    """Several backfills together: they run side by side, each on its own user's quota."""

    messages: int
    units: int
    quota_seconds: float  # the longest single backfill (each user has a quota of its own)
    pace_seconds: float  # all messages at the per-worker message cap, one sync worker
    seconds: float  # the longer of the two

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return asdict(self)


def total_estimate(
    estimates: Sequence[BackfillEstimate], *, messages_per_second: float
) -> BackfillTotal:
    """Return the sum of ``estimates`` and the time they take together on one sync worker. Pure."""
    messages = sum(e.messages for e in estimates)
    quota = max((e.seconds for e in estimates), default=0.0)
    pace = messages / messages_per_second
    return BackfillTotal(messages, sum(e.units for e in estimates), quota, pace, max(quota, pace))


def format_duration(seconds: float) -> str:
    """Return ``1h 02m``, ``3m 20s`` or ``45s``. Pure."""
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


BACKFILL_PROGRESS = """
SELECT batch_id,
       count(*),
       count(*) FILTER (WHERE status = 'done' AND version >= %(phase)s),
       count(*) FILTER (WHERE status = 'done' AND version < %(phase)s),
       count(*) FILTER (WHERE status IN ('error', 'dead'))
FROM jobs
WHERE kind = 'normalize_google_email' AND batch_id = ANY(%(sync_ids)s)
GROUP BY batch_id
"""
BACKFILL_SYNC_JOBS = """
SELECT subject_id, status FROM jobs
WHERE kind = 'google_gmail_sync' AND subject_id = ANY(%(sync_ids)s)
"""


@dataclass(frozen=True)
class BackfillProgress:
    """How far some backfills are, from their job rows."""

    discovered: int = 0  # message jobs the listings queued so far
    normalized: int = 0  # fetched and normalized
    gone: int = 0  # deleted in Gmail before the fetch: done, nothing to normalize
    failed: int = 0  # error or dead: see `inboxflow dlq`
    listings_done: int = 0  # backfills whose listing has ended (done, error or dead)
    backfills: int = 0

    @property
    def finished(self) -> int:
        """Message jobs that will not move any more."""
        return self.normalized + self.gone + self.failed

    @property
    def done(self) -> bool:
        """Every listing ended and every message it found is final."""
        return self.listings_done == self.backfills and self.finished >= self.discovered


def backfill_progress(database_url: str, sync_ids: Sequence[str]) -> BackfillProgress:
    """Return the progress of the backfills ``sync_ids`` (read-only)."""
    params = {"sync_ids": list(sync_ids), "phase": PHASE_WEIGHT}
    with psycopg.connect(database_url) as conn:
        rows = list(conn.execute(BACKFILL_PROGRESS, params))
        syncs = list(conn.execute(BACKFILL_SYNC_JOBS, params))
    return BackfillProgress(
        discovered=sum(int(row[1]) for row in rows),
        normalized=sum(int(row[2]) for row in rows),
        gone=sum(int(row[3]) for row in rows),
        failed=sum(int(row[4]) for row in rows),
        listings_done=sum(1 for _, status in syncs if status in ("done", "error", "dead")),
        backfills=len(sync_ids),
    )
