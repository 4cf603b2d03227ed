"""Circuit breakers per external dependency (Gmail per user and overall, the embedding API).

A breaker watches the outcomes of calls over a sliding time window. When enough calls failed it
opens: callers wait instead of sending more calls (and burning records into retry topics) while
the dependency is down. After ``open_seconds`` it lets one probe through (half-open); a success
closes it, a failure opens it again.

Pure: the clock is injected and nothing here sleeps; ``streams/runtime/runner.py`` does the waiting.
Hand-rolled rather than a library: the asyncio breakers on PyPI (aiobreaker, purgatory) wrap a
call, but the runner must decide *before* taking a batch and park the partition, not fail fast.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum


class BreakerState(IntEnum):
    """Breaker states; the values are the ``inboxflow_breaker_state`` metric."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerConfig:
    """When a breaker opens and for how long.

    Attributes:
        window_seconds: outcomes older than this are forgotten.
        min_calls: fewer outcomes than this in the window never open the breaker.
        failure_rate: share of failed outcomes in the window that opens it.
        open_seconds: how long it stays open before a probe.
    """

    window_seconds: float = 30.0
    min_calls: int = 5
    failure_rate: float = 0.5
    open_seconds: float = 5.0


@dataclass
class CircuitBreaker:
    """One dependency's breaker."""

    name: str
    config: BreakerConfig = BreakerConfig()
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    _probing: bool = False
    transitions: int = 0

    def can_pass(self) -> bool:
        """Return True if ``allow`` would let a call through now; changes nothing."""
        if self.state is BreakerState.OPEN:
            return self.clock() - self.opened_at >= self.config.open_seconds
        if self.state is BreakerState.HALF_OPEN:
            return not self._probing
        return True

    def allow(self) -> bool:
        """Return True if a call may go ahead now (in half-open: only the one probe)."""
        if self.state is BreakerState.OPEN:
            if self.clock() - self.opened_at < self.config.open_seconds:
                return False
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
        return True

    def wait_seconds(self) -> float:
        """Seconds until a call may be allowed (0 when closed)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.config.open_seconds - self.clock())

    def record(self, success: bool) -> None:
        """Record the outcome of a call that ``allow`` let through."""
        now = self.clock()
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False
            if success:
                self._outcomes.clear()
                self._set(BreakerState.CLOSED)
            else:
                self._open(now)
            return
        self._outcomes.append((now, success))
        self._forget(now)
        if self.state is BreakerState.CLOSED and self._tripped():
            self._open(now)

    def _tripped(self) -> bool:
        calls = len(self._outcomes)
        failures = sum(1 for _, ok in self._outcomes if not ok)
        return calls >= self.config.min_calls and failures / calls >= self.config.failure_rate

    def _forget(self, now: float) -> None:
        horizon = now - self.config.window_seconds
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _open(self, now: float) -> None:
        self.opened_at = now
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self.transitions += 1


@dataclass
class BreakerRegistry:
    """Breakers by name, created on first use with one config."""

    config: BreakerConfig = BreakerConfig()
    clock: Callable[[], float] = time.monotonic
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def get(self, name: str) -> CircuitBreaker:
        """Return the breaker called ``name``."""
        breaker = self.breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, self.config, self.clock)
            self.breakers[name] = breaker
        return breaker
