"""The insight stage: EmailNormalized in, InsightProduced out at most once per user per interval.

Aggregates live in Postgres (``insight_state``), updated by whoever owns the user's partition;
``UserInsights`` remembers message ids, so a redelivered message is not counted twice. Each
insight is defined in ``streams/stages/insights.py`` (and the README).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from db.agent_state import AgentState
from schemas.models import (
    CorrespondentCount,
    DailyVolume,
    EmailNormalized,
    InsightProduced,
    JobKind,
    ReplyLatency,
    UnansweredThread,
)
from schemas.serde import Serde
from streams.runtime.stage import Outcome, Outgoing, Record
from streams.stages.base import Decoder, NormalizedEmailStage, event_record, utc_now
from streams.stages.insights import InsightSnapshot, UserInsights


def insight_event(user_id: str, snapshot: InsightSnapshot) -> InsightProduced:
    """Return the event for a snapshot (pure).

    Reply latency is the user's own median time to answer each participant; unanswered threads
    are those whose latest message waits for the user.
    """
    return InsightProduced(
        user_id=user_id,
        computed_at=snapshot.generated_at,
        window_start=snapshot.window_start or snapshot.generated_at,
        window_end=snapshot.generated_at,
        top_correspondents=[
            CorrespondentCount(address=c.address, messages=c.messages)
            for c in snapshot.top_correspondents
        ],
        volume_by_day=[
            DailyVolume(day=v.day, messages=v.received + v.sent) for v in snapshot.volume_by_day
        ],
        reply_latency=[
            ReplyLatency(
                address=r.address,
                median_seconds=r.user_replies_median_seconds,
                samples=r.user_replies_samples,
            )
            for r in snapshot.reply_latency
            if r.user_replies_median_seconds is not None
        ],
        unanswered_threads=[
            UnansweredThread(
                thread_id=u.thread_id, subject=u.subject, last_message_at=u.received_at
            )
            for u in snapshot.unanswered
        ],
    )


class InsightStage(NormalizedEmailStage):
    """Folds each message into its user's aggregate and emits insights on change."""

    name = "insight"
    kind = JobKind.INSIGHT
    phase = 0

    def __init__(
        self,
        *,
        serde: Serde,
        state: AgentState,
        insights_topic: str,
        timeout: float,
        interval: timedelta,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.normalized = Decoder(serde, EmailNormalized)
        self.serde = serde
        self.state = state
        self.insights_topic = insights_topic
        self.timeout = timeout
        self.interval = interval
        self.clock = clock

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Fold each user's messages of the batch into the stored aggregate, in one locked
        update per user. Emission is the periodic ``tick``'s job."""
        decoded = self.normalized.decode_each(records)
        outcomes: list[Outcome] = [Outcome() for _ in records]
        by_user: dict[str, list[int]] = {}
        for i, email in enumerate(decoded):
            if isinstance(email, Exception):
                outcomes[i] = Outcome(error=email)
            else:
                by_user.setdefault(email.user_id, []).append(i)
        for user, indexes in by_user.items():
            emails = [decoded[i] for i in indexes]
            try:
                await self.state.update_insights(user, _folding(user, emails))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - the user's messages fail alike
                for i in indexes:
                    outcomes[i] = Outcome(error=exc)
        return outcomes

    async def tick(self, publish: Callable[[list[Outgoing]], Awaitable[None]]) -> None:
        """Emit every aggregate that changed since its last emission once its interval passed.

        Runs every second in the worker. An aggregate is marked emitted only after ``publish``
        returned, so a failed publish is simply tried again on the next tick.
        """
        now = utc_now(self.clock)

        async def emit(pending: list[tuple[str, dict[str, Any]]]) -> None:
            await publish(
                [
                    event_record(
                        self.serde,
                        self.insights_topic,
                        insight_event(user, UserInsights.from_dict(state).snapshot(now)),
                    )
                    for user, state in pending
                ]
            )

        await self.state.emit_pending_insights(now, self.interval.total_seconds(), emit)


def _folding(
    user: str, emails: list[EmailNormalized]
) -> Callable[[dict[str, Any] | None], str | None]:
    def fold(stored: dict[str, Any] | None) -> str | None:
        aggregate = UserInsights.from_dict(stored) if stored else UserInsights.for_user([user])
        added = [aggregate.add_email(email) for email in emails]
        # Redelivered messages change nothing: no new version, no new emission.
        return aggregate.to_json() if any(added) else None

    return fold
