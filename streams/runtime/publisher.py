"""Where a stage's records go: the ``Publisher`` capability and its Kafka implementation.

The runner only needs "send these in order" and "send these and wait until acknowledged", so
tests drive it with an in-memory publisher and production with ``KafkaPublisher``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)

from streams.runtime.stage import Outgoing
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Sends outgoing records; what the stage runner and periodic stage work publish through."""

    async def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
        """Queue records in order; return futures that resolve when each is acknowledged."""
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
        """Queue records in order; return futures that resolve when Kafka acks each."""
        if self._state_lost:
            await self._renew()
        if self._producer is None:
            await self.start()
        producer = self._producer_or_fail()
        futures = []
        for out in records:
            future = await producer.send(
                out.topic,
                out.value,
                key=out.key,
                headers=list(out.headers),
                partition=out.partition,
            )
            future.add_done_callback(self._note_state_lost)
            futures.append(future)
        return futures

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
