"""Where a stage's records go: the ``Publisher`` capability and its Kafka implementation.

The runner only needs "send these in order" and "send these and wait until acknowledged", so
tests drive it with an in-memory publisher and production with ``KafkaPublisher``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.runtime.stage import Outgoing
from topics.kafka import MAX_REQUEST_BYTES, KafkaClients

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Sends outgoing records; what the stage runner and periodic stage work publish through."""

    async def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
        """Queue records in order; return futures that resolve when each is acknowledged."""
        ...

    async def send_groups(
        self, groups: Sequence[Sequence[Outgoing]]
    ) -> list[list[asyncio.Future[object]] | KafkaError]:
        """Queue every group's records in order; return each group's futures, or the error
        that refused one of its records before it was queued (its other records may go)."""
        ...

    async def publish(self, records: Sequence[Outgoing]) -> None:
        """Send records and wait until every one is acknowledged."""
        ...


# Answers that mean the broker no longer accepts this producer's idempotence state: after a
# broker crash (its log tail lost, or the producer id expired) it refuses every later batch with
# the same error, and aiokafka never starts a new producer id by itself. Seen in the fault
# campaign: a sync worker refused for minutes after the broker was killed with SIGKILL.
PRODUCER_STATE_LOST = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
)


class KafkaPublisher:
    """Produces records with one idempotent aiokafka producer; ``publish`` returns once acked.

    When the broker refuses the producer's idempotence state (``PRODUCER_STATE_LOST``), the
    records sent fail as usual (the runner sends them again) and the next send starts a fresh
    producer, with a new producer id.
    """

    def __init__(self, kafka: KafkaClients, *, client_id: str | None = None) -> None:
        self._kafka = kafka
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock: asyncio.Lock | None = None
        self._state_lost = False
        self.producers_started = 0  # how many producers this publisher has had (tests, metrics)

    def _producer_or_fail(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("publisher used before start()")
        return self._producer

    async def start(self) -> None:
        """Connect to the cluster; idempotent, and done by the first send if not before.

        The producer is created here, inside the running loop (aiokafka binds to it).
        """
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._producer is None:
                producer = self._kafka.producer(client_id=self._client_id)
                try:
                    await producer.start()
                except BaseException:
                    # A producer whose start failed still holds its client and sockets.
                    await producer.stop()
                    raise
                self._producer = producer
                self.producers_started += 1

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
        """Queue records in order; return futures that resolve when Kafka acks each.

        Raises:
            KafkaError: A record was refused before it was queued (too large, buffer timeout).
        """
        [sent] = await self.send_groups([records])
        if isinstance(sent, KafkaError):
            raise sent
        return sent

    async def send_groups(
        self, groups: Sequence[Sequence[Outgoing]]
    ) -> list[list[asyncio.Future[object]] | KafkaError]:
        """Queue every group's records in order; return each group's futures, or the error
        that refused one of its records before it was queued (its other records may go).

        The records are appended to one batch per partition and each batch is handed to the
        producer whole (aiokafka's batch API): a record then costs 1.7 microseconds of CPU
        against 10 through ``AIOKafkaProducer.send``, which makes a future and a task switch per
        record; a stage sends five per message. A group's futures are its batches' (shared
        with the other groups in them). Partitions are chosen as ``send`` chooses them.
        """
        if self._state_lost:
            await self._renew()
        if self._producer is None:
            await self.start()
        batches = _Batches(self._producer_or_fail(), self._note_state_lost, len(groups))
        for index, group in enumerate(groups):
            for record in group:
                try:
                    await batches.append(index, record)
                except KafkaError as exc:
                    batches.refuse(index, exc)
                    break
        return await batches.submit_all()

    def _note_state_lost(self, future: asyncio.Future[object]) -> None:
        if not future.cancelled() and isinstance(future.exception(), PRODUCER_STATE_LOST):
            self._state_lost = True

    async def _renew(self) -> None:
        """Replace the producer whose idempotence state the broker refused."""
        self._state_lost = False
        log.warning(
            "Kafka refused the producer's sequence state (broker restarted?); "
            "starting a new producer client=%s",
            self._client_id,
        )
        old, self._producer = self._producer, None
        if old is not None:
            try:
                await old.stop()
            except Exception:  # its queued batches fail anyway; they are sent again
                log.info("stopping the refused producer failed", exc_info=True)
        await self.start()

    async def publish(self, records: Sequence[Outgoing]) -> None:
        """Send records and wait until Kafka has acknowledged every one."""
        await asyncio.gather(*await self.send(records))


class _Batches:
    """Open batches, one per partition, filled from groups of records, then handed over."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        on_done: Callable[[asyncio.Future[object]], None],
        groups: int,
    ) -> None:
        self._producer = producer
        self._on_done = on_done
        self._open: dict[tuple[str, int], tuple[BatchBuilder, list[int]]] = {}
        self._partitions: dict[str, list[int]] = {}
        self._by_key: dict[tuple[str, bytes], int] = {}
        self._futures: list[list[asyncio.Future[object]]] = [[] for _ in range(groups)]
        self._errors: list[KafkaError | None] = [None] * groups

    def refuse(self, group: int, error: KafkaError) -> None:
        self._errors[group] = self._errors[group] or error

    async def append(self, group: int, record: Outgoing) -> None:
        key, value, headers = record.key, record.value, list(record.headers)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > MAX_REQUEST_BYTES:  # the producer's max_request_size: refused as send would
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized, more than the producer's "
                f"max_request_size ({MAX_REQUEST_BYTES})"
            )
        where = (record.topic, await self._partition(record))
        builder, groups = self._open.get(where) or self._new(where)
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is not None:
            if not groups or groups[-1] != group:
                groups.append(group)
            return
        await self._submit(where)  # full: hand it over and start the next (takes any record)
        builder, groups = self._new(where)
        builder.append(key=key, value=value, timestamp=None, headers=headers)
        groups.append(group)

    async def submit_all(self) -> list[list[asyncio.Future[object]] | KafkaError]:
        for where in list(self._open):
            await self._submit(where)
        return [
            error if error is not None else futures
            for futures, error in zip(self._futures, self._errors, strict=True)
        ]

    def _new(self, where: tuple[str, int]) -> tuple[BatchBuilder, list[int]]:
        opened: tuple[BatchBuilder, list[int]] = (self._producer.create_batch(), [])
        self._open[where] = opened
        return opened

    async def _submit(self, where: tuple[str, int]) -> None:
        builder, groups = self._open.pop(where)
        try:
            future = await self._producer.send_batch(builder, where[0], partition=where[1])
        except KafkaError as exc:  # not queued (buffer timeout): every group in it failed
            for group in groups:
                self.refuse(group, exc)
            return
        future.add_done_callback(self._on_done)
        for group in groups:
            self._futures[group].append(future)

    async def _partition(self, record: Outgoing) -> int:
        if record.partition is not None:
            return record.partition
        topic, key = record.topic, record.key
        if key is not None and (topic, key) in self._by_key:
            return self._by_key[(topic, key)]
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(
                await self._producer.partitions_for(topic)
            )
        chosen: int = _PARTITIONER(key, partitions, partitions)
        if key is not None:
            self._by_key[(topic, key)] = chosen
        return chosen


_PARTITIONER = DefaultPartitioner()
