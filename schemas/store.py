"""The Avro schemas shipped with inboxflow: current ``.avsc`` files, released versions, hashes.

``schemas/avro/<name>.avsc`` is the schema producers write with today. ``schemas/released/<name>/
v<N>.avsc`` keeps every version that ever reached a topic, so that bytes written years ago still
decode (their fingerprint is indexed here) and new versions can be checked against them.

Reads package files only; no network, no Kafka.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.errors import PermanentError, safe_error_text
from schemas.flat_writer import flat_writer

if TYPE_CHECKING:
    # Only for types: a CPU pool worker writes event bodies (``body_writer``) without the models
    # and pydantic (8 MiB less a worker, 33 against 42 MiB at start).
    from schemas.models import Event

Schema = dict[str, Any]
"""A JSON Avro schema as loaded from a ``.avsc`` file."""

_RELEASED_FILE = re.compile(r"^v(\d+)\.avsc$")
_FASTAVRO_FIELD = re.compile(r" on field ([A-Za-z_][A-Za-z0-9_.]*)$")
SOE_MAGIC = b"\xc3\x01"
SOE_HEADER_SIZE = len(SOE_MAGIC) + 8
"""Single-object encoding: ``C3 01``, then the 8-byte fingerprint, then the Avro body."""


def _package_dir(*parts: str) -> resources.abc.Traversable:
    path = resources.files("schemas")
    for part in parts:
        path = path / part
    return path


def schema_stem(model: type[Event]) -> str:
    """Return the file stem of a model's schema (``job_state_changed`` for ``JobStateChanged``)."""
    return model.avro_file.removesuffix(".avsc")


def load_current_schema(model: type[Event]) -> Schema:
    """Return the JSON schema producers write ``model`` with (``schemas/avro/<stem>.avsc``)."""
    return _current_file(model.avro_file)


def _current_file(avro_file: str) -> Schema:
    schema: Schema = json.loads(_package_dir("avro", avro_file).read_text(encoding="utf-8"))
    return schema


@cache
def body_writer(avro_file: str) -> Callable[[Mapping[str, Any]], bytes]:
    """Return a writer of Avro bodies in the current schema of ``schemas/avro/<avro_file>``.

    For a CPU pool worker, which needs no model to write its own typed fields. The writer
    raises ``PermanentError`` for a field that does not fit the schema.
    """
    schema = _current_file(avro_file)
    parsed = parse_schema(schema, named_schemas={})
    full_name = f"{schema.get('namespace')}.{schema['name']}"
    flat = flat_writer(parsed) if isinstance(parsed, dict) else None
    return lambda fields: write_body(full_name, parsed, flat, fields)


def write_body(
    full_name: str,
    parsed: Any,
    flat: Callable[[Mapping[str, Any]], bytes] | None,
    fields: Mapping[str, Any],
) -> bytes:
    """Return the Avro body of ``fields`` in ``parsed`` (fastavro's form; ``flat``: its fast
    writer, if flat); raise ``PermanentError`` naming the field that does not fit."""
    try:
        if flat is not None:
            return flat(fields)
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, fields, strict=True)
        return buffer.getvalue()
    except (ValueError, TypeError, KeyError) as exc:
        # A model that validated but does not fit its schema is a bug in models.py / the .avsc.
        # fastavro's text quotes the value; only the field it names (the schema's) is repeated.
        field = _FASTAVRO_FIELD.search(str(exc))
        where = f" on field {field.group(1)}" if field else ""
        raise PermanentError(f"cannot encode {full_name}: {safe_error_text(exc)}{where}") from exc


def load_released_schemas(model: type[Event]) -> dict[int, Schema]:
    """Return ``{version: schema}`` of every released version of ``model``, oldest first."""
    folder = _package_dir("released", schema_stem(model))
    if not folder.is_dir():
        return {}
    found: dict[int, Schema] = {}
    for entry in folder.iterdir():
        match = _RELEASED_FILE.match(entry.name)
        if match:
            found[int(match.group(1))] = json.loads(entry.read_text(encoding="utf-8"))
    return dict(sorted(found.items()))


def canonical_form(schema: Schema) -> str:
    """Return the Parsing Canonical Form: what the fingerprint is computed over.

    It drops ``doc``, ``default``, ``aliases`` and ``logicalType``, so two schemas with the same
    canonical form have the same binary layout even when their meaning differs.
    """
    canonical: str = to_parsing_canonical_form(parse_schema(schema, named_schemas={}))
    return canonical


def schema_fingerprint(schema: Schema) -> bytes:
    """Return the 8-byte little-endian CRC-64-AVRO fingerprint used by single-object encoding."""
    # fastavro already returns the hex in little-endian byte order (checked against the Apache
    # test vectors in tests/unit/test_schemas_serde.py).
    return bytes.fromhex(fingerprint(canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True)
class KnownSchema:
    """One schema version a reader can meet on a topic."""

    model: type[Event]
    full_name: str
    version: int | None  # None: the current file, not (yet) released
    schema: Schema
    parsed: Any  # fastavro's parsed form, built once
    fingerprint: bytes  # 8-byte CRC-64-AVRO, computed once
    # The fast writer of a flat record schema (``schemas.flat_writer``); None: fastavro writes.
    flat: Callable[[Mapping[str, Any]], bytes] | None = None


def _known(model: type[Event], full_name: str, version: int | None, schema: Schema) -> KnownSchema:
    # A fresh named_schemas per schema: versions of one record redefine the same nested names.
    parsed = parse_schema(schema, named_schemas={})
    fingerprint = schema_fingerprint(schema)
    flat = flat_writer(parsed) if isinstance(parsed, dict) else None
    return KnownSchema(model, full_name, version, schema, parsed, fingerprint, flat)


class SchemaStore:
    """Index of the current and released schemas of a set of event models, by fingerprint.

    Built once per process (``default_store()``); lookups are dictionary reads.
    """

    def __init__(self, models: Iterable[type[Event]] | None = None) -> None:
        """Index the packaged current and released schemas of ``models`` (default: all)."""
        if models is None:
            from schemas.models import EVENT_MODELS

            models = EVENT_MODELS
        self._current: dict[type[Event], KnownSchema] = {}
        self._by_fingerprint: dict[bytes, KnownSchema] = {}
        for model in models:
            self.add(model, load_current_schema(model), load_released_schemas(model))

    def add(self, model: type[Event], current: Schema, released: Mapping[int, Schema]) -> None:
        """Index ``model``'s current schema and its released versions (tests pass their own)."""
        full_name = f"{current.get('namespace')}.{current['name']}"
        if full_name != model.avro_full_name():
            raise ValueError(f"{model.avro_file} defines {full_name}, not {model.avro_full_name()}")
        known = _known(model, full_name, None, current)
        self._current[model] = known
        for version, schema in released.items():
            old = _known(model, full_name, version, schema)
            # An unchanged layout shares the fingerprint: the current one wins below.
            self._by_fingerprint.setdefault(old.fingerprint, old)
        self._by_fingerprint[known.fingerprint] = known

    def current(self, model: type[Event]) -> KnownSchema:
        """Return the schema ``model`` is written with; KeyError when the store does not hold it."""
        return self._current[model]

    def by_fingerprint(self, fp: bytes) -> KnownSchema | None:
        """Return the schema with this 8-byte fingerprint, or None when unknown."""
        return self._by_fingerprint.get(fp)

    @property
    def models(self) -> tuple[type[Event], ...]:
        """Return the models this store holds schemas for."""
        return tuple(self._current)

    @property
    def fingerprints(self) -> Mapping[bytes, KnownSchema]:
        """Return every known fingerprint and its schema."""
        return dict(self._by_fingerprint)


@cache
def default_store() -> SchemaStore:
    """Return the process-wide store of every inboxflow event schema."""
    return SchemaStore()
