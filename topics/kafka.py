"""Every Kafka client inboxflow makes, built in one place with one set of limits.

The stage runtime, the retry relays, the sinks, the operator tools, the benchmarks and the local
stack's checks all get their producers, consumers and admin clients from ``KafkaClients``, so a
connection setting, a size limit or the transport security (``KafkaSecurity``: TLS, SASL PLAIN
or SCRAM) is set once and a record one client may write another can read. The faust apps take
the same security from ``KafkaClients.faust_settings``. ``KafkaClients.started`` is the one
place where "Kafka cannot be reached" becomes a ``TransientError``, and where refused
credentials or a failed TLS handshake become a ``KafkaAuthError`` (permanent: retrying with the
same settings cannot help).

This module must not read the environment: ``inboxflow.wiring`` builds ``KafkaClients`` from
the settings. Its error messages name the ``INBOXFLOW_KAFKA_*`` settings that feed it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, get_args

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from schemas.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

# The largest record a topic accepts (message-fetched: raw mail with attachments, see
# ``topics.catalogue``) plus room for headers. Every producer may send that much.
MAX_REQUEST_BYTES = 64 * 1024 * 1024 + 64 * 1024
# A partition's records go out in batches of up to this much (aiokafka's default is 16 KiB). A
# normalize batch of 500 messages writes about 250 KiB of events per partition: in 16 KiB batches
# each waits for the one before it to leave, one request at a time. With 256 KiB the normalize
# agent went from 2,163 to 2,408 messages/s (the batched aiokafka peer, same client options,
# from 2,168 to 2,373). Memory: at most a batch per partition being written, built as it fills.
PRODUCER_BATCH_BYTES = 256 * 1024
# Bounds memory per partition, not record size: a fetch still returns at least one whole batch
# however large (KIP-74), so a 64 MiB record is read all the same.
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024
# How often aiokafka's background fetcher looks for work when nothing woke it (its
# ``consumer_timeout_ms``, 200 ms by default). A fetch answered, records taken, a partition
# resumed or an assignment lost wake it at once; this only bounds an idle consumer's polling.
# Idle, those five wake-ups a second were a third of a worker fleet's CPU (nine processes:
# 3.18 -> 2.07 CPU-seconds a minute with 2 s), and a worker is idle most of its months.
FETCHER_RECHECK_MS = 2000


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SECURITY_PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
SASL_MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)

# How long ``KafkaClients.check`` waits for one broker to connect, shake hands and authenticate.
CHECK_TIMEOUT_SECONDS = 15.0
_DEFAULT_PORT = 9092
CLOSE_WAIT_SECONDS = 2.0


async def _closed(connection: AIOKafkaConnection) -> None:
    """Close a connection and wait (briefly) until its socket is really closed.

    aiokafka's ``close`` only starts closing: over TLS the socket outlives the call until the
    shutdown handshake ends. A caller that returns (or whose loop ends) before then leaks the
    socket and Python warns about an unclosed transport. A connection whose socket was never
    opened has nothing to wait for.
    """
    opened = connection._protocol is not None  # set once the TCP connection exists
    closing = connection.close()
    if opened and closing is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closing), CLOSE_WAIT_SECONDS)


_AUTH_REFUSED = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    IllegalSaslStateError,
    UnsupportedSaslMechanismError,
)


class KafkaConfigError(PermanentError, ValueError):
    """The Kafka security settings contradict each other; the message says which to change."""


class KafkaAuthError(PermanentError):
    """Kafka refused the credentials, or the TLS handshake with it failed.

    Permanent: the same settings fail the same way, so workers stop instead of retrying.
    """


@dataclass(frozen=True)
class KafkaSecurity:
    """How every client connects: the security protocol, SASL credentials, TLS files.

    ``PLAINTEXT`` (the default) sends nothing extra. ``SSL`` and ``SASL_SSL`` verify the brokers'
    certificates against ``cafile`` (unset: the system's trust store) and their names; a
    ``certfile`` (with ``keyfile``, unless the certificate file holds the key) is presented to
    brokers that require mutual TLS. ``SASL_PLAINTEXT`` and ``SASL_SSL`` authenticate as
    ``username`` with ``mechanism`` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512).

    Raises:
        KafkaConfigError: at construction, for settings that cannot work together.
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise KafkaConfigError(
                f"unknown Kafka security protocol {self.protocol!r}: INBOXFLOW_KAFKA_SECURITY_"
                f"PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.sasl:
            if self.mechanism not in SASL_MECHANISMS:
                raise KafkaConfigError(
                    f"unsupported SASL mechanism {self.mechanism!r}: INBOXFLOW_KAFKA_SASL_"
                    f"MECHANISM must be one of {', '.join(SASL_MECHANISMS)}"
                )
            if not self.username or not self.password:
                raise KafkaConfigError(
                    f"{self.protocol} needs a user name and a password: set "
                    "INBOXFLOW_KAFKA_SASL_USERNAME and INBOXFLOW_KAFKA_SASL_PASSWORD"
                )
        elif self.username or self.password:
            raise KafkaConfigError(
                f"SASL credentials are set but the security protocol is {self.protocol}, which "
                "sends none: set INBOXFLOW_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_files = {
            "INBOXFLOW_KAFKA_SSL_CAFILE": self.cafile,
            "INBOXFLOW_KAFKA_SSL_CERTFILE": self.certfile,
            "INBOXFLOW_KAFKA_SSL_KEYFILE": self.keyfile,
        }
        given = [name for name, value in tls_files.items() if value]
        if given and not self.tls:
            raise KafkaConfigError(
                f"{', '.join(given)} set but the security protocol is {self.protocol}, which does "
                "not use TLS: set INBOXFLOW_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"
            )
        if self.keyfile and not self.certfile:
            raise KafkaConfigError(
                "INBOXFLOW_KAFKA_SSL_KEYFILE needs the certificate it belongs to: "
                "set INBOXFLOW_KAFKA_SSL_CERTFILE"
            )

    @property
    def sasl(self) -> bool:
        """True when clients authenticate with SASL."""
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        """True when connections are encrypted with TLS."""
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """Return a client TLS context (verifies the broker's certificate and name), or None.

        Raises:
            KafkaConfigError: a TLS file cannot be read or is not PEM.
        """
        if not self.tls:
            return None
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile
            )
        except (OSError, ssl.SSLError) as exc:
            raise KafkaConfigError(
                f"cannot load the Kafka TLS files (INBOXFLOW_KAFKA_SSL_CAFILE={self.cafile}, "
                f"INBOXFLOW_KAFKA_SSL_CERTFILE={self.certfile}, "
                f"INBOXFLOW_KAFKA_SSL_KEYFILE={self.keyfile}): {exc}"
            ) from exc
        return context

    def client_options(self) -> dict[str, Any]:
        """Return the aiokafka keyword arguments of this security (any client type)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            options["sasl_mechanism"] = self.mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password
        return options

    def faust_credentials(self) -> Any:
        """Return faust's ``broker_credentials`` for this security, or None for PLAINTEXT.

        faust-streaming turns them into the same aiokafka arguments as ``client_options``
        (``faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth``): SASL credentials
        mean SASL_SSL when they carry a TLS context and SASL_PLAINTEXT otherwise.
        """
        import faust  # here: clients that are not faust apps (sinks, tools, peers) never load it

        if self.sasl:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context(),
                mechanism=self.mechanism,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """Return a one-line description for messages (never the password)."""
        if not self.sasl:
            return self.protocol
        return f"{self.protocol} {self.mechanism} user {self.username!r}"


PLAINTEXT = KafkaSecurity()
# (bootstrap servers, security) pairs whose credentials a broker accepted in this process, so
# ``KafkaClients.started`` checks them once, not before every client.
_VERIFIED: set[tuple[str, KafkaSecurity]] = set()


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
    security: KafkaSecurity = PLAINTEXT

    def with_client_id(self, client_id: str) -> KafkaClients:
        """Return the same cluster and security under another default client id."""
        return KafkaClients(self.bootstrap_servers, client_id=client_id, security=self.security)

    def producer(self, *, client_id: str | None = None, **overrides: Any) -> AIOKafkaProducer:
        """Return an idempotent producer that waits for every in-sync replica (acks=all)."""
        options: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_batch_size": PRODUCER_BATCH_BYTES,
            "max_request_size": MAX_REQUEST_BYTES,
            **overrides,
        }
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id or self.client_id,
            **self.security.client_options(),
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
            "consumer_timeout_ms": FETCHER_RECHECK_MS,
            **overrides,
        }
        return AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=group_id,
            client_id=client_id or self.client_id,
            **self.security.client_options(),
            **options,
        )

    def admin(self, *, client_id: str | None = None, **overrides: Any) -> AIOKafkaAdminClient:
        """Return an admin client."""
        return AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id or self.client_id,
            **self.security.client_options(),
            **overrides,
        )

    @asynccontextmanager
    async def started(self, client: C) -> AsyncIterator[C]:
        """Start ``client`` (built by this object), yield it, and stop it however the block ends.

        Raises:
            KafkaAuthError: the brokers refused the credentials, or TLS verification failed.
            TransientError: the cluster cannot be reached, at start or while in use.
        """
        secured = self.security.protocol != "PLAINTEXT"
        try:
            if secured and (self.bootstrap_servers, self.security) not in _VERIFIED:
                # aiokafka logs why each broker refused it and raises only "unable to
                # bootstrap"; one connection of our own first names the cause instead.
                await self.check()
            await client.start()
        except BaseException as exc:
            with contextlib.suppress(Exception):  # a client that did not start still holds sockets
                await _close(client)
            if not isinstance(exc, KafkaConnectionError):
                raise
            if secured:
                await self.check()  # credentials revoked or rotated since they were verified
            raise TransientError(f"Kafka at {self.bootstrap_servers} unreachable: {exc}") from exc
        try:
            yield client
        except KafkaConnectionError as exc:
            raise TransientError(f"lost Kafka at {self.bootstrap_servers}: {exc}") from exc
        finally:
            await _close(client)

    async def check(self, *, seconds_per_server: float = CHECK_TIMEOUT_SECONDS) -> None:
        """Connect to a bootstrap server, shake hands (TLS) and authenticate (SASL), once.

        A pre-flight check for processes that would otherwise retry forever with bad settings
        (faust workers). Returns at the first server that accepts.

        Raises:
            KafkaAuthError: a server refused the credentials or failed TLS verification.
            TransientError: no server answered within ``seconds_per_server``.
        """
        failures = []
        for host, port in _servers(self.bootstrap_servers):
            options = self.security.client_options()
            connection = AIOKafkaConnection(
                host,
                port,
                client_id=self.client_id,
                request_timeout_ms=int(seconds_per_server * 1000),
                **options,
            )
            try:
                async with asyncio.timeout(seconds_per_server):
                    await connection.connect()
            except _AUTH_REFUSED as exc:
                await _closed(connection)
                raise KafkaAuthError(self._refused(host, port, exc)) from exc
            except ssl.SSLCertVerificationError as exc:
                await _closed(connection)
                raise KafkaAuthError(
                    f"TLS verification of Kafka at {host}:{port} failed "
                    f"({exc.verify_message}): check INBOXFLOW_KAFKA_SSL_CAFILE "
                    f"(now {self.security.cafile or 'the system trust store'})"
                ) from exc
            except ssl.SSLError as exc:
                await _closed(connection)
                raise KafkaAuthError(
                    f"TLS handshake with Kafka at {host}:{port} failed ({exc.reason}): check "
                    "INBOXFLOW_KAFKA_SECURITY_PROTOCOL and the INBOXFLOW_KAFKA_SSL_* files"
                ) from exc
            except (OSError, TimeoutError, KafkaError) as exc:
                await _closed(connection)
                failures.append(f"{host}:{port}: {exc!r}")
                continue
            try:
                async with asyncio.timeout(seconds_per_server):
                    await connection.send(MetadataRequest([]))
            except (OSError, TimeoutError, KafkaError) as exc:
                if self.security.protocol == "SSL" and isinstance(exc, KafkaConnectionError):
                    # TLS and the version lookup passed, the first real request was dropped:
                    # what a SASL_SSL listener does to a client that skips authentication.
                    raise KafkaAuthError(
                        f"Kafka at {host}:{port} closed the connection after the TLS handshake: "
                        "the listener probably requires SASL; check "
                        "INBOXFLOW_KAFKA_SECURITY_PROTOCOL (now SSL)"
                    ) from exc
                failures.append(f"{host}:{port}: {exc!r}")
                continue
            finally:
                await _closed(connection)
            _VERIFIED.add((self.bootstrap_servers, self.security))
            return
        raise TransientError(
            f"Kafka at {self.bootstrap_servers} unreachable ({self.security.describe()}): "
            + "; ".join(failures)
        )

    def _refused(self, host: str, port: int, exc: Exception) -> str:
        security = self.security
        if isinstance(exc, UnsupportedSaslMechanismError):
            return (
                f"Kafka at {host}:{port} does not offer SASL mechanism {security.mechanism}: "
                f"check INBOXFLOW_KAFKA_SASL_MECHANISM ({exc})"
            )
        return (
            f"Kafka authentication failed for user {security.username!r} ({security.mechanism}) "
            f"at {host}:{port}: check INBOXFLOW_KAFKA_SASL_PASSWORD "
            "(and INBOXFLOW_KAFKA_SASL_USERNAME, INBOXFLOW_KAFKA_SASL_MECHANISM)"
        )

    def faust_brokers(self) -> list[str]:
        """Return the bootstrap servers as faust's ``broker`` setting wants them."""
        return [f"kafka://{server.strip()}" for server in self.bootstrap_servers.split(",")]

    def faust_settings(self) -> dict[str, Any]:
        """Return the faust App settings that point it at this cluster with this security."""
        settings: dict[str, Any] = {"broker": self.faust_brokers()}
        credentials = self.security.faust_credentials()
        if credentials is not None:
            settings["broker_credentials"] = credentials
        return settings


def _servers(bootstrap_servers: str) -> list[tuple[str, int]]:
    """Split ``host:port,[v6]:port,host`` into (host, port) pairs."""
    servers = []
    for item in bootstrap_servers.split(","):
        text = item.strip()
        if not text:
            continue
        host, colon, port = text.rpartition(":")
        if not colon or host.endswith(":") or (text.startswith("[") and not host.endswith("]")):
            host, port = text, str(_DEFAULT_PORT)  # no port (or a bare IPv6 address)
        servers.append((host.strip("[]"), int(port)))
    return servers


async def _close(client: object) -> None:
    # Admin clients close; producers and consumers stop.
    closer = getattr(client, "stop", None) or getattr(client, "close", None)
    if closer is not None:
        await closer()
