"""The embed stage: EmailNormalized in, EmailEmbedded (one vector per text chunk) out.

The work per message is bounded and so is its time, so one long or slow message fails alone:

* At most ``max_chunks`` chunks of a message are embedded, the first ones; the event says
  ``truncated`` when the text had more. A 200,000-character mail is over 200 chunks, a minute
  of one core for the local model.
* Messages are embedded in units: a message with more than ``sub_batch`` chunks is a unit of its
  own; shorter ones are packed with their neighbours up to ``sub_batch`` chunks, so short mail
  still shares provider calls (an HTTP API is paid per request as much as per text). A unit runs
  as provider calls of at most ``sub_batch`` chunks and has ``record_timeout`` seconds from the
  moment it starts: past it the call in flight is cancelled (for the local model its worker
  process is killed, see ``streams.runtime.cpu_pool``), the unit's messages fail with
  ``StageTimeoutError`` (TIMEOUT) and the rest of the batch goes on.
* ``concurrency`` units run at once (one per local model worker process, or requests in flight
  to an API), started in the batch's order; outcomes are returned in that order.
* No unit starts once the batch has run ``batch_timeout`` seconds, and no unit gets more than
  that either (``record_timeout`` is capped by it), so a batch holds its partition (and a
  rebalance waiting for it) at most about ``batch_timeout + record_timeout``; ``timeout``, the
  runner's guard over the whole batch, is above that and so never cuts a batch short. The
  messages left come back through the retry ladder as ``RateLimitedError`` (RATE_LIMIT): they did
  nothing wrong, the stage is at capacity (100 mails of 32 chunks are about 7 minutes of a
  2-core machine), so they wait their turn with the large budget of a rate limit instead of
  spending the few attempts of a timeout, and the embedding breaker does not count them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas.errors import RateLimitedError, StageTimeoutError
from schemas.models import EmailEmbedded, EmailNormalized, EmbeddedChunk, JobKind
from schemas.serde import Serde
from streams.runtime.stage import Outcome, Record
from streams.stages.base import Decoder, NormalizedEmailStage, event_record, utc_now
from streams.stages.chunking import Chunk, check_chunking, chunk_text
from streams.stages.embedding import EmbeddingProvider

log = logging.getLogger(__name__)

GUARD_SECONDS = 30.0
"""How far the runner's batch guard (``timeout``) lies beyond the stage's own last deadline."""


@dataclass
class _Message:
    """A decoded message and the chunks of it to embed."""

    position: int  # in the batch
    email: EmailNormalized
    chunks: list[Chunk]
    truncated: bool


@dataclass
class _Unit:
    """Messages embedded together under one deadline."""

    messages: list[_Message] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return sum(len(m.chunks) for m in self.messages)


class EmbedStage(NormalizedEmailStage):
    """Chunks each message's text and embeds it under a deadline per message (see module doc)."""

    name = "embed"
    kind = JobKind.EMBED
    phase = 0

    def __init__(
        self,
        *,
        serde: Serde,
        provider: EmbeddingProvider,
        embedded_topic: str,
        timeout: float,
        record_timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_chars: int = 1000,
        max_chunks: int = 32,
        sub_batch: int = 8,
        concurrency: int = 1,
    ) -> None:
        """Configure the stage.

        Arguments:
            serde: Reads EmailNormalized, writes EmailEmbedded.
            provider: Embeds the chunks.
            embedded_topic: Where EmailEmbedded goes.
            timeout: Seconds after which a batch starts no more messages (``batch_timeout``).
            record_timeout: Seconds a message (or a pack of short ones) may take once started;
                at most ``timeout``.
            clock: Epoch seconds, stamps ``embedded_at``.
            max_chars: Characters per chunk; more than the chunk overlap (100).
            max_chunks: Chunks embedded per message; the rest are left out (``truncated``).
            sub_batch: Chunks per provider call, and most chunks of a pack of short messages.
            concurrency: Units embedded at once.

        Raises:
            ValueError: A size or time is out of range.
        """
        check_chunking(max_chars=max_chars)  # here, not per message: a bad size fails them all
        for label, value in (
            ("max_chunks", max_chunks),
            ("sub_batch", sub_batch),
            ("concurrency", concurrency),
        ):
            if value < 1:
                raise ValueError(f"{label} must be at least 1, got {value}")
        if timeout <= 0 or record_timeout <= 0:
            raise ValueError(f"timeouts must be positive, got {timeout} and {record_timeout}")
        self.normalized = Decoder(serde, EmailNormalized)
        self.serde = serde
        self.provider = provider
        self.embedded_topic = embedded_topic
        self.batch_timeout = timeout
        # A message never gets longer than its whole batch may take.
        self.record_timeout = min(record_timeout, timeout)
        self.clock = clock
        self.max_chars = max_chars
        self.max_chunks = max_chunks
        self.sub_batch = sub_batch
        self.concurrency = concurrency

    @property
    def timeout(self) -> float:
        """The runner's guard over a batch: past the last moment the stage itself can end it."""
        return self.batch_timeout + self.record_timeout + GUARD_SECONDS

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """The embedding provider."""
        return [f"embedding:{self.provider.name}"]

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Embed every decodable message; a failure fails the messages of its unit only."""
        began = time.monotonic()
        outcomes: list[Outcome | None] = [None] * len(records)
        messages: list[_Message] = []
        for position, email in enumerate(self.normalized.decode_each(records)):
            if isinstance(email, Exception):
                outcomes[position] = Outcome(error=email)
                continue
            try:
                chunks = chunk_text(email.text, max_chars=self.max_chars, limit=self.max_chunks + 1)
            except Exception as exc:  # noqa: BLE001 - routed by the runner, this message only
                outcomes[position] = Outcome(error=exc)
                continue
            kept = chunks[: self.max_chunks]
            messages.append(_Message(position, email, kept, len(chunks) > len(kept)))
        gate = asyncio.Semaphore(self.concurrency)

        async def run(unit: _Unit) -> None:
            async with gate:
                for message, outcome in zip(
                    unit.messages, await self._embed_unit(unit, began), strict=True
                ):
                    outcomes[message.position] = outcome

        await asyncio.gather(*(run(unit) for unit in self._units(messages)))
        return [outcome or Outcome(error=RuntimeError("no outcome")) for outcome in outcomes]

    def _units(self, messages: list[_Message]) -> list[_Unit]:
        """Group messages in order: a long one alone, short neighbours up to ``sub_batch``."""
        units: list[_Unit] = []
        pack: _Unit | None = None
        for message in messages:
            size = len(message.chunks)
            if size > self.sub_batch:
                units.append(_Unit([message]))
                pack = None
            elif pack is not None and pack.chunks + size <= self.sub_batch:
                pack.messages.append(message)
            else:
                pack = _Unit([message])
                units.append(pack)
        return units

    async def _embed_unit(self, unit: _Unit, began: float) -> list[Outcome]:
        texts = [chunk.text for message in unit.messages for chunk in message.chunks]
        if not texts:  # nothing to embed: no provider call, no deadline
            return [self._embedded(message, []) for message in unit.messages]
        waited = time.monotonic() - began
        if waited >= self.batch_timeout:
            error: BaseException = RateLimitedError(
                f"embed at capacity: the batch ran {waited:.0f}s (limit {self.batch_timeout:g}s) "
                "before this message's turn; retried in a later batch"
            )
            return [Outcome(error=error) for _ in unit.messages]
        deadline = asyncio.timeout(self.record_timeout)
        try:
            async with deadline:
                vectors = await self._embed(texts)
        except TimeoutError as exc:
            if not deadline.expired():
                return [Outcome(error=exc) for _ in unit.messages]
            first = unit.messages[0].email
            log.warning(
                "embed deadline passed user=%s message=%s messages=%s chunks=%s timeout=%ss",
                first.user_id,
                first.message_id,
                len(unit.messages),
                len(texts),
                self.record_timeout,
            )
            error = StageTimeoutError(
                f"embedding {len(texts)} chunks took longer than {self.record_timeout:g}s"
            )
            return [Outcome(error=error) for _ in unit.messages]
        except Exception as exc:  # noqa: BLE001 - routed by the runner, per message
            return [Outcome(error=exc) for _ in unit.messages]
        outcomes: list[Outcome] = []
        cursor = 0
        for message in unit.messages:
            own = vectors[cursor : cursor + len(message.chunks)]
            cursor += len(message.chunks)
            outcomes.append(self._embedded(message, own))
        return outcomes

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.sub_batch):
            vectors += await self.provider.embed(texts[start : start + self.sub_batch])
        if len(vectors) != len(texts):
            raise RuntimeError(f"{self.provider.name} gave {len(vectors)} vectors for {len(texts)}")
        return vectors

    def _embedded(self, message: _Message, vectors: list[list[float]]) -> Outcome:
        email = message.email
        event = EmailEmbedded(
            user_id=email.user_id,
            message_id=email.message_id,
            thread_id=email.thread_id,
            model=self.provider.name,
            dimension=self.provider.dimension,
            chunks=[
                EmbeddedChunk(index=chunk.index, text=chunk.text, vector=vector)
                for chunk, vector in zip(message.chunks, vectors, strict=True)
            ],
            truncated=message.truncated,
            embedded_at=utc_now(self.clock),
        )
        return Outcome(outputs=[event_record(self.serde, self.embedded_topic, event)])
