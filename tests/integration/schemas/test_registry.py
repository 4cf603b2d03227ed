"""Confluent wire format against a small schema registry served over HTTP on loopback.

The server implements the two REST calls the client makes (register under a subject, fetch by
id) the way the registry answers them, so the client's HTTP, JSON and error handling run for real.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from schemas import serde
from schemas.errors import PermanentError, TransientError, UndecodableRecordError
from schemas.examples import example_events
from schemas.models import EVENT_MODELS, JobStateChanged, SyncRequested
from schemas.registry import SchemaRegistryClient


class _Registry:
    """In-memory registry state: global ids per distinct schema text, subjects per id."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.fail_with: int | None = None
        self.requests: list[tuple[str, str]] = []


def _handler(state: _Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output clean."""

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            state.requests.append(("POST", self.path))
            if state.fail_with:
                self._answer(state.fail_with, {"error_code": state.fail_with, "message": "no"})
                return
            parts = self.path.split("/")  # /subjects/<subject>/versions
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["schema"]
            schema_id = state.ids.setdefault(text, len(state.ids) + 1)
            state.schemas[schema_id] = text
            state.subjects.setdefault(parts[2], []).append(schema_id)
            self._answer(200, {"id": schema_id})

        def do_GET(self) -> None:
            state.requests.append(("GET", self.path))
            schema_id = int(self.path.rsplit("/", 1)[1])  # /schemas/ids/<id>
            if schema_id not in state.schemas:
                self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                return
            self._answer(200, {"schema": state.schemas[schema_id]})

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[_Registry, str]]:
    state = _Registry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_encode_uses_confluent_framing_with_the_registered_id(
    registry: tuple[_Registry, str],
) -> None:
    state, url = registry
    registry_serde = serde.serde_for(url)
    event = example_events()[JobStateChanged]

    data = registry_serde.encode(event)

    schema_id = state.subjects["inboxflow.events.JobStateChanged"][0]
    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    assert registry_serde.decode(data, JobStateChanged) == event


def test_a_fresh_consumer_fetches_the_writer_schema_by_id(
    registry: tuple[_Registry, str],
) -> None:
    state, url = registry
    data = serde.serde_for(url).encode(example_events()[SyncRequested])
    consumer = serde.serde_for(url)

    assert consumer.decode(data, SyncRequested) == example_events()[SyncRequested]
    assert state.requests[-1] == ("GET", f"/schemas/ids/{int.from_bytes(data[1:5], 'big')}")


def test_register_all_registers_each_event_once(registry: tuple[_Registry, str]) -> None:
    state, url = registry
    registry_serde = serde.RegistrySerde(SchemaRegistryClient(url))

    ids = registry_serde.register_all()
    registry_serde.encode(example_events()[SyncRequested])

    assert set(ids) == {model.avro_full_name() for model in EVENT_MODELS}
    assert len(state.requests) == len(EVENT_MODELS)  # the encode hit the cache


def test_registry_serde_still_reads_single_object_frames(registry: tuple[_Registry, str]) -> None:
    _, url = registry
    event = example_events()[JobStateChanged]

    assert serde.serde_for(url).decode(serde.encode(event), JobStateChanged) == event


def test_unknown_schema_id_is_undecodable(registry: tuple[_Registry, str]) -> None:
    _, url = registry

    with pytest.raises(UndecodableRecordError, match="schema id 99"):
        serde.serde_for(url).decode(b"\x00\x00\x00\x00\x63body", SyncRequested)


def test_registry_5xx_is_transient_and_4xx_permanent(registry: tuple[_Registry, str]) -> None:
    state, url = registry
    event = example_events()[SyncRequested]

    state.fail_with = 503
    with pytest.raises(TransientError, match="503"):
        serde.serde_for(url).encode(event)
    state.fail_with = 409
    with pytest.raises(PermanentError, match="409"):
        serde.serde_for(url).encode(event)


def test_unreachable_registry_is_transient(registry: tuple[_Registry, str]) -> None:
    _, url = registry
    client = SchemaRegistryClient("http://127.0.0.1:9", timeout=2.0)  # discard port: refused

    with pytest.raises(TransientError, match="unreachable"):
        client.get_schema(1)
    assert url  # the live fixture is not what failed
