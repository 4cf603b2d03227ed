"""The embed bench's retrieval scores: recall@k and MRR over messages ranked by best chunk."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devstack.gmail_emulator.generator import ThreadQuery
from inboxflow.bench.embed import mean_reciprocal_rank, recall_at_k
from schemas.models import EmailEmbedded, EmbeddedChunk


def event(message_id: str, *vectors: list[float]) -> EmailEmbedded:
    return EmailEmbedded(
        user_id="u",
        message_id=message_id,
        thread_id="t",
        model="m",
        dimension=2,
        chunks=[EmbeddedChunk(index=i, text="x", vector=v) for i, v in enumerate(vectors)],
        embedded_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


# Query [1, 0] ranks a (best chunk 1.0) before b (0.8) before c (0.0); d has no chunks.
EVENTS = [
    event("c", [0.0, 1.0]),
    event("b", [0.8, 0.6], [0.0, 1.0]),
    event("a", [0.0, 1.0], [1.0, 0.0]),
    event("d"),
]


def test_recall_counts_the_share_of_answers_in_the_top_k() -> None:
    queries = [ThreadQuery("q1", ("a",)), ThreadQuery("q2", ("b", "c"))]
    vectors = [[1.0, 0.0], [1.0, 0.0]]

    assert recall_at_k(EVENTS, queries, vectors, k=1) == pytest.approx((1.0 + 0.0) / 2)
    assert recall_at_k(EVENTS, queries, vectors, k=2) == pytest.approx((1.0 + 0.5) / 2)
    assert recall_at_k(EVENTS, queries, vectors, k=5) == pytest.approx(1.0)


def test_mrr_is_one_over_the_rank_of_the_first_answer() -> None:
    queries = [ThreadQuery("q1", ("c",)), ThreadQuery("q2", ("b", "c")), ThreadQuery("q3", ("d",))]
    vectors = [[1.0, 0.0]] * 3

    assert mean_reciprocal_rank(EVENTS, queries, vectors) == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)


def test_no_vectors_score_zero() -> None:
    assert recall_at_k([event("d")], [ThreadQuery("q", ("d",))], [[1.0, 0.0]]) == 0.0
