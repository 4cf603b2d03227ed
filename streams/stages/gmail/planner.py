"""Fetch planner: which calls fetch a set of messages for the fewest quota units.

Pure. Every wanted id is covered by exactly one call. Cost is per call, not per format, so:
* ``RAW`` (exact RFC 822 bytes): ``messages.get?format=raw`` each; ``threads.get`` has no ``raw``.
* ``MIME`` (the whole message, exact bytes not required): ``threads.get?format=full`` for a thread
  whose wanted messages would cost more one by one (3+ messages in both tables), else
  ``messages.get?format=raw`` (same price as ``full``, and exact).
* ``HEADERS``: ``metadata`` with the listed headers, by thread when that is cheaper.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from streams.stages.gmail.costs import CostTable

MAX_BATCH_PARTS = 25  # Google: above 50 is "not recommended"; 25 is the field-tested size


class FetchNeed(StrEnum):
    """What the caller needs from each message."""

    RAW = "raw"
    MIME = "mime"
    HEADERS = "headers"


@dataclass(frozen=True)
class MessageRef:
    """A message id as ``messages.list``/``history.list`` give it (thread id when known)."""

    id: str
    thread_id: str | None = None
    label_ids: tuple[str, ...] = ()  # known from history.list; messages.list gives none


@dataclass(frozen=True)
class PlannedCall:
    """One API call: ``messages.get`` of ``id`` or ``threads.get`` covering ``message_ids``."""

    kind: Literal["message", "thread"]
    id: str
    format: Literal["raw", "full", "metadata"]
    message_ids: tuple[str, ...]

    @property
    def method(self) -> str:
        """The method id the cost table knows."""
        return "users.threads.get" if self.kind == "thread" else "users.messages.get"


def message_call(message_id: str, need: FetchNeed) -> PlannedCall:
    """The ``messages.get`` that serves ``need`` for one message."""
    fmt: Literal["raw", "metadata"] = "metadata" if need is FetchNeed.HEADERS else "raw"
    return PlannedCall("message", message_id, fmt, (message_id,))


def plan_fetch(refs: Iterable[MessageRef], need: FetchNeed, costs: CostTable) -> list[PlannedCall]:
    """Return calls covering every distinct id in ``refs`` once, cheapest first by thread."""
    by_thread: dict[str, list[str]] = {}
    seen: set[str] = set()
    unthreaded: list[str] = []
    for ref in refs:
        if ref.id in seen:
            continue
        seen.add(ref.id)
        if ref.thread_id is None:
            unthreaded.append(ref.id)
        else:
            by_thread.setdefault(ref.thread_id, []).append(ref.id)
    calls: list[PlannedCall] = []
    for thread_id, ids in by_thread.items():
        if need is not FetchNeed.RAW and costs.thread_pays_off(len(ids)):
            fmt: Literal["full", "metadata"] = "metadata" if need is FetchNeed.HEADERS else "full"
            calls.append(PlannedCall("thread", thread_id, fmt, tuple(ids)))
        else:
            calls.extend(message_call(i, need) for i in ids)
    calls.extend(message_call(i, need) for i in unthreaded)
    return calls


def chunk_calls(
    calls: list[PlannedCall], costs: CostTable, max_parts: int, max_units: float
) -> list[list[PlannedCall]]:
    """Split calls into batches of at most ``max_parts`` parts and ``max_units`` units (min 1)."""
    batches: list[list[PlannedCall]] = []
    current: list[PlannedCall] = []
    units = 0
    for call in calls:
        cost = costs.cost(call.method)
        if current and (len(current) >= max_parts or units + cost > max_units):
            batches.append(current)
            current, units = [], 0
        current.append(call)
        units += cost
    if current:
        batches.append(current)
    return batches
