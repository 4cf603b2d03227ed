"""Dead-letter records as operators see them, and reading a dead-letter topic.

``DeadLetter`` is one DLQ record with its context headers (original topic, partition and offset,
attempts, error class, exception) decoded; ``dead_letter_from`` builds it from an aiokafka
record. ``scan`` reads partitions from given positions up to given end offsets, in batches, and
``read_dlq`` backs ``inboxflow dlq show``. Reads only: it must not commit offsets, produce
records, or know what a redrive already sent (``ops.dlq.progress`` does).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ops.offsets import OPERATOR_CLIENT_ID, topic_partitions
from schemas import headers as h
from schemas.errors import TransientError
from topics.kafka import KafkaClients

_POLL_MS = 500
_STALL_SECONDS = 30.0


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter record with its context headers decoded."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value_size: int
    headers: tuple[tuple[str, bytes], ...]

    def _text(self, name: str) -> str | None:
        return h.header_value(self.headers, name)

    def _int(self, name: str) -> int | None:
        return h.header_int(self.headers, name)

    @property
    def original_topic(self) -> str | None:
        """Return the topic the record was first consumed from."""
        return self._text(h.ORIGINAL_TOPIC)

    @property
    def original_partition(self) -> int | None:
        """Return the partition the record was first consumed from."""
        return self._int(h.ORIGINAL_PARTITION)

    @property
    def original_offset(self) -> int | None:
        """Return the offset the record had on its original topic."""
        return self._int(h.ORIGINAL_OFFSET)

    @property
    def attempts(self) -> int:
        """Return the attempts made before it was dead-lettered (0 when unknown)."""
        return self._int(h.ATTEMPTS) or 0

    @property
    def error_class(self) -> str:
        """Return the RetryClass value of the last failure, ``unknown`` when absent."""
        return self._text(h.ERROR_CLASS) or "unknown"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (the value itself is left out: only its size)."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "value_size": self.value_size,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_timestamp_ms": self._int(h.ORIGINAL_TIMESTAMP),
            "original_consumer_group": self._text(h.ORIGINAL_CONSUMER_GROUP),
            "first_failure_ms": self._int(h.FIRST_FAILURE_TIMESTAMP),
            "attempts": self.attempts,
            "error_class": self.error_class,
            "exception_class": self._text(h.EXCEPTION_CLASS),
            "exception_message": self._text(h.EXCEPTION_MESSAGE),
            "stage": self._text(h.STAGE),
            "handler": self._text(h.HANDLER),
            "replay_id": self._text(h.REPLAY_ID),
        }


def dead_letter_from(message: Any) -> DeadLetter:
    """Return the DeadLetter view of an aiokafka ConsumerRecord."""
    value: bytes | None = message.value
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp,
        key=message.key,
        value_size=len(value) if value is not None else 0,
        headers=tuple(message.headers or ()),
    )


async def scan(
    consumer: AIOKafkaConsumer,
    positions: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
) -> AsyncIterator[list[Any]]:
    """Yield batches of records from ``positions`` up to (not including) ``ends``."""
    remaining = {tp for tp in positions if positions[tp] < ends[tp]}
    if not remaining:
        return
    consumer.assign(list(positions))
    for tp in remaining:
        consumer.seek(tp, positions[tp])
    last_progress = time.monotonic()
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=_POLL_MS)
        records = [m for tp, messages in batches.items() for m in messages if m.offset < ends[tp]]
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        if records:
            last_progress = time.monotonic()
            yield records
        elif time.monotonic() - last_progress > _STALL_SECONDS:
            raise TransientError(f"no records read for {_STALL_SECONDS:g} s from {remaining}")


async def read_dlq(
    kafka: KafkaClients,
    topic: str,
    *,
    limit: int,
    partition: int | None = None,
    offset: int | None = None,
) -> list[DeadLetter]:
    """Return up to ``limit`` records of a dead-letter topic, oldest timestamp first. Reads only.

    Args:
        kafka: the cluster and its security (``inboxflow.wiring.kafka_from``).
        topic: the dead-letter topic (``ConsumerGroup.dlq.name``).
        limit: most records returned.
        partition: only this partition.
        offset: start here (needs ``partition``); default the earliest retained record.

    Raises:
        TopicNotFoundError: no such topic.
        ValueError: ``offset`` without ``partition``, or ``limit`` < 1.
    """
    if offset is not None and partition is None:
        raise ValueError("offset needs a partition")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    kafka = kafka.with_client_id(OPERATOR_CLIENT_ID)
    async with (
        kafka.started(kafka.consumer()) as consumer,
        kafka.started(kafka.admin()) as admin,
    ):
        partitions = [
            tp
            for tp in await topic_partitions(admin, [topic])
            if partition is None or tp.partition == partition
        ]
        if not partitions:
            raise ValueError(f"{topic} has no partition {partition}")
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        positions = {tp: max(starts[tp], offset or 0) for tp in partitions}
        # At most `limit` from each partition: offsets of a DLQ are contiguous (not compacted,
        # not transactional), so position + limit bounds the read.
        stops = {tp: min(ends[tp], positions[tp] + limit) for tp in partitions}
        letters = [
            dead_letter_from(m) async for batch in scan(consumer, positions, stops) for m in batch
        ]
    letters.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return letters[:limit]
