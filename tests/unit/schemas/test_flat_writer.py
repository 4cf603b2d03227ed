"""The flat-record writer writes fastavro's bytes exactly, refuses what strict fastavro does."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.flat_writer import flat_writer
from schemas.models import EmailNormalized, JobStateChanged, MessageDiscovered
from schemas.store import default_store

SYMBOLS = [f"s{i}" for i in range(70)]  # past the one-byte varints of an enum index
EVERY_KIND = parse_schema(
    {
        "type": "record",
        "name": "test.EveryKind",
        "fields": [
            {"name": "n", "type": "null"},
            {"name": "b", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "s", "type": "string"},
            {"name": "y", "type": "bytes"},
            {"name": "e", "type": {"type": "enum", "name": "test.E", "symbols": SYMBOLS}},
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "ns", "type": ["null", "string"]},
            {"name": "sn", "type": ["long", "null"]},
        ],
    },
    named_schemas={},
)
INTS = st.integers(-(2**31), 2**31 - 1)
LONGS = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=300)  # lengths past one varint byte
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# hypothesis bounds are naive; the values drawn are aware.
TIMES = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def fastavro_bytes(parsed: Any, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parsed, record, strict=True)
    return buffer.getvalue()


def flat(parsed: Any) -> Any:
    writer = flat_writer(parsed)
    assert writer is not None
    return writer


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {
            "n": st.none(),
            "b": st.booleans(),
            "i": INTS,
            "l": LONGS,
            "f": st.floats(width=32),
            "d": st.floats(),
            "s": TEXT,
            "y": st.binary(max_size=300),
            "e": st.sampled_from(SYMBOLS),
            "t": st.one_of(TIMES, st.integers(-(2**50), 2**50)),
            "ns": st.one_of(st.none(), TEXT),
            "sn": st.one_of(st.none(), LONGS),
        }
    )
)
def test_every_kind_is_written_as_fastavro_writes_it(record: dict[str, Any]) -> None:
    assert flat(EVERY_KIND)(record) == fastavro_bytes(EVERY_KIND, record)


@settings(max_examples=200)
@given(
    user=TEXT,
    subject=TEXT,
    batch=st.one_of(st.none(), TEXT),
    error=st.one_of(st.none(), st.tuples(TEXT, st.sampled_from(["transient", "quota"]))),
    attempts=st.integers(0, 2**31 - 1),
    version=LONGS,
    at=TIMES,
)
def test_job_states_read_back_as_written(
    user: str,
    subject: str,
    batch: str | None,
    error: tuple[str, str] | None,
    attempts: int,
    version: int,
    at: datetime,
) -> None:
    parsed = default_store().current(JobStateChanged).parsed
    record = {
        "job_id": f"embed:{user}:{subject}",
        "user_id": user,
        "kind": "embed",
        "status": "retrying" if error else "done",
        "attempts": attempts,
        "batch_id": batch,
        "subject_id": subject,
        "last_error": error[0] if error else None,
        "last_error_class": error[1] if error else None,
        "version": version,
        "occurred_at": (at - EPOCH) // timedelta(milliseconds=1),
    }
    body = flat(parsed)(record)
    assert body == fastavro_bytes(parsed, record)
    back = schemaless_reader(io.BytesIO(body), parsed, None)
    assert back["occurred_at"] == EPOCH + timedelta(milliseconds=record["occurred_at"])
    assert {k: v for k, v in back.items() if k != "occurred_at"} == {
        k: v for k, v in record.items() if k != "occurred_at"
    }


def test_the_serde_writes_flat_events_with_it_and_nested_ones_with_fastavro() -> None:
    store = default_store()
    assert store.current(JobStateChanged).flat is not None
    assert store.current(MessageDiscovered).flat is not None
    assert store.current(EmailNormalized).flat is None  # arrays of records
    assert flat_writer({"type": "enum", "name": "x.E", "symbols": ["a"]}) is None


def test_wider_unions_and_other_logical_types_are_left_to_fastavro() -> None:
    for field_type in (
        ["null", "string", "long"],
        ["string", "long"],
        {"type": "int", "logicalType": "date"},
        {"type": "array", "items": "string"},
    ):
        schema = {"type": "record", "name": "x.R", "fields": [{"name": "a", "type": field_type}]}
        assert flat_writer(parse_schema(schema, named_schemas={})) is None


def good() -> dict[str, Any]:
    return {
        "n": None,
        "b": True,
        "i": 1,
        "l": 2,
        "f": 1.5,
        "d": 2.5,
        "s": "x",
        "y": b"y",
        "e": "s1",
        "t": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=5),
        "ns": None,
        "sn": 3,
    }


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"i": 2**31}, ValueError),  # past an Avro int
        ({"l": -(2**63) - 1}, ValueError),
        ({"i": "1"}, TypeError),
        ({"s": b"bytes"}, TypeError),
        ({"y": "text"}, TypeError),
        ({"b": 1}, TypeError),
        ({"n": 0}, TypeError),
        ({"d": "2.5"}, TypeError),
        ({"e": "not-a-symbol"}, ValueError),
        ({"ns": 5}, TypeError),
        ({"extra": 1}, ValueError),
    ],
)
def test_values_that_do_not_fit_are_refused(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        flat(EVERY_KIND)({**good(), **change})


def test_a_missing_field_is_refused() -> None:
    record = good()
    del record["s"]
    with pytest.raises(KeyError):
        flat(EVERY_KIND)(record)
