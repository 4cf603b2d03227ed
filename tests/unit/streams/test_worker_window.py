"""The agent's window wakes its batch loop per batch, not per record.

No broker: the window is driven with stand-in events.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import faust

from streams.runtime.worker import TakenWindow


@dataclass
class _Message:
    value: bytes
    key: bytes = b"user"


@dataclass
class _Event:
    message: _Message


def event(size: int) -> faust.types.EventT[Any]:
    return cast(faust.types.EventT[Any], _Event(_Message(b"x" * size)))


class CountingWindow(TakenWindow):
    """Counts how often a put wakes the batch loop."""

    wakeups = 0

    def _worth_waking(self) -> bool:
        woken = super()._worth_waking()
        self.wakeups += woken
        return woken


async def test_a_filling_batch_is_woken_when_it_is_full_not_for_each_record() -> None:
    window = CountingWindow(max_bytes=10_000, max_events=1000)
    taking = asyncio.create_task(window.take(size=10, within=60.0))
    await asyncio.sleep(0)  # the batch loop now waits for a first record
    for _ in range(10):
        await window.put(event(1), 1)
        await asyncio.sleep(0)  # let it run if it was woken
    batch = await asyncio.wait_for(taking, timeout=5)  # full: it does not wait out `within`
    assert len(batch) == 10
    assert window.wakeups == 2  # the first record, then the full batch


async def test_a_batch_short_of_its_size_still_goes_after_within() -> None:
    window = TakenWindow(max_bytes=10_000, max_events=1000)
    taking = asyncio.create_task(window.take(size=10, within=0.05))
    for _ in range(3):
        await window.put(event(1), 1)
    assert len(await asyncio.wait_for(taking, timeout=5)) == 3


async def test_a_full_window_wakes_a_filling_batch_at_once() -> None:
    window = TakenWindow(max_bytes=100, max_events=1000)
    taking = asyncio.create_task(window.take(size=10, within=60.0))
    await window.put(event(60), 60)
    await window.put(event(60), 60)  # over the window's bytes: no more records can come
    assert len(await asyncio.wait_for(taking, timeout=5)) == 2


async def test_records_put_between_batches_are_taken_without_waiting() -> None:
    window = TakenWindow(max_bytes=10_000, max_events=1000)
    for _ in range(4):
        await window.put(event(1), 1)
    first = await asyncio.wait_for(window.take(size=2, within=60.0), timeout=5)
    second = await asyncio.wait_for(window.take(size=2, within=60.0), timeout=5)
    assert (len(first), len(second)) == (2, 2)
