"""A small client of the Confluent schema registry REST API: register a schema, fetch one by id.

Only the two calls the Confluent wire format needs. Blocking (``urllib``), because ``serde``
calls it at most once per schema per process and caches the answer; callers on an event loop
should warm it at start-up (``RegistrySerde.register_all``) or use ``asyncio.to_thread``.

Failures are classified: an unreachable registry or a 5xx is TRANSIENT, a refused schema
(409 incompatible, 422 invalid) is PERMANENT, an unknown schema id is an
``UndecodableRecordError``. Never reads the environment.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from schemas.errors import PermanentError, TransientError, UndecodableRecordError

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryClient:
    """Registers and fetches Avro schemas over the registry's REST API."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        """Create a client.

        Args:
            url: base URL of the registry, e.g. ``http://127.0.0.1:8081``.
            timeout: seconds per HTTP request (default 10).
        """
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in {"http", "https"}:
            raise ValueError(f"schema registry URL must be http(s), got {url!r}")
        self._base = url.rstrip("/")
        self._timeout = timeout

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` and return its global id (idempotent).

        Raises:
            TransientError: registry unreachable or 5xx.
            PermanentError: the registry refused the schema (incompatible or invalid).
        """
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        body = json.dumps({"schema": json.dumps(schema), "schemaType": "AVRO"}).encode()
        answer = self._request("POST", path, body)
        schema_id = int(answer["id"])
        logger.info("registered schema subject=%s id=%d", subject, schema_id)
        return schema_id

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        """Return the schema with global id ``schema_id``.

        Raises:
            UndecodableRecordError: the registry has no schema with that id.
            TransientError: registry unreachable or 5xx.
        """
        try:
            answer = self._request("GET", f"/schemas/ids/{schema_id}", None)
        except PermanentError as exc:
            raise UndecodableRecordError(f"schema id {schema_id} unknown to the registry") from exc
        schema: dict[str, Any] = json.loads(answer["schema"])
        return schema

    def _request(self, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            self._base + path,
            data=body,
            method=method,
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            message = f"schema registry {method} {path} answered {exc.code}: {detail}"
            if exc.code >= 500:
                raise TransientError(message) from exc
            raise PermanentError(message) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TransientError(f"schema registry {self._base} unreachable: {exc}") from exc
