"""Purge: mark everything now in a group's dead-letter topic handled, so no redrive sends it.

Commits the redrive group (``ops.dlq.progress``) to the DLQ's current end offsets; records
dead-lettered afterwards stay pending. The records themselves stay readable until the DLQ's
90-day retention, for audit, unless ``delete=True`` also removes them with the DeleteRecords
admin API (irreversible). Dry run by default. This module must not produce records: sending dead
letters back is ``ops.dlq.redrive``'s job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.errors import KafkaError

from ops.dlq.progress import RedriveProgress, load_progress, redrive_group_id
from ops.offsets import OPERATOR_CLIENT_ID, commit_offsets, topic_partitions
from schemas.errors import PermanentError
from topics.catalogue import ConsumerGroup
from topics.kafka import KafkaClients

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    """What a purge marked handled (and deleted), or would, per partition."""

    group_id: str
    dlq_topic: str
    dry_run: bool
    deleted: bool
    purged: dict[int, int]  # partition -> records that were pending
    up_to: dict[int, int]  # partition -> end offset the redrive group now points at

    @property
    def total(self) -> int:
        """Return the pending records purged across partitions."""
        return sum(self.purged.values())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "group_id": self.group_id,
            "dlq_topic": self.dlq_topic,
            "dry_run": self.dry_run,
            "deleted": self.deleted,
            "total": self.total,
            "purged": {str(p): n for p, n in sorted(self.purged.items())},
            "up_to": {str(p): n for p, n in sorted(self.up_to.items())},
        }


async def purge(
    kafka: KafkaClients, group: ConsumerGroup, *, dry_run: bool = True, delete: bool = False
) -> PurgeReport:
    """Mark everything now in ``group``'s DLQ handled, so no redrive sends it.

    Commits the redrive group to the current end offsets; records dead-lettered afterwards stay
    pending. The records themselves stay in Kafka until the DLQ's retention (90 days) unless
    ``delete`` is set, which also removes them with DeleteRecords (irreversible).

    Raises:
        TopicNotFoundError: the DLQ does not exist.
        TransientError: Kafka unreachable.
        OffsetCommitError: the broker refused the commit.
    """
    kafka = kafka.with_client_id(OPERATOR_CLIENT_ID)
    async with (
        kafka.started(kafka.consumer(group_id=redrive_group_id(group))) as consumer,
        kafka.started(kafka.admin()) as admin,
    ):
        partitions = await topic_partitions(admin, [group.dlq.name])
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        progress = await load_progress(admin, redrive_group_id(group), partitions, starts)
        purged = {tp.partition: _pending(progress[tp], ends[tp]) for tp in partitions}
        if not dry_run:
            await commit_offsets(
                consumer, redrive_group_id(group), {tp: (ends[tp], "") for tp in partitions}
            )
            if delete:
                await _delete_records(admin, ends)
    report = PurgeReport(
        group.group_id,
        group.dlq.name,
        dry_run,
        delete and not dry_run,
        purged,
        {tp.partition: ends[tp] for tp in partitions},
    )
    logger.info(
        "purge %s group=%s dlq=%s records=%s deleted=%s",
        "planned" if dry_run else "done",
        group.group_id,
        group.dlq.name,
        report.total,
        report.deleted,
    )
    return report


def _pending(progress: RedriveProgress, end: int) -> int:
    return max(0, end - progress.base) - sum(1 for o in progress.done if o < end)


async def _delete_records(admin: AIOKafkaAdminClient, ends: dict[TopicPartition, int]) -> None:
    try:
        await admin.delete_records({tp: RecordsToDelete(end) for tp, end in ends.items()})
    except KafkaError as exc:
        raise PermanentError(f"DeleteRecords refused: {exc}") from exc
