"""The consumer delivers a record in the fetcher's task when it can, through faust when it waits.

faust's fetcher calls ``wait_first(deliver(record), suspend_flow.wait())`` in its draining task;
these tests make the same call from a task marked as draining, on the consumer an App builds.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import ThrowableQueue

from streams.runtime import consumer as delivery
from streams.runtime.app import create_app
from streams.runtime.consumer import DeliveringConsumer, channel_events
from tests.helpers import async_wait_until
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


# --- the agent's events: faust's skipped events are dropped, not acked ---------------------------

TOPIC = "inboxflow-test.mail.email-normalized.v1"


@pytest.fixture
async def app() -> AsyncIterator[faust.App]:
    made = create_app("inboxflow-test-events", kafka=KafkaClients("127.0.0.1:1"))
    made.topics._acking_topics.add(TOPIC)  # as faust does for an agent's noack topic
    made.consumer_generation_id = 3
    made.flow_control.resume()  # as faust does once partitions are assigned
    yield made
    made.consumer._thread.thread_loop.close()


def event_at(app: faust.App, offset: int, *, generation: int = 3) -> faust.types.EventT[Any]:
    message = ConsumerMessage(  # what faust's aiokafka consumer makes of a record
        TOPIC, 0, offset, 0.0, 0, [], b"user", b"mail", None, generation_id=generation
    )
    return faust.Event(app, b"user", b"mail", [], message)


def buffer_of(app: faust.App, *events: faust.types.EventT[Any]) -> ThrowableQueue[Any]:
    """An agent's channel buffer (faust's kind of queue) holding ``events``."""
    queue: ThrowableQueue[Any] = ThrowableQueue(maxsize=100, flow_control=app.flow_control)
    for item in events:
        queue.put_nowait(item)
    return queue


async def take(events: AsyncIterator[faust.types.EventT[Any]], count: int) -> list[int]:
    return [(await asyncio.wait_for(anext(events), 5.0)).message.offset for _ in range(count)]


async def test_events_of_this_generation_come_in_order_tracked_for_their_ack(
    app: faust.App,
) -> None:
    delivered = [event_at(app, offset) for offset in range(3)]
    events = channel_events(buffer_of(app, *delivered), app)

    assert await take(events, 3) == [0, 1, 2]
    assert all(item.message.tracked for item in delivered)
    # Waiting for their acks (faust's set of unacked messages holds them weakly: kept above).
    assert sorted(m.offset for m in app.consumer.unacked) == [0, 1, 2]


async def test_an_event_from_before_a_rebalance_is_dropped_unacked(app: faust.App) -> None:
    stale = event_at(app, 0, generation=2)  # fetched before the current generation
    queue = buffer_of(app, stale, event_at(app, 1))
    dropped: list[faust.types.EventT[Any]] = []

    assert await take(channel_events(queue, app, on_drop=dropped.append), 1) == [1]
    assert dropped == [stale]  # told, so that the byte gate stops counting it
    assert not stale.message.acked  # faust's iterator would have acked it: a later commit
    assert stale.message not in app.consumer.unacked  # would have passed it, never processed


async def test_events_taken_while_the_flow_is_suspended_are_dropped_unacked(
    app: faust.App,
) -> None:
    during = [event_at(app, offset) for offset in range(2)]
    queue = buffer_of(app, *during)
    events = channel_events(queue, app)
    app.flow_control.suspend()  # a rebalance under way: faust seeks back once it is over
    waiting = asyncio.create_task(take(events, 1))
    await async_wait_until(queue.empty, timeout=5.0, interval=0.005)

    app.flow_control.resume()
    queue.put_nowait(event_at(app, 0))  # fetched again from the committed offset
    assert await waiting == [0]
    assert not any(item.message.acked or item.message.tracked for item in during)


async def test_an_error_faust_throws_into_the_channel_is_raised(app: faust.App) -> None:
    queue = buffer_of(app)
    events = channel_events(queue, app)
    waiting = asyncio.create_task(take(events, 1))
    await asyncio.sleep(0)  # a turn: the reader now waits on the empty queue
    await queue.throw(RuntimeError("consumer crashed"))
    with pytest.raises(RuntimeError, match="consumer crashed"):
        await waiting


async def test_the_events_end_when_faust_ends_the_channel(app: faust.App) -> None:
    queue = buffer_of(app)
    events = channel_events(queue, app)
    waiting = asyncio.create_task(take(events, 1))
    await asyncio.sleep(0)  # a turn: the reader now waits on the empty queue
    await queue.throw(StopAsyncIteration())  # as faust does when it stops the channel
    with pytest.raises(StopAsyncIteration):  # the iteration ended; no RuntimeError from it
        await waiting


# --- the fetcher after a full buffer: on as soon as it drains, not a second later -------------


def fetching(
    consumer: DeliveringConsumer, tp: faust.types.TP, *, buffer_full: bool
) -> list[set[faust.types.TP]]:
    """Put ``tp``'s buffer in that state and return the partitions of each fetch from now on."""
    consumer.flow_active = True
    # faust takes a partition whose buffer is under pressure out of the active ones.
    consumer._active_partitions = set() if buffer_full else {tp}
    consumer._buffered_partitions = {tp} if buffer_full else set()
    fetched: list[set[faust.types.TP]] = []

    async def getmany(active_partitions: set[faust.types.TP], timeout: float) -> dict[Any, Any]:
        fetched.append(set(active_partitions))
        return {}

    consumer._getmany = getmany  # type: ignore[method-assign]
    return fetched


async def test_with_every_buffer_full_the_fetcher_resumes_when_one_drains(
    consumer: DeliveringConsumer,
) -> None:
    tp = faust.types.TP(TOPIC, 0)
    fetched = fetching(consumer, tp, buffer_full=True)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # faust's way: a second, whatever happens
        slept.append(seconds)

    consumer.sleep = sleep  # type: ignore[method-assign]
    waiting = asyncio.create_task(consumer._wait_next_records(1.0))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()  # nothing to fetch for: it waits
    assert fetched == []

    consumer.on_buffer_drop(tp)  # the agent took events: the buffer has room again

    records, active = await asyncio.wait_for(waiting, 10)
    assert fetched == [{tp}]
    assert active == {tp}
    assert records == {}
    assert slept == []


async def test_with_room_in_a_buffer_the_fetcher_fetches_at_once(
    consumer: DeliveringConsumer,
) -> None:
    tp = faust.types.TP(TOPIC, 0)
    fetched = fetching(consumer, tp, buffer_full=False)
    await asyncio.wait_for(consumer._wait_next_records(1.0), 10)
    assert fetched == [{tp}]
