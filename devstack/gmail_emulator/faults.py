"""Fault knobs: random 429/5xx, latency, messages that vanish before ``messages.get``.

Draws come from one seeded ``random.Random`` so a run with the same seed and request order fails
the same way.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

Fault = Literal["429", "500", "503"]


@dataclass(frozen=True)
class FaultConfig:
    """Rates are probabilities per (sub-)request; 0 disables.

    Attributes:
        rate_429: 429 "User-rate limit exceeded. Retry after <now + throttle_seconds>".
        rate_500: 500 ``backendError``.
        rate_503: 503.
        throttle_seconds: how far ahead an injected 429 sets its "Retry after" time.
        latency_ms: median added latency per request (log-normal); 0 = none.
        latency_sigma: log-normal shape; 1.0 gives a p99 of about 10x the median.
        vanish_rate: chance that ``messages.get`` finds the message deleted (404, history updated).
        seed: seed of the fault draws.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    throttle_seconds: float = 1.0
    latency_ms: float = 0.0
    latency_sigma: float = 0.5
    vanish_rate: float = 0.0
    seed: int = 0


class FaultInjector:
    """Draws faults and latencies for one emulator."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)  # noqa: S311 - reproducible faults

    def draw_fault(self) -> Fault | None:
        """Return the fault to inject for one request, if any."""
        c = self.config
        if not (c.rate_429 or c.rate_500 or c.rate_503):
            return None
        x = self._rng.random()
        if x < c.rate_429:
            return "429"
        if x < c.rate_429 + c.rate_500:
            return "500"
        if x < c.rate_429 + c.rate_500 + c.rate_503:
            return "503"
        return None

    def draw_latency(self) -> float:
        """Seconds to delay one request."""
        if self.config.latency_ms <= 0:
            return 0.0
        median = self.config.latency_ms / 1000
        return median * math.exp(self._rng.gauss(0.0, self.config.latency_sigma))

    def draw_vanish(self) -> bool:
        """Whether this ``messages.get`` finds its message deleted."""
        return self.config.vanish_rate > 0 and self._rng.random() < self.config.vanish_rate
