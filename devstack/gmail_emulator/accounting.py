"""What the emulator saw: units spent, calls by method, throttled responses, early retries.

Tests and benchmarks read a consistent copy with ``Accounting.snapshot()``;
the server thread writes.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Charge:
    """One admitted (sub-)request: when it arrived (epoch seconds), for whom, what it cost."""

    at: float
    user: str
    method: str
    units: int


@dataclass(frozen=True)
class AccountingSnapshot:
    """A frozen copy of the counters.

    Attributes:
        requests: HTTP requests plus batch parts received.
        units_by_user: quota units charged per user.
        calls_by_method: admitted calls per method id (``users.messages.get``...).
        statuses: responses by HTTP status (batch parts included).
        throttled: refused requests by kind (``user``, ``project``, ``daily``, ``concurrency``,
            ``injected``).
        early_requests: requests that arrived before a "Retry after" time this user was given.
        batches: batch HTTP requests; ``batch_parts`` their parts.
        charges: every admitted call in arrival order.
    """

    requests: int
    units_by_user: dict[str, int]
    calls_by_method: dict[str, int]
    statuses: dict[int, int]
    throttled: dict[str, int]
    early_requests: int
    batches: int
    batch_parts: int
    charges: tuple[Charge, ...]

    @property
    def units(self) -> int:
        """Units charged over all users."""
        return sum(self.units_by_user.values())

    @property
    def throttled_total(self) -> int:
        """Responses that were throttles (403 rate limits, 429)."""
        return sum(self.throttled.values())

    def steady_units_per_second(self, user: str, skip_seconds: float = 0.0) -> float:
        """Units/s charged to ``user`` after its first ``skip_seconds``, arrival to arrival.

        Charges arriving at the same instant (one batch) are grouped; the rate is the units of every
        group but the last divided by the time from the first group to the last, so the result
        does not depend on how the final batch lines up with the end of the run.
        """
        times: dict[float, int] = {}
        for charge in self.charges:
            if charge.user == user:
                times[charge.at] = times.get(charge.at, 0) + charge.units
        if not times:
            return 0.0
        start = min(times) + skip_seconds
        groups = sorted((t, u) for t, u in times.items() if t >= start)
        if len(groups) < 2:
            return 0.0
        span = groups[-1][0] - groups[0][0]
        return sum(u for _, u in groups[:-1]) / span if span > 0 else 0.0


@dataclass
class Accounting:
    """Mutable counters behind one lock."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: int = 0
    _units: Counter[str] = field(default_factory=Counter)
    _calls: Counter[str] = field(default_factory=Counter)
    _statuses: Counter[int] = field(default_factory=Counter)
    _throttled: Counter[str] = field(default_factory=Counter)
    _early: int = 0
    _batches: int = 0
    _batch_parts: int = 0
    _charges: list[Charge] = field(default_factory=list)

    def request(self, early: bool) -> None:
        """Count one request or batch part."""
        with self._lock:
            self._requests += 1
            self._early += int(early)

    def batch(self, parts: int) -> None:
        """Count one batch HTTP request of ``parts`` parts."""
        with self._lock:
            self._batches += 1
            self._batch_parts += parts

    def charge(self, at: float, user: str, method: str, units: int) -> None:
        """Record an admitted call."""
        with self._lock:
            self._units[user] += units
            self._calls[method] += 1
            self._charges.append(Charge(at, user, method, units))

    def throttle(self, kind: str) -> None:
        """Record a refused call."""
        with self._lock:
            self._throttled[kind] += 1

    def status(self, code: int) -> None:
        """Record a response status."""
        with self._lock:
            self._statuses[code] += 1

    def reset(self) -> None:
        """Zero every counter (between benchmark phases)."""
        with self._lock:
            self._requests = self._early = self._batches = self._batch_parts = 0
            for counter in (self._units, self._calls, self._statuses, self._throttled):
                counter.clear()
            self._charges.clear()

    def snapshot(self) -> AccountingSnapshot:
        """Return a consistent frozen copy."""
        with self._lock:
            return AccountingSnapshot(
                requests=self._requests,
                units_by_user=dict(self._units),
                calls_by_method=dict(self._calls),
                statuses=dict(self._statuses),
                throttled=dict(self._throttled),
                early_requests=self._early,
                batches=self._batches,
                batch_parts=self._batch_parts,
                charges=tuple(self._charges),
            )
