"""Rebuild RFC 822 bytes from a Gmail ``full`` MessagePart tree (what ``threads.get`` returns).

Pure. The result is equivalent MIME, not the original bytes: header values are re-encoded
(RFC 2047 when not ASCII), bodies re-encoded with their ``Content-Transfer-Encoding``, preambles
and epilogues dropped. Parts behind an ``attachmentId`` cannot be rebuilt: check
``has_attachment_refs`` first and fetch those messages as ``raw``.
"""

from __future__ import annotations

import base64
import quopri
import re
from collections.abc import Iterable
from email.header import Header
from email.utils import formataddr, getaddresses
from typing import Any

Part = dict[str, Any]
_ADDRESS_HEADERS = {"from", "to", "cc", "bcc", "reply-to", "sender", "delivered-to"}


def has_attachment_refs(part: Part) -> bool:
    """Whether any part's body is only an ``attachmentId``."""
    if "attachmentId" in part.get("body", {}):
        return True
    return any(has_attachment_refs(child) for child in part.get("parts", []))


def _header_line(name: str, value: str) -> str:
    if value.isascii():
        return f"{name}: {value}"
    if name.lower() in _ADDRESS_HEADERS:
        pairs = getaddresses([value])
        return f"{name}: " + ", ".join(formataddr(pair, charset="utf-8") for pair in pairs)
    return f"{name}: {Header(value, 'utf-8').encode()}"


def _encode_body(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        text = base64.encodebytes(data).replace(b"\n", b"\r\n")
        return text
    if encoding == "quoted-printable":
        return quopri.encodestring(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data


def _header(part: Part, name: str) -> str:
    for header in part.get("headers", []):
        if header["name"].lower() == name:
            return str(header["value"])
    return ""


def rebuild_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """RFC 822 bytes of a message with just these headers and an empty body.

    What a ``gmail.metadata`` grant can fetch: ``format=metadata`` gives headers, never a body.
    """
    head = "\r\n".join(_header_line(name, value) for name, value in headers)
    return head.encode("utf-8") + b"\r\n\r\n"


def rebuild_mime(part: Part) -> bytes:
    """Serialize one MessagePart (the root ``payload`` gives a whole message)."""
    head = "\r\n".join(_header_line(h["name"], h["value"]) for h in part.get("headers", []))
    out = head.encode("utf-8") + b"\r\n\r\n"
    children = part.get("parts")
    if children:
        match = re.search(r'boundary="?([^";]+)"?', _header(part, "content-type"), re.IGNORECASE)
        boundary = (match.group(1) if match else "inboxflow-rebuilt").encode()
        for child in children:
            out += b"--" + boundary + b"\r\n" + rebuild_mime(child) + b"\r\n"
        return out + b"--" + boundary + b"--\r\n"
    data = part.get("body", {}).get("data") or ""
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return out + _encode_body(raw, _header(part, "content-transfer-encoding").strip().lower())
