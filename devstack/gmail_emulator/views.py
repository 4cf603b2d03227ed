"""Render stored messages as Gmail API resources: ``minimal``, ``metadata``, ``full``, ``raw``.

Pure functions of a ``StoredMessage``. ``full`` follows Gmail's MessagePart tree: ``partId`` "" for
the root, then "0", "0.1"...; header values RFC 2047-decoded; leaf bodies transfer-decoded and
base64url-encoded; parts with a filename (and non-text leaves) sit behind an ``attachmentId``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from devstack.gmail_emulator.mailbox import StoredMessage

Resource = dict[str, Any]


def b64url(data: bytes) -> str:
    """Base64url without stripping padding (Gmail pads ``raw``)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def parse_raw(raw: bytes) -> Message:
    """Parse RFC 822 bytes leniently, as Gmail does."""
    return BytesParser(policy=compat32).parsebytes(raw)


def decode_header_value(value: str) -> str:
    """Unfold and RFC 2047-decode one header value; undecodable stays as sent."""
    unfolded = re.sub(r"\r?\n[ \t]", " ", str(value))
    try:
        return str(make_header(decode_header(unfolded)))
    except (LookupError, UnicodeDecodeError, ValueError):
        return unfolded


def attachment_id(message_id: str, part_id: str) -> str:
    """Deterministic attachment id for a message part."""
    digest = hashlib.sha256(f"{message_id}/{part_id}".encode()).digest()
    return "ANGjdJ" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _leaf_bytes(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _is_attachment(part: Message) -> bool:
    return bool(part.get_filename()) or part.get_content_maintype() not in ("text", "multipart")


def _headers(part: Message, wanted: set[str] | None = None) -> list[dict[str, str]]:
    return [
        {"name": name, "value": decode_header_value(value)}
        for name, value in part.items()
        if wanted is None or name.lower() in wanted
    ]


def _part(message_id: str, part: Message, part_id: str) -> Resource:
    resource: Resource = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": _headers(part),
    }
    children = part.get_payload() if part.is_multipart() else None
    if isinstance(children, list):
        resource["body"] = {"size": 0}
        prefix = f"{part_id}." if part_id else ""
        resource["parts"] = [
            _part(message_id, child, f"{prefix}{i}") for i, child in enumerate(children)
        ]
        return resource
    data = _leaf_bytes(part)
    if _is_attachment(part):
        resource["body"] = {"attachmentId": attachment_id(message_id, part_id), "size": len(data)}
    else:
        resource["body"] = {"size": len(data), "data": b64url(data)} if data else {"size": 0}
    return resource


def find_part(message: Message, part_id: str) -> Message | None:
    """Return the part with ``part_id`` (the scheme ``_part`` numbers with)."""
    node = message
    for index in [int(i) for i in part_id.split(".")] if part_id else []:
        children = node.get_payload()
        if not isinstance(children, list) or index >= len(children):
            return None
        child = children[index]
        if not isinstance(child, Message):
            return None
        node = child
    return node


def attachment_ids(msg: StoredMessage) -> dict[str, str]:
    """Attachment id -> part id for every part served behind an ``attachmentId``."""
    found: dict[str, str] = {}

    def walk(node: Resource) -> None:
        if "attachmentId" in node["body"]:
            found[node["body"]["attachmentId"]] = node["partId"]
        for child in node.get("parts", []):
            walk(child)

    walk(_part(msg.id, parse_raw(msg.raw), ""))
    return found


def attachment_body(msg: StoredMessage, part_id: str) -> bytes | None:
    """Decoded bytes of one attachment part."""
    part = find_part(parse_raw(msg.raw), part_id)
    return None if part is None else _leaf_bytes(part)


def _text_for_snippet(message: Message) -> str:
    html_text = ""
    for part in message.walk():
        if part.is_multipart() or part.get_filename():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        charset = part.get_content_charset() or "us-ascii"
        try:
            text = _leaf_bytes(part).decode(charset, "replace")
        except LookupError:
            text = _leaf_bytes(part).decode("latin-1")
        if ctype == "text/plain":
            return text
        html_text = html_text or html.unescape(re.sub(r"<[^>]*>", " ", text))
    return html_text


def snippet(message: Message) -> str:
    """Gmail-like snippet: first ~200 characters of the text, whitespace collapsed, HTML-escaped."""
    text = " ".join(_text_for_snippet(message).split())
    return html.escape(text[:200])


def message_resource(
    msg: StoredMessage, fmt: str = "full", metadata_headers: list[str] | None = None
) -> Resource:
    """Render ``msg`` in ``fmt`` (``minimal``/``metadata``/``full``/``raw``, any case)."""
    fmt = fmt.lower()
    resource: Resource = {
        "id": msg.id,
        "threadId": msg.thread_id,
        "labelIds": list(msg.label_ids),
        "historyId": str(msg.history_id),
        "internalDate": str(msg.internal_date),
        "sizeEstimate": len(msg.raw),
    }
    parsed = parse_raw(msg.raw)
    resource["snippet"] = snippet(parsed)
    if fmt == "minimal":
        return resource
    if fmt == "raw":
        resource["raw"] = b64url(msg.raw)
    elif fmt == "metadata":
        wanted = {h.lower() for h in metadata_headers} if metadata_headers else None
        resource["payload"] = {
            "partId": "",
            "mimeType": parsed.get_content_type(),
            "filename": "",
            "headers": _headers(parsed, wanted),
            "body": {"size": 0},
        }
    else:
        resource["payload"] = _part(msg.id, parsed, "")
    return resource
