"""Quota model: per-user and per-project token buckets in quota units, concurrency, daily budget.

The cost tables are the emulator's own copy of Google's (2026 by default, legacy by option); the
client keeps its own in ``streams/stages/gmail/costs.py``: the emulator plays Google, so it shares
no code with the client it is testing.
Buckets start full and refill continuously, so a user can spend one window's worth at once and then
``units_per_window / window_seconds`` per second: the "units per minute per user" ceiling.
This module decides admissions; it does not send responses.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

QuotaTable = Literal["2026", "legacy"]

COST_TABLES: dict[str, dict[str, int]] = {
    "legacy": {
        "users.getProfile": 1,
        "users.labels.list": 1,
        "users.messages.list": 5,
        "users.history.list": 2,
        "users.messages.get": 5,
        "users.messages.attachments.get": 5,
        "users.threads.get": 10,
        "users.threads.list": 10,
        "users.messages.insert": 25,
        "users.messages.import": 25,
        "users.watch": 100,
        "users.stop": 50,
    },
    "2026": {
        "users.getProfile": 1,
        "users.labels.list": 1,
        "users.messages.list": 5,
        "users.history.list": 2,
        "users.messages.get": 20,
        "users.messages.attachments.get": 20,
        "users.threads.get": 40,
        "users.threads.list": 10,
        "users.messages.insert": 25,
        "users.messages.import": 25,
        "users.watch": 100,
        "users.stop": 50,
    },
}

USER_UNITS_PER_MINUTE: dict[str, int] = {"legacy": 15_000, "2026": 6_000}
PROJECT_UNITS_PER_MINUTE = 1_200_000


@dataclass(frozen=True)
class QuotaConfig:
    """Quota knobs. Scale ``window_seconds`` down (with the units) to make tests fast.

    Attributes:
        table: cost table, ``"2026"`` (default) or ``"legacy"``.
        user_units_per_window: per-user budget per window; ``None`` = the table's per minute.
        project_units_per_window: per-project budget per window.
        window_seconds: the quota window (60 s in production).
        user_concurrency: sub-requests one user may have in flight (batch parts count one each).
        project_units_per_day: daily budget (``dailyLimitExceeded`` beyond); ``None`` = none.
        user_throttle_status: 403 (``userRateLimitExceeded``) or 429 for per-user throttles.
        retry_after_header: also send an HTTP ``Retry-After`` (whole seconds, rounded up).
        penalty_seconds: added to every "Retry after" time (Gmail's longer windows).
        early_grace_seconds: a request this soon after a throttle was issued is assumed to have
            been in flight already and is not counted as arriving before the "Retry after" time.
    """

    table: QuotaTable = "2026"
    user_units_per_window: int | None = None
    project_units_per_window: int = PROJECT_UNITS_PER_MINUTE
    window_seconds: float = 60.0
    user_concurrency: int = 50
    project_units_per_day: int | None = None
    user_throttle_status: Literal[403, 429] = 403
    retry_after_header: bool = False
    penalty_seconds: float = 0.0
    early_grace_seconds: float = 0.25

    @property
    def costs(self) -> dict[str, int]:
        """Units per method for the configured table."""
        return COST_TABLES[self.table]

    @property
    def user_budget(self) -> int:
        """Per-user units per window."""
        return self.user_units_per_window or USER_UNITS_PER_MINUTE[self.table]

    @property
    def user_units_per_second(self) -> float:
        """The per-user ceiling as a rate."""
        return self.user_budget / self.window_seconds


class TokenBucket:
    """A bucket of ``capacity`` units refilled at ``rate`` units per second; starts full."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now

    def shortfall_wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` units are available (0 when they are now)."""
        self._refill(now)
        if self.tokens >= cost:
            return 0.0
        return (cost - self.tokens) / self.rate

    def take(self, cost: float, now: float) -> None:
        """Spend ``cost`` units; call only after ``shortfall_wait`` returned 0."""
        self._refill(now)
        self.tokens -= cost


@dataclass
class Throttle:
    """Why a request was refused and when the caller may retry (wall-clock seconds)."""

    kind: Literal["user", "project", "daily", "concurrency"]
    retry_at: float | None


@dataclass
class _UserState:
    bucket: TokenBucket
    in_flight: int = 0
    blocked_until: float = 0.0  # wall clock: the last "Retry after" we told this user
    blocked_issued: float = 0.0


@dataclass
class QuotaModel:
    """Admission control shared by every request; thread-safe (one lock, no awaits inside)."""

    config: QuotaConfig
    _users: dict[str, _UserState] = field(default_factory=dict)
    _project: TokenBucket | None = None
    _day_units: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cost(self, method: str) -> int:
        """Units the configured table charges for ``method`` (unknown methods cost 5)."""
        return self.config.costs.get(method, 5)

    def _user(self, user: str, now: float) -> _UserState:
        state = self._users.get(user)
        if state is None:
            budget = self.config.user_budget
            state = _UserState(TokenBucket(budget, budget / self.config.window_seconds, now))
            self._users[user] = state
        return state

    def _project_bucket(self, now: float) -> TokenBucket:
        if self._project is None:
            budget = self.config.project_units_per_window
            self._project = TokenBucket(budget, budget / self.config.window_seconds, now)
        return self._project

    def early(self, user: str, wall: float) -> bool:
        """Whether a request arriving now ignores a "Retry after" this user was given."""
        with self._lock:
            state = self._user(user, 0.0)
            return (
                wall < state.blocked_until
                and wall > state.blocked_issued + self.config.early_grace_seconds
            )

    def admit(self, user: str, method: str, now: float, wall: float) -> Throttle | None:
        """Charge ``method`` to ``user`` or say why not. ``now`` is monotonic, ``wall`` is epoch."""
        cost = self.cost(method)
        with self._lock:
            state = self._user(user, now)
            if wall < state.blocked_until:
                return Throttle("user", state.blocked_until)
            if state.in_flight >= self.config.user_concurrency:
                return Throttle("concurrency", None)
            day = self.config.project_units_per_day
            if day is not None and self._day_units + cost > day:
                return Throttle("daily", None)
            project = self._project_bucket(now)
            wait = project.shortfall_wait(cost, now)
            if wait > 0:
                return Throttle("project", wall + wait + self.config.penalty_seconds)
            wait = state.bucket.shortfall_wait(cost, now)
            if wait > 0:
                retry_at = wall + wait + self.config.penalty_seconds
                state.blocked_until, state.blocked_issued = retry_at, wall
                return Throttle("user", retry_at)
            project.take(cost, now)
            state.bucket.take(cost, now)
            self._day_units += cost
            state.in_flight += 1
            return None

    def block(self, user: str, retry_at: float, wall: float) -> None:
        """Refuse ``user`` until ``retry_at`` (used by injected throttles)."""
        with self._lock:
            state = self._user(user, 0.0)
            state.blocked_until, state.blocked_issued = max(state.blocked_until, retry_at), wall

    def enter(self, user: str) -> bool:
        """Take a concurrency slot for a request that costs nothing; False when none is free."""
        with self._lock:
            state = self._user(user, 0.0)
            if state.in_flight >= self.config.user_concurrency:
                return False
            state.in_flight += 1
            return True

    def release(self, user: str) -> None:
        """Give back the concurrency slot taken by ``admit`` or ``enter``."""
        with self._lock:
            self._users[user].in_flight -= 1
