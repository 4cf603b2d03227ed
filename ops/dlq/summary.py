"""Summaries of the dead-letter topics: what each group's DLQ holds and what is still pending.

``list_dlqs`` backs ``inboxflow dlq list``: for every group of the catalogue, in pipeline order,
it counts the records in its DLQ and, reading the pending ones (the error class is in their
headers), how many are pending per error class and their oldest and newest timestamps. Reads
only: it must not commit offsets or produce records.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.dlq.letters import dead_letter_from, scan
from ops.dlq.progress import load_progress, redrive_group_id
from ops.offsets import OPERATOR_CLIENT_ID, existing_partitions, topic_partitions
from topics.catalogue import Catalogue, ConsumerGroup
from topics.kafka import KafkaClients


@dataclass(frozen=True)
class DlqSummary:
    """What one group's dead-letter topic holds."""

    agent: str
    group_id: str
    topic: str
    exists: bool
    records: int  # still in the topic (end - start offsets), handled or not
    pending: int  # not yet redriven or purged
    by_error_class: dict[str, int]  # of the pending records
    oldest_ms: int | None  # timestamps of the pending records
    newest_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "agent": self.agent,
            "group_id": self.group_id,
            "topic": self.topic,
            "exists": self.exists,
            "records": self.records,
            "pending": self.pending,
            "by_error_class": dict(sorted(self.by_error_class.items())),
            "oldest_ms": self.oldest_ms,
            "newest_ms": self.newest_ms,
        }


async def list_dlqs(kafka: KafkaClients, catalogue: Catalogue) -> list[DlqSummary]:
    """Return a summary of every group's dead-letter topic, in pipeline order. Reads only.

    Reads every pending record (headers are where the error class is), so it costs one pass over
    what operators have not handled yet.

    Raises:
        TransientError: Kafka unreachable.
    """
    kafka = kafka.with_client_id(OPERATOR_CLIENT_ID)
    async with (
        kafka.started(kafka.consumer()) as consumer,
        kafka.started(kafka.admin()) as admin,
    ):
        existing = await existing_partitions(admin)
        return [
            await _summarize(consumer, admin, group, group.dlq.name in existing)
            for group in catalogue.groups
        ]


async def _summarize(
    consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, group: ConsumerGroup, exists: bool
) -> DlqSummary:
    topic = group.dlq.name
    if not exists:
        return DlqSummary(group.agent, group.group_id, topic, False, 0, 0, {}, None, None)
    partitions = await topic_partitions(admin, [topic])
    starts = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    progress = await load_progress(admin, redrive_group_id(group), partitions, starts)
    classes: Counter[str] = Counter()
    stamps: list[int] = []
    positions = {tp: progress[tp].base for tp in partitions}
    async for batch in scan(consumer, positions, ends):
        for message in batch:
            tp = TopicPartition(message.topic, message.partition)
            if not progress[tp].handled(message.offset):
                classes[dead_letter_from(message).error_class] += 1
                stamps.append(message.timestamp)
    return DlqSummary(
        agent=group.agent,
        group_id=group.group_id,
        topic=topic,
        exists=True,
        records=sum(ends[tp] - starts[tp] for tp in partitions),
        pending=sum(classes.values()),
        by_error_class=dict(classes),
        oldest_ms=min(stamps, default=None),
        newest_ms=max(stamps, default=None),
    )
