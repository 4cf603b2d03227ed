"""Batches at work at once: the next runs while the last publishes; acks stay in order.

No broker: the batch loop is driven with stand-in events, a stand-in runner whose batches end
when the test says, and a stream that records its acks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import pytest

from streams.runtime.byte_gate import ByteGate
from streams.runtime.runner import StageRunner
from streams.runtime.stage import Record
from streams.runtime.worker import BatchConfig, TakenWindow, _run_batches
from tests.helpers import async_wait_until


@dataclass
class _Message:
    offset: int
    topic: str = "source"
    partition: int = 0
    timestamp: float = 0.0
    key: bytes = b"user"
    value: bytes = b"x"
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class _Event:
    message: _Message


@dataclass
class Runner:
    """Each batch runs until the test releases it by its first offset."""

    started: list[list[int]] = field(default_factory=list)
    release: dict[int, asyncio.Event] = field(default_factory=dict)
    running: int = 0
    most_at_once: int = 0
    after: list[asyncio.Future[Any] | None] = field(default_factory=list)  # each batch's

    async def run_until_done(
        self, records: Sequence[Record], *, after: asyncio.Future[Any] | None = None
    ) -> None:
        offsets = [record.offset for record in records]
        self.started.append(offsets)
        self.after.append(after)
        gate = self.release.setdefault(offsets[0], asyncio.Event())
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            await settle()  # winding down (a publish in flight) takes turns of the loop
            raise
        finally:
            self.running -= 1


@dataclass
class Stream:
    acked: list[int] = field(default_factory=list)

    async def ack(self, event: _Event) -> bool:
        self.acked.append(event.message.offset)
        return True


class Gate:
    def changed(self) -> None:
        pass


async def wait_until(condition: Any) -> None:
    await async_wait_until(condition, timeout=10.0, interval=0.005)


async def settle() -> None:
    """Let every task that can run, run (all of it is in this loop: nothing waits on I/O)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def started_loop(
    in_flight: int, offsets: range
) -> tuple[Runner, Stream, asyncio.Task[None], list[int]]:
    window = TakenWindow(max_bytes=1_000_000, max_events=1_000)
    for offset in offsets:
        await window.put(cast(faust.types.EventT[Any], _Event(_Message(offset))), 1)
    runner, stream, batches = Runner(), Stream(), []
    loop = asyncio.create_task(
        _run_batches(
            window,
            cast(faust.StreamT[bytes], stream),
            cast(StageRunner, runner),
            BatchConfig(size=2, within=0.0, in_flight=in_flight),
            None,
            cast(ByteGate, Gate()),
            lambda: batches.append(len(stream.acked)),
        )
    )
    return runner, stream, loop, batches


async def stop(loop: asyncio.Task[None]) -> None:
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


async def test_two_in_flight_run_the_next_batch_during_the_last_and_ack_in_order() -> None:
    runner, stream, loop, batches = await started_loop(2, range(6))
    try:
        await wait_until(lambda: len(runner.started) == 2)
        assert runner.started == [[0, 1], [2, 3]]
        assert runner.most_at_once == 2
        first, second = runner.after
        assert first is None  # nothing before it
        assert second is not None  # publishes after the first batch...
        assert not second.done()  # ...which is still at work

        runner.release[2].set()  # the second batch is done first: its acks wait
        await settle()
        assert stream.acked == []
        assert len(runner.started) == 2  # and no third batch starts past the limit

        runner.release[0].set()
        await wait_until(lambda: len(runner.started) == 3)
        assert stream.acked == [0, 1, 2, 3]
        assert batches == [2, 4]  # the idle check ran once after each batch
        assert runner.started[2] == [4, 5]
    finally:
        await stop(loop)


async def test_one_in_flight_runs_batches_one_after_the_other() -> None:
    runner, stream, loop, _ = await started_loop(1, range(4))
    try:
        await wait_until(lambda: len(runner.started) == 1)
        await settle()
        assert len(runner.started) == 1
        runner.release[0].set()
        await wait_until(lambda: len(runner.started) == 2)
        assert stream.acked == [0, 1]
        assert runner.most_at_once == 1
    finally:
        await stop(loop)


async def test_stopping_cancels_every_batch_at_work_and_acks_none_of_them() -> None:
    runner, stream, loop, _ = await started_loop(2, range(4))
    await wait_until(lambda: runner.running == 2)
    await stop(loop)
    assert runner.running == 0  # they ended before the loop did
    assert stream.acked == []
    with pytest.raises(asyncio.CancelledError):
        await loop
