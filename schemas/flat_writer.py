"""A fast Avro binary writer for flat records, byte-identical to fastavro's.

The runtime writes four or five job-state records for every message it handles, and fastavro's
``schemaless_writer`` costs about 16 us a call on a ten-field record, nearly all of it per-call
set-up (the schema walk, the buffer, the logical-type lookups), not encoding: with it, job states
were the largest share of the normalize agent's own CPU. A record whose fields are all of the
simple kinds below is encoded here instead, by one closure per field built once per schema
(about a quarter of the cost); any other schema (nested records, arrays, maps, wider unions,
other logical types) keeps fastavro (:func:`flat_writer` returns ``None``).

Handled field types: ``null``, ``boolean``, ``int``, ``long`` (with or without
``timestamp-millis``), ``float``, ``double``, ``string``, ``bytes``, enums, and a union of ``null``
with one of those. Errors match fastavro's ``strict=True`` in kind: a missing or extra field, a
value of the wrong type or out of range, an unknown enum symbol raise ``ValueError``,
``TypeError`` or ``KeyError`` (the serde turns them into ``PermanentError``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["flat_writer"]

_Put = Callable[[bytearray, Any], None]

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = _EPOCH.replace(tzinfo=None)  # fastavro reads a naive time as UTC
# Zigzag varints of the values that take one byte: most lengths, enum indexes, union branches.
_SMALL = [bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64)]


def _varint(out: bytearray, value: int) -> None:
    if -64 <= value < 64:
        out += _SMALL[value + 64]
        return
    n = (value << 1) ^ (value >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _integer(low: int, high: int, kind: str) -> _Put:
    def put(out: bytearray, value: Any) -> None:
        if not isinstance(value, int):
            raise TypeError(f"{kind} expected, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{value} does not fit an Avro {kind}")
        _varint(out, value)

    return put


def _put_timestamp_millis(out: bytearray, value: Any) -> None:
    if isinstance(value, datetime):
        delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
        value = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    _put_long(out, value)


def _put_null(out: bytearray, value: Any) -> None:
    if value is not None:
        raise TypeError(f"null expected, got {type(value).__name__}")


def _put_boolean(out: bytearray, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"boolean expected, got {type(value).__name__}")
    out.append(1 if value else 0)


def _put_string(out: bytearray, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"string expected, got {type(value).__name__}")
    data = value.encode()
    _varint(out, len(data))
    out += data


def _put_bytes(out: bytearray, value: Any) -> None:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"bytes expected, got {type(value).__name__}")
    _varint(out, len(value))
    out += value


def _floating(fmt: str) -> _Put:
    packer = struct.Struct(fmt).pack

    def put(out: bytearray, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"number expected, got {type(value).__name__}")
        out += packer(value)

    return put


_put_long = _integer(_LONG_MIN, _LONG_MAX, "long")
_PRIMITIVES: dict[str, _Put] = {
    "null": _put_null,
    "boolean": _put_boolean,
    "int": _integer(_INT_MIN, _INT_MAX, "int"),
    "long": _put_long,
    "float": _floating("<f"),
    "double": _floating("<d"),
    "string": _put_string,
    "bytes": _put_bytes,
}


def _enum(symbols: list[str]) -> _Put:
    encoded: dict[str, bytes] = {}
    for index, symbol in enumerate(symbols):
        varint = bytearray()
        _varint(varint, index)
        encoded[symbol] = bytes(varint)

    def put(out: bytearray, value: Any) -> None:
        try:
            out += encoded[value]
        except (KeyError, TypeError):  # TypeError: an unhashable value
            raise ValueError(f"{value!r} is not a symbol of enum {symbols}") from None

    return put


def _simple(schema: Any) -> _Put | None:
    """The writer of a non-union type, or ``None`` when this module does not handle it."""
    if isinstance(schema, str):
        return _PRIMITIVES.get(schema)
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind == "enum":
        return _enum(list(schema["symbols"]))
    logical = schema.get("logicalType")
    if logical is None:
        return _PRIMITIVES.get(kind) if isinstance(kind, str) else None
    if logical == "timestamp-millis" and kind == "long":
        return _put_timestamp_millis
    return None


def _nullable(put: _Put, null_first: bool) -> _Put:
    # fastavro picks the null branch for None and the other branch for anything else.
    null_tag, value_tag = (b"\x00", b"\x02") if null_first else (b"\x02", b"\x00")

    def put_union(out: bytearray, value: Any) -> None:
        if value is None:
            out += null_tag
        else:
            out += value_tag
            put(out, value)

    return put_union


def _field(schema: Any) -> _Put | None:
    if isinstance(schema, list):
        if len(schema) != 2 or "null" not in schema or schema[0] == schema[1]:
            return None
        other = schema[1] if schema[0] == "null" else schema[0]
        put = _simple(other)
        return None if put is None else _nullable(put, null_first=schema[0] == "null")
    return _simple(schema)


def flat_writer(parsed: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bytes] | None:
    """Return a writer of ``parsed`` (a fastavro-parsed record schema), or ``None`` if not flat.

    The writer takes the record as a mapping with exactly the schema's fields.
    """
    if parsed.get("type") != "record":
        return None
    fields: list[tuple[str, _Put]] = []
    for field in parsed["fields"]:
        put = _field(field["type"])
        if put is None:
            return None
        fields.append((field["name"], put))
    names = frozenset(name for name, _ in fields)

    def write(record: Mapping[str, Any]) -> bytes:
        if len(record) != len(fields) and not names.issuperset(record):
            raise ValueError(f"record has fields the schema lacks: {sorted(set(record) - names)}")
        out = bytearray()
        for name, put in fields:
            put(out, record[name])
        return bytes(out)

    return write
