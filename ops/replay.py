"""Replay (backfill) by moving a consumer group's committed offsets.

A replay never calls Gmail and never copies records: it sets an *inactive* group's committed
offsets back to the earliest retained offset, or to the first record at or after a timestamp,
so the agent reprocesses from there when it is restarted (``kafka-consumer-groups
--reset-offsets`` semantics: dry run by default, the group must be ``Empty`` or ``Dead``, a
partition with no record at or after the timestamp goes to its end). Stages are idempotent and
job rows version-guarded, so reprocessing rewrites the same results.

aiokafka's admin client cannot alter group offsets, so the reset commits them from a consumer
that joins no group (``ops.offsets.commit_offsets``); the broker refuses such a commit while
the group has members, which backs up the ``describe_groups`` check.

Lag is measured by ``ops.lag``; the offset helpers live in ``ops.offsets``. Must not produce
records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.offsets import (
    OPERATOR_CLIENT_ID,
    commit_offsets,
    committed_offsets,
    group_state,
    topic_partitions,
)
from schemas.errors import PermanentError
from topics.kafka import KafkaClients

logger = logging.getLogger(__name__)

INACTIVE_STATES = frozenset({"Empty", "Dead"})
"""Group states in which offsets may be moved (Kafka's own reset tool accepts only these)."""


class GroupActiveError(PermanentError):
    """The consumer group has running members; stop them before moving its offsets."""


@dataclass(frozen=True)
class OffsetMove:
    """One partition of a replay: where the group was and where it is (or would be) set."""

    topic: str
    partition: int
    current: int | None
    target: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "current": self.current,
            "target": self.target,
        }


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay did, or would do when ``executed`` is False."""

    group_id: str
    group_state: str
    moves: tuple[OffsetMove, ...]
    executed: bool

    @property
    def records_to_reprocess(self) -> int:
        """Return how many records the group will consume again (ahead of its old position)."""
        return sum(
            max(0, move.current - move.target) for move in self.moves if move.current is not None
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "group_id": self.group_id,
            "group_state": self.group_state,
            "executed": self.executed,
            "records_to_reprocess": self.records_to_reprocess,
            "moves": [move.to_dict() for move in self.moves],
        }


# --- replay -----------------------------------------------------------------------------------


async def ensure_inactive(admin: AIOKafkaAdminClient, group_id: str) -> str:
    """Return the group's state; GroupActiveError unless it is ``Empty`` or ``Dead``."""
    state, members = await group_state(admin, group_id)
    if state not in INACTIVE_STATES:
        raise GroupActiveError(
            f"consumer group {group_id} is {state} with {members} member(s). Operator action: "
            "stop every worker of this group (and wait for the session timeout), then retry"
        )
    return state


async def replay(
    kafka: KafkaClients,
    *,
    group_id: str,
    topics: Sequence[str],
    from_timestamp: datetime | None = None,
    to_earliest: bool = True,
    dry_run: bool = True,
) -> ReplayPlan:
    """Move an inactive group's committed offsets back so it reprocesses when restarted.

    Idempotent: running it twice sets the same offsets (unless retention removed records).

    Args:
        kafka: the cluster and its security (``inboxflow.wiring.kafka_from``).
        group_id: the consumer group to rewind (must have no running members).
        topics: the topics whose offsets move (usually the group's sources).
        from_timestamp: timezone-aware time; each partition goes to its first record with a
            timestamp at or after it, or to its end when there is none. Takes precedence.
        to_earliest: without ``from_timestamp``, go to the earliest retained offset.
        dry_run: compute and return the plan without committing (default).

    Raises:
        GroupActiveError: the group has members.
        TopicNotFoundError: a topic does not exist (``ops.offsets``).
        OffsetCommitError: the broker refused the commit (``ops.offsets``).
        TransientError: Kafka unreachable.
        ValueError: neither a timestamp nor ``to_earliest``, or a naive timestamp.
    """
    if from_timestamp is None and not to_earliest:
        raise ValueError("give from_timestamp or to_earliest=True")
    if from_timestamp is not None and from_timestamp.tzinfo is None:
        raise ValueError("from_timestamp must be timezone-aware")
    kafka = kafka.with_client_id(OPERATOR_CLIENT_ID)
    async with (
        # Joins no group: it only commits for ``group_id`` from outside (manual assignment).
        kafka.started(kafka.consumer(group_id=group_id)) as consumer,
        kafka.started(kafka.admin()) as admin,
    ):
        state = await ensure_inactive(admin, group_id)
        partitions = await topic_partitions(admin, topics)
        targets = await _targets(consumer, partitions, from_timestamp)
        current = await committed_offsets(admin, group_id, partitions)
        moves = tuple(
            OffsetMove(
                tp.topic,
                tp.partition,
                current[tp][0] if tp in current else None,
                targets[tp],
            )
            for tp in partitions
        )
        if not dry_run:
            await ensure_inactive(admin, group_id)  # narrow the window a worker could start in
            await commit_offsets(
                consumer, group_id, {tp: (targets[tp], "inboxflow-replay") for tp in targets}
            )
    for move in moves:
        logger.info(
            "replay %s group=%s topic=%s partition=%s from=%s to=%s",
            "done" if not dry_run else "planned",
            group_id,
            move.topic,
            move.partition,
            move.current,
            move.target,
        )
    return ReplayPlan(group_id, state, moves, executed=not dry_run)


async def _targets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], when: datetime | None
) -> dict[TopicPartition, int]:
    starts: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    if when is None:
        return starts
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    millis = int(when.timestamp() * 1000)
    found = await consumer.offsets_for_times({tp: max(0, millis) for tp in partitions})
    # No record at or after the time: nothing to reprocess there, so the end (as Kafka's tool).
    return {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in partitions}
