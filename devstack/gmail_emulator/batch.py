"""The batch endpoint's wire format: parse multipart/mixed requests, build multipart responses.

Requests follow google-api-python-client (``application/http`` parts, ``Content-ID: <uuid + n>``,
LF line endings); responses use CRLF after the inner status line and headers because the client
splits the body on ``\\r\\n\\r\\n``. Pure functions; dispatch happens in ``server.py``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32
from typing import Any
from urllib.parse import urlsplit

MAX_PARTS = 100


@dataclass(frozen=True)
class InnerRequest:
    """One part of a batch: its Content-ID and the HTTP request it carries."""

    content_id: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class BatchFormatError(ValueError):
    """The body is not a multipart/mixed batch."""


def _parse_inner(content_id: str, payload: bytes) -> InnerRequest:
    text = payload.replace(b"\r\n", b"\n")
    head, _, body = text.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").split("\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise BatchFormatError(f"bad request line {lines[0]!r}") from exc
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    parts = urlsplit(target)
    return InnerRequest(content_id, method.upper(), parts.path, parts.query, headers, body)


def parse_batch(content_type: str, body: bytes) -> list[InnerRequest]:
    """Split a batch body into its inner requests, in order."""
    if not content_type.lower().startswith("multipart/mixed"):
        raise BatchFormatError("batch requests must be multipart/mixed")
    envelope = b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    message = BytesParser(policy=compat32).parsebytes(envelope)
    if not message.is_multipart():
        raise BatchFormatError("no parts found")
    requests = []
    for index, part in enumerate(message.get_payload()):
        payload = part.get_payload(decode=False)
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
        content_id = str(part.get("Content-ID") or f"<item{index}>")
        requests.append(_parse_inner(content_id, raw))
    return requests


_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def response_content_id(request_id: str) -> str:
    """``<x + 1>`` -> ``<response-x + 1>``, as Google answers."""
    inner = (
        request_id[1:-1] if request_id.startswith("<") and request_id.endswith(">") else request_id
    )
    return f"<response-{inner}>"


def build_batch_response(
    parts: list[tuple[str, int, dict[str, Any], dict[str, str]]],
) -> tuple[str, bytes]:
    """Return (content type, body) for ``(content_id, status, json_body, extra_headers)`` parts."""
    boundary = f"batch_{uuid.uuid4().hex}"
    chunks = []
    for content_id, status, payload, headers in parts:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if status == 204:  # no body, no content type (users.stop)
            chunks.append(
                f"--{boundary}\r\nContent-Type: application/http\r\n"
                f"Content-ID: {response_content_id(content_id)}\r\n\r\n"
                f"HTTP/1.1 204 No Content\r\n{extra}\r\n\r\n"
            )
            continue
        chunks.append(
            f"--{boundary}\r\nContent-Type: application/http\r\n"
            f"Content-ID: {response_content_id(content_id)}\r\n\r\n"
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json; charset=UTF-8\r\n{extra}\r\n"
            f"{json.dumps(payload)}\r\n"
        )
    chunks.append(f"--{boundary}--\r\n")
    return f"multipart/mixed; boundary={boundary}", "".join(chunks).encode("utf-8")
