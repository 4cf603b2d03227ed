"""Every client over SASL_SSL on a real broker: SCRAM and PLAIN work, anything else is refused.

The broker is the ``secure_stack``'s: SASL_SSL only, a certificate from a throwaway CA, user
``inboxflow`` known to SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from devstack.stack import Stack
from ops.lag import group_lag
from schemas.errors import TransientError
from topics.admin import ensure_topics
from topics.catalogue import build_catalogue
from topics.kafka import (
    KafkaAuthError,
    KafkaClients,
    KafkaSecurity,
    SaslMechanism,
)

pytestmark = pytest.mark.timeout(240)

# A refusal must come back this fast: an answer, not a retry loop (generous for a busy machine).
REFUSAL_SECONDS = 30.0


async def _start(kafka: KafkaClients, client: str) -> None:
    """Build, start and stop one client of ``kafka`` (``admin``, ``producer`` or ``consumer``)."""
    async with asyncio.timeout(REFUSAL_SECONDS), kafka.started(getattr(kafka, client)()):
        pass


def _clients(stack: Stack, **changes: str | None) -> KafkaClients:
    security = dataclasses.replace(stack.kafka_security, **changes)  # type: ignore[arg-type]
    return KafkaClients(stack.kafka_bootstrap, client_id="t-security", security=security)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_admin_producer_and_consumer_round_trip_over_sasl_ssl(
    secure_stack: Stack, unique_name: Callable[..., str], mechanism: SaslMechanism
) -> None:
    kafka = _clients(secure_stack, mechanism=mechanism)
    assert kafka.security.protocol == "SASL_SSL"
    catalogue = build_catalogue(unique_name("sec"), partitions=2)
    topic = catalogue.message_fetched.name

    report = await ensure_topics(kafka, [catalogue.message_fetched])
    assert report.created == [topic]
    async with kafka.started(kafka.producer()) as producer:
        for index in range(4):
            await producer.send_and_wait(
                topic, f"v{index}".encode(), key=b"user", headers=[("h", b"1")]
            )
    group = unique_name("g")
    async with kafka.started(kafka.consumer(topic, group_id=group)) as consumer:
        records = []
        deadline = time.monotonic() + 60
        while len(records) < 4 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            records += [r for part in batch.values() for r in part]
            await consumer.commit()
    assert [r.value for r in records] == [b"v0", b"v1", b"v2", b"v3"]
    assert all(r.headers == (("h", b"1"),) for r in records)
    # The operator tools take the same security: lag reads committed offsets through it.
    lags = await group_lag(kafka, group, [topic])
    assert sum(lag.lag for lag in lags.values()) == 0


@pytest.mark.parametrize("client", ["admin", "producer", "consumer"])
async def test_a_wrong_password_is_a_clear_permanent_error_at_once(
    secure_stack: Stack, client: str
) -> None:
    kafka = _clients(secure_stack, password="not-the-password")
    started = time.monotonic()
    with pytest.raises(KafkaAuthError) as caught:
        await _start(kafka, client)
    message = str(caught.value)
    assert "authentication failed for user 'inboxflow'" in message
    assert "INBOXFLOW_KAFKA_SASL_PASSWORD" in message
    assert "\n" not in message
    assert time.monotonic() - started < REFUSAL_SECONDS


async def test_an_unknown_user_is_refused_like_a_wrong_password(secure_stack: Stack) -> None:
    kafka = _clients(secure_stack, username="mallory", mechanism="SCRAM-SHA-256")
    with pytest.raises(KafkaAuthError, match="user 'mallory' \\(SCRAM-SHA-256\\)"):
        async with asyncio.timeout(REFUSAL_SECONDS):
            await kafka.check()


async def test_operator_tools_report_the_refusal_too(secure_stack: Stack) -> None:
    kafka = _clients(secure_stack, password="not-the-password")
    with pytest.raises(KafkaAuthError, match="INBOXFLOW_KAFKA_SASL_PASSWORD"):
        async with asyncio.timeout(REFUSAL_SECONDS):
            await group_lag(kafka, "inboxflow-normalize", ["any-topic"])


async def test_a_client_without_credentials_is_refused(secure_stack: Stack) -> None:
    cafile = secure_stack.kafka_security.cafile
    tls_only = KafkaClients(
        secure_stack.kafka_bootstrap, security=KafkaSecurity("SSL", cafile=cafile)
    )
    with pytest.raises(KafkaAuthError, match="requires SASL"):
        await _start(tls_only, "admin")

    plaintext = KafkaClients(secure_stack.kafka_bootstrap)
    with pytest.raises(TransientError, match="unreachable"):
        await _start(plaintext, "producer")


async def test_plain_aiokafka_clients_without_credentials_get_nothing(secure_stack: Stack) -> None:
    """The broker itself refuses, whatever wraps the client: no metadata, no records."""
    for client in (
        AIOKafkaAdminClient(bootstrap_servers=secure_stack.kafka_bootstrap),
        AIOKafkaProducer(bootstrap_servers=secure_stack.kafka_bootstrap),
    ):
        try:
            with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
                async with asyncio.timeout(REFUSAL_SECONDS):
                    await client.start()
        finally:
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


async def test_a_broker_certificate_from_an_unknown_ca_is_refused(secure_stack: Stack) -> None:
    kafka = _clients(secure_stack, cafile=None)  # the system's trust store lacks the local CA
    with pytest.raises(KafkaAuthError, match=r"TLS verification .* INBOXFLOW_KAFKA_SSL_CAFILE"):
        await _start(kafka, "admin")
