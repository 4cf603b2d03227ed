"""Per-user quota limiter in Gmail quota units, with Retry-After honouring and adaptive concurrency.

A token bucket refilled at ``target_utilization`` x the per-user ceiling, holding at most
``burst_fraction`` of one window (so arrival jitter never overdraws Google's own bucket), plus a
count of sub-requests in flight. A throttle from Google empties the bucket and blocks every caller
until the "Retry after" time (or a jittered exponential backoff capped at the quota window, not at
10 s); every throttle halves the allowed concurrency (and so the parts of a batch), each success
adds one back.
Callers on one event loop; not thread-safe, except ``units_in_window``, which the metrics server's
thread reads (``inboxflow_gmail_user_units``).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable


class QuotaLimiter:
    """Budget one user's Gmail calls.

    Args:
        units_per_window: the user's ceiling per window (6,000 per minute in 2026).
        window_seconds: the quota window (60 s; scaled down in tests).
        max_concurrency: the per-user limit on sub-requests in flight.
        target_utilization: fraction of the ceiling to spend in steady state.
        burst_fraction: bucket size as a fraction of one window's budget.
        transient_base: first backoff after a 5xx or timeout, seconds (Google: at least 1 s).
        clock: monotonic seconds; ``sleep`` awaits seconds (both injectable for tests).
    """

    def __init__(
        self,
        *,
        units_per_window: int,
        window_seconds: float = 60.0,
        max_concurrency: int = 40,
        target_utilization: float = 0.98,
        burst_fraction: float = 0.9,
        transient_base: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.window_seconds = window_seconds
        self.rate = units_per_window / window_seconds * target_utilization
        self.capacity = units_per_window * burst_fraction
        self.max_concurrency = max_concurrency
        self.concurrency = max_concurrency
        self.transient_base = transient_base
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._tokens = self.capacity
        self._last = clock()
        self.not_before = 0.0  # monotonic time before which nothing may be sent
        self.in_flight = 0
        self._turn = asyncio.Lock()
        self._released = asyncio.Event()
        self._consecutive_throttles = 0
        self.units_sent = 0
        self.throttles = 0
        # (clock time, units) of each acquire within the last window, for units_in_window.
        self._spent: deque[tuple[float, int]] = deque()
        self._spent_lock = threading.Lock()

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now

    async def acquire(self, units: int, slots: int = 1) -> None:
        """Wait until ``units`` may be spent and ``slots`` sub-requests may start, then take them.

        Callers are served in arrival order. A request dearer than the bucket waits for a full
        bucket and leaves it in debt, so it is never starved.
        """
        async with self._turn:
            while True:
                now = self._clock()
                if now < self.not_before:
                    await self._sleep(self.not_before - now)
                    continue
                if self.in_flight and self.in_flight + slots > self.concurrency:
                    self._released.clear()
                    await self._released.wait()
                    continue
                self._refill(now)
                needed = min(units, self.capacity)
                if self._tokens < needed - 1e-6:  # tolerance: float refill never quite reaches
                    await self._sleep(max((needed - self._tokens) / self.rate, 1e-3))
                    continue
                self._tokens -= units
                self.in_flight += slots
                self.units_sent += units
                with self._spent_lock:
                    self._spent.append((now, units))
                    self._forget_spent(now)
                return

    def units_in_window(self) -> int:
        """Return the units taken in the last ``window_seconds``; safe from any thread."""
        with self._spent_lock:
            self._forget_spent(self._clock())
            return sum(units for _at, units in self._spent)

    def _forget_spent(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.window_seconds:
            self._spent.popleft()

    def release(self, slots: int = 1) -> None:
        """Return ``slots`` taken by ``acquire`` once their responses are in."""
        self.in_flight -= slots
        self._released.set()

    def on_success(self) -> None:
        """A call or batch went through unthrottled: grow concurrency by one (additive)."""
        self._consecutive_throttles = 0
        self.concurrency = min(self.max_concurrency, self.concurrency + 1)

    def on_throttle(self, wait: float | None, *, concurrency: bool = False) -> float:
        """Google throttled us: block until its time (or a backoff) and return the delay applied.

        The delay is never shorter than ``wait``; jitter only adds to it.
        """
        self.throttles += 1
        self._consecutive_throttles += 1
        # Every throttle halves the sub-requests allowed in flight, and so the parts of the next
        # batch: a user-rate throttle refuses every part behind the first refused one, and the
        # next batch waits for its units to refill an empty bucket, so a full-size batch after a
        # throttle mostly buys waiting (docs/gmail-api.md, "Retry-After"). Each success adds one
        # back.
        self.concurrency = max(1, self.concurrency // 2)
        if wait is not None:
            delay = wait + self._rng.uniform(0.0, min(1.0, 0.05 * wait)) + 0.01
        else:
            delay = self.backoff(self._consecutive_throttles, base=1.0)
        now = self._clock()
        self.not_before = max(self.not_before, now + delay)
        if not concurrency:
            # Google's bucket is empty; ours restarts empty at the time it gave us.
            self._tokens = 0.0
            self._last = max(self._last, self.not_before)
        return delay

    def backoff(self, attempt: int, base: float | None = None) -> float:
        """Full-jitter exponential backoff: between ``base`` and ``base`` x 2^attempt, at most one
        quota window (attempt 1: 1 to 2 s with the default base)."""
        floor = self.transient_base if base is None else base
        ceiling = max(floor, min(self.window_seconds, floor * 2 ** max(1, attempt)))
        return self._rng.uniform(floor, ceiling)
