"""Consumer-group lag: how many records lie between a group's committed offsets and the ends.

Backs ``inboxflow lag``: for every partition of the given topics it reads the log start and end
and the group's committed offset, and counts a group that never committed from the log start.
It only reads: it must not commit offsets, move a group or produce records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from ops.offsets import OPERATOR_CLIENT_ID, committed_offsets, topic_partitions
from topics.kafka import KafkaClients


@dataclass(frozen=True)
class PartitionLag:
    """Lag of one partition: records between the group's committed offset and the end."""

    committed: int | None  # None: the group never committed here
    start: int
    end: int

    @property
    def lag(self) -> int:
        """Return records still to consume; from the log start when nothing was committed."""
        position = self.start if self.committed is None else max(self.committed, self.start)
        return max(0, self.end - position)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {"committed": self.committed, "start": self.start, "end": self.end, "lag": self.lag}


async def group_lag(
    kafka: KafkaClients, group_id: str, topics: Sequence[str]
) -> dict[TopicPartition, PartitionLag]:
    """Return the group's lag on every partition of ``topics``. Reads only.

    Args:
        kafka: the cluster and its security (``inboxflow.wiring.kafka_from``).
        group_id: the consumer group (e.g. ``inboxflow-normalize``).
        topics: the topics it consumes (``ConsumerGroup.sources``, or its retry tiers).

    Raises:
        TransientError: Kafka unreachable.
        TopicNotFoundError: a topic does not exist.
    """
    kafka = kafka.with_client_id(OPERATOR_CLIENT_ID)
    async with (
        kafka.started(kafka.consumer()) as consumer,
        kafka.started(kafka.admin()) as admin,
    ):
        partitions = await topic_partitions(admin, topics)
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        committed = await committed_offsets(admin, group_id, partitions)
    return {
        tp: PartitionLag(
            committed=committed[tp][0] if tp in committed else None, start=starts[tp], end=ends[tp]
        )
        for tp in partitions
    }


def total_lag(lags: dict[TopicPartition, PartitionLag]) -> int:
    """Return the sum of a ``group_lag`` result. Pure."""
    return sum(lag.lag for lag in lags.values())
