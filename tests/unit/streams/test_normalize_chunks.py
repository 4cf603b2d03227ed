"""Messages cross to CPU workers in chunks; a failure still fails one message only."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from schemas.errors import MimeBombError, StageTimeoutError
from schemas.models import EmailNormalized, GmailMessageFetched
from schemas.serde import decode, serde_for
from streams.runtime import cpu_pool
from streams.runtime.cpu_pool import CpuPool
from streams.stages.mime import RawMessage, normalized_event
from streams.stages.normalize import CHUNK_BYTES, CHUNK_MESSAGES, normalize_in_pool
from tests.unit.streams.test_hostile_mime import nested
from tests.unit.streams.test_stages import EML, NOW, fetched

WHEN = datetime.fromtimestamp(NOW, UTC)
NAMES = sorted(path.name for path in EML.glob("*.eml"))


def messages(count: int) -> list[GmailMessageFetched]:
    return [fetched(NAMES[i % len(NAMES)], f"m{i}") for i in range(count)]


def bomb(message_id: str) -> GmailMessageFetched:
    return messages(1)[0].model_copy(update={"message_id": message_id, "raw": nested(60)})


class InlinePool:
    """Runs each call in this process and records the message ids each call carried."""

    workers = 1

    def __init__(self, *, times_out_with: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.times_out_with = times_out_with

    async def run(self, fn: Any, *args: Any, max_seconds: float | None = None) -> Any:
        chunk: Sequence[tuple[RawMessage, int | None]] = args[0]
        ids = [event.message_id for event, _ in chunk]
        self.calls.append(ids)
        if self.times_out_with in ids:
            raise StageTimeoutError("ran past its deadline; its worker was killed")
        return fn(*args)


@pytest.fixture(scope="module")
def pool() -> Iterator[CpuPool]:
    running = CpuPool(2, name="test-chunks", preload=["streams.stages.mime"])
    running.start()
    try:
        yield running
    finally:
        running.shutdown()


async def test_results_equal_in_process_ones_in_order_with_a_bomb_in_its_place(
    pool: CpuPool,
) -> None:
    events = [*messages(20), bomb("bomb"), *messages(5)]
    results = await normalize_in_pool(
        pool, [(RawMessage.of(event), None) for event in events], WHEN, record_timeout=60.0
    )

    assert len(results) == len(events)
    assert gc.isenabled()  # paused only while each answer was unpickled
    assert isinstance(results[20], MimeBombError)
    for event, result in zip(events[:20] + events[21:], results[:20] + results[21:], strict=True):
        # Workers send back Avro bodies; framed, they are the events parsed here.
        assert isinstance(result, bytes)
        value = serde_for(None).frame(EmailNormalized, result)
        assert decode(value, EmailNormalized) == normalized_event(event, WHEN)


async def test_small_messages_share_calls_and_a_large_one_goes_alone() -> None:
    events = messages(CHUNK_MESSAGES + 3)
    large = events[0].model_copy(
        update={"message_id": "large", "raw": events[0].raw + b" " * CHUNK_BYTES}
    )
    fake = InlinePool()
    items = [(RawMessage.of(event), None) for event in [*events, large, *messages(2)]]
    results = await normalize_in_pool(cast(CpuPool, fake), items, WHEN, record_timeout=None)

    assert all(isinstance(result, bytes) for result in results)
    assert [len(call) for call in fake.calls] == [CHUNK_MESSAGES, 3, 1, 2]
    assert fake.calls[2] == ["large"]


async def test_a_chunk_past_its_deadline_is_rerun_one_message_per_call() -> None:
    events = messages(4)
    slow = events[0].model_copy(update={"message_id": "slow"})
    fake = InlinePool(times_out_with="slow")
    items = [(RawMessage.of(event), None) for event in [events[0], slow, *events[1:]]]
    results = await normalize_in_pool(cast(CpuPool, fake), items, WHEN, record_timeout=5.0)

    assert isinstance(results[1], StageTimeoutError)
    assert [type(result) for result in results] == [
        bytes,
        StageTimeoutError,
        bytes,
        bytes,
        bytes,
    ]
    assert fake.calls[0] == ["m0", "slow", "m1", "m2", "m3"]  # one chunk: one worker
    assert sorted(fake.calls[1:]) == [["m0"], ["m1"], ["m2"], ["m3"], ["slow"]]


def test_the_collector_is_paused_and_restored_as_it_was() -> None:
    assert gc.isenabled()
    with cpu_pool._gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with cpu_pool._gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # someone else turned it off: left off
    finally:
        gc.enable()


async def test_a_batch_makes_a_chunk_per_worker_when_it_can() -> None:
    fake = InlinePool()
    fake.workers = 3
    items = [(RawMessage.of(event), None) for event in messages(7)]
    await normalize_in_pool(cast(CpuPool, fake), items, WHEN, record_timeout=None)

    assert [len(call) for call in fake.calls] == [3, 3, 1]
