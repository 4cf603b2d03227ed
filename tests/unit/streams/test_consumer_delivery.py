"""The consumer delivers a record in the fetcher's task when it can, through faust when it waits.

faust's fetcher calls ``wait_first(deliver(record), suspend_flow.wait())`` in its draining task;
these tests make the same call from a task marked as draining, on the consumer an App builds.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest

from streams.runtime import consumer as delivery
from streams.runtime.app import create_app
from streams.runtime.consumer import DeliveringConsumer
from topics.kafka import KafkaClients


@pytest.fixture
async def consumer() -> AsyncIterator[DeliveringConsumer]:
    app = create_app("inboxflow-test-delivery", kafka=KafkaClients("127.0.0.1:1"))
    found = app.consumer  # made, never started: nothing connects
    assert isinstance(found, DeliveringConsumer)
    yield found
    found._thread.thread_loop.close()  # the loop its consumer thread would have run on


async def _as_drainer(consumer: DeliveringConsumer, *coros: object) -> object:
    """Call wait_first as faust's draining task does (the marker is that task's alone)."""

    async def drain() -> object:
        delivery._DRAINING.set(True)
        return await consumer.wait_first(*coros)  # type: ignore[arg-type]

    return await asyncio.create_task(drain())


async def test_a_delivery_that_does_not_wait_runs_in_the_draining_task(
    consumer: DeliveringConsumer,
) -> None:
    ran_in: list[asyncio.Task[object] | None] = []
    flow = asyncio.Event()

    async def deliver() -> str:
        ran_in.append(asyncio.current_task())
        return "delivered"

    suspended = flow.wait()
    done, results, stopped = await _as_drainer(consumer, deliver(), suspended)  # type: ignore[misc]

    assert results == ["delivered"]
    assert not stopped
    assert len(done) == 1
    assert ran_in[0] is not None
    assert ran_in[0].get_coro().__name__ == "drain"
    assert inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED  # closed, never awaited


async def test_a_delivery_that_waits_finishes_in_a_task_of_its_own(
    consumer: DeliveringConsumer,
) -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    tasks: list[str] = []

    async def deliver() -> int:
        tasks.append(asyncio.current_task().get_coro().__name__)  # type: ignore[union-attr]
        got = await first
        tasks.append(asyncio.current_task().get_coro().__name__)  # type: ignore[union-attr]
        await asyncio.sleep(0)  # a bare yield passes through as well
        return got + await second

    loop.call_later(0.01, first.set_result, 40)  # after the delivery waits on it
    loop.call_later(0.02, second.set_result, 2)
    _, results, stopped = await _as_drainer(consumer, deliver(), asyncio.Event().wait())  # type: ignore[misc]

    assert results == [42]
    assert not stopped
    assert tasks[0] == "drain"
    assert tasks[1] != "drain"


async def test_a_waiting_delivery_is_cancelled_when_the_flow_is_suspended(
    consumer: DeliveringConsumer,
) -> None:
    suspend_flow = asyncio.Event()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def deliver() -> None:
        try:
            await never  # a full stream buffer
        except asyncio.CancelledError:
            seen.append("cancelled inside the delivery")
            raise

    asyncio.get_running_loop().call_later(0.01, suspend_flow.set)
    _done, results, stopped = await _as_drainer(consumer, deliver(), suspend_flow.wait())  # type: ignore[misc]

    assert results == [True]
    assert not stopped
    assert seen == ["cancelled inside the delivery"]
    assert never.cancelled()


async def test_a_delivery_error_is_raised_whether_or_not_it_waited(
    consumer: DeliveringConsumer,
) -> None:
    async def fails_at_once() -> None:
        raise ValueError("bad record")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("no callback for this partition")

    with pytest.raises(ValueError, match="bad record"):
        await _as_drainer(consumer, fails_at_once(), asyncio.Event().wait())
    with pytest.raises(KeyError):
        await _as_drainer(consumer, fails_later(), asyncio.Event().wait())


async def test_other_callers_and_a_stopped_consumer_go_through_faust(
    consumer: DeliveringConsumer,
) -> None:
    ran_in: list[str] = []

    async def deliver() -> str:
        ran_in.append(asyncio.current_task().get_coro().__name__)  # type: ignore[union-attr]
        return "delivered"

    # Not the draining task: faust's own wait_first, a task for the coroutine.
    _, results, _ = await consumer.wait_first(deliver(), asyncio.Event().wait())
    assert results == ["delivered"]
    assert ran_in == ["deliver"]

    consumer._stopped.set()  # stopping: faust's answer, "stopped", whatever finished
    *_, stopped = await _as_drainer(consumer, deliver(), asyncio.Event().wait())  # type: ignore[misc]
    assert stopped
