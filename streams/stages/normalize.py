"""The normalize stage: GmailMessageFetched in, EmailNormalized out. Never calls Gmail.

Parsing is the pure ``streams.stages.mime.normalized_event``; this stage decodes, hands each
message to it and queues the message's downstream jobs (extract, embed, insight). With a
``CpuPool`` the parsing runs in worker processes, the messages of a batch in parallel, so a
21 MB message (0.7 s of parsing) never holds the event loop, and its heartbeats, for that long;
outcomes still come back in the batch's order. A message whose parse runs past
``record_timeout`` or kills its worker fails alone (TIMEOUT class); the worker is replaced.

Every event is fitted under ``max_record_bytes`` (email-normalized's ``max.message.bytes``) by
``streams.stages.fitting.fit_event``, in the same call as the parse: attachment entries dropped,
lists capped, text cut, the event flagged ``truncated``. A message too large for the topic is
published cut, never refused by Kafka and dead-lettered.

Small messages (most mail: the generated corpus averages 3.3 KB) are parsed on the event loop:
a few milliseconds each, less than shipping them to a worker and back costs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from schemas.models import EmailNormalized, GmailMessageFetched, JobKind
from schemas.serde import Serde
from streams.runtime.cpu_pool import CpuPool
from streams.runtime.stage import JobRef, Outcome, Record
from streams.stages.base import Decoder, event_record, utc_now
from streams.stages.fitting import value_limit
from streams.stages.mime import normalized_event

DOWNSTREAM_KINDS = (JobKind.EXTRACT_CONTACTS, JobKind.EMBED, JobKind.INSIGHT)
# Raw messages up to this size are parsed in place, larger ones in the pool.
INLINE_MAX_BYTES = 32 * 1024


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
        record_timeout: float | None = None,
        pool: CpuPool | None = None,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        max_record_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the stage.

        Arguments:
            serde: Reads GmailMessageFetched, writes EmailNormalized.
            normalized_topic: Where EmailNormalized goes.
            timeout: Seconds a batch may take (the runner's guard).
            record_timeout: Seconds one message's parse may take in a worker; ``None``: none
                but the batch's.
            pool: Worker processes to parse in; ``None`` parses on the calling thread (tests,
                tools), blocking the event loop while it does.
            inline_max_bytes: Raw messages up to this size are parsed on the calling thread
                even with a pool (0: every message goes to the pool).
            max_record_bytes: The largest record ``normalized_topic`` accepts (its
                ``max.message.bytes``): larger events are cut to fit and flagged ``truncated``.
                ``None``: no limit (tests, tools); the worker always passes the topic's.
            clock: Epoch seconds, stamps ``normalized_at``.
        """
        self.fetched = Decoder(serde, GmailMessageFetched)
        self.serde = serde
        self.normalized_topic = normalized_topic
        self.timeout = timeout
        self.record_timeout = record_timeout
        self.pool = pool
        self.inline_max_bytes = inline_max_bytes
        self.max_record_bytes = max_record_bytes
        self.clock = clock

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """No external dependency: nothing to break."""
        return []

    def job_of(self, record: Record) -> JobRef:
        """The message's normalize job."""
        event = self.fetched.decode(record)
        return JobRef(event.user_id, event.message_id, batch_id=event.sync_id)

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Normalize each message, in parallel when there is a pool; failures fail one message."""
        decoded = self.fetched.decode_each(records)
        return list(await asyncio.gather(*(self._outcome(event) for event in decoded)))

    async def _outcome(self, fetched: GmailMessageFetched | Exception) -> Outcome:
        if isinstance(fetched, Exception):
            return Outcome(error=fetched)
        try:
            normalized = await self._parse(fetched)
        except Exception as exc:  # noqa: BLE001 - routed by the runner
            return Outcome(error=exc)
        ref = JobRef(fetched.user_id, fetched.message_id, batch_id=fetched.sync_id)
        return Outcome(
            outputs=[event_record(self.serde, self.normalized_topic, normalized)],
            queued=[(kind, ref) for kind in DOWNSTREAM_KINDS],
        )

    async def _parse(self, fetched: GmailMessageFetched) -> EmailNormalized:
        now = utc_now(self.clock)
        limit = (
            None
            if self.max_record_bytes is None
            else value_limit(self.max_record_bytes, fetched.user_id.encode())
        )
        if self.pool is None or len(fetched.raw) <= self.inline_max_bytes:
            return normalized_event(fetched, now, limit)
        # The worker gets the fetched event (its raw bytes and a few ids) and sends back the
        # normalized one, already fitted: nothing else crosses the process boundary.
        return await self.pool.run(
            normalized_event, fetched, now, limit, max_seconds=self.record_timeout
        )
