"""FULL_TRANSITIVE compatibility of the current schemas against every released version.

FULL: a reader on the new schema reads data written with each old one (backward) and a reader on
each old schema reads data written with the new one (forward). TRANSITIVE: against every released
version, not only the last, because topics are replayed from the start for years.

What that allows, in practice:
- add a field only with a ``default``; remove a field only if it had one;
- never rename a field or record (use ``aliases``), never change a type except Avro promotions
  that hold both ways (none do: ``int`` -> ``long`` breaks the forward direction);
- add an enum symbol only to an enum that has a ``default`` (every inboxflow enum defaults to
  ``unknown`` for this reason); never remove a symbol.

An incompatible change needs a new major version: a new ``.v<N+1>`` topic and a new record.

The checker is the Apache ``avro`` package's (``avro.compatibility``), an implementation
independent of fastavro, which writes the bytes. Used by tests and tools; never on the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.models import EVENT_MODELS, Event
from schemas.store import Schema, load_current_schema, load_released_schemas


@dataclass(frozen=True)
class Incompatibility:
    """One direction in which two schema versions cannot read each other."""

    record: str
    released_version: int
    direction: str  # "backward": new reads old data; "forward": old reads new data
    messages: tuple[str, ...]
    locations: tuple[str, ...]

    def __str__(self) -> str:
        """Return a one-line explanation an engineer can act on."""
        reader, writer = ("current", f"v{self.released_version}")
        if self.direction == "forward":
            reader, writer = writer, reader
        return (
            f"{self.record}: a {reader} reader cannot read {writer} data "
            f"({self.direction}) at {', '.join(self.locations)}: {'; '.join(self.messages)}"
        )


def _parse(schema: Schema) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(schema))


def _check(reader: Schema, writer: Schema) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(_parse(reader), _parse(writer))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    return tuple(sorted(result.messages)), tuple(sorted(result.locations))


def full_transitive_incompatibilities(
    record: str, current: Schema, released: Mapping[int, Schema]
) -> list[Incompatibility]:
    """Return every way ``current`` breaks FULL compatibility with any ``released`` version.

    Pure: takes schemas, returns findings; an empty list means compatible.
    """
    found: list[Incompatibility] = []
    for version, old in released.items():
        for direction, reader, writer in (("backward", current, old), ("forward", old, current)):
            problem = _check(reader, writer)
            if problem is not None:
                found.append(Incompatibility(record, version, direction, *problem))
    return found


def check_models(models: Iterable[type[Event]] = EVENT_MODELS) -> list[Incompatibility]:
    """Return the incompatibilities of each model's current ``.avsc`` with its released versions."""
    found: list[Incompatibility] = []
    for model in models:
        found += full_transitive_incompatibilities(
            model.avro_full_name(), load_current_schema(model), load_released_schemas(model)
        )
    return found
