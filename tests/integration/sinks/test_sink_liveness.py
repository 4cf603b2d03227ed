"""A sink tells its stall tracker what waits and what committed; readiness sees it join."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from sinks.base import Connection, Decoded, PostgresSink
from sinks.job_state import JobStateWriter
from sinks.metrics import SinkMetrics
from streams.runtime.liveness import StallTracker
from tests.helpers import async_wait_until
from tests.integration.sink_support import (
    create_topic,
    job_events,
    produce_events,
    sink_config,
    stored_offsets,
)


class HeldWriter(JobStateWriter):
    """Writes only once released: a sink stuck inside its transaction."""

    def __init__(self) -> None:
        super().__init__("copy")
        self.release = asyncio.Event()

    async def write(self, conn: Connection, rows: Sequence[Decoded[Any]]) -> None:
        await self.release.wait()
        await super().write(conn, rows)


async def test_waiting_records_age_until_their_commit(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    ends = await produce_events(kafka_bootstrap, topic, job_events(jobs=5, versions=1))
    config = sink_config(kafka_bootstrap, database_url, unique_name)
    tracker = StallTracker(config.group_id, bound=0.2)
    writer = HeldWriter()
    metrics = SinkMetrics("test", registry=CollectorRegistry())
    sink = PostgresSink(config, {topic: writer}, metrics, progress=tracker)
    assert not sink.joined
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        # The batch is buffered and its write hangs: the partition stalls past the bound.
        stalls = await async_wait_until(
            tracker.stalled, timeout=60, message="the held partition stalls"
        )
        assert sink.joined
        assert [(s.topic, s.partition, s.waiting) for s in stalls] == [(topic, 0, ends[0])]
        writer.release.set()
        await async_wait_until(
            lambda: stored_offsets(database_url, config.group_id) == ends,
            timeout=60,
            message="the batch commits",
        )
        await async_wait_until(lambda: not tracker.ages(), timeout=10, message="idle again")
        assert tracker.stalled() == []
        assert tracker.exported_ages() == {(topic, 0): 0.0}
        assert sink.assigned
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
