"""The normalize stage: GmailMessageFetched in, EmailNormalized out. Never calls Gmail.

Parsing is the pure ``streams.stages.mime.normalized_body``; this stage decodes, hands each
message to it and queues the message's downstream jobs (extract, embed, insight). With a
``CpuPool`` the parsing runs in worker processes, the messages of a batch in parallel, so a
21 MB message (0.7 s of parsing) never holds the event loop, and its heartbeats, for that long;
outcomes still come back in the batch's order. A message whose parse runs past
``record_timeout`` or kills its worker fails alone (TIMEOUT class); the worker is replaced.

Every event is fitted under ``max_record_bytes`` (email-normalized's ``max.message.bytes``) by
``streams.stages.fitting.fit_event``, in the same call as the parse: attachment entries dropped,
lists capped, text cut, the event flagged ``truncated``. A message too large for the topic is
published cut, never refused by Kafka and dead-lettered.

With a pool, every message is parsed there, small ones too: sent in chunks, a message costs the
parent less to ship than to parse, and the event loop, which publishes and acks, keeps a core of
its own. Parsing small mail on the event loop held the agent to one core (on the generated
corpus, 3.3 KB on average: 975 against 1,518 messages/s, the same CPU per message).

Messages bound for the pool travel in chunks (:func:`normalize_in_pool`): one call carries up to
:data:`CHUNK_MESSAGES` messages or :data:`CHUNK_BYTES` of raw mail (a batch still makes a chunk
per worker when it can), so the hand-over (a thread switch, a pipe round trip, the pickling of a
call) is paid once per chunk, not per message: one call per message cost the parent more CPU
than the worker's parse and kept the worker waiting. Workers send back Avro bodies, which the
stage only frames (``Serde.frame``): rebuilding each event in the parent and encoding it there
cost the parent more than its share and kept two workers from doubling one's rate. A chunk that
runs past ``record_timeout`` or loses its worker is run again one message per call, so the
message at fault fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from schemas.models import EmailNormalized, GmailMessageFetched, JobKind
from schemas.serde import Serde
from streams.runtime.cpu_pool import CpuPool
from streams.runtime.stage import JobRef, Outcome, Outgoing, Record
from streams.stages.base import Decoder, utc_now
from streams.stages.fitting import value_limit
from streams.stages.mime import RawMessage, normalized_bodies

DOWNSTREAM_KINDS = (JobKind.EXTRACT_CONTACTS, JobKind.EMBED, JobKind.INSIGHT)
# Raw messages up to this size are parsed in place even with a pool (0: none; tests set it).
INLINE_MAX_BYTES = 0
# A pool call carries at most this many messages and this many raw bytes; a larger message goes
# alone. From 16 to 64 messages a call, the parent's CPU per message fell by a third.
CHUNK_MESSAGES = 64
CHUNK_BYTES = 256 * 1024

_Parsed = bytes | Exception  # an EmailNormalized Avro body (``normalized_bodies``)


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

    async def warm(self) -> None:
        """Start the pool's workers now (the worker calls this as it starts)."""
        if self.pool is not None:
            await asyncio.to_thread(self.pool.start)

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
        events = [event for event in decoded if not isinstance(event, Exception)]
        parsed = iter(await self._parse(events))
        return [
            Outcome(error=event)
            if isinstance(event, Exception)
            else self._outcome(event, next(parsed))
            for event in decoded
        ]

    def _outcome(self, fetched: GmailMessageFetched, normalized: _Parsed) -> Outcome:
        if isinstance(normalized, Exception):
            return Outcome(error=normalized)
        ref = JobRef(fetched.user_id, fetched.message_id, batch_id=fetched.sync_id)
        value = self.serde.frame(EmailNormalized, normalized)
        return Outcome(
            outputs=[Outgoing(self.normalized_topic, fetched.user_id.encode(), value)],
            queued=[(kind, ref) for kind in DOWNSTREAM_KINDS],
        )

    async def _parse(self, events: Sequence[GmailMessageFetched]) -> list[_Parsed]:
        """Return each event's normalized form or exception, in order."""
        now = utc_now(self.clock)
        # The workers get each message's raw bytes and ids as a plain tuple and send back Avro
        # bodies, already fitted: nothing else crosses the process boundary.
        items = [(RawMessage.of(event), self._limit(event)) for event in events]
        pooled = [
            self.pool is not None and len(event.raw) > self.inline_max_bytes for event in events
        ]
        chosen = [item for item, goes in zip(items, pooled, strict=True) if goes]
        in_pool: asyncio.Future[list[_Parsed]] | None = None
        if self.pool is not None and chosen:
            in_pool = asyncio.ensure_future(
                normalize_in_pool(self.pool, chosen, now, record_timeout=self.record_timeout)
            )
        try:
            here = await self._parse_here(items, pooled, now)
            from_pool = iter(await in_pool if in_pool is not None else [])
        finally:
            if in_pool is not None:
                in_pool.cancel()  # a no-op once done; kills the workers' calls if not
        return [next(from_pool) if parsed is None else parsed for parsed in here]

    async def _parse_here(
        self,
        items: Sequence[tuple[RawMessage, int | None]],
        pooled: Sequence[bool],
        now: datetime,
    ) -> list[_Parsed | None]:
        """Parse the messages not bound for the pool on this thread; ``None`` for the others."""
        parsed: list[_Parsed | None] = []
        for item, goes in zip(items, pooled, strict=True):
            if goes:
                parsed.append(None)
                continue
            # Between messages the loop serves others: heartbeats, the pool's hand-overs.
            await asyncio.sleep(0)
            parsed.append(normalized_bodies([item], now)[0])
        return parsed

    def _limit(self, fetched: GmailMessageFetched) -> int | None:
        if self.max_record_bytes is None:
            return None
        return value_limit(self.max_record_bytes, fetched.user_id.encode())


async def normalize_in_pool(
    pool: CpuPool,
    items: Sequence[tuple[RawMessage, int | None]],
    now: datetime,
    *,
    record_timeout: float | None,
) -> list[_Parsed]:
    """Normalize ``(fetched, max_bytes)`` items in ``pool``, in chunks; results in order.

    Never raises for one message: its exception stands in its place (TIMEOUT class when it ran
    past ``record_timeout`` or killed its worker).

    Arguments:
        pool: The worker processes.
        items: Each message with the most bytes its encoded event may take (``None``: no limit).
        now: Stamps ``normalized_at``.
        record_timeout: Seconds one message (and so one chunk) may take; ``None``: no limit.
    """
    # Never fewer chunks than workers when there are enough messages: a batch spreads over all.
    per_chunk = max(1, min(CHUNK_MESSAGES, -(-len(items) // pool.workers)))
    chunks = _chunks(items, per_chunk)
    results = await asyncio.gather(
        *(_normalize_chunk(pool, chunk, now, record_timeout) for chunk in chunks)
    )
    return [result for chunk_results in results for result in chunk_results]


def _chunks(
    items: Sequence[tuple[RawMessage, int | None]], per_chunk: int
) -> list[list[tuple[RawMessage, int | None]]]:
    chunks: list[list[tuple[RawMessage, int | None]]] = []
    size = 0
    for item in items:
        length = len(item[0].raw)
        if not chunks or len(chunks[-1]) >= per_chunk or size + length > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += length
    return chunks


async def _normalize_chunk(
    pool: CpuPool,
    chunk: list[tuple[RawMessage, int | None]],
    now: datetime,
    record_timeout: float | None,
) -> list[_Parsed]:
    try:
        return await pool.run(normalized_bodies, chunk, now, max_seconds=record_timeout)
    except Exception as exc:  # noqa: BLE001 - a deadline, a lost worker: per message below
        if len(chunk) == 1:
            return [exc]
    # One message ran past the deadline or killed the worker: alone, it fails alone.
    alone = [_normalize_chunk(pool, [item], now, record_timeout) for item in chunk]
    return [results[0] for results in await asyncio.gather(*alone)]
