"""The Avro schemas shipped with inboxflow: current ``.avsc`` files, released versions, hashes.

``schemas/avro/<name>.avsc`` is the schema producers write with today. ``schemas/released/<name>/
v<N>.avsc`` keeps every version that ever reached a topic, so that bytes written years ago still
decode (their fingerprint is indexed here) and new versions can be checked against them.

Reads package files only; no network, no Kafka.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.flat_writer import flat_writer
from schemas.models import EVENT_MODELS, Event

Schema = dict[str, Any]
"""A JSON Avro schema as loaded from a ``.avsc`` file."""

_RELEASED_FILE = re.compile(r"^v(\d+)\.avsc$")


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
    text = _package_dir("avro", model.avro_file).read_text(encoding="utf-8")
    schema: Schema = json.loads(text)
    return schema


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

    def __init__(self, models: Iterable[type[Event]] = EVENT_MODELS) -> None:
        """Index the packaged current and released schemas of ``models``."""
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
