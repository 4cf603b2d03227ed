"""Fetch planner: every id once, threads.get only when it saves units."""

from __future__ import annotations

import pytest

from streams.stages.gmail.costs import CostTable
from streams.stages.gmail.planner import FetchNeed, MessageRef, chunk_calls, plan_fetch

REFS = [
    MessageRef("a1", "A"), MessageRef("a2", "A"), MessageRef("a3", "A"),
    MessageRef("b1", "B"), MessageRef("b2", "B"),
    MessageRef("c1", None), MessageRef("a1", "A"),
]  # fmt: skip


@pytest.mark.parametrize("table", ["2026", "legacy"])
def test_threads_only_when_cheaper(table: str) -> None:
    calls = plan_fetch(REFS, FetchNeed.MIME, CostTable(table))  # type: ignore[arg-type]
    kinds = {(c.kind, c.id, c.format) for c in calls}
    assert kinds == {
        ("thread", "A", "full"),
        ("message", "b1", "raw"),
        ("message", "b2", "raw"),
        ("message", "c1", "raw"),
    }
    covered = [i for c in calls for i in c.message_ids]
    assert sorted(covered) == ["a1", "a2", "a3", "b1", "b2", "c1"]


def test_raw_never_uses_threads_and_headers_use_metadata() -> None:
    raw = plan_fetch(REFS, FetchNeed.RAW, CostTable())
    assert {c.kind for c in raw} == {"message"}
    assert len(raw) == 6
    headers = plan_fetch(REFS, FetchNeed.HEADERS, CostTable())
    assert {c.format for c in headers} == {"metadata"}


def test_chunks_respect_parts_and_units() -> None:
    calls = plan_fetch([MessageRef(str(i)) for i in range(60)], FetchNeed.RAW, CostTable())
    batches = chunk_calls(calls, CostTable(), max_parts=25, max_units=300)
    assert [len(b) for b in batches] == [15, 15, 15, 15]
    assert [len(b) for b in chunk_calls(calls, CostTable(), 25, 10_000)] == [25, 25, 10]
