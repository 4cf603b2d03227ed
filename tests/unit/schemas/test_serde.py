"""Single-object encoding: framing, fingerprints, round trips and classified decode failures."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import serde
from schemas.errors import PermanentError, UndecodableRecordError
from schemas.examples import example_events
from schemas.models import EVENT_MODELS, EmbeddedChunk, Event, JobStateChanged, SyncRequested
from schemas.store import (
    SchemaStore,
    canonical_form,
    default_store,
    load_current_schema,
    schema_fingerprint,
)

EXAMPLES = example_events()


def test_every_model_has_an_example() -> None:
    assert set(EXAMPLES) == set(EVENT_MODELS)


@pytest.mark.parametrize(
    ("schema", "expected_hex"),
    [
        # Apache Avro's published CRC-64-AVRO vectors (little-endian bytes).
        ("null", "8a8f25cce724dd63"),
        ("int", "8f5c393f1ad57572"),
    ],
)
def test_fingerprint_matches_apache_vectors(schema: str, expected_hex: str) -> None:
    assert schema_fingerprint(schema).hex() == expected_hex  # type: ignore[arg-type]


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_encode_frames_with_magic_and_fingerprint(model: type[Event]) -> None:
    data = serde.encode(EXAMPLES[model])

    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema_fingerprint(load_current_schema(model))


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_round_trip_is_lossless(model: type[Event]) -> None:
    event = EXAMPLES[model]

    assert serde.decode(serde.encode(event), model) == event


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_apache_avro_reads_the_body_with_only_the_avsc(model: type[Event]) -> None:
    # The independent implementation is given nothing but the .avsc text and the bytes.
    avsc_text = json.dumps(load_current_schema(model))
    data = serde.encode(EXAMPLES[model])
    schema = avro.schema.parse(avsc_text)

    record = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))

    assert model.model_validate(record) == EXAMPLES[model]


def _crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO written from the Avro specification, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_fingerprint_is_crc64_of_the_canonical_form(model: type[Event]) -> None:
    schema = load_current_schema(model)

    assert schema_fingerprint(schema) == _crc64_avro(canonical_form(schema).encode())


def test_canonical_form_strips_logical_types_like_the_java_reference() -> None:
    # The spec strips logicalType, so a timestamp is plain "long" in the canonical form (Java and
    # fastavro agree; the Python `avro` package keeps {"type":"long"} and so disagrees).
    form = canonical_form(load_current_schema(SyncRequested))

    assert '{"name":"requested_at","type":"long"}' in form


def test_decode_as_another_type_is_undecodable() -> None:
    data = serde.encode(EXAMPLES[JobStateChanged])

    with pytest.raises(UndecodableRecordError, match=r"expected inboxflow\.events\.SyncRequested"):
        serde.decode(data, SyncRequested)


def test_unknown_fingerprint_is_undecodable() -> None:
    data = bytearray(serde.encode(EXAMPLES[SyncRequested]))
    data[2:10] = b"\x00" * 8

    with pytest.raises(UndecodableRecordError, match="unknown schema fingerprint 0000000000000000"):
        serde.decode(bytes(data), SyncRequested)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", b"\xc3\x01\x01", b"{}", b"plain text", b"\x00\x00\x00\x00\x07payload"],
    ids=["empty", "half-magic", "short-header", "json", "text", "confluent"],
)
def test_foreign_bytes_are_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableRecordError):
        serde.decode(data, SyncRequested)


def test_a_tombstone_is_undecodable() -> None:
    with pytest.raises(UndecodableRecordError, match="got NoneType"):
        serde.decode(None, SyncRequested)  # type: ignore[arg-type]


def test_confluent_frame_without_registry_says_what_to_configure() -> None:
    with pytest.raises(UndecodableRecordError, match="SCHEMA_REGISTRY_URL"):
        serde.decode(b"\x00\x00\x00\x00\x07payload", SyncRequested)


def test_truncated_body_is_undecodable() -> None:
    data = serde.encode(EXAMPLES[JobStateChanged])

    with pytest.raises(UndecodableRecordError, match="does not match"):
        serde.decode(data[:-4], JobStateChanged)


def test_trailing_bytes_are_undecodable() -> None:
    data = serde.encode(EXAMPLES[JobStateChanged])

    with pytest.raises(UndecodableRecordError, match="trailing bytes"):
        serde.decode(data + b"\x00", JobStateChanged)


def test_decode_any_finds_the_model_from_the_fingerprint() -> None:
    single = serde.SingleObjectSerde()

    for model, event in EXAMPLES.items():
        decoded = single.decode_any(serde.encode(event))
        assert type(decoded) is model
        assert decoded == event


@given(body=st.binary(max_size=200))
def test_any_body_after_a_known_header_decodes_or_is_undecodable(body: bytes) -> None:
    header = serde.encode(EXAMPLES[JobStateChanged])[:10]
    try:
        event = serde.decode(header + body, JobStateChanged)
    except UndecodableRecordError:
        return
    assert isinstance(event, JobStateChanged)


@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    # A random prefix matching C3 01 and a known 8-byte fingerprint is astronomically unlikely.
    with pytest.raises(UndecodableRecordError):
        serde.decode(data, SyncRequested)


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        SyncRequested(user_id="u", sync_id="s", full=False, requested_at=datetime(2026, 1, 1))  # noqa: DTZ001


def test_timestamps_become_utc_milliseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    event = SyncRequested(
        user_id="u",
        sync_id="s",
        full=False,
        requested_at=datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=plus_two),
    )

    assert event.requested_at == datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert serde.decode(serde.encode(event), SyncRequested) == event


def test_vectors_are_stored_as_32_bit_floats() -> None:
    chunk = EmbeddedChunk(index=0, text="x", vector=[0.1])

    assert chunk.vector == [pytest.approx(0.1, rel=1e-7)]
    assert chunk.vector[0] != 0.1  # rounded to float32, so Avro gives back exactly this value


def test_int_fields_refuse_values_outside_32_bits() -> None:
    event = EXAMPLES[JobStateChanged]

    with pytest.raises(ValidationError):
        JobStateChanged.model_validate({**event.model_dump(), "attempts": 2**31})


def test_default_store_indexes_current_and_released_fingerprints() -> None:
    store = default_store()

    for model in EVENT_MODELS:
        current = store.current(model)
        assert store.by_fingerprint(current.fingerprint) is current


def test_encoding_a_value_the_schema_cannot_hold_is_permanent() -> None:
    # model_construct skips validation, as a buggy caller might: the serde still classifies it.
    broken = SyncRequested.model_construct(
        user_id="u", sync_id="s", full=True, reason=None, requested_at=datetime.now(UTC)
    )

    with pytest.raises(PermanentError, match=r"cannot encode .* on field reason"):
        serde.encode(broken)


# --- data written with older and newer schema versions -----------------------------------------


def _sync_requested_v0() -> dict[str, Any]:
    """A pretend earlier release of SyncRequested without the defaulted ``reason`` field."""
    schema = copy.deepcopy(load_current_schema(SyncRequested))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "reason"]
    return schema


def _frame(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(schema, named_schemas={}), record)
    return b"\xc3\x01" + schema_fingerprint(schema) + buffer.getvalue()


def test_data_written_with_a_released_older_version_still_decodes() -> None:
    old = _sync_requested_v0()
    store = SchemaStore(models=())
    store.add(SyncRequested, load_current_schema(SyncRequested), {1: old})
    record = {"user_id": "u", "sync_id": "s", "full": True, "requested_at": datetime.now(UTC)}

    event = serde.SingleObjectSerde(store).decode(_frame(old, record), SyncRequested)

    assert event.reason == "requested"  # filled from the current schema's default
    assert event.sync_id == "s"


def test_data_from_an_unreleased_newer_version_is_undecodable() -> None:
    newer = copy.deepcopy(load_current_schema(SyncRequested))
    newer["fields"].append({"name": "priority", "type": "int", "default": 0, "doc": "x"})
    record = {**EXAMPLES[SyncRequested].model_dump(), "priority": 3}

    with pytest.raises(UndecodableRecordError, match="upgrade this consumer"):
        serde.decode(_frame(newer, record), SyncRequested)


def test_a_framed_body_is_the_encoded_event_for_every_model() -> None:
    # CPU pool workers send bodies back; the parent's frame must give the very same bytes.
    single_object = serde.SingleObjectSerde()
    for model, event in example_events().items():
        body = serde.encode_body(event)
        assert single_object.frame(model, body) == single_object.encode(event)
        fields = event.model_dump()
        assert single_object.encode_fields(model, fields) == single_object.encode(event)
