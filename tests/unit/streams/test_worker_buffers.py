"""A worker's byte budget: how it sizes faust and aiokafka, and the agent's window of taken records.

No broker: the faust App is built (not started) and its configuration read back, and the window
is driven with stand-in events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
import pytest

from schemas.models import JobKind
from streams.runtime.byte_gate import EVENT_OVERHEAD_BYTES
from streams.runtime.stage import JobRef, Outcome, Record
from streams.runtime.worker import (
    TakenWindow,
    build_worker_app,
    event_bytes,
    plan_buffers,
)
from topics.catalogue import build_catalogue
from topics.kafka import KafkaClients

MIB = 1024 * 1024
GIB = 1024 * MIB
CATALOGUE = build_catalogue("unit")


@pytest.mark.parametrize("group", CATALOGUE.groups[:5], ids=lambda g: g.agent)
@pytest.mark.parametrize("budget", [GIB, 2 * GIB, 4 * GIB], ids=lambda b: f"{b // MIB}MiB")
def test_no_worker_can_hold_more_than_its_budget(group: Any, budget: int) -> None:
    plan = plan_buffers(budget, group.sources)

    assert plan.worst_case_bytes <= budget
    # Every record the sources accept fits the window on its own.
    assert plan.window_bytes >= plan.largest_record
    # A poll delivered before the agent runs never puts faust's buffer under pressure (80 %):
    # there faust would stop fetching the partition and its fetch loop sleep a second.
    assert plan.poll_records <= int(plan.buffer_events / 1.25)


def test_raw_mail_is_polled_like_small_records_its_bytes_bounded_by_the_gate() -> None:
    raw = plan_buffers(GIB, CATALOGUE.normalize.sources)  # message-fetched: 64 MiB records
    small = plan_buffers(GIB, CATALOGUE.sync.sources)  # 1 MiB records, four topics

    assert (raw.largest_record, raw.partitions) == (64 * MIB, 6)
    # faust's poll: the count is a backstop, polls of one record per 64 MiB are gone.
    assert (raw.poll_records, raw.buffer_events) == (500, 1000)
    # Six fetches of the largest size, a poll of as much, and two records over the limit.
    assert (raw.fetched_bytes, raw.poll_bytes) == (384 * MIB, 384 * MIB)
    assert raw.window_bytes == 128 * MIB  # two raw messages of the largest size, or 40,000 small
    assert raw.worst_case_bytes == GIB
    # Four agents (sync requests, discovered messages, and the backfill lane's two).
    assert (small.partitions, small.agents) == (24, 4)
    assert small.fetch_bytes == MIB
    one = small.largest_record  # Kafka's default message.max.bytes
    assert small.window_bytes == (GIB - 2 * 24 * one) // 4 - 2 * one


def test_a_budget_too_small_for_the_largest_records_is_refused_with_what_would_do() -> None:
    needed = 384 * MIB + 384 * MIB + 3 * 64 * MIB
    with pytest.raises(ValueError, match=rf"BUFFER_BYTES\) to at least {needed}$"):
        plan_buffers(needed - 1, CATALOGUE.normalize.sources)
    assert plan_buffers(needed, CATALOGUE.normalize.sources).window_bytes == 64 * MIB


class IdleStage:
    name = "normalize"
    kind = JobKind.NORMALIZE_GOOGLE_EMAIL
    phase = 1
    timeout = 5.0

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        return []

    def job_of(self, record: Record) -> JobRef | None:
        return None

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        return [Outcome() for _ in records]


async def test_the_worker_app_is_configured_from_the_plan() -> None:
    source = CATALOGUE.message_fetched.name
    app = build_worker_app(
        catalogue=CATALOGUE,
        group=CATALOGUE.normalize,
        stages={source: IdleStage()},
        kafka=KafkaClients("127.0.0.1:9"),
        buffer_bytes=GIB,
    )
    plan = plan_buffers(GIB, [CATALOGUE.message_fetched])

    assert app.conf.stream_buffer_maxsize == plan.buffer_events == 1000
    assert app.conf.consumer_max_fetch_size == plan.fetch_bytes  # max_partition_fetch_bytes
    assert app.conf.broker_max_poll_records == plan.poll_records


# --- the window of taken records -----------------------------------------------------------------


@dataclass
class FakeMessage:
    value: bytes
    key: bytes = b"user"


@dataclass
class FakeEvent:
    message: FakeMessage


def event(size: int) -> faust.types.EventT[Any]:
    return cast(faust.types.EventT[Any], FakeEvent(FakeMessage(b"x" * size)))


def test_an_event_costs_its_bytes_and_its_objects() -> None:
    assert event_bytes(event(1000)) == 1000 + len(b"user") + EVENT_OVERHEAD_BYTES


async def test_the_reader_waits_while_the_window_holds_its_bytes() -> None:
    window = TakenWindow(max_bytes=100, max_events=1000)
    await window.put(event(60), 60)
    await window.put(event(60), 60)  # over the line now: the one that crosses is let in
    blocked = asyncio.create_task(window.put(event(10), 10))
    await asyncio.sleep(0)  # let it reach the wait
    assert not blocked.done()

    batch = await window.take(size=10, within=5.0)  # a full window: no waiting for more
    assert [size for _, size in batch] == [60, 60]
    assert not blocked.done()  # taken is not released: the bytes are still held
    await window.release(batch)
    await asyncio.wait_for(blocked, timeout=5)
    assert (window.bytes, window.events) == (10, 1)


async def test_one_record_larger_than_the_window_is_let_in_alone() -> None:
    window = TakenWindow(max_bytes=100, max_events=1000)
    await asyncio.wait_for(window.put(event(500), 500), timeout=5)
    assert window.full()


async def test_a_batch_is_cut_at_its_size_and_waits_at_most_within_for_more() -> None:
    window = TakenWindow(max_bytes=10_000, max_events=1000)
    for _ in range(5):
        await window.put(event(1), 1)
    assert len(await window.take(size=3, within=5.0)) == 3  # full batch: no wait
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert len(await window.take(size=3, within=0.05)) == 2
    assert loop.time() - started >= 0.04


async def test_the_reader_fails_once_the_batch_loop_is_gone() -> None:
    window = TakenWindow(max_bytes=1, max_events=1)
    await window.put(event(1), 1)
    waiting = asyncio.create_task(window.put(event(1), 1))
    await asyncio.sleep(0)
    await window.close(RuntimeError("runner bug"))
    with pytest.raises(RuntimeError, match="batch loop stopped"):
        await asyncio.wait_for(waiting, timeout=5)
