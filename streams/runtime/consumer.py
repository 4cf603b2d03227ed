"""faust's Kafka consumer, delivering each fetched record without four tasks of its own.

faust's fetcher hands every record to the streams through ``Service.wait_first(deliver(record),
suspend_flow.wait())``, so that a rebalance can interrupt a delivery that waits on a full
stream buffer. ``wait_first`` makes a task of each argument and of the service's stopped and
crashed events, waits for the first, and cancels the rest: four tasks and about nine event-loop
callbacks a record, most of what a normalize agent's event loop did (measured: 11.6 callbacks a
record, 8.3 of them these).

Almost every delivery completes without waiting (there is room in the buffer). Here a delivery
first runs in the fetcher's own task up to its first suspension; only one that does suspend goes
on through faust's ``wait_first``, from where it stopped, so it can still be interrupted. One
that completes at once ends as it would have in its own task: tasks first run in the order they
were made, so faust's delivery task would have completed too before the others were looked at.

The agents take events from their channel with :func:`channel_events`, not faust's stream
iterator: that iterator skips an event fetched before a rebalance, or taken while the flow is
suspended for one, and acks it. A later commit then moves past a record nobody processed (seen:
179 embed jobs never done after a second embed process joined; the embed agent kept reading
its buffer while faust waited for its batch at work). Here such an event is dropped unacked;
faust seeks every partition back to its committed offset after a rebalance, so it comes again.

Once every partition's buffer is under pressure (80 % full: the agent's window is full and it
reads no more), faust's fetcher sleeps a whole second before it looks again, however soon the
agent takes a batch and the buffers drain, so an agent needed over a second of work in hand or
its parser processes sat idle. Here the fetcher waits for the first buffer to drain, a second at
most, as before. Through 15,000 messages with a window of five batches of 500 (not ten), the
normalize agent ran at 2,100-2,400 messages/s with faust's sleep and 3,000-3,200 without it
(ten batches: 3,550-3,650; they stay the default).

faust builds its aiokafka consumer with aiokafka's 200 ms idle re-check of the background
fetcher; here it gets ``topics.kafka.FETCHER_RECHECK_MS`` like every other consumer inboxflow
makes (see there: what an idle worker spends).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any

import aiokafka
import faust
from faust.transport.consumer import RecordMap
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

from topics.kafka import FETCHER_RECHECK_MS

__all__ = ["DeliveringConsumer", "DeliveringTransport", "channel_events"]

# Set in the fetcher's draining task only: wait_first takes the short way for its calls alone.
_DRAINING: contextvars.ContextVar[bool] = contextvars.ContextVar("draining", default=False)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # faust passes no ``consumer_timeout_ms``; aiokafka keeps it here until start() hands it
        # to its fetcher (tests/integration/streams/test_fetcher_recheck.py fails if one stops).
        consumer._consumer_timeout = FETCHER_RECHECK_MS / 1000
        return consumer


class DeliveringConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer whose deliveries run inline until they would wait, and whose
    fetcher resumes as soon as a full buffer drains."""

    _drained: asyncio.Event | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def on_buffer_drop(self, tp: TP) -> None:
        """faust's: the partition's buffer has room again; and wake a fetcher waiting for it."""
        super().on_buffer_drop(tp)
        if self._drained is not None:
            self._drained.set()

    async def _wait_next_records(
        self,
        timeout: float,  # noqa: ASYNC109 - faust's signature
    ) -> tuple[RecordMap | None, set[TP] | None]:
        if self._every_buffer_full():
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            # Where faust sleeps a second: until a buffer drains, a stop, or that second.
            await self.wait_first(self._drained.wait(), timeout=1.0)
            if self._every_buffer_full():
                return {}, self._get_active_partitions()  # nothing fetched, as after faust's sleep
        return await super()._wait_next_records(timeout)

    def _every_buffer_full(self) -> bool:
        """Return True when faust would not fetch: every partition's buffer under pressure."""
        if not self.flow_active or self.app.client_only or not self._buffered_partitions:
            return False
        return not self._get_active_partitions()

    async def _drain_messages(self, fetcher: Any) -> None:
        _DRAINING.set(True)  # this task's context only (a task runs in a copy)
        await super()._drain_messages(fetcher)

    async def wait_first(
        self,
        *coros: WaitArgT,
        timeout: Seconds | None = None,  # noqa: ASYNC109 - faust's signature
    ) -> WaitResults:
        """As faust's, but a first coroutine that completes without waiting needs no tasks."""
        if timeout is not None:
            return await super().wait_first(*coros, timeout=timeout)
        if not _DRAINING.get() or not coros:
            return await super().wait_first(*coros)
        first, *others = coros
        if not isinstance(first, Coroutine) or self._stopped.is_set() or self._crashed.is_set():
            return await super().wait_first(*coros)
        try:
            waiting_on = first.send(None)
        except StopIteration as finished:
            _close(others)  # finished at once: the others are not waited for
            return WaitResults([first], [finished.value], False)
        except BaseException:
            _close(others)  # failed at once: raised here, as faust would
            raise
        return await super().wait_first(_Resumed(first, waiting_on), *others)


def _close(waits: list[WaitArgT]) -> None:
    for wait in waits:
        if isinstance(wait, Coroutine):
            wait.close()  # never started: nothing to cancel, only to close


class DeliveringTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with :class:`DeliveringConsumer`."""

    Consumer = DeliveringConsumer


class _Resumed(Awaitable[Any]):
    """A coroutine that already ran up to its first suspension, awaited from there on.

    Whatever drives it (a task) gets what the coroutine yields and sends or throws back into
    the coroutine, as if it had driven the coroutine from its start.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - a cancellation: thrown on, as a task would
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as finished:
                    return finished.value
                continue
            try:
                waiting_on = coro.send(sent)
            except StopIteration as finished:
                return finished.value


YIELD_EVERY = 100  # events taken from a full buffer before other tasks get a turn


async def channel_events(
    queue: asyncio.Queue[Any],
    app: faust.App,
    on_drop: Callable[[faust.types.EventT[Any]], None] = lambda event: None,
) -> AsyncIterator[faust.types.EventT[Any]]:
    """Yield the events faust delivers to an agent's channel ``queue``, tracked for acking.

    An event from before the current rebalance generation, or taken while the flow is
    suspended, is dropped without an ack (faust's iterator acks it; see the module's note) and
    passed to ``on_drop``. Events already in the queue are taken without a turn of the event
    loop each.
    """
    consumer = app.consumer
    acking_topics = app.topics.acking_topics
    since_yield = 0
    while True:
        try:
            if queue.empty() or since_yield >= YIELD_EVERY:
                since_yield = 0
                event = await queue.get()  # raises what faust threw into the channel
            else:
                since_yield += 1
                event = queue.get_nowait()
        except StopAsyncIteration:
            return  # faust ends the channel (a stop, a restart): the iteration ends, as faust's
        message = event.message
        if not app.flow_control.is_active() or (
            message.generation_id != app.consumer_generation_id
        ):
            on_drop(event)  # fetched again from the committed offset once the rebalance is over
            continue
        if message.topic in acking_topics and not message.tracked:
            message.tracked = True
            consumer.track_message(message)  # unacked until the agent acks it
        yield event
