"""Confluent wire format against a real schema registry (Apicurio's Confluent-compatible API).

The session's registry (``schema_registry_url``, from ``devstack.schema_registry``) answers the
client's HTTP calls the way a Confluent registry does, errors included. Only a registry failing
with a 5xx cannot be had from it on demand: a tiny HTTP server on loopback plays that part.
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from schemas import serde
from schemas.errors import PermanentError, TransientError, UndecodableRecordError
from schemas.examples import example_events
from schemas.models import EVENT_MODELS, JobStateChanged, SyncRequested
from schemas.registry import CONTENT_TYPE, SchemaRegistryClient


class CountingClient(SchemaRegistryClient):
    """The real client, counting the HTTP calls it makes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[tuple[str, object]] = []

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        self.calls.append(("register", subject))
        return super().register(subject, schema)

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        self.calls.append(("get_schema", schema_id))
        return super().get_schema(schema_id)


def _registry_json(url: str, path: str, method: str = "GET", body: Any = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the test registry on loopback
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": CONTENT_TYPE},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def test_encode_uses_confluent_framing_with_the_registered_id(schema_registry_url: str) -> None:
    registry_serde = serde.serde_for(schema_registry_url)
    event = example_events()[JobStateChanged]

    data = registry_serde.encode(event)

    latest = _registry_json(
        schema_registry_url, "/subjects/inboxflow.events.JobStateChanged/versions/latest"
    )
    assert data[:5] == b"\x00" + int(latest["id"]).to_bytes(4, "big")
    assert registry_serde.decode(data, JobStateChanged) == event
    # What a CPU pool worker's body becomes once the owner of the registry frames it.
    assert registry_serde.frame(JobStateChanged, serde.encode_body(event)) == data


def test_a_fresh_consumer_fetches_the_writer_schema_by_id(schema_registry_url: str) -> None:
    data = serde.serde_for(schema_registry_url).encode(example_events()[SyncRequested])
    client = CountingClient(schema_registry_url)
    consumer = serde.RegistrySerde(client)

    assert consumer.decode(data, SyncRequested) == example_events()[SyncRequested]
    assert consumer.decode(data, SyncRequested) == example_events()[SyncRequested]
    assert client.calls == [("get_schema", int.from_bytes(data[1:5], "big"))]  # then cached


def test_register_all_registers_each_event_once(schema_registry_url: str) -> None:
    client = CountingClient(schema_registry_url)
    registry_serde = serde.RegistrySerde(client)

    ids = registry_serde.register_all()
    registry_serde.encode(example_events()[SyncRequested])

    assert set(ids) == {model.avro_full_name() for model in EVENT_MODELS}
    assert len(client.calls) == len(EVENT_MODELS)  # the encode hit the cache
    assert set(_registry_json(schema_registry_url, "/subjects")) >= set(ids)


def test_registering_again_is_idempotent(schema_registry_url: str) -> None:
    first = serde.RegistrySerde(SchemaRegistryClient(schema_registry_url)).register_all()
    second = serde.RegistrySerde(SchemaRegistryClient(schema_registry_url)).register_all()

    assert first == second


def test_registry_serde_still_reads_single_object_frames(schema_registry_url: str) -> None:
    event = example_events()[JobStateChanged]

    assert serde.serde_for(schema_registry_url).decode(serde.encode(event), JobStateChanged) == (
        event
    )


def test_default_serde_refuses_confluent_frames_naming_the_setting(
    schema_registry_url: str,
) -> None:
    data = serde.serde_for(schema_registry_url).encode(example_events()[JobStateChanged])

    with pytest.raises(UndecodableRecordError, match="INBOXFLOW_SCHEMA_REGISTRY_URL") as caught:
        serde.serde_for(None).decode(data, JobStateChanged)
    assert "Confluent" in str(caught.value)


def test_unknown_schema_id_is_undecodable(schema_registry_url: str) -> None:
    with pytest.raises(UndecodableRecordError, match="schema id 99999"):
        serde.serde_for(schema_registry_url).decode(
            b"\x00" + (99999).to_bytes(4, "big") + b"body", SyncRequested
        )


def test_an_incompatible_schema_is_refused_as_permanent(schema_registry_url: str) -> None:
    subject = f"test.Incompatible{uuid.uuid4().hex[:8]}"
    client = SchemaRegistryClient(schema_registry_url)
    fields = [{"name": "a", "type": "int"}]
    client.register(subject, {"type": "record", "name": "R", "fields": fields})
    _registry_json(schema_registry_url, f"/config/{subject}", "PUT", {"compatibility": "BACKWARD"})

    changed = [{"name": "b", "type": "string"}]  # no default: old data cannot be read
    with pytest.raises(PermanentError, match="409"):
        client.register(subject, {"type": "record", "name": "R", "fields": changed})


def test_invalid_schema_is_refused_as_permanent(schema_registry_url: str) -> None:
    with pytest.raises(PermanentError, match="422"):
        SchemaRegistryClient(schema_registry_url).register("test.Invalid", {"type": "nonsense"})


@pytest.fixture
def failing_registry() -> Iterator[str]:
    """A registry stand-in that answers every call with 503, as one under maintenance does."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output clean."""

        def _fail(self) -> None:
            payload = json.dumps({"error_code": 50301, "message": "unavailable"}).encode()
            self.send_response(503)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _fail

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_registry_5xx_is_transient(failing_registry: str) -> None:
    with pytest.raises(TransientError, match="503"):
        serde.serde_for(failing_registry).encode(example_events()[SyncRequested])
    with pytest.raises(TransientError, match="503"):
        serde.serde_for(failing_registry).decode(b"\x00\x00\x00\x00\x01", SyncRequested)


def test_unreachable_registry_is_transient() -> None:
    client = SchemaRegistryClient("http://127.0.0.1:9", timeout=2.0)  # discard port: refused

    with pytest.raises(TransientError, match="unreachable"):
        client.get_schema(1)
