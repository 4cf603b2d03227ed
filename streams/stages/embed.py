"""The embed stage: EmailNormalized in, EmailEmbedded (one vector per text chunk) out.

Only what is new is embedded (the local model does about 4 chunks a second per core, so the
chunk count is the cost):

* Quoted replies, forwarded history and signatures are stripped before chunking
  (:func:`streams.stages.reply_text.strip_reply_text`): a reply's quote was embedded with the
  message it quotes.
* With a ``vector_store``, a chunk whose text (hash) the user's mail already had embedded with
  the same model is not sent again: its event carries the stored vector, so subscribers of
  ``email-embedded`` see every chunk with its vector, as before. A chunk repeated within a
  batch is sent once, by the first message that has it (if that message fails, the others that
  share the chunk are retried as TRANSIENT). New vectors are stored once the provider returns
  them; a store that cannot be reached only costs model time.
* Short messages share provider calls (see units below), so several records' chunks go to the
  model together, up to ``sub_batch`` per call.

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
* A provider call refused with a short stated wait (a 429 with ``Retry-After`` of at most
  ``THROTTLE_WAIT_SECONDS``) is sent again after it, up to ``THROTTLE_RETRIES`` times, within
  the unit's time; only then do its messages go to the retry ladder.
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

from schemas.errors import RateLimitedError, StageTimeoutError, TransientError
from schemas.models import EmailEmbedded, EmailNormalized, EmbeddedChunk, JobKind
from schemas.serde import Serde
from streams.runtime.stage import Outcome, Record
from streams.stages.base import Decoder, NormalizedEmailStage, event_record, utc_now
from streams.stages.chunk_vectors import ChunkVectorStore
from streams.stages.chunking import Chunk, check_chunking, chunk_hash, chunk_text
from streams.stages.embedding import EmbeddingProvider
from streams.stages.reply_text import strip_reply_text

log = logging.getLogger(__name__)

GUARD_SECONDS = 30.0
"""How far the runner's batch guard (``timeout``) lies beyond the stage's own last deadline."""
THROTTLE_RETRIES = 3
"""Times one provider call is sent again after a 429 that asked for a short wait."""
THROTTLE_WAIT_SECONDS = 10.0
"""The longest ``Retry-After`` sat out in the stage; past it the unit fails to the retry ladder."""


@dataclass
class _Message:
    """A decoded message, the chunks of it to embed and the vectors already known for them."""

    position: int  # in the batch
    email: EmailNormalized
    chunks: list[Chunk]
    truncated: bool
    hashes: list[bytes] = field(default_factory=list)  # of each chunk, with a vector store
    known: dict[bytes, list[float]] = field(default_factory=dict)  # from the store
    borrowed: set[bytes] = field(default_factory=set)  # embedded for an earlier message

    @property
    def pending(self) -> list[tuple[bytes, str]]:
        """Chunks (hash, text) this message sends to the provider; without a store, all."""
        if not self.hashes:
            return [(b"", chunk.text) for chunk in self.chunks]
        unique = {h: c.text for h, c in zip(self.hashes, self.chunks, strict=True)}
        return [(h, t) for h, t in unique.items() if h not in self.known and h not in self.borrowed]


@dataclass
class _Unit:
    """Messages embedded together under one deadline."""

    messages: list[_Message] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        """Chunks the provider gets for this unit."""
        return sum(len(m.pending) for m in self.messages)


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
        strip_replies: bool = True,
        vector_store: ChunkVectorStore | None = None,
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
            strip_replies: Strip quoted replies, forwarded history and signatures first.
            vector_store: Vectors of chunks embedded before, per user and model; ``None``:
                every chunk goes to the provider.

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
        self.strip_replies = strip_replies
        self.vector_store = vector_store
        # Totals since start, read by benchmarks and logs.
        self.chunks_embedded = 0
        self.chunks_reused = 0

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
                messages.append(self._chunked(position, email))
            except Exception as exc:  # noqa: BLE001 - routed by the runner, this message only
                outcomes[position] = Outcome(error=exc)
        await self._recall_vectors(messages)
        if self.vector_store is not None:
            _share_within_batch(messages)
        fresh: dict[tuple[str, bytes], list[float]] = {}  # new vectors of the batch, by user
        gate = asyncio.Semaphore(self.concurrency)

        async def run(unit: _Unit) -> None:
            async with gate:
                for message, outcome in zip(
                    unit.messages, await self._embed_unit(unit, began, fresh), strict=True
                ):
                    outcomes[message.position] = outcome

        await asyncio.gather(*(run(unit) for unit in self._units(messages)))
        for message in messages:
            if outcomes[message.position] is None and self.vector_store is not None:
                outcomes[message.position] = self._assembled(message, fresh)
        return [outcome or Outcome(error=RuntimeError("no outcome")) for outcome in outcomes]

    def _chunked(self, position: int, email: EmailNormalized) -> _Message:
        text = strip_reply_text(email.text) if self.strip_replies else email.text
        chunks = chunk_text(text, max_chars=self.max_chars, limit=self.max_chunks + 1)
        kept = chunks[: self.max_chunks]
        message = _Message(position, email, kept, len(chunks) > len(kept))
        if self.vector_store is not None:
            message.hashes = [chunk_hash(chunk.text) for chunk in kept]
        return message

    async def _recall_vectors(self, messages: list[_Message]) -> None:
        """Fill each message's ``known`` vectors from the store: one query per user."""
        if self.vector_store is None:
            return
        by_user: dict[str, list[_Message]] = {}
        for message in messages:
            by_user.setdefault(message.email.user_id, []).append(message)
        for user_id, own in by_user.items():
            hashes = sorted({h for message in own for h in message.hashes})
            try:
                known = await self.vector_store.lookup(user_id, self.provider.name, hashes)
            except TransientError as exc:
                # A cache miss costs model time, not correctness: embed them all this once.
                log.warning("chunk vector lookup failed user=%s error=%s", user_id, exc)
                continue
            for message in own:
                message.known = {h: known[h] for h in message.hashes if h in known}

    def _units(self, messages: list[_Message]) -> list[_Unit]:
        """Group messages in order: a long one alone, short neighbours up to ``sub_batch``."""
        units: list[_Unit] = []
        pack: _Unit | None = None
        for message in messages:
            size = len(message.pending)
            if size > self.sub_batch:
                units.append(_Unit([message]))
                pack = None
            elif pack is not None and pack.chunks + size <= self.sub_batch:
                pack.messages.append(message)
            else:
                pack = _Unit([message])
                units.append(pack)
        return units

    async def _embed_unit(
        self, unit: _Unit, began: float, fresh: dict[tuple[str, bytes], list[float]]
    ) -> list[Outcome | None]:
        """Embed the unit's chunks; with a store, ``None`` outcomes are assembled after the
        batch (a message may use a vector another unit embeds) from ``fresh``."""
        pending = [item for message in unit.messages for item in message.pending]
        if self.vector_store is not None:
            pending = list(dict(pending).items())  # a text repeated in the unit is sent once
        texts = [text for _, text in pending]
        if not texts:  # nothing to embed: no provider call, no deadline
            return self._handed_out(unit, [])
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
        self.chunks_embedded += len(texts)
        if self.vector_store is not None:
            by_hash = {h: vector for (h, _), vector in zip(pending, vectors, strict=True)}
            for message in unit.messages:
                user = message.email.user_id
                fresh.update(((user, h), by_hash[h]) for h, _ in message.pending)
            await self._remember(self.vector_store, unit, by_hash)
        return self._handed_out(unit, vectors)

    def _handed_out(self, unit: _Unit, vectors: list[list[float]]) -> list[Outcome | None]:
        """Give each message its vectors in the unit's order; with a store, later, by hash."""
        if self.vector_store is not None:
            return [None for _ in unit.messages]
        outcomes: list[Outcome | None] = []
        cursor = 0
        for message in unit.messages:
            own = vectors[cursor : cursor + len(message.chunks)]
            cursor += len(message.chunks)
            outcomes.append(self._embedded(message, own))
        return outcomes

    def _assembled(self, message: _Message, fresh: dict[tuple[str, bytes], list[float]]) -> Outcome:
        """The message's event from stored and fresh vectors, or why one is missing."""
        user = message.email.user_id
        missing = [h for h in message.borrowed if (user, h) not in fresh]
        if missing:
            # The message that was to embed it failed; a retry finds it stored or embeds it.
            return Outcome(
                error=TransientError(
                    f"{len(missing)} chunks shared with a message that failed in the same batch"
                )
            )
        own = {h for h, _ in message.pending}
        self.chunks_reused += sum(1 for h in message.hashes if h not in own)
        vectors = [
            message.known[h] if h in message.known else fresh[user, h] for h in message.hashes
        ]
        return self._embedded(message, vectors)

    async def _remember(
        self, store: ChunkVectorStore, unit: _Unit, by_hash: dict[bytes, list[float]]
    ) -> None:
        """Store the unit's new vectors per user; a failure only costs a later re-embedding."""
        by_user: dict[str, dict[bytes, list[float]]] = {}
        for message in unit.messages:
            own = by_user.setdefault(message.email.user_id, {})
            own.update((h, by_hash[h]) for h, _ in message.pending)
        for user_id, vectors in by_user.items():
            try:
                await store.save(user_id, self.provider.name, vectors)
            except TransientError as exc:
                log.warning("chunk vector save failed user=%s error=%s", user_id, exc)

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.sub_batch):
            vectors += await self._embed_call(texts[start : start + self.sub_batch])
        if len(vectors) != len(texts):
            raise RuntimeError(f"{self.provider.name} gave {len(vectors)} vectors for {len(texts)}")
        return vectors

    async def _embed_call(self, texts: list[str]) -> list[list[float]]:
        """One provider call, sent again after a short stated throttle (within the unit's time).

        An API that asks for a second's pause gets it here: the provider holds its bucket for
        the ``Retry-After``, so the call goes again once that passes. Failing the unit instead
        sent its messages down the retry ladder (1, 2, 4 ... s, attempts spent) and made them
        wait for a later batch; under an API serving half the offered rate, messages took
        ten attempts. A longer or unstated wait still fails the unit, to the ladder.
        """
        for throttled in range(THROTTLE_RETRIES + 1):
            try:
                return await self.provider.embed(texts)
            except RateLimitedError as exc:
                wait = exc.retry_after
                if throttled == THROTTLE_RETRIES or wait is None or wait > THROTTLE_WAIT_SECONDS:
                    raise
        raise AssertionError("unreachable: the last throttle is raised")

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


def _share_within_batch(messages: list[_Message]) -> None:
    """Let a chunk repeated in a batch be embedded once, by the first message that has it."""
    claimed: set[tuple[str, bytes]] = set()
    for message in messages:
        user = message.email.user_id
        for text_hash, _ in message.pending:
            if (user, text_hash) in claimed:
                message.borrowed.add(text_hash)
            claimed.add((user, text_hash))
