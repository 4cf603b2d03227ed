"""Hostile bytes for the Avro serde: decoding raises UndecodableRecordError or nothing, quickly.

The frames start with a real header (``C3 01`` and a fingerprint the store knows, current or
released) so that fastavro reads the garbage, which random prefixes would never reach.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas import serde
from schemas.errors import UndecodableRecordError
from schemas.examples import example_events
from schemas.models import EVENT_MODELS, Event, GmailMessageFetched
from schemas.store import default_store

EXAMPLES = example_events()
FINGERPRINTS = sorted(default_store().fingerprints)
# Generous for a record of at most a few kB; a hang would blow through it by orders of magnitude.
MAX_SECONDS_PER_RECORD = 1.0


def zigzag(value: int) -> bytes:
    """Return the Avro varint of a long, for hand-made hostile lengths, counts and timestamps."""
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        low, encoded = encoded & 0x7F, encoded >> 7
        if not encoded:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


_EXTREME_LONGS = st.sampled_from([0, -1, 1, 2**31, -(2**31) - 1, 2**62, -(2**63), 2**63 - 1])
_HOSTILE_CHUNK = st.one_of(
    st.binary(max_size=16),
    _EXTREME_LONGS.map(zigzag),
    st.integers(-(2**63), 2**63 - 1).map(zigzag),
    st.just(b"\xff" * 10),  # an unterminated varint
)


def assert_decodes_or_is_undecodable(data: bytes, model: type[Event]) -> None:
    started = time.perf_counter()
    try:
        event = serde.decode(data, model)
    except UndecodableRecordError:
        pass
    else:
        assert isinstance(event, model)
        assert serde.decode(serde.encode(event), model) == event
    assert time.perf_counter() - started < MAX_SECONDS_PER_RECORD


@settings(max_examples=300, deadline=None)
@given(
    fingerprint=st.sampled_from(FINGERPRINTS),
    model=st.sampled_from(EVENT_MODELS),
    body=st.lists(_HOSTILE_CHUNK, max_size=24).map(b"".join),
)
# A timestamp-millis far past year 9999: fastavro raised OverflowError, not a ValueError.
@example(
    fingerprint=default_store().current(GmailMessageFetched).fingerprint,
    model=GmailMessageFetched,
    body=b"\x02u\x02m\x02t\x02s\x00\x00" + zigzag(2**62),
)
def test_garbage_body_after_a_known_header(
    fingerprint: bytes, model: type[Event], body: bytes
) -> None:
    assert_decodes_or_is_undecodable(serde.SOE_MAGIC + fingerprint + body, model)


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(EVENT_MODELS),
    data=st.data(),
)
def test_mutated_valid_record(model: type[Event], data: st.DataObject) -> None:
    """A valid frame with a slice replaced by hostile bytes (lengths, counts, union indexes)."""
    valid = serde.encode(EXAMPLES[model])
    start = data.draw(st.integers(serde.SOE_HEADER_SIZE, len(valid)), label="start")
    stop = data.draw(st.integers(start, min(len(valid), start + 12)), label="stop")
    chunk = data.draw(_HOSTILE_CHUNK, label="chunk")
    assert_decodes_or_is_undecodable(valid[:start] + chunk + valid[stop:], model)


@settings(max_examples=200, deadline=None)
@given(model=st.sampled_from(EVENT_MODELS), cut=st.integers(0, 10_000))
def test_truncated_valid_record(model: type[Event], cut: int) -> None:
    valid = serde.encode(EXAMPLES[model])
    truncated = valid[: cut % len(valid)]
    with pytest.raises(UndecodableRecordError):
        serde.decode(truncated, model)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512), model=st.sampled_from(EVENT_MODELS))
def test_arbitrary_bytes(data: bytes, model: type[Event]) -> None:
    assert_decodes_or_is_undecodable(data, model)


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_huge_declared_lengths_do_not_allocate(model: type[Event]) -> None:
    """A body that is one huge string/bytes/array length: refused, without reading that much."""
    header = serde.encode(EXAMPLES[model])[: serde.SOE_HEADER_SIZE]
    for length in (2**31, 2**62, 2**63 - 1):
        assert_decodes_or_is_undecodable(header + zigzag(length) + b"x" * 8, model)
