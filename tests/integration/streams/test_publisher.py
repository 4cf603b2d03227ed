"""KafkaPublisher: batched sends, a broker that is not there, one that refused its producer."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, OutOfOrderSequenceNumber

from streams.runtime.publisher import KafkaPublisher
from streams.runtime.stage import Outgoing
from topics.admin import ensure_topics
from topics.catalogue import TopicRole, TopicSpec
from topics.kafka import MAX_REQUEST_BYTES, KafkaClients


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


async def consume_all(
    kafka: KafkaClients, topic: str, count: int
) -> list[tuple[int, bytes, bytes]]:
    """Return (partition, key, value) of ``count`` records of ``topic``, each partition in order."""
    records: list[tuple[int, bytes, bytes]] = []
    async with kafka.started(kafka.consumer(topic)) as consumer:
        deadline = asyncio.get_running_loop().time() + 30
        while len(records) < count and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, batch in sorted(batches.items(), key=lambda item: item[0].partition):
                records += [(tp.partition, r.key or b"", r.value or b"") for r in batch]
    return records


async def test_batched_sends_keep_each_partition_in_order_on_the_partition_send_would_pick(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    kafka = KafkaClients(kafka_bootstrap, client_id="t")
    ours, theirs = unique_name("batched"), unique_name("per-record")
    specs = [TopicSpec(name, TopicRole.RETRY, 6, 1, {}, "a test topic") for name in (ours, theirs)]
    await ensure_topics(kafka, specs)
    keys = [f"user-{n}".encode() for n in range(40)]
    # 16 KB values: a partition's records fill several batches, so batches follow each other.
    groups = [
        [Outgoing(ours, key, b"%d " % n + bytes(16384), headers=(("n", b"%d" % n),))]
        for n, key in enumerate(keys * 5)
    ]
    publisher = KafkaPublisher(kafka, client_id="t")
    sent = await publisher.send_groups(groups)
    await asyncio.gather(*(f for futures in sent if isinstance(futures, list) for f in futures))
    await publisher.stop()
    async with kafka.started(kafka.producer()) as producer:
        await asyncio.gather(*[await producer.send(theirs, b"", key=key) for key in keys])

    arrived = await consume_all(kafka, ours, len(groups))
    expected = {key: partition for partition, key, _ in await consume_all(kafka, theirs, 40)}
    assert len(arrived) == len(groups)
    assert {key: partition for partition, key, _ in arrived} == expected
    for partition in range(6):
        numbers = [int(value.split()[0]) for p, _, value in arrived if p == partition]
        assert numbers == sorted(numbers)


async def test_a_group_with_a_record_too_large_to_send_fails_alone(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    kafka = KafkaClients(kafka_bootstrap, client_id="t")
    topic = unique_name("refused")
    await ensure_topics(kafka, [TopicSpec(topic, TopicRole.RETRY, 1, 1, {}, "a test topic")])
    huge = bytes(MAX_REQUEST_BYTES + 1)
    publisher = KafkaPublisher(kafka, client_id="t")
    sent = await publisher.send_groups(
        [
            [Outgoing(topic, b"a", b"first")],
            [Outgoing(topic, b"b", huge)],
            [Outgoing(topic, b"c", b"last")],
        ]
    )
    await asyncio.gather(*(f for futures in sent if isinstance(futures, list) for f in futures))
    await publisher.stop()

    assert isinstance(sent[1], MessageSizeTooLargeError)
    assert [value for _, _, value in await consume_all(kafka, topic, 2)] == [b"first", b"last"]
