"""Where a stage's records go: the ``Publisher`` capability and its Kafka implementation.

The runner only needs "send these in order" and "send these and wait until acknowledged", so
tests drive it with an in-memory publisher and production with ``KafkaPublisher``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer

from streams.runtime.stage import Outgoing
from topics.kafka import KafkaClients


class Publisher(Protocol):
    """Sends outgoing records; what the stage runner and periodic stage work publish through."""

    async def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
        """Queue records in order; return futures that resolve when each is acknowledged."""
        ...

    async def publish(self, records: Sequence[Outgoing]) -> None:
        """Send records and wait until every one is acknowledged."""
        ...


class KafkaPublisher:
    """Produces records with one idempotent aiokafka producer; ``publish`` returns once acked."""

    def __init__(self, kafka: KafkaClients, *, client_id: str | None = None) -> None:
        self._kafka = kafka
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock: asyncio.Lock | None = None

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

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
        """Queue records in order; return futures that resolve when Kafka acks each."""
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
            futures.append(future)
        return futures

    async def publish(self, records: Sequence[Outgoing]) -> None:
        """Send records and wait until Kafka has acknowledged every one."""
        await asyncio.gather(*await self.send(records))
