"""Real mail from files: an mbox, or a folder of ``.eml`` files, as raw RFC 822 bytes."""

from __future__ import annotations

import mailbox
from pathlib import Path


def read_messages(path: Path) -> list[bytes]:
    """Return the messages of an mbox file or a folder of ``.eml`` files, as raw bytes."""
    if path.is_dir():
        return [p.read_bytes() for p in sorted(path.glob("*.eml"))]
    box = mailbox.mbox(str(path), create=False)
    try:
        return [message.as_bytes() for message in box]
    finally:
        box.close()
