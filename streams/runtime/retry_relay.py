"""Consume a group's retry tiers and run each record again once it is due.

A record is never processed before its due time, and the poll loop never sleeps on one: a
partition whose next record is not due is paused, its position set back to that record, and
resumed when the time comes, while the other partitions and tiers go on. Offsets are committed
only after the runner has published everything that followed from a record.

aiokafka rather than faust here: faust has no way to put a record back and pause its partition
until a given time, and sleeping inside an agent would stall rebalances (``stream_wait_empty``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from schemas import headers as h
from streams.runtime.runner import StageRunner
from streams.runtime.stage import Record
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

_MAX_POLL_MS = 500


def record_from_kafka(message: object) -> Record:
    """Return a Record from an aiokafka ConsumerRecord."""
    return Record(
        topic=message.topic,  # type: ignore[attr-defined]
        partition=message.partition,  # type: ignore[attr-defined]
        offset=message.offset,  # type: ignore[attr-defined]
        timestamp_ms=message.timestamp,  # type: ignore[attr-defined]
        key=message.key,  # type: ignore[attr-defined]
        value=message.value or b"",  # type: ignore[attr-defined]
        headers=tuple(message.headers or ()),  # type: ignore[attr-defined]
    )


def due_at(record: Record) -> float:
    """Return when a retried record may run (epoch seconds); 0 when it has no due header."""
    millis = h.header_int(record.headers, h.DUE_TIMESTAMP)
    return millis / 1000 if millis is not None else 0.0


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, resume_at: dict[TopicPartition, float]) -> None:
        self._resume_at = resume_at

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        for tp in revoked:
            self._resume_at.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        return None


class RetryRelay:
    """Runs due records of a group's retry tiers through the runner of their source topic."""

    def __init__(
        self,
        *,
        kafka: KafkaClients,
        group_id: str,
        tier_topics: Sequence[str],
        runners: Mapping[str, StageRunner],
        clock: Callable[[], float] = time.time,
        session_timeout: float = 30.0,
    ) -> None:
        """Create a relay.

        Args:
            kafka: builds the relay's consumer.
            group_id: consumer group of the relay (the stage's group plus ``-retry``).
            tier_topics: the group's retry tier topics.
            runners: runner per source topic, chosen by a record's ``x-original-topic``.
            clock: epoch seconds, for tests.
            session_timeout: seconds before a crashed relay's partitions move.
        """
        self.session_timeout = session_timeout
        self.group_id = group_id
        self.tier_topics = list(tier_topics)
        self.runners = dict(runners)
        self.clock = clock
        self.kafka = kafka
        self._resume_at: dict[TopicPartition, float] = {}
        self._consumer: AIOKafkaConsumer

    def _new_consumer(self) -> AIOKafkaConsumer:
        # Created inside the running loop: aiokafka binds to it.
        return self.kafka.consumer(
            group_id=self.group_id,
            max_poll_records=200,
            session_timeout_ms=int(self.session_timeout * 1000),
            # Longer than any stage's timeout, so a slow batch never costs the group membership.
            max_poll_interval_ms=3_600_000,
            heartbeat_interval_ms=int(min(3.0, self.session_timeout / 3) * 1000),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set."""
        if not self.tier_topics:
            await stop.wait()
            return
        self._consumer = self._new_consumer()
        await self._consumer.start()
        self._consumer.subscribe(self.tier_topics, listener=_ForgetRevoked(self._resume_at))
        try:
            while not stop.is_set():
                await self._step()
        finally:
            await self._consumer.stop()

    async def _step(self) -> None:
        self._resume_due()
        batch = await self._consumer.getmany(timeout_ms=self._poll_ms(), max_records=200)
        due: list[Record] = []
        commits: dict[TopicPartition, int] = {}
        now = self.clock()
        for tp, messages in batch.items():
            for message in messages:
                record = record_from_kafka(message)
                when = due_at(record)
                if when > now:
                    self._hold(tp, record.offset, when)
                    break
                due.append(record)
                commits[tp] = record.offset + 1
        if due:
            await self._run(due)
            await self._commit(commits)

    def _hold(self, tp: TopicPartition, offset: int, when: float) -> None:
        self._consumer.pause(tp)
        self._consumer.seek(tp, offset)
        self._resume_at[tp] = when

    def _resume_due(self) -> None:
        now = self.clock()
        for tp, when in list(self._resume_at.items()):
            if when <= now:
                del self._resume_at[tp]
                if tp in self._consumer.assignment():
                    self._consumer.resume(tp)

    def _poll_ms(self) -> int:
        if not self._resume_at:
            return _MAX_POLL_MS
        wait = min(self._resume_at.values()) - self.clock()
        return max(1, min(_MAX_POLL_MS, int(wait * 1000)))

    async def _run(self, records: list[Record]) -> None:
        by_source: dict[str, list[Record]] = {}
        for record in records:
            source = h.header_value(record.headers, h.ORIGINAL_TOPIC) or ""
            by_source.setdefault(source, []).append(record)
        for source, group in by_source.items():
            runner = self.runners.get(source) or next(iter(self.runners.values()))
            await runner.run_until_done(group)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Lost the partitions in a rebalance: the new owner re-runs these records, which
            # every stage tolerates (idempotent outputs, version-guarded job rows).
            log.warning("retry commit failed group=%s: %s", self.group_id, exc)
