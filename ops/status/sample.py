"""Read one sample of a deployment's Kafka state: offsets, group positions, tier heads, DLQs.

``KafkaSampler`` keeps a groupless consumer and an admin client open between samples (the
console samples every second or two). One sample is: every catalogue topic's log start and end
offsets, the committed offsets of every consumer group, retry relay group and DLQ redrive group
(admin ``list_consumer_group_offsets``), each group's state, and the ``x-due-ts`` header of the
first record each retry relay has not taken yet (read with a second groupless consumer, assigned
by hand). Reads only: it joins no group, commits nothing and produces nothing.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.dlq.progress import load_progress, redrive_group_id
from ops.offsets import OPERATOR_CLIENT_ID, committed_offsets, existing_partitions, group_state
from schemas import headers as h
from topics.catalogue import Catalogue
from topics.kafka import KafkaClients

HEAD_FETCH_BYTES = 1024 * 1024
"""Fetch size of the tier-head reader: one record per partition is all it needs (a larger
record still arrives whole, KIP-74)."""
HEAD_WAIT_SECONDS = 3.0
"""Longest a sample waits for the first pending record of the tiers."""


@dataclass(frozen=True)
class KafkaSample:
    """Raw Kafka figures at one moment; ``ops.status.assemble`` turns two of them into rates."""

    at: float  # monotonic seconds when the sample was taken
    partitions: dict[str, int]  # catalogue topics that exist -> partition count
    starts: dict[TopicPartition, int]
    ends: dict[TopicPartition, int]
    committed: dict[str, dict[TopicPartition, int]]  # group id -> committed offsets
    group_states: dict[str, tuple[str, int]]  # group id -> (state, members)
    tier_heads: dict[TopicPartition, int | None]  # x-due-ts of the first pending record
    dlq_pending: dict[str, int]  # DLQ topic -> records no redrive or purge handled


class KafkaSampler:
    """Samples one catalogue's topics and groups; use as ``async with``, then ``await read()``.

    Clients must be built inside the running event loop (aiokafka binds to it), so they are
    started in ``__aenter__``.
    """

    def __init__(self, kafka: KafkaClients, catalogue: Catalogue) -> None:
        self._kafka = kafka.with_client_id(OPERATOR_CLIENT_ID)
        self._catalogue = catalogue
        self._running = AsyncExitStack()
        self._consumer: AIOKafkaConsumer | None = None
        self._heads: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        # (tier partition, position) -> due time: the head only changes when the relay moves.
        self._due_cache: dict[tuple[TopicPartition, int], int | None] = {}
        self._tracked: set[str] = set()

    async def __aenter__(self) -> KafkaSampler:
        kafka = self._kafka
        try:
            self._consumer = await self._running.enter_async_context(
                kafka.started(kafka.consumer())
            )
            self._heads = await self._running.enter_async_context(
                kafka.started(
                    kafka.consumer(
                        max_partition_fetch_bytes=HEAD_FETCH_BYTES, fetch_max_bytes=HEAD_FETCH_BYTES
                    )
                )
            )
            self._admin = await self._running.enter_async_context(kafka.started(kafka.admin()))
        except BaseException:
            await self._running.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._running.aclose()

    async def read(self) -> KafkaSample:
        """Return the catalogue's offsets, group positions, tier heads and DLQ backlogs now.

        Raises:
            TransientError: Kafka unreachable, or a group coordinator unavailable for ~30 s.
        """
        consumer, admin = self._consumer, self._admin
        if consumer is None or admin is None:
            raise RuntimeError("use KafkaSampler inside `async with`")
        catalogue = self._catalogue
        found = await existing_partitions(admin)
        partitions = {t.name: found[t.name] for t in catalogue.topics if t.name in found}
        tps = [TopicPartition(name, p) for name, count in partitions.items() for p in range(count)]
        if set(partitions) != self._tracked:
            # A consumer without subscriptions answers offsets of topics its client does not
            # track only after its next periodic metadata refresh (~5 s); tracked, at once.
            await consumer._client.set_topics(list(partitions))
            self._tracked = set(partitions)
        starts = await consumer.beginning_offsets(tps) if tps else {}
        ends = await consumer.end_offsets(tps) if tps else {}
        at = time.monotonic()  # when the offsets were read: rates divide by the time between

        def of(*topics: str) -> list[TopicPartition]:
            return [tp for tp in tps if tp.topic in topics]

        committed: dict[str, dict[TopicPartition, int]] = {}
        states: dict[str, tuple[str, int]] = {}
        dlq_pending: dict[str, int] = {}
        for group in catalogue.groups:
            for group_id, topics in (
                (group.group_id, [s.name for s in group.sources]),
                (group.retry_group_id, [t.name for t in group.retry_topics]),
            ):
                offsets = await committed_offsets(admin, group_id, of(*topics))
                committed[group_id] = {tp: offset for tp, (offset, _meta) in offsets.items()}
            states[group.group_id] = await group_state(admin, group.group_id)
            dlq_parts = of(group.dlq.name)
            if dlq_parts:
                progress = await load_progress(admin, redrive_group_id(group), dlq_parts, starts)
                dlq_pending[group.dlq.name] = sum(
                    max(0, ends[tp] - progress[tp].base)
                    - sum(1 for offset in progress[tp].done if offset < ends[tp])
                    for tp in dlq_parts
                )
        heads = await self._tier_heads(
            {
                tp: max(committed[group.retry_group_id].get(tp, starts[tp]), starts[tp])
                for group in catalogue.groups
                for tp in of(*(t.name for t in group.retry_topics))
            },
            ends,
        )
        return KafkaSample(at, partitions, starts, ends, committed, states, heads, dlq_pending)

    async def _tier_heads(
        self, positions: dict[TopicPartition, int], ends: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        """Return the due time of the record at each position that is below the end."""
        heads: dict[TopicPartition, int | None] = {}
        wanted: dict[TopicPartition, int] = {}
        for tp, position in positions.items():
            if position >= ends[tp]:
                continue
            key = (tp, position)
            if key in self._due_cache:
                heads[tp] = self._due_cache[key]
            else:
                wanted[tp] = position
        if wanted:
            heads.update(await self._read_heads(wanted))
        self._due_cache = {(tp, positions[tp]): due for tp, due in heads.items() if tp in positions}
        return heads

    async def _read_heads(
        self, wanted: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        consumer = self._heads
        assert consumer is not None  # noqa: S101 - set in __aenter__
        consumer.assign(list(wanted))
        for tp, position in wanted.items():
            consumer.seek(tp, position)
        found: dict[TopicPartition, int | None] = {}
        try:
            async with asyncio.timeout(HEAD_WAIT_SECONDS):
                while len(found) < len(wanted):
                    batches = await consumer.getmany(timeout_ms=200, max_records=len(wanted) * 4)
                    for tp, records in batches.items():
                        if tp in found or not records:
                            continue
                        found[tp] = h.header_int(list(records[0].headers), h.DUE_TIMESTAMP)
                        consumer.pause(tp)
        except TimeoutError:
            pass  # a head not read in time stays unknown this sample
        finally:
            consumer.unsubscribe()
        return found
