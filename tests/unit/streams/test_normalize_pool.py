"""The normalize stage parsing in CPU worker processes, driven by the real StageRunner.

The event loop must keep serving (heartbeats, other partitions) while a large message is parsed,
outputs must keep the batch's order, and a message that parses too long fails alone.
"""

from __future__ import annotations

import asyncio
import quopri
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from schemas.models import EmailNormalized, ErrorClass, GmailMessageFetched, JobStatus
from schemas.serde import decode, encode
from streams.runtime.cpu_pool import CpuPool
from streams.runtime.stage import Record
from streams.stages.mime import normalized_event
from streams.stages.normalize import NormalizeStage
from tests.memory_publisher import MemoryPublisher
from tests.unit.streams.test_stages import (
    CATALOGUE,
    EML,
    FETCHED,
    NORMALIZED,
    NOW,
    SERDE,
    as_record,
    fetched,
    run_with,
    states,
)

TICK = 0.05


@pytest.fixture(scope="module")
def pool() -> Iterator[CpuPool]:
    running = CpuPool(2, name="test-normalize", preload=["streams.stages.mime"])
    running.start()
    try:
        yield running
    finally:
        running.shutdown()


def stage(
    pool: CpuPool | None, *, record_timeout: float = 60.0, inline_max_bytes: int = 0
) -> NormalizeStage:
    return NormalizeStage(
        serde=SERDE,
        normalized_topic=NORMALIZED,
        timeout=120.0,
        record_timeout=record_timeout,
        pool=pool,
        inline_max_bytes=inline_max_bytes,  # 0: these tests send every message to the pool
        clock=lambda: NOW,
    )


def large_message(message_id: str, megabytes: int) -> GmailMessageFetched:
    """A message with a quoted-printable body of about ``megabytes`` MB (cut to 200k chars)."""
    line = quopri.encodestring("Relatório: a reunião passou para quinta à tarde. ".encode())
    body = (line.rstrip(b"\n") + b"=\r\n") * (megabytes * 1_000_000 // len(line))
    head = (
        "From: Ana Lima <ana@example.org>\r\nTo: bo@example.org\r\n"
        f"Subject: large {message_id}\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    small = fetched("02-alternative-reply-to.eml", message_id)
    return small.model_copy(update={"raw": head.encode() + body, "size_estimate": 0})


async def worst_lateness(work: Callable[[], Awaitable[None]]) -> float:
    """Run ``work`` while a task ticks every 50 ms; return the most a tick was late (s)."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(TICK)
            worst = max(worst, loop.time() - before - TICK)

    ticking = asyncio.create_task(ticker())
    try:
        await work()
    finally:
        done.set()
        await ticking
    return worst


async def test_pool_outputs_equal_inline_ones_in_the_batch_order(pool: CpuPool) -> None:
    names = sorted(p.name for p in EML.glob("*.eml"))
    sources = [
        as_record(FETCHED, i, encode(fetched(name, f"m{i}"))) for i, name in enumerate(names * 3)
    ]
    inline, parallel = MemoryPublisher(), MemoryPublisher()
    await run_with(stage(None), CATALOGUE.normalize, inline).run(sources)
    await run_with(stage(pool), CATALOGUE.normalize, parallel).run(sources)

    assert [r.value for r in parallel.on(NORMALIZED)] == [r.value for r in inline.on(NORMALIZED)]
    ids = [decode(r.value, EmailNormalized).message_id for r in parallel.on(NORMALIZED)]
    assert ids == [f"m{i}" for i in range(len(sources))]


async def test_the_event_loop_keeps_ticking_while_a_large_message_is_parsed(
    pool: CpuPool,
) -> None:
    big = large_message("big", 30)
    assert len(big.raw) > 30_000_000
    sources: Sequence[Record] = [as_record(FETCHED, 0, encode(big))]

    async def normalize_with(chosen: CpuPool | None) -> None:
        publisher = MemoryPublisher()
        await run_with(stage(chosen), CATALOGUE.normalize, publisher).run(sources)
        assert len(publisher.on(NORMALIZED)) == 1

    blocked = await worst_lateness(lambda: normalize_with(None))
    served = await worst_lateness(lambda: normalize_with(pool))

    # Parsing on the loop holds every tick for the whole parse; in the pool the loop only
    # decodes and hands over the bytes. Generous bounds: a loaded 2-core machine runs this.
    assert blocked > 0.3
    assert served < blocked / 3
    assert served < 0.25


async def test_a_message_that_parses_too_long_fails_alone(pool: CpuPool) -> None:
    big = large_message("slow", 40)
    began = time.perf_counter()
    normalized_event(big, datetime.fromtimestamp(NOW, UTC))
    parse_seconds = time.perf_counter() - began  # this machine's speed sets the deadline
    sources = [
        as_record(FETCHED, 0, encode(fetched("01-latin1-quoted-printable.eml", "before"))),
        as_record(FETCHED, 1, encode(big)),
        as_record(FETCHED, 2, encode(fetched("03-mixed-attachments.eml", "after"))),
    ]
    publisher = MemoryPublisher()
    chosen = stage(pool, record_timeout=parse_seconds / 4)
    await run_with(chosen, CATALOGUE.normalize, publisher).run(sources)

    assert [decode(r.value, EmailNormalized).message_id for r in publisher.on(NORMALIZED)] == [
        "before",
        "after",
    ]
    finals = {s.subject_id: s for s in states(publisher) if s.status is JobStatus.RETRYING}
    assert set(finals) == {"slow"}
    assert finals["slow"].last_error_class is ErrorClass.TIMEOUT
    assert await pool.run(abs, -2) == 2  # the pool carries on


async def test_small_messages_are_parsed_in_place_and_large_ones_in_the_pool() -> None:
    class CountingPool:
        calls = 0
        workers = 1

        async def run(self, fn: Any, *args: Any, max_seconds: float | None = None) -> Any:
            CountingPool.calls += 1
            return fn(*args)

    small = fetched("01-latin1-quoted-printable.eml", "small")
    big = large_message("big", 1)
    sources = [as_record(FETCHED, 0, encode(small)), as_record(FETCHED, 1, encode(big))]
    chosen = stage(cast(CpuPool, CountingPool()), inline_max_bytes=64 * 1024)
    publisher = MemoryPublisher()
    await run_with(chosen, CATALOGUE.normalize, publisher).run(sources)

    assert len(small.raw) < 64 * 1024 < len(big.raw)
    assert CountingPool.calls == 1  # only the large one crossed to a worker
    assert len(publisher.on(NORMALIZED)) == 2
