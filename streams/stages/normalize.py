"""The normalize stage: GmailMessageFetched in, EmailNormalized out. Never calls Gmail.

Parsing is the pure ``streams.stages.mime.normalize_message``; this stage only decodes, calls it and
queues the message's downstream jobs (extract, embed, insight).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from schemas.models import GmailMessageFetched, JobKind
from schemas.serde import Serde
from streams.runtime.stage import JobRef, Outcome, Record
from streams.stages.base import Decoder, event_record, utc_now
from streams.stages.mime import normalized_event

DOWNSTREAM_KINDS = (JobKind.EXTRACT_CONTACTS, JobKind.EMBED, JobKind.INSIGHT)


class NormalizeStage:
    """Turns raw messages into typed, clean-text events."""

    name = "normalize"
    kind = JobKind.NORMALIZE_GOOGLE_EMAIL
    phase = 1  # after fetch, same job

    def __init__(
        self,
        *,
        serde: Serde,
        normalized_topic: str,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fetched = Decoder(serde, GmailMessageFetched)
        self.serde = serde
        self.normalized_topic = normalized_topic
        self.timeout = timeout
        self.clock = clock

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """No external dependency: nothing to break."""
        return []

    def job_of(self, record: Record) -> JobRef:
        """The message's normalize job."""
        event = self.fetched.decode(record)
        return JobRef(event.user_id, event.message_id, batch_id=event.sync_id)

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Normalize each message; undecodable records fail alone."""
        outcomes = []
        for event in self.fetched.decode_each(records):
            if isinstance(event, Exception):
                outcomes.append(Outcome(error=event))
                continue
            try:
                outcomes.append(self._normalize(event))
            except Exception as exc:  # noqa: BLE001 - routed by the runner
                outcomes.append(Outcome(error=exc))
        return outcomes

    def _normalize(self, fetched: GmailMessageFetched) -> Outcome:
        normalized = normalized_event(fetched, utc_now(self.clock))
        ref = JobRef(fetched.user_id, fetched.message_id, batch_id=fetched.sync_id)
        return Outcome(
            outputs=[event_record(self.serde, self.normalized_topic, normalized)],
            queued=[(kind, ref) for kind in DOWNSTREAM_KINDS],
        )
