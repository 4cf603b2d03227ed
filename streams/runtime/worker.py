"""One consumer group as a running faust worker: its agents, its retry relay, its publisher.

Each agent reads raw bytes with ``concurrency=1`` and acks a batch only after the runner has
published everything that followed from it, so a crash re-delivers instead of losing work
(faust acks on exceptions and commits past in-flight events with concurrency > 1: bugs #606,
#315, see ``docs/faust.md``). It takes its events from faust's buffer itself
(``consumer.channel_events``): faust's stream iterator acks the events a rebalance makes it
skip. The retry tiers are relayed in the same
process, so per-user limits (Gmail quota) live with whoever owns the user's partition.

Memory is bounded in bytes, not records: raw mail goes up to 64 MiB a record, and faust's own
buffers count events. ``plan_buffers`` splits a worker's byte budget between Kafka fetches, the
poll being delivered and, per agent, a limit on the records it holds: delivery into faust's
buffer waits at that limit (``byte_gate``), and the agent fills a window of records taken but
not yet acked by bytes; batches are cut from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from mode import Service

from schemas.errors import InboxflowError
from schemas.serde import Serde
from streams.runtime.app import create_app
from streams.runtime.byte_gate import ByteGate, GatedTopic, message_bytes
from streams.runtime.consumer import channel_events
from streams.runtime.heap import IdleTrim
from streams.runtime.liveness import StallTracker
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.retry_relay import RetryRelay
from streams.runtime.runner import StageRunner
from streams.runtime.stage import Record, Stage
from topics.catalogue import Catalogue, ConsumerGroup, TopicSpec
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
TRIM_SECONDS = 5.0  # how often an idle worker checks for free memory to give back
RELAY_STOP_SECONDS = 60.0


@dataclass(frozen=True)
class BatchConfig:
    """How many records an agent takes at once, and how long it waits to fill a batch.

    ``window_batches``: batches' worth of records the agent takes ahead of the one at work
    (``WINDOW_EVENTS_PER_BATCH`` unless given); a slow, paced lane keeps few, since a rebalance
    or a stop waits until every taken record is acked.

    ``in_flight``: batches at work at once. One unless the stage's records are independent of
    each other (no state, no hook that a later record relies on): with two, the next batch is
    decoded and parsed while the last one's results are being published and acknowledged, so a
    CPU pool does not sit idle through each publish. A batch publishes only once the one
    before it is done, so a partition's results still reach Kafka in order, and batches are
    acked in order, each only once its results are safe, so a crash loses nothing.
    """

    size: int = 100
    within: float = 0.2
    window_batches: int | None = None
    in_flight: int = 1


DEFAULT_BUFFER_BYTES = 1024 * 1024 * 1024
BROKER_MAX_MESSAGE_BYTES = 1024 * 1024 + 12  # Kafka's message.max.bytes, for topics without one
WINDOW_EVENTS_PER_BATCH = 10  # taken-not-acked events, in batches: small mail never waits on it
_MIN_FETCH_BYTES = 64 * 1024
_MAX_FETCH_BYTES = 1024 * 1024  # faust's default
POLL_RECORDS = 500  # faust's default; short polls keep heartbeats alive (robinhood#402)
# faust's buffer ahead of an agent's window, in events (faust's default is 4,096). Each buffered
# event is a decoded record (5-6 KB for a 3 KB message), and the window (ten batches: 5,000
# records for normalize) already keeps the stage busy, so a backlog waits in Kafka: the normalize
# agent peaked 8-9 MiB lower through 15,000 messages, at the same rate. A poll (500) stays under
# faust's pressure mark (80 %).
BUFFER_EVENTS = 1000


class BufferBudgetError(InboxflowError, ValueError):
    """The worker buffer budget cannot hold the source topics' largest records."""


@dataclass(frozen=True)
class BufferPlan:
    """How one worker spends its byte budget on consumed records, from its source topics.

    A record is held in one of three places, each bounded here:

    * fetched: aiokafka keeps at most one fetch per assigned partition, ``fetch_bytes`` each,
      though a record larger than that still arrives whole (KIP-74): ``largest_record`` each;
    * delivering: the poll faust is moving into its buffers, at most ``poll_records`` records
      and never more than was fetched when it was taken;
    * held by an agent (one per source topic): in faust's buffer or in the agent's window of
      taken, unacked records. Delivery waits while an agent holds ``window_bytes``, so it holds
      at most that plus the record that crosses the line and one in faust's stream between its
      buffer and the agent (``byte_gate.ByteGate``).

    ``worst_case_bytes`` adds them up assuming every record is as large as the largest the
    sources accept; it never exceeds ``budget_bytes``. Records the stage produces, the retry
    relay's own consumer and the CPU pool's copies of records in work are not counted.
    ``buffer_events`` is faust's count of buffered events, a backstop: the bytes come first.
    """

    budget_bytes: int
    largest_record: int
    partitions: int
    agents: int
    fetch_bytes: int
    poll_records: int
    buffer_events: int
    window_bytes: int

    @property
    def fetched_bytes(self) -> int:
        """The most the fetches of every partition hold at once."""
        return self.partitions * max(self.fetch_bytes, self.largest_record)

    @property
    def poll_bytes(self) -> int:
        """The most one poll in delivery holds: it takes records already fetched."""
        return min(self.poll_records * self.largest_record, self.fetched_bytes)

    @property
    def worst_case_bytes(self) -> int:
        """The most record bytes the worker can hold at once."""
        held = self.window_bytes + 2 * self.largest_record
        return self.fetched_bytes + self.poll_bytes + self.agents * held


def largest_record_bytes(spec: TopicSpec) -> int:
    """Return the largest record ``spec``'s topic accepts (its ``max.message.bytes``)."""
    return int(spec.configs.get("max.message.bytes", BROKER_MAX_MESSAGE_BYTES))


def plan_buffers(budget_bytes: int, sources: Sequence[TopicSpec]) -> BufferPlan:
    """Split ``budget_bytes`` between fetches, the poll in delivery and the agents' limits.

    Pure. A worker may own every partition of its sources, so fetches get their worst case
    first, then a poll of them; the agents (one per source topic) share the remainder, each
    less the two records it may hold over its limit.

    Raises:
        BufferBudgetError: The budget cannot hold that: the message says how much would (a
            ``ValueError``, and an ``InboxflowError`` so that logs keep the message).
    """
    if not sources:
        raise ValueError("a worker needs at least one source topic")
    largest = max(largest_record_bytes(spec) for spec in sources)
    partitions = sum(spec.partitions for spec in sources)
    agents = len(sources)
    fetch = min(_MAX_FETCH_BYTES, max(_MIN_FETCH_BYTES, budget_bytes // (8 * partitions)))
    fetched = partitions * max(fetch, largest)
    delivering = min(POLL_RECORDS * largest, fetched)
    # Each agent holds its window plus the record over the line and one in faust's hands.
    window = (budget_bytes - fetched - delivering) // agents - 2 * largest
    if window < largest:
        needed = fetched + delivering + 3 * agents * largest
        raise BufferBudgetError(
            f"a worker buffer budget of {budget_bytes} bytes cannot hold {partitions} "
            f"partitions of records up to {largest} bytes. Operator action: raise it "
            f"(INBOXFLOW_WORKER_BUFFER_BYTES) to at least {needed}"
        )
    return BufferPlan(
        budget_bytes=budget_bytes,
        largest_record=largest,
        partitions=partitions,
        agents=agents,
        fetch_bytes=fetch,
        poll_records=POLL_RECORDS,
        buffer_events=BUFFER_EVENTS,
        window_bytes=window,
    )


class TakenWindow:
    """Events an agent took from faust and has not acked yet, bounded in bytes and in count.

    The agent's reader ``put``s each event (waiting while the window is full, so faust's buffer
    fills and faust stops fetching); the batch loop ``take``s a batch and ``release``s it once
    acked. An event larger than the whole window is let in alone, never refused.
    """

    def __init__(self, max_bytes: int, max_events: int) -> None:
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.bytes = 0  # of every event in the window: waiting and taken
        self.events = 0
        self._waiting: deque[tuple[faust.types.EventT[Any], int]] = deque()
        self._changed = asyncio.Condition()
        self._broken: BaseException | None = None
        self._filling = 0  # the size of the batch ``take`` is filling; 0 while it is not

    def full(self) -> bool:
        """Return True when ``put`` would wait."""
        return self.events > 0 and (self.bytes >= self.max_bytes or self.events >= self.max_events)

    async def put(self, event: faust.types.EventT[Any], size: int) -> None:
        """Add an event of ``size`` bytes once there is room; raises if the batch loop died."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._broken is not None or not self.full())
            if self._broken is not None:
                raise RuntimeError("the agent's batch loop stopped") from self._broken
            self._waiting.append((event, size))
            self.bytes += size
            self.events += 1
            if self._worth_waking():
                self._changed.notify_all()

    def _worth_waking(self) -> bool:
        # Only ``take`` waits on a put: for a first event, then for a full batch or window.
        # Waking it for every event would cost a task switch per record for nothing.
        waiting = len(self._waiting)
        return waiting == 1 or (self._filling > 0 and waiting >= self._filling) or self.full()

    async def take(self, size: int, within: float) -> list[tuple[faust.types.EventT[Any], int]]:
        """Return the next batch: wait for one event, then up to ``within`` s for ``size``."""
        loop = asyncio.get_running_loop()
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._waiting))
            until = loop.time() + within
            self._filling = size
            try:
                # A full window gets no more events until this batch is released: go at once.
                while len(self._waiting) < size and not self.full() and loop.time() < until:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(until):
                            await self._changed.wait()
            finally:
                self._filling = 0
            return [self._waiting.popleft() for _ in range(min(size, len(self._waiting)))]

    async def release(self, batch: Sequence[tuple[faust.types.EventT[Any], int]]) -> None:
        """Forget a batch whose events were acked; wakes the reader."""
        async with self._changed:
            self.bytes -= sum(size for _, size in batch)
            self.events -= len(batch)
            self._changed.notify_all()

    async def close(self, reason: BaseException) -> None:
        """Make ``put`` raise from now on (the batch loop ended)."""
        async with self._changed:
            self._broken = reason
            self._changed.notify_all()


def event_bytes(event: faust.types.EventT[Any]) -> int:
    """Return what a taken event costs the window: its key, value and object overhead."""
    return message_bytes(event.message)


def record_from_event(event: faust.types.EventT[Any]) -> Record:
    """Return a Record from a faust event (raw key and value bytes)."""
    message = event.message
    headers = message.headers
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
        key=message.key,
        value=message.value or b"",
        headers=tuple((str(k), bytes(v or b"")) for k, v in pairs),
    )


def build_worker_app(
    *,
    catalogue: Catalogue,
    group: ConsumerGroup,
    stages: Mapping[str, Stage],
    kafka: KafkaClients,
    batch: BatchConfig = BatchConfig(),
    session_timeout: float = 30.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    serde: Serde | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    stalls: StallTracker | None = None,
    topic_batches: Mapping[str, BatchConfig] | None = None,
) -> faust.App:
    """Return a faust App running ``stages`` (by source topic) for ``group``, with its relay.

    ``topic_batches`` overrides ``batch`` for some source topics (the backfill lane takes
    smaller batches than live traffic).

    ``serde`` encodes the job states, as the stages' own serde encodes their events (default:
    single-object encoding). ``buffer_bytes`` bounds the consumed records the worker holds
    (see ``plan_buffers``); a budget too small for the sources raises ``ValueError``.
    ``stalls``, if given, learns when each source partition's records start waiting and when
    they are acked (the worker's liveness).
    """
    plan = plan_buffers(buffer_bytes, [catalogue.topic(name) for name in stages])
    log.info(
        "worker buffers group=%s budget=%s largest_record=%s partitions=%s agents=%s "
        "fetch_bytes=%s poll_records=%s buffer_events=%s window_bytes=%s",
        group.group_id,
        plan.budget_bytes,
        plan.largest_record,
        plan.partitions,
        plan.agents,
        plan.fetch_bytes,
        plan.poll_records,
        plan.buffer_events,
        plan.window_bytes,
    )
    app = create_app(
        group.group_id,
        kafka=kafka,
        session_timeout=session_timeout,
        fetch_bytes=plan.fetch_bytes,
        poll_records=plan.poll_records,
        buffer_events=plan.buffer_events,
    )
    publisher = KafkaPublisher(kafka, client_id=group.group_id)
    runners = {
        topic: StageRunner(
            stage,
            group,
            job_topic=catalogue.job_state_changed.name,
            publisher=publisher,
            serde=serde,
        )
        for topic, stage in stages.items()
    }
    gates: list[ByteGate] = []
    trim = IdleTrim(gates)
    for topic_name, runner in runners.items():
        topic_batch = (topic_batches or {}).get(topic_name, batch)
        gates.append(
            _add_agent(app, topic_name, runner, topic_batch, plan.window_bytes, stalls, trim)
        )
    relay = RetryRelay(
        kafka=kafka,
        group_id=group.retry_group_id,
        tier_topics=[tier.topic for tier in group.retry_tiers],
        runners=runners,
        session_timeout=session_timeout,
    )
    stopping = asyncio.Event()
    relay_done = asyncio.Event()

    @app.service
    class Extras(Service):
        """Runs the retry relay beside the agents; flushes the publisher on shutdown."""

        @Service.task
        async def _relay(self) -> None:
            try:
                await relay.run(stopping)
            finally:
                relay_done.set()

        @Service.task
        async def _warm(self) -> None:
            # The producer connects, and stages that compute in worker processes start them,
            # now rather than when the first batch arrives: a spawned worker imports for half a
            # second, a producer asks the broker for an id.
            try:
                await publisher.start()
            except Exception:  # the first send starts it, or fails and retries
                log.warning("starting the producer failed group=%s", group.group_id, exc_info=True)
            for stage in stages.values():
                warm = getattr(stage, "warm", None)
                if warm is None:
                    continue
                try:
                    await warm()
                except Exception:  # the first batch starts them, or fails and retries
                    log.warning("warming up failed group=%s", group.group_id, exc_info=True)

        @Service.timer(TRIM_SECONDS)
        async def _release_memory(self) -> None:
            await trim.maybe_release()

        @Service.timer(TICK_SECONDS)
        async def _tick(self) -> None:
            # Periodic work of stages that have some (insight emission after a burst).
            for stage in stages.values():
                if stopping.is_set():
                    return
                tick = getattr(stage, "tick", None)
                if tick is None:
                    continue
                try:
                    await tick(publisher.publish)
                except Exception:  # nothing was marked done: the next tick tries again
                    log.exception("periodic tick failed group=%s", group.group_id)

        async def on_stop(self) -> None:
            # The relay may be mid-batch: let it finish and leave before the publisher and the
            # clients it uses go away.
            stopping.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(relay_done.wait(), timeout=RELAY_STOP_SECONDS)
            await publisher.stop()
            if on_stop is not None:
                await on_stop()

    return app


def _add_agent(
    app: faust.App,
    topic_name: str,
    runner: StageRunner,
    batch: BatchConfig,
    window_bytes: int,
    stalls: StallTracker | None,
    trim: IdleTrim,
) -> ByteGate:
    ahead = batch.window_batches or WINDOW_EVENTS_PER_BATCH
    labels = (runner.group.group_id, runner.stage.name)
    metrics = runner.metrics
    gate = ByteGate(
        window_bytes,
        held_gauge=metrics.held_bytes.labels(*labels),
        peak_gauge=metrics.held_bytes_peak.labels(*labels),
        waits=metrics.delivery_waits.labels(*labels),
    )
    topic = GatedTopic(
        app, topics=[topic_name], key_serializer="raw", value_serializer="raw", gate=gate
    )

    async def agent(stream: faust.StreamT[bytes]) -> None:
        # Manual acks (noack): an event is acked only after its batch's results are
        # acknowledged by Kafka. The agent reads events into a window bounded in bytes and a
        # task cuts batches from it, so a batch is `batch.size` small records or as many large
        # ones as the budget allows, where faust's take() could only count them.
        manual = cast(faust.Stream[bytes], stream).noack()
        window = TakenWindow(window_bytes, max_events=ahead * batch.size)
        queue = cast(faust.ChannelT[bytes], stream.channel).queue
        gate.attach(window, queue)
        batches = asyncio.create_task(
            _run_batches(window, manual, runner, batch, stalls, gate, trim.worked)
        )

        def forget(event: faust.types.EventT[Any]) -> None:
            gate.read(event_bytes(event))  # a dropped event left faust's buffer: uncounted

        try:
            # Not faust's stream iterator: it acks the events a rebalance makes it skip.
            async for event in channel_events(queue, app, on_drop=forget):
                if stalls is not None:  # waiting from now: in faust's hands, then the window
                    stalls.arrived(event.message.topic, event.message.partition)
                size = event_bytes(event)
                gate.reading(size)
                await window.put(event, size)
                gate.read(size)
        finally:
            batches.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batches

    app.agent(topic, name=f"{runner.group.agent}.{runner.stage.name}", concurrency=1)(agent)
    return gate


async def _run_batches(
    window: TakenWindow,
    stream: faust.StreamT[bytes],
    runner: StageRunner,
    batch: BatchConfig,
    stalls: StallTracker | None,
    gate: ByteGate,
    on_batch: Callable[[], None],
) -> None:
    """Run batches from the window, up to ``batch.in_flight`` at once; ack each in order once
    its results are safe."""
    at_work: deque[tuple[list[tuple[faust.types.EventT[Any], int]], asyncio.Task[None]]] = deque()
    taking: asyncio.Task[list[tuple[faust.types.EventT[Any], int]]] | None = None
    try:
        while True:
            if taking is None and len(at_work) < batch.in_flight:
                taking = asyncio.create_task(window.take(batch.size, batch.within))
            oldest = at_work[0][1] if at_work else None
            await asyncio.wait(
                [task for task in (taking, oldest) if task is not None],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if oldest is not None and oldest.done():
                taken, done = at_work.popleft()
                done.result()  # run_until_done only ends by cancellation
                await _ack(taken, window, stream, stalls, gate)
                on_batch()
            elif taking is not None and taking.done():
                taken, taking = taking.result(), None
                records = [record_from_event(event) for event, _ in taken]
                after = at_work[-1][1] if at_work else None  # publishes once that one is done
                at_work.append(
                    (taken, asyncio.create_task(runner.run_until_done(records, after=after)))
                )
    except BaseException as exc:
        # The batches at work end before the agent does (its publisher stops after it).
        left = [task for task in (taking, *(task for _, task in at_work)) if task is not None]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        await window.close(exc)
        raise


async def _ack(
    taken: list[tuple[faust.types.EventT[Any], int]],
    window: TakenWindow,
    stream: faust.StreamT[bytes],
    stalls: StallTracker | None,
    gate: ByteGate,
) -> None:
    for event, _ in taken:
        await stream.ack(event)
        if stalls is not None:
            stalls.progressed(event.message.topic, event.message.partition, 1)
    await window.release(taken)
    gate.changed()
