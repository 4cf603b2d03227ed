"""Per-user mailbox insights: a bounded, JSON-serializable aggregate (pure, no clock, no I/O).

The insight agent keeps one :class:`UserInsights` per user (stored as JSON in Postgres), feeds it
every normalized message with :meth:`UserInsights.add_email`, and at most once per user per
interval (:func:`should_emit`) publishes :meth:`UserInsights.snapshot`. Time always comes in as
an argument (``now``); nothing here reads a clock, the environment or the network.

Who "the user" is
    The addresses given as ``user_addresses``, plus the sender of every message carrying the
    Gmail ``SENT`` label (aliases are learned that way, at most ``caps.user_addresses``).
    A message is *from the user* when it has the ``SENT`` label or its sender is one of those
    addresses (re-checked at snapshot time, so an alias learned later applies to older messages).

The insights (each computed over the state retained under the caps below)
    **Top correspondents** (``top_correspondents``): for each address other than the user's,
    ``received`` = messages received from it (it is the From address of a message not from the
    user) and ``sent`` = messages the user sent to it (it is in To, Cc or Bcc of a message from
    the user; once per message). Ranked by ``received + sent`` descending, then address
    ascending; ``top_n`` entries. ``name`` is the first non-empty display name seen.

    **Message volume by day** (``volume_by_day``): per UTC calendar day (``YYYY-MM-DD``) of the
    Date header, how many messages were received and how many sent by the user. Messages
    without a valid Date are not counted here. Days ascending; the newest ``caps.days`` days.

    **Reply latency** (``reply_latency``): within each retained thread, messages are ordered by
    Date (ties by message id). Each consecutive pair (A, B) with different senders and B
    strictly later than A is a *reply* taking ``B.at - A.at`` seconds. If B is from the user and
    A is not, it is a sample of how fast the user replies to A's sender (``user_replies``); if
    A is from the user and B is not, a sample of how fast B's sender replies to the user
    (``their_replies``). Pairs between two other people are ignored. For each participant we
    report the median in seconds and the number of samples; participants ordered by total
    samples descending, then address; ``max_participants`` entries.

    **Unanswered threads** (``unanswered``): retained threads whose latest message (by Date)
    was received (not from the user), has a sender, carries none of the labels in
    :data:`UNANSWERED_IGNORED_LABELS` (spam, trash, promotions, social, updates, forums), and
    is at least ``unanswered_after`` older than ``now``. Each carries the latest message's
    subject (cut to 200 characters), id, sender and date. Oldest first, ``max_unanswered``
    entries; ``unanswered_total`` counts them all.

    **Window** (``window_start`` .. ``generated_at``): the counts above cover every message
    folded in since the state was created, within the caps; ``window_start`` is the earliest
    Date among them (``None`` before the first dated message).

Caps (:class:`InsightCaps`; the state never grows past them)
    threads 500 (when exceeded, the 10% with the oldest latest message are dropped),
    messages per thread 10 (the newest by Date), correspondents 500 (when exceeded, the 10%
    with the fewest messages, then least recently seen, are dropped), days 400 (the newest),
    remembered message ids 2,000 (for idempotent redelivery; the oldest forgotten first),
    user addresses 20. The JSON form stays under about 0.5 MB at these caps.

Redelivery: :meth:`UserInsights.add_email` ignores a message id it still remembers, so
at-least-once delivery does not double count within the last ``caps.seen_ids`` messages.

Arrival order: Gmail syncs newest first, so messages arrive in any order. Threads keep each
message's date, so latency and unanswered threads do not depend on arrival order; nor does
anything else while the user's address is given up front (Gmail's ``users.getProfile``
``emailAddress``) and no cap evicts. An alias learned later from a ``SENT`` message does not
reclassify volume counts already made.
"""

from __future__ import annotations

import bisect
import itertools
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from streams.stages.contacts import (
    AddressLike,
    ParticipantsLike,
    is_valid_address,
    normalize_address,
)

__all__ = [
    "STATE_VERSION",
    "UNANSWERED_IGNORED_LABELS",
    "CorrespondentCount",
    "DayVolume",
    "EmailLike",
    "InsightCaps",
    "InsightSnapshot",
    "ReplyLatency",
    "UnansweredThread",
    "UserInsights",
    "should_emit",
]

STATE_VERSION = 1
_SUBJECT_CHARS = 200  # subjects are kept for unanswered threads only, cut to this length
SENT_LABEL = "SENT"
UNANSWERED_IGNORED_LABELS = frozenset(
    {
        "SPAM",
        "TRASH",
        "CATEGORY_PROMOTIONS",
        "CATEGORY_SOCIAL",
        "CATEGORY_UPDATES",
        "CATEGORY_FORUMS",
    }
)


class EmailLike(ParticipantsLike, Protocol):
    """What insights read from a message: ``mime.NormalizedEmail`` or the event model."""

    @property
    def message_id(self) -> str: ...

    @property
    def thread_id(self) -> str: ...

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def subject(self) -> str: ...

    @property
    def sent_at(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class InsightCaps:
    """Upper bounds on the retained state; see the module docstring for the eviction rules."""

    threads: int = 500
    messages_per_thread: int = 10
    correspondents: int = 500
    days: int = 400
    seen_ids: int = 2000
    user_addresses: int = 20


@dataclass(frozen=True, slots=True)
class CorrespondentCount:
    """Messages exchanged with one address."""

    address: str
    name: str | None
    received: int
    sent: int

    @property
    def messages(self) -> int:
        return self.received + self.sent


@dataclass(frozen=True, slots=True)
class DayVolume:
    """Messages received and sent on one UTC day."""

    day: str  # YYYY-MM-DD
    received: int
    sent: int

    @property
    def messages(self) -> int:
        return self.received + self.sent


@dataclass(frozen=True, slots=True)
class ReplyLatency:
    """Median reply times between the user and one participant, in seconds."""

    address: str
    user_replies_median_seconds: float | None
    user_replies_samples: int
    their_replies_median_seconds: float | None
    their_replies_samples: int


@dataclass(frozen=True, slots=True)
class UnansweredThread:
    """A thread whose latest message is waiting for the user."""

    thread_id: str
    subject: str  # of the latest message, cut to 200 characters
    message_id: str
    from_address: str
    received_at: datetime
    waiting_seconds: int


@dataclass(frozen=True, slots=True)
class InsightSnapshot:
    """The insights of one user at ``generated_at``."""

    generated_at: datetime
    window_start: datetime | None  # earliest Date folded in; None before any dated message
    user_addresses: tuple[str, ...]
    messages_seen: int
    top_correspondents: tuple[CorrespondentCount, ...]
    volume_by_day: tuple[DayVolume, ...]
    reply_latency: tuple[ReplyLatency, ...]
    unanswered: tuple[UnansweredThread, ...]
    unanswered_total: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (datetimes as ISO 8601 strings in UTC)."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "user_addresses": list(self.user_addresses),
            "messages_seen": self.messages_seen,
            "top_correspondents": [
                {
                    "address": c.address,
                    "name": c.name,
                    "messages": c.messages,
                    "received": c.received,
                    "sent": c.sent,
                }
                for c in self.top_correspondents
            ],
            "volume_by_day": [
                {"day": v.day, "messages": v.messages, "received": v.received, "sent": v.sent}
                for v in self.volume_by_day
            ],
            "reply_latency": [
                {
                    "address": r.address,
                    "user_replies_median_seconds": r.user_replies_median_seconds,
                    "user_replies_samples": r.user_replies_samples,
                    "their_replies_median_seconds": r.their_replies_median_seconds,
                    "their_replies_samples": r.their_replies_samples,
                }
                for r in self.reply_latency
            ],
            "unanswered": [
                {
                    "thread_id": u.thread_id,
                    "subject": u.subject,
                    "message_id": u.message_id,
                    "from_address": u.from_address,
                    "received_at": u.received_at.isoformat(),
                    "waiting_seconds": u.waiting_seconds,
                }
                for u in self.unanswered
            ],
            "unanswered_total": self.unanswered_total,
        }


def should_emit(last_emitted_at: datetime | None, now: datetime, interval: timedelta) -> bool:
    """Tell whether a user's snapshot may be emitted now: at most once per ``interval``.

    True when nothing was emitted yet, when ``interval`` has passed since ``last_emitted_at``,
    or when ``last_emitted_at`` lies in the future (a clock moved back: emitting resets the
    stamp rather than silencing the user until the clock catches up).
    """
    if last_emitted_at is None:
        return True
    if last_emitted_at > now:
        return True
    return now - last_emitted_at >= interval


@dataclass(slots=True)
class _Correspondent:
    name: str | None
    received: int = 0
    sent: int = 0
    last_at: int = 0  # epoch seconds of the latest dated message, for eviction


@dataclass(frozen=True, slots=True, order=True)
class _ThreadMessage:
    at: int  # epoch seconds of the Date header
    message_id: str
    sender: str  # normalized address, "" when invalid or missing
    from_user: bool  # SENT label, or sender known as the user's when added
    actionable: bool  # none of UNANSWERED_IGNORED_LABELS

    def to_json(self) -> list[Any]:
        return [self.at, self.message_id, self.sender, self.from_user, self.actionable]

    @classmethod
    def from_json(cls, item: Sequence[Any]) -> _ThreadMessage:
        at, message_id, sender, from_user, actionable = item
        return cls(int(at), str(message_id), str(sender), bool(from_user), bool(actionable))


@dataclass
class UserInsights:
    """Mutable aggregate of one user's messages; see the module docstring for each insight."""

    user_addresses: set[str] = field(default_factory=set)
    caps: InsightCaps = field(default_factory=InsightCaps)
    messages_seen: int = 0
    _seen_ids: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    _correspondents: dict[str, _Correspondent] = field(default_factory=dict)
    _volume: dict[str, list[int]] = field(default_factory=dict)  # day -> [received, sent]
    _threads: dict[str, list[_ThreadMessage]] = field(default_factory=dict)
    _subjects: dict[str, str] = field(default_factory=dict)  # thread -> its latest subject
    _first_at: int | None = None  # earliest Date seen: the start of the insights' window

    @classmethod
    def for_user(
        cls, user_addresses: Iterable[str] = (), caps: InsightCaps | None = None
    ) -> UserInsights:
        """Return an empty aggregate for a user known by ``user_addresses`` (may be empty)."""
        known = {normalize_address(a) for a in user_addresses}
        return cls(user_addresses={a for a in known if a}, caps=caps or InsightCaps())

    # --- updates ---------------------------------------------------------------------------

    def add_email(self, email: EmailLike) -> bool:
        """Fold one message into the aggregate.

        Idempotent for message ids still remembered (see the caps). Pure apart from mutating
        ``self``; never reads a clock.

        Returns:
            ``False`` when the message id was already counted, else ``True``.
        """
        if email.message_id in self._seen_ids:
            return False
        self._remember(email.message_id)
        self.messages_seen += 1
        sender = _valid_address(email.sender)
        is_sent = SENT_LABEL in email.labels
        if is_sent and sender:
            self._learn_user_address(sender)
        from_user = is_sent or sender in self.user_addresses
        at = int(email.sent_at.timestamp()) if email.sent_at is not None else None
        self._count_correspondents(email, sender, from_user, at)
        if at is not None and email.sent_at is not None:
            self._count_day(email.sent_at, from_user)
            self._add_to_thread(email, sender or "", from_user, at)
        return True

    def _remember(self, message_id: str) -> None:
        self._seen_ids[message_id] = None
        while len(self._seen_ids) > self.caps.seen_ids:
            del self._seen_ids[next(iter(self._seen_ids))]

    def _learn_user_address(self, address: str) -> None:
        if (
            address not in self.user_addresses
            and len(self.user_addresses) < self.caps.user_addresses
        ):
            self.user_addresses.add(address)
            self._correspondents.pop(address, None)

    def _count_correspondents(
        self, email: EmailLike, sender: str | None, from_user: bool, at: int | None
    ) -> None:
        if from_user:
            recipients: dict[str, str | None] = {}
            for mailbox in (*email.to, *email.cc, *email.bcc):
                address = _valid_address(mailbox)
                if address and address not in self.user_addresses:
                    recipients.setdefault(address, mailbox.name or None)
            for address, name in recipients.items():
                self._correspondent(address, name, at).sent += 1
        elif sender and email.sender is not None:
            self._correspondent(sender, email.sender.name or None, at).received += 1
        self._trim_correspondents()

    def _correspondent(self, address: str, name: str | None, at: int | None) -> _Correspondent:
        entry = self._correspondents.get(address)
        if entry is None:
            entry = self._correspondents[address] = _Correspondent(name=name)
        elif entry.name is None and name:
            entry.name = name
        if at is not None:
            entry.last_at = max(entry.last_at, at)
        return entry

    def _trim_correspondents(self) -> None:
        if len(self._correspondents) <= self.caps.correspondents:
            return
        keep = self.caps.correspondents * 9 // 10
        ranked = sorted(
            self._correspondents.items(),
            key=lambda item: (-(item[1].received + item[1].sent), -item[1].last_at, item[0]),
        )
        self._correspondents = dict(ranked[:keep])

    def _count_day(self, sent_at: datetime, from_user: bool) -> None:
        day = sent_at.astimezone(UTC).date().isoformat()
        counts = self._volume.setdefault(day, [0, 0])
        counts[1 if from_user else 0] += 1
        if len(self._volume) > self.caps.days:
            for old in sorted(self._volume)[: len(self._volume) - self.caps.days]:
                del self._volume[old]

    def _add_to_thread(self, email: EmailLike, sender: str, from_user: bool, at: int) -> None:
        entry = _ThreadMessage(
            at=at,
            message_id=email.message_id,
            sender=sender,
            from_user=from_user,
            actionable=not UNANSWERED_IGNORED_LABELS.intersection(email.labels),
        )
        messages = self._threads.setdefault(email.thread_id, [])
        bisect.insort(messages, entry)
        if messages[-1] is entry:
            self._subjects[email.thread_id] = email.subject[:_SUBJECT_CHARS]
        self._first_at = at if self._first_at is None else min(self._first_at, at)
        if len(messages) > self.caps.messages_per_thread:
            del messages[: len(messages) - self.caps.messages_per_thread]
        if len(self._threads) > self.caps.threads:
            keep = self.caps.threads * 9 // 10
            ranked = sorted(self._threads.items(), key=lambda item: (-item[1][-1].at, item[0]))
            self._threads = dict(ranked[:keep])
            self._subjects = {t: self._subjects.get(t, "") for t in self._threads}

    # --- reading ---------------------------------------------------------------------------

    def snapshot(
        self,
        now: datetime,
        *,
        top_n: int = 10,
        unanswered_after: timedelta = timedelta(days=2),
        max_unanswered: int = 50,
        max_participants: int = 50,
    ) -> InsightSnapshot:
        """Compute the insights as of ``now`` (an aware datetime). Pure: ``self`` is unchanged."""
        unanswered = self._unanswered(now, unanswered_after)
        return InsightSnapshot(
            generated_at=now.astimezone(UTC),
            window_start=None
            if self._first_at is None
            else datetime.fromtimestamp(self._first_at, UTC),
            user_addresses=tuple(sorted(self.user_addresses)),
            messages_seen=self.messages_seen,
            top_correspondents=self._top_correspondents(top_n),
            volume_by_day=tuple(
                DayVolume(day, counts[0], counts[1]) for day, counts in sorted(self._volume.items())
            ),
            reply_latency=self._reply_latency(max_participants),
            unanswered=unanswered[:max_unanswered],
            unanswered_total=len(unanswered),
        )

    def _is_user(self, message: _ThreadMessage) -> bool:
        return message.from_user or message.sender in self.user_addresses

    def _top_correspondents(self, top_n: int) -> tuple[CorrespondentCount, ...]:
        counts = [
            CorrespondentCount(address, entry.name, entry.received, entry.sent)
            for address, entry in self._correspondents.items()
            if address not in self.user_addresses
        ]
        counts.sort(key=lambda c: (-c.messages, c.address))
        return tuple(counts[:top_n])

    def _reply_latency(self, max_participants: int) -> tuple[ReplyLatency, ...]:
        user_replies: dict[str, list[int]] = {}
        their_replies: dict[str, list[int]] = {}
        for messages in self._threads.values():
            for earlier, later in itertools.pairwise(messages):
                if later.at <= earlier.at or not earlier.sender or not later.sender:
                    continue
                if earlier.sender == later.sender:
                    continue
                earlier_user, later_user = self._is_user(earlier), self._is_user(later)
                if later_user and not earlier_user:
                    user_replies.setdefault(earlier.sender, []).append(later.at - earlier.at)
                elif earlier_user and not later_user:
                    their_replies.setdefault(later.sender, []).append(later.at - earlier.at)
        rows = [
            ReplyLatency(
                address=address,
                user_replies_median_seconds=_median(user_replies.get(address)),
                user_replies_samples=len(user_replies.get(address, ())),
                their_replies_median_seconds=_median(their_replies.get(address)),
                their_replies_samples=len(their_replies.get(address, ())),
            )
            for address in user_replies.keys() | their_replies.keys()
        ]
        rows.sort(key=lambda r: (-(r.user_replies_samples + r.their_replies_samples), r.address))
        return tuple(rows[:max_participants])

    def _unanswered(self, now: datetime, after: timedelta) -> tuple[UnansweredThread, ...]:
        now_seconds = int(now.timestamp())
        waiting = []
        for thread_id, messages in self._threads.items():
            last = messages[-1]
            if self._is_user(last) or not last.sender or not last.actionable:
                continue
            if now_seconds - last.at < after.total_seconds():
                continue
            waiting.append(
                UnansweredThread(
                    thread_id=thread_id,
                    subject=self._subjects.get(thread_id, ""),
                    message_id=last.message_id,
                    from_address=last.sender,
                    received_at=datetime.fromtimestamp(last.at, UTC),
                    waiting_seconds=now_seconds - last.at,
                )
            )
        waiting.sort(key=lambda u: (u.received_at, u.thread_id))
        return tuple(waiting)

    # --- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the state as JSON-ready data; :meth:`from_dict` restores it exactly."""
        return {
            "version": STATE_VERSION,
            "user_addresses": sorted(self.user_addresses),
            "messages_seen": self.messages_seen,
            "seen_ids": list(self._seen_ids),
            "correspondents": {
                address: [c.name, c.received, c.sent, c.last_at]
                for address, c in self._correspondents.items()
            },
            "volume": {day: list(counts) for day, counts in self._volume.items()},
            "threads": {
                thread_id: [m.to_json() for m in messages]
                for thread_id, messages in self._threads.items()
            },
            "subjects": dict(self._subjects),
            "first_at": self._first_at,
        }

    def to_json(self) -> str:
        """Return the state as compact JSON (for a Postgres ``jsonb`` column)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], caps: InsightCaps | None = None) -> UserInsights:
        """Restore a state written by :meth:`to_dict`.

        Raises:
            ValueError: The data has another version or is malformed.
        """
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported insights state version: {_version_of(data)!r}")
        try:
            state = cls(
                user_addresses={str(a) for a in data["user_addresses"]},
                caps=caps or InsightCaps(),
                messages_seen=int(data["messages_seen"]),
            )
            state._seen_ids = dict.fromkeys(str(i) for i in data["seen_ids"])
            state._correspondents = {
                str(address): _Correspondent(
                    name=None if name is None else str(name),
                    received=int(received),
                    sent=int(sent),
                    last_at=int(last_at),
                )
                for address, (name, received, sent, last_at) in data["correspondents"].items()
            }
            state._volume = {
                str(day): [int(counts[0]), int(counts[1])] for day, counts in data["volume"].items()
            }
            state._threads = {
                str(thread_id): sorted(_ThreadMessage.from_json(m) for m in messages)
                for thread_id, messages in data["threads"].items()
                if messages
            }
            # "subjects" and "first_at" arrived after the first states were stored: optional.
            subjects = data.get("subjects") or {}
            state._subjects = {
                thread_id: str(subjects.get(thread_id, "")) for thread_id in state._threads
            }
            first_at = data.get("first_at")
            state._first_at = None if first_at is None else int(first_at)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed insights state: {exc}") from exc
        return state

    @classmethod
    def from_json(cls, text: str, caps: InsightCaps | None = None) -> UserInsights:
        """Restore a state written by :meth:`to_json`; raises ``ValueError`` when malformed."""
        return cls.from_dict(json.loads(text), caps)


def _valid_address(mailbox: AddressLike | None) -> str | None:
    if mailbox is None:
        return None
    address = normalize_address(mailbox.address)
    return address if is_valid_address(address) else None


def _median(samples: list[int] | None) -> float | None:
    return float(statistics.median(samples)) if samples else None


def _version_of(data: object) -> object:
    return data.get("version") if isinstance(data, dict) else type(data).__name__
