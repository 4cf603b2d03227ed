"""Every event through a real Kafka broker in the wire format, read back by two implementations."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import avro.io
import avro.schema
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from schemas import serde
from schemas.errors import UndecodableRecordError
from schemas.examples import example_events
from schemas.models import EVENT_MODELS, Event, JobStateChanged
from schemas.store import load_current_schema, schema_fingerprint
from topics.admin import ensure_topics
from topics.catalogue import Catalogue, build_catalogue
from topics.kafka import KafkaClients

pytestmark = pytest.mark.timeout(120)


async def _catalogue_on_broker(bootstrap: str, namespace: str) -> Catalogue:
    catalogue = build_catalogue(namespace, partitions=1)
    await ensure_topics(KafkaClients(bootstrap), catalogue.event_topics)
    return catalogue


async def _read(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        while len(records) < count:
            batches = await consumer.getmany(timeout_ms=30_000, max_records=count)
            if not batches:
                raise TimeoutError(f"{len(records)} of {count} records on {topic} within 30 s")
            records += [record for batch in batches.values() for record in batch]
    finally:
        await consumer.stop()
    return records


async def test_every_event_round_trips_through_kafka(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue_on_broker(kafka_bootstrap, unique_name("t"))
    events = example_events()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for model, event in events.items():
            topic = catalogue.topic_for(model).name
            await producer.send_and_wait(topic, serde.encode(event), key=event.kafka_key())
    finally:
        await producer.stop()

    for model in EVENT_MODELS:
        [record] = await _read(kafka_bootstrap, catalogue.topic_for(model).name, 1)
        assert record.key == events[model].user_id.encode()
        assert record.value is not None
        assert serde.decode(record.value, model) == events[model]
        assert _read_with_apache_avro(model, record.value) == events[model]


def _read_with_apache_avro(model: type[Event], data: bytes) -> Event:
    """Decode with the Apache ``avro`` package given only the .avsc text (no fastavro)."""
    avsc_text = json.dumps(load_current_schema(model))
    assert data[:2] == b"\xc3\x01", "single-object marker"
    assert data[2:10] == schema_fingerprint(json.loads(avsc_text)), "writer fingerprint"
    schema = avro.schema.parse(avsc_text)
    decoder = avro.io.BinaryDecoder(io.BytesIO(data[10:]))
    return model.model_validate(avro.io.DatumReader(schema).read(decoder))


async def test_bad_bytes_from_kafka_are_classified_not_a_crash(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue_on_broker(kafka_bootstrap, unique_name("t"))
    topic = catalogue.job_state_changed.name
    good = serde.encode(example_events()[JobStateChanged])
    payloads = [b"not avro", good[:12], b"\xc3\x01" + b"\x00" * 8 + good[10:], good]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for payload in payloads:
            await producer.send_and_wait(topic, payload, key=b"user-42")
    finally:
        await producer.stop()

    records = await _read(kafka_bootstrap, topic, len(payloads))

    outcomes: list[str] = []
    for record in records:
        assert record.value is not None
        try:
            serde.decode(record.value, JobStateChanged)
            outcomes.append("decoded")
        except UndecodableRecordError as exc:
            outcomes.append(f"undecodable/{exc.retry_class}")
    assert outcomes == ["undecodable/permanent"] * 3 + ["decoded"]
