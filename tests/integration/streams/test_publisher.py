"""KafkaPublisher against a broker that is not there, and one that refused its producer."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from streams.runtime.publisher import KafkaPublisher
from streams.runtime.stage import Outgoing
from topics.admin import ensure_topics
from topics.catalogue import TopicRole, TopicSpec
from topics.kafka import KafkaClients


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_producer_whose_start_failed_is_closed_not_leaked() -> None:
    publisher = KafkaPublisher(KafkaClients(f"127.0.0.1:{closed_port()}", client_id="t"))
    failed = False
    try:
        await publisher.start()
    except KafkaConnectionError:
        failed = True  # no reference to the traceback is kept: the producer can be collected
    assert failed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []


async def test_a_refused_sequence_state_starts_a_new_producer_and_records_still_arrive(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    """After a broker crash Kafka may answer OutOfOrderSequenceNumber to every later batch of a
    producer; the publisher then starts a fresh producer (a new producer id) for the next send.

    The broker's refusal cannot be provoked on demand, so the failed acknowledgement is handed
    to the publisher as the producer would hand it; everything else is the real broker.
    """
    kafka = KafkaClients(kafka_bootstrap, client_id="t")
    topic = unique_name("publish")
    await ensure_topics(kafka, [TopicSpec(topic, TopicRole.RETRY, 1, 1, {}, "a test topic")])
    publisher = KafkaPublisher(kafka, client_id="t")
    await publisher.publish([Outgoing(topic, b"k", b"before")])
    assert publisher.producers_started == 1

    refused: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    refused.set_exception(OutOfOrderSequenceNumber())
    publisher._note_state_lost(refused)
    refused.exception()  # retrieved, as the runner does
    await publisher.publish([Outgoing(topic, b"k", b"after")])
    await publisher.stop()

    assert publisher.producers_started == 2
    async with kafka.started(kafka.consumer()) as consumer:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
    assert [r.value for r in batch[tp]] == [b"before", b"after"]
