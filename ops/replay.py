"""Replay (backfill) by moving a consumer group's committed offsets, and measure a group's lag.

A replay never calls Gmail and never copies records: it sets an *inactive* group's committed
offsets back to the earliest retained offset, or to the first record at or after a timestamp,
so the agent reprocesses from there when it is restarted (``kafka-consumer-groups
--reset-offsets`` semantics: dry run by default, the group must be ``Empty`` or ``Dead``, a
partition with no record at or after the timestamp goes to its end). Stages are idempotent and
job rows version-guarded, so reprocessing rewrites the same results.

aiokafka's admin client cannot alter group offsets, so the reset commits them from a consumer
that joins no group (manual assignment, generation -1); the broker refuses such a commit while
the group has members, which backs up the ``describe_groups`` check.

Also the low-level offset helpers ``ops.dlq`` uses. Must not produce records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from schemas.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

T = TypeVar("T")
_RETRY_SECONDS = 30.0

INACTIVE_STATES = frozenset({"Empty", "Dead"})
"""Group states in which offsets may be moved (Kafka's own reset tool accepts only these)."""

_GROUP_ID_NOT_FOUND = 69  # DescribeGroups v6+: the group does not exist, i.e. inactive


class TopicNotFoundError(PermanentError):
    """A topic is missing from the cluster; run `inboxflow topics apply` or check the name."""


class GroupActiveError(PermanentError):
    """The consumer group has running members; stop them before moving its offsets."""


class OffsetCommitError(PermanentError):
    """The broker refused to commit offsets for the group."""


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


# --- connections ------------------------------------------------------------------------------


@asynccontextmanager
async def kafka_admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """Yield a started admin client; connection failures become ``TransientError``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="inboxflow-operator")
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise TransientError(f"Kafka at {bootstrap} unreachable: {exc}") from exc
    try:
        yield admin
    except KafkaConnectionError as exc:
        raise TransientError(f"lost Kafka at {bootstrap}: {exc}") from exc
    finally:
        await admin.close()


@asynccontextmanager
async def kafka_consumer(bootstrap: str, group_id: str | None) -> AsyncIterator[AIOKafkaConsumer]:
    """Yield a started consumer for manual assignment (it never joins ``group_id``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id="inboxflow-operator",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Dead letters of message-fetched may be 64 MiB; a fetch returns at least one whole batch
        # anyway (KIP-74), this only bounds memory per partition.
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        raise TransientError(f"Kafka at {bootstrap} unreachable: {exc}") from exc
    try:
        yield consumer
    except KafkaConnectionError as exc:
        raise TransientError(f"lost Kafka at {bootstrap}: {exc}") from exc
    finally:
        await consumer.stop()


async def existing_partitions(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Return the partition count of every topic in the cluster."""
    # Metadata of *all* topics: naming topics could auto-create them (auto.create.topics.enable).
    return {
        topic["topic"]: len(topic["partitions"])
        for topic in await admin.describe_topics()
        if not topic["error_code"] and topic["partitions"]
    }


async def topic_partitions(
    admin: AIOKafkaAdminClient, topics: Iterable[str]
) -> list[TopicPartition]:
    """Return every partition of ``topics``, sorted; TopicNotFoundError for a missing one."""
    existing = await existing_partitions(admin)
    found: list[TopicPartition] = []
    for topic in topics:
        if topic not in existing:
            raise TopicNotFoundError(f"topic {topic} does not exist; run `inboxflow topics apply`")
        found += [TopicPartition(topic, p) for p in range(existing[topic])]
    return found


async def _retrying(call: Callable[[], Awaitable[T]], what: str) -> T:
    """Return ``call()``, retried while Kafka answers with a retriable error (for ~30 s).

    A group coordinator is briefly unavailable after a broker start (``__consumer_offsets`` is
    created on first use) and while it moves; the admin client does not retry those itself.
    """
    deadline = time.monotonic() + _RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return await call()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() + delay > deadline:
                raise TransientError(f"{what} failed: {exc}") from exc
            logger.debug("retrying %s after %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def committed_offsets(
    admin: AIOKafkaAdminClient, group_id: str, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, tuple[int, str]]:
    """Return the group's committed (offset, metadata) per partition; absent when never set."""
    if not partitions:
        return {}
    found = await _retrying(
        lambda: admin.list_consumer_group_offsets(group_id, partitions=list(partitions)),
        f"reading offsets of group {group_id}",
    )
    return {
        tp: (meta.offset, meta.metadata or "")
        for tp, meta in found.items()
        if tp in partitions and meta.offset >= 0
    }


async def group_state(admin: AIOKafkaAdminClient, group_id: str) -> tuple[str, int]:
    """Return the group's state (``Empty``, ``Stable``, ``Dead``...) and its member count."""
    responses = await _retrying(
        lambda: admin.describe_consumer_groups([group_id]), f"describing group {group_id}"
    )
    for response in responses:
        for entry in response.groups:
            error_code, name, state, _protocol_type, _protocol, members = entry[:6]
            if name != group_id:
                continue
            if error_code == _GROUP_ID_NOT_FOUND:
                return "Dead", 0
            if error_code:
                raise OffsetCommitError(f"cannot describe group {group_id}: error {error_code}")
            return str(state), len(members)
    return "Dead", 0


async def ensure_inactive(admin: AIOKafkaAdminClient, group_id: str) -> str:
    """Return the group's state; GroupActiveError unless it is ``Empty`` or ``Dead``."""
    state, members = await group_state(admin, group_id)
    if state not in INACTIVE_STATES:
        raise GroupActiveError(
            f"consumer group {group_id} is {state} with {members} member(s). Operator action: "
            "stop every worker of this group (and wait for the session timeout), then retry"
        )
    return state


async def commit_offsets(
    consumer: AIOKafkaConsumer, group_id: str, offsets: dict[TopicPartition, tuple[int, str]]
) -> None:
    """Commit ``offsets`` for ``group_id`` (the consumer's group) from outside it (assignment)."""
    if not offsets:
        return
    if not set(offsets) <= consumer.assignment():
        consumer.assign(list(offsets))
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        raise OffsetCommitError(
            f"commit refused for group {group_id}: {exc}. If the group has members, "
            "stop them and retry"
        ) from exc


# --- lag --------------------------------------------------------------------------------------


async def group_lag(
    bootstrap: str, group_id: str, topics: Sequence[str]
) -> dict[TopicPartition, PartitionLag]:
    """Return the group's lag on every partition of ``topics``. Reads only.

    Args:
        bootstrap: Kafka bootstrap servers.
        group_id: the consumer group (e.g. ``inboxflow-normalize``).
        topics: the topics it consumes (``ConsumerGroup.sources``, or its retry tiers).

    Raises:
        TransientError: Kafka unreachable.
        TopicNotFoundError: a topic does not exist.
    """
    async with kafka_consumer(bootstrap, None) as consumer, kafka_admin(bootstrap) as admin:
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


# --- replay -----------------------------------------------------------------------------------


async def replay(
    bootstrap: str,
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
        bootstrap: Kafka bootstrap servers.
        group_id: the consumer group to rewind (must have no running members).
        topics: the topics whose offsets move (usually the group's sources).
        from_timestamp: timezone-aware time; each partition goes to its first record with a
            timestamp at or after it, or to its end when there is none. Takes precedence.
        to_earliest: without ``from_timestamp``, go to the earliest retained offset.
        dry_run: compute and return the plan without committing (default).

    Raises:
        GroupActiveError: the group has members.
        TopicNotFoundError: a topic does not exist.
        OffsetCommitError: the broker refused the commit.
        ValueError: neither a timestamp nor ``to_earliest``, or a naive timestamp.
    """
    if from_timestamp is None and not to_earliest:
        raise ValueError("give from_timestamp or to_earliest=True")
    if from_timestamp is not None and from_timestamp.tzinfo is None:
        raise ValueError("from_timestamp must be timezone-aware")
    async with kafka_consumer(bootstrap, group_id) as consumer, kafka_admin(bootstrap) as admin:
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
