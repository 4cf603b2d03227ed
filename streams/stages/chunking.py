"""Split message text into overlapping chunks for embedding (pure, synchronous, deterministic).

The embed agent calls :func:`chunk_text` on ``EmailNormalized.text`` and embeds each chunk.
No I/O, no clock, no settings.

Rules: a chunk is at most ``max_chars`` characters and is an exact slice of the input
(``text[chunk.start:chunk.end] == chunk.text``), trimmed of surrounding whitespace and never
empty. A chunk ends, in order of preference, at a paragraph break, a line break, a sentence end
or a space found in the second half of the window, else it is cut hard at ``max_chars``. The
next chunk starts up to ``overlap`` characters before the previous end, at a word start.

:func:`chunk_hash` names a chunk by its text with whitespace runs collapsed (Unicode NFC), so
the embed stage can recognise a chunk it embedded before.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["DEFAULT_OVERLAP", "Chunk", "check_chunking", "chunk_hash", "chunk_text"]

DEFAULT_OVERLAP = 100

# Break candidates, best first. Each pattern's match end is where a chunk may end.
_BREAKS = (
    re.compile(r"\n[ \t]*\n"),  # paragraph
    re.compile(r"\n"),  # line
    # Sentence end: Latin stops before a space; CJK full stops need none.
    re.compile(r"[.!?][\"')\]]*(?=\s)|[\u3002\uff01\uff1f]"),
    re.compile(r"\s"),  # word
)
_SPACE = re.compile(r"\s")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of text to embed; ``start``/``end`` index into the chunked text."""

    index: int
    text: str
    start: int
    end: int


def chunk_text(
    text: str, *, max_chars: int = 1000, overlap: int = DEFAULT_OVERLAP, limit: int | None = None
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_chars`` characters.

    Pure and deterministic. Every non-whitespace character of ``text`` is in at least one chunk,
    unless ``limit`` stops the split early.

    Args:
        text: The text to split.
        max_chars: Upper bound on a chunk's length; must be positive.
        overlap: How many characters a chunk may repeat from the end of the previous one;
            ``0 <= overlap < max_chars``.
        limit: Return at most this many chunks (the first ones) and stop reading the text
            there; ``None``: all of them.

    Returns:
        The chunks in order, indexed from 0; ``[]`` for empty or whitespace-only text.

    Raises:
        ValueError: ``max_chars``, ``overlap`` or ``limit`` is out of range.
    """
    check_chunking(max_chars=max_chars, overlap=overlap)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    chunks: list[Chunk] = []
    start = _skip_space(text, 0)
    while start < len(text) and (limit is None or len(chunks) < limit):
        end = _chunk_end(text, start, max_chars)
        chunks.append(_trimmed(len(chunks), text, start, end))
        if end >= len(text):
            break
        start = _skip_space(text, _next_start(text, start, end, overlap))
    return chunks


def check_chunking(*, max_chars: int, overlap: int = DEFAULT_OVERLAP) -> None:
    """Raise ``ValueError`` unless :func:`chunk_text` accepts these sizes."""
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    if not 0 <= overlap < max_chars:
        raise ValueError(
            f"overlap must be in [0, max_chars), got overlap={overlap} with max_chars={max_chars}"
        )


def chunk_hash(text: str) -> bytes:
    """Return the SHA-256 of ``text`` with whitespace runs made one space, trimmed, NFC.

    Pure. Texts that differ only in spacing or Unicode composition share a hash: they say the
    same, so the vector of one stands for the other.
    """
    normalized = _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
    return hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).digest()


def _chunk_end(text: str, start: int, max_chars: int) -> int:
    """Return where the chunk starting at ``start`` ends (exclusive)."""
    limit = start + max_chars
    if limit >= len(text):
        return len(text)
    window = text[start:limit]
    earliest = max_chars // 2
    for pattern in _BREAKS:
        best = -1
        for match in pattern.finditer(window, earliest):
            best = match.end()
        if best > 0:
            return start + best
    return limit


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    """Return the next chunk's start: ``overlap`` back from ``end``, moved to a word start."""
    if overlap == 0:
        return end
    candidate = max(end - overlap, start + 1)
    if candidate > 0 and not text[candidate - 1].isspace():
        space = _SPACE.search(text, candidate, end)
        # No space in the overlap (e.g. CJK text): start mid-run rather than lose the overlap.
        if space is not None:
            candidate = space.end()
    return candidate


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _trimmed(index: int, text: str, start: int, end: int) -> Chunk:
    piece = text[start:end]
    stripped = piece.rstrip()
    return Chunk(index=index, text=stripped, start=start, end=start + len(stripped))
