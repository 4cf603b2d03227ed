"""The fetch stage: MessageDiscovered in, GmailMessageFetched (raw RFC 822) out.

Runs in the sync consumer group so one process owns a user's Gmail quota for both listing and
fetching. Messages are fetched once, in planned batches; a message deleted in Gmail since it was
listed is a clean outcome (its job ends done), not an error. The fetched payload goes to a topic
kept forever, so every later stage can be replayed without calling Gmail again.

The backfill lane runs a second instance on its own topic (``backfill-discovered``): its batches
spend at most the lane's share of each user's quota (``GmailClient`` lane limiter) and at most
``pace`` messages a second over all users, so live fetches never queue behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from schemas.errors import PermanentError
from schemas.models import GmailMessageFetched, JobKind, MessageDiscovered
from schemas.serde import Serde
from streams.runtime.stage import JobRef, Outcome, Record
from streams.stages.base import Decoder, event_record, gmail_breakers, utc_now
from streams.stages.gmail.client import (
    FetchedMessage,
    FetchNeed,
    GmailClient,
    MessageFailed,
    MessageGone,
    MessageRef,
)
from streams.stages.gmail.limiter import QuotaLimiter

FETCH_DEADLINE_SHARE = 0.8  # of the batch's deadline, spent fetching; the rest is for the rest


class FetchStage:
    """Fetches discovered messages from Gmail, batched per user."""

    kind = JobKind.NORMALIZE_GOOGLE_EMAIL
    phase = 0  # normalize (phase 1) finishes the same job

    def __init__(
        self,
        *,
        serde: Serde,
        gmail: GmailClient,
        fetched_topic: str,
        timeout: float,
        clock: Callable[[], float] = time.time,
        name: str = "fetch",
        lane: str | None = None,
        pace: QuotaLimiter | None = None,
    ) -> None:
        """
        Args:
            name: agent name within the group (``fetch``; the backfill lane's ``backfill-fetch``).
            lane: the Gmail client lane whose share of each user's quota the fetches spend.
            pace: a limiter in messages (not units) every batch waits on first, over all users.
        """
        self.name = name
        self.lane = lane
        self.pace = pace
        self.discovered = Decoder(serde, MessageDiscovered)
        self.serde = serde
        self.gmail = gmail
        self.fetched_topic = fetched_topic
        self.timeout = timeout
        self.clock = clock

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """Gmail overall and each user in the batch (records are keyed by user id)."""
        return gmail_breakers(records)

    def job_of(self, record: Record) -> JobRef:
        """The message's normalize job (fetch is its first half)."""
        event = self.discovered.decode(record)
        return JobRef(event.user_id, event.message_id, batch_id=event.sync_id)

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Fetch every decodable record, one planned batch per user, the users concurrently."""
        decoded = self.discovered.decode_each(records)
        outcomes: list[Outcome] = [Outcome() for _ in records]
        by_user: dict[str, list[tuple[int, MessageDiscovered]]] = {}
        for index, event in enumerate(decoded):
            if isinstance(event, Exception):
                outcomes[index] = Outcome(error=event)
            else:
                by_user.setdefault(event.user_id, []).append((index, event))
        # Users side by side: each waits on its own quota (and lane share), not on the others'.
        fetched = await asyncio.gather(
            *(self._fetch(user, [event for _, event in items]) for user, items in by_user.items())
        )
        for items, results in zip(by_user.values(), fetched, strict=True):
            for (index, _), outcome in zip(items, results, strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _fetch(self, user: str, events: list[MessageDiscovered]) -> list[Outcome]:
        refs = [MessageRef(e.message_id, e.thread_id or None) for e in events]
        # Stop fetching a little before the runner's deadline for the batch: the messages
        # fetched by then are kept (the runner's own timeout would throw every one away, and a
        # mailbox throttled hard enough was fetched again and again, never finished).
        deadline = time.monotonic() + FETCH_DEADLINE_SHARE * self.timeout
        try:
            if self.pace is not None:
                await self.pace.acquire(len(refs), slots=0)
            results = await self.gmail.fetch_messages(
                user, refs, need=FetchNeed.RAW, lane=self.lane, deadline=deadline
            )
        except Exception as exc:  # noqa: BLE001 - nothing came through: each message fails alike
            return [Outcome(error=exc) for _ in events]
        # Messages fetched stand even when others of the batch failed: only those go round the
        # retry ladder again.
        return [self._outcome(event, results.get(event.message_id)) for event in events]

    def _outcome(
        self, event: MessageDiscovered, result: FetchedMessage | MessageGone | MessageFailed | None
    ) -> Outcome:
        if isinstance(result, MessageGone):
            return Outcome(note="deleted in Gmail since it was listed")
        if isinstance(result, MessageFailed):
            return Outcome(error=result.error)
        if result is None or result.raw is None:
            return Outcome(error=PermanentError(f"no raw payload for {event.message_id}"))
        fetched = GmailMessageFetched(
            user_id=event.user_id,
            message_id=result.id,
            thread_id=result.thread_id or event.thread_id,
            sync_id=event.sync_id,
            label_ids=list(result.label_ids),
            history_id=int(result.history_id) if result.history_id else None,
            internal_date=datetime.fromtimestamp(result.internal_date / 1000, UTC),
            size_estimate=result.size_estimate,
            snippet=result.snippet,
            raw=result.raw,
            fetched_at=utc_now(self.clock),
        )
        return Outcome(
            outputs=[event_record(self.serde, self.fetched_topic, fetched)], finishes_job=False
        )
