"""streams.stages.base.Decoder: one decode per record, nothing kept past the record."""

from __future__ import annotations

import gc

import pytest

from schemas.errors import UndecodableRecordError
from schemas.examples import example_events
from schemas.models import EmailNormalized, Event
from schemas.serde import SingleObjectSerde
from streams.runtime.stage import Record
from streams.stages.base import Decoder


class CountingSerde(SingleObjectSerde):
    """Counts decodes, to see which calls reach the wire format."""

    def __init__(self) -> None:
        super().__init__()
        self.decodes = 0

    def decode(self, data: bytes, model: type[Event]) -> Event:  # type: ignore[override]
        self.decodes += 1
        return super().decode(data, model)


def _normalized_record(serde: SingleObjectSerde, offset: int = 0) -> Record:
    event = example_events()[EmailNormalized]
    return Record("t", 0, offset, 0, b"u", serde.encode(event))


def test_a_record_is_decoded_once_however_often_it_is_asked_for() -> None:
    serde = CountingSerde()
    decoder = Decoder(serde, EmailNormalized)
    record = _normalized_record(serde)

    first = decoder.decode(record)
    assert decoder.decode(record) is first
    assert decoder.decode_each([record]) == [first]
    assert serde.decodes == 1


def test_an_equal_but_distinct_record_is_decoded_on_its_own() -> None:
    serde = CountingSerde()
    decoder = Decoder(serde, EmailNormalized)
    record = _normalized_record(serde)
    twin = _normalized_record(serde)

    assert decoder.decode(record) == decoder.decode(twin)
    assert serde.decodes == 2


def test_nothing_is_remembered_once_the_record_is_gone() -> None:
    serde = CountingSerde()
    decoder = Decoder(serde, EmailNormalized)
    records = [_normalized_record(serde, offset) for offset in range(50)]
    for record in records:
        decoder.decode(record)
    assert len(decoder._memo) == 50

    del records, record
    gc.collect()
    assert decoder._memo == {}


def test_an_undecodable_record_raises_every_time() -> None:
    serde = CountingSerde()
    decoder = Decoder(serde, EmailNormalized)
    bad = Record("t", 0, 0, 0, b"u", b"\xc3\x01garbage")

    for _ in range(2):
        with pytest.raises(UndecodableRecordError):
            decoder.decode(bad)
    assert serde.decodes == 2
