"""Low-level consumer-group offset helpers shared by ``ops.replay``, ``ops.lag`` and ``ops.dlq``.

Finds a topic's partitions, reads a group's committed offsets and state (retrying while the group
coordinator is briefly unavailable), and commits offsets for a group from outside it: aiokafka's
admin client cannot alter group offsets, so the commit comes from a consumer that joins no group
(manual assignment, generation -1), which the broker refuses while the group has members. Every
operator tool takes a ``KafkaClients`` (the cluster and its security, from ``inboxflow.wiring``)
and names its clients ``OPERATOR_CLIENT_ID``.
This module must not produce records, decide which group may be moved (``ops.replay`` does), nor
import the other ``ops`` modules: they import it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

T = TypeVar("T")
_RETRY_SECONDS = 30.0

OPERATOR_CLIENT_ID = "inboxflow-operator"
"""Client id of the consumers and admin clients the operator tools make."""

_GROUP_ID_NOT_FOUND = 69  # DescribeGroups v6+: the group does not exist, i.e. inactive


class TopicNotFoundError(PermanentError):
    """A topic is missing from the cluster; run `inboxflow topics apply` or check the name."""


class OffsetCommitError(PermanentError):
    """The broker refused to commit offsets for the group."""


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
