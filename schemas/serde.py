"""Wire format of every inboxflow event: bytes on Kafka <-> pydantic models.

Default: Avro single-object encoding, ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of
the writer schema + Avro binary body. A consumer needs only the ``.avsc`` file to read it.

With a schema registry (``serde_for(url)``): Confluent framing, ``00`` + 4-byte big-endian schema id
+ body; the registry-backed reader also accepts single-object frames, so a topic can move from one
format to the other without a flag day.

Decoding never crashes a consumer on bad input: unknown fingerprints, foreign framings, truncated
or trailing bytes, a record of another type and values the model refuses all raise
``UndecodableRecordError`` (PERMANENT: the record goes to the dead-letter topic). A registry that
cannot be reached raises ``TransientError`` instead, because the same bytes will decode later.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from fastavro import schemaless_reader
from fastavro.schema import SchemaParseException
from pydantic import ValidationError

from schemas.errors import UndecodableRecordError, safe_error_text
from schemas.models import Event
from schemas.registry import SchemaRegistryClient
from schemas.store import SOE_HEADER_SIZE as SOE_HEADER_SIZE
from schemas.store import SOE_MAGIC as SOE_MAGIC
from schemas.store import KnownSchema, SchemaStore, default_store, schema_fingerprint, write_body

T = TypeVar("T", bound=Event)

CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = len(CONFLUENT_MAGIC) + 4


class Serde(Protocol):
    """Turns events into Kafka value bytes and back."""

    def encode(self, event: Event) -> bytes:
        """Return the value bytes of ``event``."""
        ...

    def encode_fields(self, model: type[Event], fields: Mapping[str, Any]) -> bytes:
        """Return the value bytes of a ``model`` event given as its fields, unvalidated.

        For the runtime's own hot records (job states): the Avro writer still refuses a field
        that does not fit the schema (``PermanentError``), but nothing checks pydantic's rules.
        """
        ...

    def frame(self, model: type[Event], body: bytes) -> bytes:
        """Return the value bytes of a ``model`` event whose Avro body is ``body``.

        ``body`` is what :func:`encode_body` gave (the current schema): a CPU pool worker
        encodes, the process that owns the serde (and its registry) only frames.
        """
        ...

    def decode(self, data: bytes, model: type[T]) -> T:
        """Return the ``model`` event in ``data``; raise ``UndecodableRecordError`` if not."""
        ...


def _write_body(known: KnownSchema, fields: Mapping[str, Any]) -> bytes:
    return write_body(known.full_name, known.parsed, known.flat, fields)


def _read_body(body: bytes, writer: KnownSchema, reader: KnownSchema, model: type[T]) -> T:
    if writer.full_name != reader.full_name:
        raise UndecodableRecordError(
            f"record is {writer.full_name}, expected {reader.full_name}; check the topic"
        )
    buffer = io.BytesIO(body)
    try:
        record: Any = schemaless_reader(
            buffer, writer.parsed, None if writer is reader else reader.parsed
        )
    # fastavro raises a mix of these on truncated or garbled input; all mean "not this schema".
    # OverflowError: a timestamp-millis long past what datetime holds (year 10000 and later).
    except (
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        UnicodeDecodeError,
        OverflowError,
    ) as exc:
        raise UndecodableRecordError(
            f"body does not match {writer.full_name} (version {writer.version or 'current'}): "
            f"{safe_error_text(exc)}"
        ) from exc
    if buffer.tell() != len(body):
        raise UndecodableRecordError(
            f"{len(body) - buffer.tell()} trailing bytes after a {writer.full_name} body"
        )
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        raise UndecodableRecordError(
            f"{reader.full_name} fails validation: {safe_error_text(exc)}"
        ) from exc


def _require_bytes(data: object) -> None:
    # A tombstone (None) or a value deserialized upstream must not crash the consumer either.
    if not isinstance(data, bytes):
        raise UndecodableRecordError(f"expected value bytes, got {type(data).__name__}")


def _describe_prefix(data: bytes) -> str:
    return data[:4].hex(" ") or "empty"


class SingleObjectSerde:
    """Avro single-object encoding against the schemas shipped in this package."""

    def __init__(self, store: SchemaStore | None = None) -> None:
        """Create a serde reading fingerprints from ``store`` (default: every inboxflow schema)."""
        self._store = store or default_store()

    def encode(self, event: Event) -> bytes:
        """Return ``C3 01`` + fingerprint + Avro body of ``event`` (current schema)."""
        return self.encode_fields(type(event), event.model_dump())

    def encode_fields(self, model: type[Event], fields: Mapping[str, Any]) -> bytes:
        """Return ``C3 01`` + fingerprint + Avro body of a ``model`` event given as fields."""
        known = self._store.current(model)
        return SOE_MAGIC + known.fingerprint + _write_body(known, fields)

    def frame(self, model: type[Event], body: bytes) -> bytes:
        """Return ``C3 01`` + fingerprint + ``body`` (a current-schema ``model`` body)."""
        return SOE_MAGIC + self._store.current(model).fingerprint + body

    def decode(self, data: bytes, model: type[T]) -> T:
        """Return the ``model`` in single-object-encoded ``data``, resolved to the current schema.

        Raises:
            UndecodableRecordError: foreign framing, unknown fingerprint, another record type,
                bad body or invalid values.
        """
        writer = self.writer_schema(data)
        return _read_body(data[SOE_HEADER_SIZE:], writer, self._store.current(model), model)

    def decode_any(self, data: bytes) -> Event:
        """Return the event in ``data`` as whichever model its fingerprint names (for tools)."""
        writer = self.writer_schema(data)
        model = writer.model
        return _read_body(data[SOE_HEADER_SIZE:], writer, self._store.current(model), model)

    def writer_schema(self, data: bytes) -> KnownSchema:
        """Return the schema a single-object frame was written with.

        Raises:
            UndecodableRecordError: not a single-object frame, or a fingerprint nobody released.
        """
        _require_bytes(data)
        if data[:1] == CONFLUENT_MAGIC and len(data) >= CONFLUENT_HEADER_SIZE:
            schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
            raise UndecodableRecordError(
                f"Confluent wire format (schema id {schema_id}) but no schema registry is "
                "configured; set INBOXFLOW_SCHEMA_REGISTRY_URL for this consumer"
            )
        if data[:2] != SOE_MAGIC or len(data) < SOE_HEADER_SIZE:
            raise UndecodableRecordError(
                f"not an Avro single-object frame (starts {_describe_prefix(data)}, "
                f"{len(data)} bytes)"
            )
        fingerprint = data[2:SOE_HEADER_SIZE]
        writer = self._store.by_fingerprint(fingerprint)
        if writer is None:
            raise UndecodableRecordError(
                f"unknown schema fingerprint {fingerprint.hex()}: written by a newer producer or "
                "another system; upgrade this consumer, then redrive from the DLQ"
            )
        return writer


class RegistrySerde:
    """Confluent wire format backed by a schema registry; reads single-object frames too.

    Subjects follow the record-name strategy (subject = Avro full name, e.g.
    ``inboxflow.events.JobStateChanged``) because ``encode`` does not know the topic.

    The first ``encode`` of each model registers its schema and the first ``decode`` of each
    unseen schema id fetches it: one blocking HTTP call each, cached for the process's life.
    Call ``register_all()`` at start-up to keep that off the hot path.
    """

    def __init__(self, client: SchemaRegistryClient, store: SchemaStore | None = None) -> None:
        """Create a serde that registers and looks up schemas through ``client``."""
        self._client = client
        self._store = store or default_store()
        self._soe = SingleObjectSerde(self._store)
        self._ids: dict[type[Event], int] = {}
        self._writers: dict[int, KnownSchema] = {}

    def register_all(self) -> dict[str, int]:
        """Register the current schema of every known model; return ``{full name: schema id}``."""
        return {model.avro_full_name(): self._schema_id(model) for model in self._store.models}

    def _schema_id(self, model: type[Event]) -> int:
        if model not in self._ids:
            known = self._store.current(model)
            schema_id = self._client.register(known.full_name, known.schema)
            self._ids[model] = schema_id
            self._writers[schema_id] = known
        return self._ids[model]

    def encode(self, event: Event) -> bytes:
        """Return ``00`` + 4-byte schema id + Avro body of ``event``.

        Raises:
            TransientError: the registry cannot be reached (retry later).
            PermanentError: the registry refused the schema (e.g. incompatible).
        """
        return self.encode_fields(type(event), event.model_dump())

    def encode_fields(self, model: type[Event], fields: Mapping[str, Any]) -> bytes:
        """Return ``00`` + 4-byte schema id + Avro body of a ``model`` event given as fields.

        Raises:
            TransientError: the registry cannot be reached (retry later).
            PermanentError: the registry refused the schema (e.g. incompatible).
        """
        return self.frame(model, _write_body(self._store.current(model), fields))

    def frame(self, model: type[Event], body: bytes) -> bytes:
        """Return ``00`` + 4-byte schema id + ``body`` (a current-schema ``model`` body).

        Raises:
            TransientError: the registry cannot be reached (retry later).
            PermanentError: the registry refused the schema (e.g. incompatible).
        """
        return CONFLUENT_MAGIC + self._schema_id(model).to_bytes(4, "big") + body

    def decode(self, data: bytes, model: type[T]) -> T:
        """Return the ``model`` in a Confluent or single-object frame.

        Raises:
            UndecodableRecordError: bad framing, unknown schema id or fingerprint, wrong record.
            TransientError: the registry cannot be reached; the same bytes may decode later.
        """
        _require_bytes(data)
        if data[:2] == SOE_MAGIC:
            return self._soe.decode(data, model)
        if data[:1] != CONFLUENT_MAGIC or len(data) < CONFLUENT_HEADER_SIZE:
            raise UndecodableRecordError(
                f"neither Confluent nor single-object framing (starts {_describe_prefix(data)}, "
                f"{len(data)} bytes)"
            )
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
        writer = self._writer(schema_id)
        reader = self._store.current(model)
        return _read_body(data[CONFLUENT_HEADER_SIZE:], writer, reader, model)

    def _writer(self, schema_id: int) -> KnownSchema:
        cached = self._writers.get(schema_id)
        if cached is not None:
            return cached
        schema = self._client.get_schema(schema_id)  # UndecodableRecordError when unknown
        known = self._store.by_fingerprint(_fingerprint_or_undecodable(schema, schema_id))
        if known is None:
            raise UndecodableRecordError(
                f"registry schema id {schema_id} matches no schema this consumer knows; "
                "upgrade it, then redrive from the DLQ"
            )
        self._writers[schema_id] = known
        return known


def _fingerprint_or_undecodable(schema: Any, schema_id: int) -> bytes:
    try:
        return schema_fingerprint(schema)
    except (SchemaParseException, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UndecodableRecordError(f"registry schema id {schema_id} is not valid Avro") from exc


def serde_for(schema_registry_url: str | None, *, timeout: float = 10.0) -> Serde:
    """Return the deployment's serde: registry-backed when a URL is given, else single-object."""
    if schema_registry_url:
        return RegistrySerde(SchemaRegistryClient(schema_registry_url, timeout=timeout))
    return _DEFAULT


_DEFAULT = SingleObjectSerde()


def encode(event: Event) -> bytes:
    """Return ``event`` in single-object encoding (``C3 01`` + fingerprint + Avro body)."""
    return _DEFAULT.encode(event)


def encode_body(event: Event) -> bytes:
    """Return the Avro body of ``event`` in its current schema, unframed: any serde's ``frame``
    makes it a value. Needs no registry, so a CPU pool worker can call it."""
    return _write_body(default_store().current(type(event)), event.model_dump())


def decode(data: bytes, model: type[T]) -> T:
    """Return the ``model`` event in single-object-encoded ``data``.

    Raises:
        UndecodableRecordError: unknown fingerprint, bad bytes or a record of another type.
    """
    return _DEFAULT.decode(data, model)
