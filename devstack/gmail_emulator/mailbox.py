"""One user's mailbox: messages, threads, labels and the history log, in memory.

Ids are 16 hex digits like Gmail's; history ids grow with random gaps. Threading follows
``In-Reply-To``/``References`` as Gmail does. Not thread-safe by itself: ``EmulatorState`` locks.
"""

from __future__ import annotations

import base64
import email.utils
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Literal

SYSTEM_LABELS = (
    "INBOX", "SENT", "DRAFT", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
)  # fmt: skip
HistoryType = Literal["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
HISTORY_TYPES: tuple[HistoryType, ...] = (
    "messageAdded", "messageDeleted", "labelAdded", "labelRemoved",
)  # fmt: skip


@dataclass
class StoredMessage:
    """A message as Gmail keeps it: the exact RFC 822 bytes plus Gmail's metadata."""

    id: str
    thread_id: str
    raw: bytes
    label_ids: list[str]
    internal_date: int  # epoch milliseconds
    history_id: int


@dataclass(frozen=True)
class HistoryRecord:
    """One change; ``labels`` are the labels added/removed (empty for add/delete)."""

    id: int
    type: HistoryType
    message_id: str
    thread_id: str
    labels: tuple[str, ...] = ()
    message_labels: tuple[str, ...] = ()


@dataclass
class ListQuery:
    """``messages.list`` filters."""

    label_ids: list[str] = field(default_factory=list)
    include_spam_trash: bool = False
    q: str = ""


class HistoryExpiredError(Exception):
    """The requested ``startHistoryId`` is older than the retained history."""


def _parse_message_id_refs(raw: bytes) -> tuple[str | None, list[str]]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    own = headers.get("Message-ID")
    refs = " ".join(str(headers.get(h, "")) for h in ("References", "In-Reply-To"))
    return (str(own).strip() if own else None), re.findall(r"<[^>]+>", refs)


def _date_header_ms(raw: bytes) -> int | None:
    value = BytesHeaderParser(policy=compat32).parsebytes(raw).get("Date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


class Mailbox:
    """Messages of one user with the history log Gmail keeps for ``history.list``.

    Args:
        email_address: the user's address (``getProfile.emailAddress``).
        seed: seeds id and history-id generation so a seeded mailbox is reproducible.
        history_retention: how many history records are kept; older start ids get 404.
    """

    def __init__(self, email_address: str, *, seed: int = 0, history_retention: int = 100_000):
        self.email_address = email_address
        self._rng = random.Random(f"ids:{email_address}:{seed}")  # noqa: S311 - reproducible ids
        self._next_id = self._rng.randrange(0x18A0000000000000, 0x19F0000000000000)
        self.history_id = self._rng.randrange(1_000, 100_000)
        self.messages: dict[str, StoredMessage] = {}
        self.attachments: dict[str, tuple[str, str]] = {}  # attachmentId -> (message id, partId)
        self._by_message_id: dict[str, str] = {}  # RFC Message-ID -> thread id
        self.history: list[HistoryRecord] = []
        self.history_retention = history_retention
        self.oldest_valid_history_id = self.history_id
        self.user_labels: dict[str, str] = {}  # label id -> name
        # Told of every recorded change (push notifications); runs under the emulator's lock.
        self.on_change: Callable[[Mailbox, HistoryRecord], None] | None = None
        # Listings by query, valid while the mailbox is unchanged (the historyId moves with
        # every change): paging through a large mailbox sorts it once, not once a page.
        self._listings: dict[tuple[tuple[str, ...], bool, str], tuple[int, list[StoredMessage]]]
        self._listings = {}
        self._threads_total: tuple[int, int] | None = None  # (historyId, count)

    def _new_id(self) -> str:
        self._next_id += self._rng.randrange(1, 4096)
        return f"{self._next_id:016x}"

    def _bump_history(self) -> int:
        self.history_id += self._rng.randrange(1, 40)
        return self.history_id

    def _record(self, kind: HistoryType, msg: StoredMessage, labels: Iterable[str] = ()) -> None:
        msg.history_id = self._bump_history()
        record = HistoryRecord(
            msg.history_id, kind, msg.id, msg.thread_id, tuple(labels), tuple(msg.label_ids)
        )
        self.history.append(record)
        overflow = len(self.history) - self.history_retention
        if overflow > 0:
            self.oldest_valid_history_id = self.history[overflow - 1].id
            del self.history[:overflow]
        if self.on_change is not None:
            self.on_change(self, record)

    def add(
        self,
        raw: bytes,
        label_ids: Iterable[str] = ("INBOX", "UNREAD"),
        internal_date: int | None = None,
        *,
        date_source: Literal["receivedTime", "dateHeader"] = "receivedTime",
        record_history: bool = True,
    ) -> StoredMessage:
        """Store ``raw`` exactly as given and return it with its new id, thread and history id."""
        own, refs = _parse_message_id_refs(raw)
        thread_id = next((self._by_message_id[r] for r in refs if r in self._by_message_id), None)
        message_id = self._new_id()
        thread_id = thread_id or message_id
        if own:
            self._by_message_id.setdefault(own, thread_id)
        if internal_date is None and date_source == "dateHeader":
            internal_date = _date_header_ms(raw)
        if internal_date is None:
            internal_date = int(time.time() * 1000)
        for label in label_ids:
            if label not in SYSTEM_LABELS and label not in self.user_labels:
                self.user_labels[label] = label
        msg = StoredMessage(message_id, thread_id, raw, list(label_ids), internal_date, 0)
        self.messages[message_id] = msg
        if record_history:
            self._record("messageAdded", msg)
        else:
            msg.history_id = self._bump_history()
            self.oldest_valid_history_id = self.history_id
        return msg

    def delete(self, message_id: str) -> bool:
        """Delete permanently (not trash); return whether it existed."""
        msg = self.messages.pop(message_id, None)
        if msg is None:
            return False
        self._record("messageDeleted", msg)
        return True

    def modify(self, message_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Add and remove labels, recording ``labelAdded``/``labelRemoved`` history."""
        msg = self.messages[message_id]
        added = [label for label in add if label not in msg.label_ids]
        removed = [label for label in remove if label in msg.label_ids]
        if added:
            msg.label_ids.extend(added)
            self._record("labelAdded", msg, added)
        if removed:
            msg.label_ids[:] = [label for label in msg.label_ids if label not in removed]
            self._record("labelRemoved", msg, removed)

    def expire_history(self, keep: int = 0) -> None:
        """Forget all but the newest ``keep`` history records (stale-history fault)."""
        self._bump_history()
        self.oldest_valid_history_id = self.history_id
        if keep and self.history:
            kept = self.history[-keep:]
            self.oldest_valid_history_id = kept[0].id - 1
            self.history[:] = kept
        else:
            self.history.clear()

    def history_since(self, start: int, types: Iterable[str] | None = None) -> list[HistoryRecord]:
        """Records with id > ``start``, optionally of the given types.

        Raises:
            HistoryExpiredError: ``start`` is older than the retained window.
        """
        if start < self.oldest_valid_history_id:
            raise HistoryExpiredError(str(start))
        wanted = set(types or HISTORY_TYPES)
        return [r for r in self.history if r.id > start and r.type in wanted]

    def thread(self, thread_id: str) -> list[StoredMessage]:
        """Messages of a thread, oldest first."""
        found = [m for m in self.messages.values() if m.thread_id == thread_id]
        return sorted(found, key=lambda m: (m.internal_date, m.id))

    def label_id(self, name: str) -> str:
        """Resolve a label name or id as ``q=label:`` and ``labelIds`` accept it."""
        upper = name.upper()
        if upper in SYSTEM_LABELS:
            return upper
        for label_id, label_name in self.user_labels.items():
            if name in (label_id, label_name) or label_name.lower() == name.lower():
                return label_id
        return name

    def threads_total(self) -> int:
        """How many threads the mailbox holds (counted once per change, not per call)."""
        if self._threads_total is None or self._threads_total[0] != self.history_id:
            count = len({m.thread_id for m in self.messages.values()})
            self._threads_total = (self.history_id, count)
        return self._threads_total[1]

    def _list(self, query: ListQuery) -> list[StoredMessage]:
        wanted = {self.label_id(x) for x in query.label_ids}
        terms = _parse_q(query.q)
        wanted |= {self.label_id(x) for x in terms.labels}
        unwanted = {self.label_id(x) for x in terms.without}
        skip_spam_trash = not query.include_spam_trash and not wanted & {"SPAM", "TRASH"}
        found = []
        for msg in self.messages.values():
            labels = set(msg.label_ids)
            if not wanted <= labels or labels & unwanted:
                continue
            if skip_spam_trash and labels & {"SPAM", "TRASH"}:
                continue
            if terms.after is not None and msg.internal_date < terms.after:
                continue
            if terms.before is not None and msg.internal_date >= terms.before:
                continue
            if terms.words and not _matches_words(msg.raw, terms.words):
                continue
            found.append(msg)
        found.sort(key=lambda m: (m.internal_date, m.id), reverse=True)
        return found

    def list(self, query: ListQuery) -> list[StoredMessage]:
        """Matching messages, newest first (by ``internalDate``, then id); do not modify."""
        key = (tuple(query.label_ids), query.include_spam_trash, query.q)
        cached = self._listings.get(key)
        if cached is not None and cached[0] == self.history_id:
            return cached[1]
        found = self._list(query)
        if len(self._listings) > 64:
            self._listings.clear()
        self._listings[key] = (self.history_id, found)
        return found


@dataclass
class _Terms:
    labels: list[str] = field(default_factory=list)
    without: list[str] = field(default_factory=list)  # -label:X, -in:X, -category:X
    after: int | None = None  # epoch ms
    before: int | None = None
    words: list[str] = field(default_factory=list)


def _q_time_ms(value: str) -> int:
    if value.isdigit():
        return int(value) * 1000  # epoch seconds
    parts = [int(p) for p in re.split(r"[/-]", value)]
    # Gmail reads dates at midnight Pacific; the emulator uses UTC (documented difference).
    return int(datetime(parts[0], parts[1], parts[2], tzinfo=UTC).timestamp() * 1000)


def _parse_q(q: str) -> _Terms:
    terms = _Terms()
    for token in q.split():
        negated = token.startswith("-")
        key, _, value = token.removeprefix("-").partition(":")
        key = key.lower()
        if value and key == "category":
            key, value = "label", f"CATEGORY_{value.upper()}"
        if negated and value and key in ("label", "in"):
            terms.without.append(value)
        elif value and key == "after":
            terms.after = _q_time_ms(value)
        elif value and key == "before":
            terms.before = _q_time_ms(value)
        elif value and key in ("label", "in"):
            terms.labels.append(value)
        elif value and key == "is":
            terms.labels.append({"unread": "UNREAD", "starred": "STARRED"}.get(value, value))
        else:
            terms.words.append(token.lower())
    return terms


def _matches_words(raw: bytes, words: list[str]) -> bool:
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    text = " ".join(str(headers.get(h, "")) for h in ("From", "To", "Subject")).lower()
    return all(word in text for word in words)


def encode_page_token(msg: StoredMessage) -> str:
    """Opaque token naming the last message of a page (stable while the mailbox changes)."""
    return base64.urlsafe_b64encode(f"{msg.internal_date}:{msg.id}".encode()).decode()


def decode_page_token(token: str) -> tuple[int, str]:
    """Inverse of ``encode_page_token``; ``ValueError`` for garbage."""
    date, _, message_id = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
    return int(date), message_id
