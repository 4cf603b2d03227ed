"""``inboxflow bench embed``: chunks per email, emails/s and recall@5, before and after.

Both sides run the real embed stage (:class:`~streams.stages.embed.EmbedStage`) with the real
local model (multilingual-e5-small in a CPU pool, one worker per core, the stage's production
sub-batch and concurrency) over the same generated threads
(:func:`devstack.gmail_emulator.generator.generate_threads`: replies quoting the messages
before them, signatures, forwards), normalized by the normalize stage's own code:

- **before**: plain chunking, every chunk embedded (``strip_replies=False``, no vector store);
- **after**: quoted replies, forwarded history and signatures stripped, and chunks the mailbox
  already had embedded reused from a vector store (in memory here, Postgres in production).

Retrieval quality: each generated question is embedded as an E5 query; a message scores the
best cosine of its chunks; recall@5 is the share of a question's answers (the messages whose
author wrote the fact, not the replies quoting it) among the 5 best messages, averaged over
questions; the mean reciprocal rank of the first answer is given beside it. The two sides run
batch by batch in turn, so both meet the same load on a shared machine. No Kafka or Postgres
is needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from devstack.gmail_emulator.generator import GeneratedThreads, ThreadQuery, generate_threads
from inboxflow.wiring import LOCAL_EMBED_SUB_BATCH
from schemas.models import EmailEmbedded, EmailNormalized, GmailMessageFetched
from schemas.serde import SingleObjectSerde
from streams.runtime.cpu_pool import CpuPool
from streams.runtime.stage import Outcome, Record
from streams.stages.chunk_vectors import MemoryChunkVectors
from streams.stages.embed import EmbedStage
from streams.stages.embedding import LocalEmbeddingProvider
from streams.stages.mime import normalized_event

USER = "bench@inboxflow.test"
TOP_K = 5
_BATCH_RECORDS = 50  # records per stage batch, as the agent takes them
_TOPIC = "bench.email-normalized"


@dataclass(frozen=True)
class EmbedBenchResult:
    """Figures of one run; ``before`` is plain chunking, ``after`` strip and dedupe.

    ``chunks_per_email_*`` count the chunks the model embedded; after, the events also carry
    ``chunks_reused_after`` chunks whose vectors were reused.
    """

    emails: int
    queries: int
    workers: int
    chunks_per_email_before: float
    chunks_per_email_after: float
    chunks_reused_after: int
    emails_per_second_before: float
    emails_per_second_after: float
    speedup: float
    recall_at_5_before: float
    recall_at_5_after: float
    mrr_before: float
    mrr_after: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class _Side:
    chunks: int  # sent to the model
    reused: int
    seconds: float
    events: list[EmailEmbedded]


async def run_embed_bench(
    emails: int = 200, *, seed: int = 7, workers: int | None = None
) -> EmbedBenchResult:
    """Embed ``emails`` generated thread messages both ways and score retrieval both ways.

    Arguments:
        emails: Generated messages (about 20 % forwards, the rest threads of 2-6 replies).
        seed: Generator seed.
        workers: Model worker processes; by default one per core, as the agent runs.
    """
    threads = generate_threads(seed, emails, USER)
    normalized = _normalized(threads)
    pool = CpuPool(workers or os.cpu_count() or 1, name="bench-embed", preload=[_EMBEDDING])
    passages = LocalEmbeddingProvider(pool=pool, batch_size=LOCAL_EMBED_SUB_BATCH)
    queries = LocalEmbeddingProvider(pool=pool, kind="query")
    try:
        await _warm(passages, pool.workers)
        before, after = await _embed_both(
            _stage(passages, pool.workers, strip=False),
            _stage(passages, pool.workers, strip=True),
            normalized,
        )
        asked = await queries.embed([query.text for query in threads.queries])
    finally:
        await pool.aclose()
    return EmbedBenchResult(
        emails=len(normalized),
        queries=len(threads.queries),
        workers=pool.workers,
        chunks_per_email_before=before.chunks / len(normalized),
        chunks_per_email_after=after.chunks / len(normalized),
        chunks_reused_after=after.reused,
        emails_per_second_before=len(normalized) / before.seconds,
        emails_per_second_after=len(normalized) / after.seconds,
        speedup=before.seconds / after.seconds,
        recall_at_5_before=recall_at_k(before.events, threads.queries, asked),
        recall_at_5_after=recall_at_k(after.events, threads.queries, asked),
        mrr_before=mean_reciprocal_rank(before.events, threads.queries, asked),
        mrr_after=mean_reciprocal_rank(after.events, threads.queries, asked),
    )


_EMBEDDING = "streams.stages.embedding"


def _normalized(threads: GeneratedThreads) -> list[EmailNormalized]:
    now = datetime.now(UTC)
    return [
        normalized_event(
            GmailMessageFetched(
                user_id=USER,
                message_id=message.message_id,
                thread_id=message.thread_id,
                sync_id="bench",
                label_ids=list(message.label_ids),
                internal_date=datetime.fromtimestamp(message.internal_date / 1000, UTC),
                size_estimate=len(message.raw),
                snippet="",
                raw=message.raw,
                fetched_at=now,
            ),
            now,
        )
        for message in threads.messages
    ]


def _stage(provider: LocalEmbeddingProvider, workers: int, *, strip: bool) -> EmbedStage:
    # The agent's settings for the local model (inboxflow.wiring), timeouts out of the way.
    return EmbedStage(
        serde=SingleObjectSerde(),
        provider=provider,
        embedded_topic="bench.email-embedded",
        timeout=3600.0,
        record_timeout=3600.0,
        sub_batch=LOCAL_EMBED_SUB_BATCH,
        concurrency=workers,
        strip_replies=strip,
        vector_store=MemoryChunkVectors() if strip else None,
    )


async def _warm(provider: LocalEmbeddingProvider, workers: int) -> None:
    """Start every worker and load its model, so neither side pays for it."""
    for _ in range(workers):
        await provider.embed(["warm up"])


async def _embed_both(
    before: EmbedStage, after: EmbedStage, emails: Sequence[EmailNormalized]
) -> tuple[_Side, _Side]:
    """Run both stages batch by batch, alternating, so both see the same machine load."""
    serde = SingleObjectSerde()
    records = [
        Record(_TOPIC, 0, offset, 0, USER.encode(), serde.encode(email))
        for offset, email in enumerate(emails)
    ]
    events: dict[str, list[EmailEmbedded]] = {"before": [], "after": []}
    seconds = {"before": 0.0, "after": 0.0}
    for first in range(0, len(records), _BATCH_RECORDS):
        batch = records[first : first + _BATCH_RECORDS]
        for side, stage in (("before", before), ("after", after)):
            started = time.perf_counter()
            outcomes = await stage.process(batch)
            seconds[side] += time.perf_counter() - started
            events[side] += _decoded(serde, outcomes)
    return (
        _Side(before.chunks_embedded, before.chunks_reused, seconds["before"], events["before"]),
        _Side(after.chunks_embedded, after.chunks_reused, seconds["after"], events["after"]),
    )


def _decoded(serde: SingleObjectSerde, outcomes: Sequence[Outcome]) -> list[EmailEmbedded]:
    events: list[EmailEmbedded] = []
    for outcome in outcomes:
        if outcome.error is not None:
            raise RuntimeError(f"embedding failed in the bench: {outcome.error!r}")
        events += [serde.decode(out.value, EmailEmbedded) for out in outcome.outputs]
    return events


def recall_at_k(
    events: Sequence[EmailEmbedded],
    queries: Sequence[ThreadQuery],
    query_vectors: Sequence[Sequence[float]],
    k: int = TOP_K,
) -> float:
    """Mean share of each query's answers among the ``k`` messages scoring best for it.

    A message scores the best cosine of its chunks (vectors are L2-normalized). Pure.
    """
    rankings = _rankings(events, query_vectors)
    if not rankings:
        return 0.0
    total = 0.0
    for query, ranking in zip(queries, rankings, strict=True):
        total += len(set(ranking[:k]) & set(query.answer_ids)) / len(query.answer_ids)
    return total / len(queries)


def mean_reciprocal_rank(
    events: Sequence[EmailEmbedded],
    queries: Sequence[ThreadQuery],
    query_vectors: Sequence[Sequence[float]],
) -> float:
    """Mean over queries of 1 / the rank of the first answer (1 = always first). Pure."""
    rankings = _rankings(events, query_vectors)
    if not rankings:
        return 0.0
    total = 0.0
    for query, ranking in zip(queries, rankings, strict=True):
        rank = next((i for i, mid in enumerate(ranking, 1) if mid in query.answer_ids), None)
        total += 1.0 / rank if rank else 0.0
    return total / len(queries)


def _rankings(
    events: Sequence[EmailEmbedded], query_vectors: Sequence[Sequence[float]]
) -> list[list[str]]:
    """Message ids best first for each query; a message scores its best chunk's cosine."""
    embedded = [event for event in events if event.chunks]
    if not query_vectors or not embedded:
        return []
    ids = [event.message_id for event in embedded]
    owners = np.repeat(np.arange(len(embedded)), [len(event.chunks) for event in embedded])
    matrix = np.array([chunk.vector for event in embedded for chunk in event.chunks])
    rankings: list[list[str]] = []
    for row in np.array(query_vectors) @ matrix.T:  # one row of chunk scores per query
        best = np.full(len(embedded), -np.inf)
        np.maximum.at(best, owners, row)
        rankings.append([ids[i] for i in np.argsort(-best, kind="stable")])
    return rankings
