"""Rebuilding MIME from ``full`` payloads keeps every header and text body."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import default

from devstack.gmail_emulator.generator import generate_messages
from devstack.gmail_emulator.mailbox import StoredMessage
from devstack.gmail_emulator.views import message_resource
from streams.stages.gmail.payload import has_attachment_refs, rebuild_mime


def _texts(raw: bytes) -> list[tuple[str, str]]:
    message = BytesParser(policy=default).parsebytes(raw)
    out = []
    for part in message.walk():
        if part.get_content_maintype() == "text":
            out.append((part.get_content_type(), part.get_content()))
    return out


def test_rebuilt_mime_matches_original_text_and_headers() -> None:
    checked = 0
    for index, generated in enumerate(generate_messages(5, 80, "me@example.com")):
        stored = StoredMessage(f"{index:016x}", "t", generated.raw, ["INBOX"], 0, 1)
        payload = message_resource(stored, "full")["payload"]
        if has_attachment_refs(payload):
            continue
        rebuilt = rebuild_mime(payload)
        original = BytesParser(policy=default).parsebytes(generated.raw)
        again = BytesParser(policy=default).parsebytes(rebuilt)
        for name in ("From", "To", "Subject", "Message-ID", "Date"):
            assert str(again.get(name, "")) == str(original.get(name, "")), name
        assert _texts(rebuilt) == _texts(generated.raw)
        checked += 1
    assert checked > 50
