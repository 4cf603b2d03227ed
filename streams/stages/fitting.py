"""Fit an EmailNormalized event under its topic's record limit (pure, never raises for size).

A message up to Gmail's 50 MB can normalize to an event larger than ``email-normalized``'s
``max.message.bytes`` (16 MiB): thousands of long-named attachment parts, huge address headers or
References, a huge body. Kafka refuses such a record, and the source message would be
dead-lettered. :func:`fit_event` cuts the event instead, least useful content first, and flags it
(``truncated``, ``attachments_dropped``):

1. attachment entries, from the last (in MIME tree order);
2. address lists and References, each capped to the same number of entries (the first mailboxes;
   the last Message-IDs, the nearest ancestors, which threading needs most);
3. the body text, by UTF-8 bytes at a character boundary;
4. as a last resort the remaining free text: sender, subject, snippet, labels, Message-ID headers.

Sizes come from a cheap upper bound first; the event is encoded only when the bound says it may
not fit, and the result of every cut is measured with the serde, never estimated. Synchronous and
deterministic, no I/O, no clock, no settings: it runs wherever the parse runs (the event loop or a
CPU worker).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from schemas import serde
from schemas.models import Address, Attachment, EmailNormalized

__all__ = ["RECORD_FRAMING_BYTES", "encoded_size", "fit_event", "value_limit"]

# Room in a record for everything but its value: the record batch header (61 bytes), the record's
# own varints, the key and headers. Results of the normalize stage carry no headers; 16 KiB is
# generous for the rest, and leaves room for a few headers added later.
RECORD_FRAMING_BYTES = 16 * 1024
# Varints grow (attachments_dropped, array counts) as a cut changes them: each step frees this
# much more than the excess it measured, so one pass nearly always fits.
_SLACK = 64
# Bound per string or list entry: a length or count varint (at most 10 bytes), a union index.
_PER_ITEM = 16
# Bound for everything of fixed size: the single-object header, ints, longs, unions, booleans.
_FIXED = 256
_ADDRESS_LISTS = ("authors", "to", "cc", "bcc", "reply_to")


def value_limit(max_message_bytes: int, key: bytes) -> int:
    """Return how many bytes a record value may take on a topic with ``max_message_bytes``.

    Pure. The rest of the record (``key``, batch and record framing, headers) is subtracted.
    """
    return max_message_bytes - RECORD_FRAMING_BYTES - len(key)


def encoded_size(event: EmailNormalized) -> int:
    """Return the size of ``event`` on the wire, the largest of inboxflow's framings.

    Single-object encoding has a 10-byte header, the Confluent framing a 5-byte one, and both
    carry the same Avro body: the single-object size bounds both.
    """
    return len(serde.encode(event))


def fit_event(event: EmailNormalized, max_bytes: int) -> EmailNormalized:
    """Return ``event`` cut to encode in at most ``max_bytes`` bytes, flagged when it was cut.

    Pure and deterministic; never raises for size. An event that fits is returned as is. Each cut
    sets ``truncated``; dropped attachment entries add to ``attachments_dropped``. If even the
    identity fields (user, message, thread and sync ids) exceed ``max_bytes``, the event is
    returned with everything else cut, and the producer will refuse it (a PERMANENT failure).

    Arguments:
        event: The normalized event.
        max_bytes: The most bytes its encoding may take (see :func:`value_limit`).
    """
    if _upper_bound(event) <= max_bytes:
        return event
    size = encoded_size(event)
    for step in _STEPS:
        while size > max_bytes:
            cut = step(event, size - max_bytes)
            if cut is None:
                break  # nothing left for this step to cut
            event = cut
            size = encoded_size(event)
        if size <= max_bytes:
            break
    return event


# --- sizes -----------------------------------------------------------------------------------


def _varint_size(value: int) -> int:
    zigzag = (value << 1) ^ (value >> 63)
    return max(1, (zigzag.bit_length() + 6) // 7)


def _string_size(value: str) -> int:
    length = len(value.encode("utf-8", "surrogatepass"))
    return _varint_size(length) + length


def _optional_size(value: str | None) -> int:
    return 1 if value is None else 1 + _string_size(value)


def _address_size(address: Address) -> int:
    return _string_size(address.address) + _optional_size(address.name)


def _attachment_size(attachment: Attachment) -> int:
    return (
        _string_size(attachment.filename)
        + _string_size(attachment.mime_type)
        + _varint_size(attachment.size)
        + _optional_size(attachment.attachment_id)
    )


def _upper_bound(event: EmailNormalized) -> int:
    """Return a bound on the encoded size, in one pass over lengths (at most 4 bytes a char)."""
    strings: list[str | None] = [
        event.user_id,
        event.message_id,
        event.thread_id,
        event.sync_id,
        event.subject,
        event.text,
        event.snippet,
        event.message_id_header,
        event.in_reply_to,
        *event.labels,
        *event.references,
    ]
    if event.sender is not None:
        strings += [event.sender.address, event.sender.name]
    for name in _ADDRESS_LISTS:
        for address in getattr(event, name):
            strings += [address.address, address.name]
    for attachment in event.attachments:
        strings += [attachment.filename, attachment.mime_type, attachment.attachment_id]
    chars = sum(len(value) for value in strings if value is not None)
    return _FIXED + 4 * chars + _PER_ITEM * len(strings)


# --- steps: each returns the cut event, or None when it has nothing left to cut ---------------


def _drop_attachments(event: EmailNormalized, excess: int) -> EmailNormalized | None:
    attachments = event.attachments
    if not attachments:
        return None
    keep, freed = len(attachments), 0
    while keep and freed < excess + _SLACK:
        keep -= 1
        freed += _attachment_size(attachments[keep])
    return event.model_copy(
        update={
            "attachments": attachments[:keep],
            "attachments_dropped": event.attachments_dropped + len(attachments) - keep,
            "truncated": True,
        }
    )


def _cap_lists(event: EmailNormalized, excess: int) -> EmailNormalized | None:
    """Cap every address list and References to the most entries that frees ``excess`` bytes."""
    lists: dict[str, Sequence[Any]] = {name: getattr(event, name) for name in _ADDRESS_LISTS}
    # References keeps its last entries (the nearest ancestors): reversed here, back below.
    lists["references"] = event.references[::-1]
    longest = max(len(entries) for entries in lists.values())
    if longest == 0:
        return None
    sizes = {name: [_entry_size(entry) for entry in entries] for name, entries in lists.items()}
    total = sum(sum(entry_sizes) for entry_sizes in sizes.values())

    def freed(cap: int) -> int:
        return total - sum(sum(entry_sizes[:cap]) for entry_sizes in sizes.values())

    # The largest cap that frees enough (freed() falls as the cap grows); 0 when none does.
    low, high = 0, longest - 1
    while low < high:
        middle = (low + high + 1) // 2
        if freed(middle) >= excess + _SLACK:
            low = middle
        else:
            high = middle - 1
    update: dict[str, Any] = {name: list(entries[:low]) for name, entries in lists.items()}
    update["references"] = update["references"][::-1]
    update["truncated"] = True
    return event.model_copy(update=update)


def _entry_size(entry: Address | str) -> int:
    return _string_size(entry) if isinstance(entry, str) else _address_size(entry)


def _cut_text(event: EmailNormalized, excess: int) -> EmailNormalized | None:
    if not event.text:
        return None
    return event.model_copy(
        update={"text": _cut_utf8(event.text, excess + _SLACK), "truncated": True}
    )


def _cut_rest(event: EmailNormalized, excess: int) -> EmailNormalized | None:
    """Last resort: clear or cut the remaining free text, the subject last."""
    cleared: dict[str, Any] = {
        "sender": None,
        "snippet": "",
        "labels": [],
        "message_id_header": None,
        "in_reply_to": None,
    }
    freed = sum(_field_size(event, name) - _field_size_of(value) for name, value in cleared.items())
    update = {name: value for name, value in cleared.items() if getattr(event, name) != value}
    if freed < excess + _SLACK and event.subject:
        update["subject"] = _cut_utf8(event.subject, excess + _SLACK - freed)
    if not update:
        return None
    return event.model_copy(update={**update, "truncated": True})


def _field_size(event: EmailNormalized, name: str) -> int:
    return _field_size_of(getattr(event, name))


def _field_size_of(value: object) -> int:
    if value is None:
        return 1
    if isinstance(value, str):
        return _string_size(value)
    if isinstance(value, Address):
        return 1 + _address_size(value)
    if isinstance(value, list):
        return 1 + sum(_string_size(str(item)) for item in value) + (5 if value else 0)
    return 0


def _cut_utf8(text: str, drop_bytes: int) -> str:
    """Return ``text`` shortened by at least ``drop_bytes`` UTF-8 bytes, at a character boundary."""
    data = text.encode("utf-8", "surrogatepass")
    keep = max(0, len(data) - drop_bytes)
    # A cut inside a character leaves a partial sequence at the end, which "ignore" drops.
    return data[:keep].decode("utf-8", "ignore").rstrip()


_STEPS: tuple[Callable[[EmailNormalized, int], EmailNormalized | None], ...] = (
    _drop_attachments,
    _cap_lists,
    _cut_text,
    _cut_rest,
)
