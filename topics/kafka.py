"""Every Kafka client inboxflow makes, built in one place with one set of limits.

The stage runtime, the retry relays, the sinks, the operator tools, the benchmarks and the local
stack's checks all get their producers, consumers and admin clients from ``KafkaClients``, so a
connection setting or a size limit is set once and a record one client may write another can
read. ``KafkaClients.started`` is the one place where "Kafka cannot be reached" becomes a
``TransientError``.

This module must not read the environment: ``inboxflow.wiring`` builds ``KafkaClients`` from
the settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from schemas.errors import TransientError

# The largest record a topic accepts (message-fetched: raw mail with attachments, see
# ``topics.catalogue``) plus room for headers. Every producer may send that much.
MAX_REQUEST_BYTES = 64 * 1024 * 1024 + 64 * 1024
# Bounds memory per partition, not record size: a fetch still returns at least one whole batch
# however large (KIP-74), so a 64 MiB record is read all the same.
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024


class _Client(Protocol):
    async def start(self) -> None: ...


C = TypeVar("C", bound=_Client)


@dataclass(frozen=True)
class KafkaClients:
    """Builds clients for one cluster; the clients are not started.

    Clients must be built inside the running event loop: aiokafka binds to it. ``started``
    starts one and stops it at the end of its block.
    """

    bootstrap_servers: str
    client_id: str = "inboxflow"

    def producer(self, *, client_id: str | None = None, **overrides: Any) -> AIOKafkaProducer:
        """Return an idempotent producer that waits for every in-sync replica (acks=all)."""
        options: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_request_size": MAX_REQUEST_BYTES,
            **overrides,
        }
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id or self.client_id,
            **options,
        )

    def consumer(
        self,
        *topics: str,
        group_id: str | None = None,
        client_id: str | None = None,
        **overrides: Any,
    ) -> AIOKafkaConsumer:
        """Return a consumer that commits only when told to and starts from the earliest offset."""
        options: dict[str, Any] = {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
            **overrides,
        }
        return AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=group_id,
            client_id=client_id or self.client_id,
            **options,
        )

    def admin(self, *, client_id: str | None = None, **overrides: Any) -> AIOKafkaAdminClient:
        """Return an admin client."""
        return AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id or self.client_id,
            **overrides,
        )

    @asynccontextmanager
    async def started(self, client: C) -> AsyncIterator[C]:
        """Start ``client`` (built by this object), yield it, and stop it however the block ends.

        Raises:
            TransientError: the cluster cannot be reached, at start or while in use.
        """
        try:
            await client.start()
        except KafkaConnectionError as exc:
            raise TransientError(f"Kafka at {self.bootstrap_servers} unreachable: {exc}") from exc
        try:
            yield client
        except KafkaConnectionError as exc:
            raise TransientError(f"lost Kafka at {self.bootstrap_servers}: {exc}") from exc
        finally:
            await _close(client)

    def faust_brokers(self) -> list[str]:
        """Return the bootstrap servers as faust's ``broker`` setting wants them."""
        return [f"kafka://{server.strip()}" for server in self.bootstrap_servers.split(",")]


async def _close(client: object) -> None:
    # Admin clients close; producers and consumers stop.
    closer = getattr(client, "stop", None) or getattr(client, "close", None)
    if closer is not None:
        await closer()
