"""One consumer group as a running faust worker: its agents, its retry relay, its publisher.

Each agent reads raw bytes with ``concurrency=1`` and acks a batch only after the runner has
published everything that followed from it, so a crash re-delivers instead of losing work
(faust acks on exceptions and commits past in-flight events with concurrency > 1: bugs #606,
#315, see ``docs/faust.md``). The retry tiers are relayed in the same
process, so per-user limits (Gmail quota) live with whoever owns the user's partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import faust
from mode import Service

from schemas.serde import Serde
from streams.runtime.app import create_app
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.retry_relay import RetryRelay
from streams.runtime.runner import StageRunner
from streams.runtime.stage import Record, Stage
from topics.catalogue import Catalogue, ConsumerGroup
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
RELAY_STOP_SECONDS = 60.0


@dataclass(frozen=True)
class BatchConfig:
    """How many records an agent takes at once, and how long it waits to fill a batch."""

    size: int = 100
    within: float = 0.2


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
) -> faust.App:
    """Return a faust App running ``stages`` (by source topic) for ``group``, with its relay.

    ``serde`` encodes the job states, as the stages' own serde encodes their events (default:
    single-object encoding).
    """
    app = create_app(group.group_id, kafka=kafka, session_timeout=session_timeout)
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
    for topic_name, runner in runners.items():
        _add_agent(app, topic_name, runner, batch)
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


def _add_agent(app: faust.App, topic_name: str, runner: StageRunner, batch: BatchConfig) -> None:
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")

    async def agent(stream: faust.StreamT[bytes]) -> None:
        # Manual acks: a batch is acked only after its results are acknowledged by Kafka.
        taking = cast(faust.Stream[bytes], stream).noack_take(batch.size, within=batch.within)
        async for batch_values in taking:
            # noack_take yields the events themselves (typed as values upstream).
            events = cast(list[faust.types.EventT[Any]], batch_values)
            await runner.run_until_done([record_from_event(event) for event in events])
            for event in events:
                await stream.ack(event)

    app.agent(topic, name=f"{runner.group.agent}.{runner.stage.name}", concurrency=1)(agent)
