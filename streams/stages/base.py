"""What every stage shares: dependencies, decoding each record on its own, event records out."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from schemas.models import EmailNormalized, Event
from schemas.serde import Serde
from streams.runtime.stage import JobRef, Outgoing, Record

E = TypeVar("E", bound=Event)


def utc_now(clock: Callable[[], float]) -> datetime:
    """Return the clock's time as an aware UTC datetime."""
    return datetime.fromtimestamp(clock(), UTC)


@dataclass(frozen=True)
class Decoder(Generic[E]):
    """Decodes one event type from records, one record at a time.

    The runner asks a stage for a record's job (``job_of``) before it processes the batch, and
    both need the decoded event: an event is remembered for as long as its Record object lives
    (the runner hands both calls the same objects), so each record is decoded once and nothing
    is held past its batch.
    """

    serde: Serde
    model: type[E]
    _memo: dict[int, tuple[weakref.ref[Record], E]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def decode(self, record: Record) -> E:
        """Return the record's event; raises UndecodableRecordError (PERMANENT) on bad bytes."""
        memo = self._memo
        key = id(record)
        seen = memo.get(key)
        if seen is not None and seen[0]() is record:
            return seen[1]
        event = self.serde.decode(record.value, self.model)
        # The entry goes when the record does (before its id can be reused).
        memo[key] = (weakref.ref(record, lambda _: memo.pop(key, None)), event)
        return event

    def decode_each(self, records: Sequence[Record]) -> list[E | Exception]:
        """Decode every record; a bad one yields its exception instead of failing the batch."""
        decoded: list[E | Exception] = []
        for record in records:
            try:
                decoded.append(self.decode(record))
            except Exception as exc:  # noqa: BLE001 - returned, routed by the runner
                decoded.append(exc)
        return decoded


class NormalizedEmailStage:
    """Shared by the stages that read EmailNormalized: one job per message, no breaker unless
    the stage says otherwise."""

    normalized: Decoder[EmailNormalized]

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """No external dependency by default."""
        return []

    def job_of(self, record: Record) -> JobRef:
        """The message's job of this stage's kind."""
        event = self.normalized.decode(record)
        return JobRef(event.user_id, event.message_id, batch_id=event.sync_id)


def gmail_breakers(records: Sequence[Record]) -> list[str]:
    """Breaker names for Gmail calls made for these records: overall, then per user."""
    users = sorted({(record.key or b"").decode("utf-8", "replace") for record in records})
    return ["gmail", *(f"gmail:{user}" for user in users)]


def event_record(serde: Serde, topic: str, event: Event) -> Outgoing:
    """Return ``event`` as a record keyed by its user id."""
    return Outgoing(topic, event.user_id.encode(), serde.encode(event))
