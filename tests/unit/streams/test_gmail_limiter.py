"""QuotaLimiter on a virtual clock: rate, bursts, Retry-After, backoff and concurrency."""

from __future__ import annotations

import random

import pytest

from streams.stages.gmail.limiter import QuotaLimiter


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


def make(vt: VirtualTime, **kw: object) -> QuotaLimiter:
    args: dict[str, object] = {
        "units_per_window": 6000,
        "window_seconds": 60.0,
        "rng": random.Random(1),
    }
    args.update(kw)
    return QuotaLimiter(clock=vt.clock, sleep=vt.sleep, **args)  # type: ignore[arg-type]


async def test_steady_rate_is_target_of_ceiling() -> None:
    vt = VirtualTime()
    limiter = make(vt, burst_fraction=0.1, target_utilization=0.98)
    for _ in range(1000):
        await limiter.acquire(20)
        limiter.release()
    spent_after_burst = 1000 * 20 - 600
    assert spent_after_burst / vt.now == pytest.approx(98.0, rel=0.01)


async def test_throttle_blocks_until_retry_time_and_empties_bucket() -> None:
    vt = VirtualTime()
    limiter = make(vt)
    delay = limiter.on_throttle(12.5)
    assert 12.5 <= delay <= 12.5 + 0.64
    await limiter.acquire(20)
    assert vt.now >= 12.5 + 20 / limiter.rate


async def test_backoff_without_time_is_capped_by_window_not_ten_seconds() -> None:
    vt = VirtualTime()
    limiter = make(vt)
    delays = [limiter.on_throttle(None) for _ in range(10)]
    assert all(d >= 1.0 for d in delays)
    assert max(delays) > 10.0
    assert max(delays) <= 60.0


async def test_concurrency_halves_on_concurrency_throttle_and_grows_back() -> None:
    vt = VirtualTime()
    limiter = make(vt, max_concurrency=40)
    limiter.on_throttle(None, concurrency=True)
    assert limiter.concurrency == 20
    for _ in range(30):
        limiter.on_success()
    assert limiter.concurrency == 40


async def test_a_rate_throttle_halves_concurrency_too_so_the_next_batch_is_smaller() -> None:
    vt = VirtualTime()
    limiter = make(vt, max_concurrency=25)
    for expected in (12, 6, 3, 1, 1):
        limiter.on_throttle(1.0)
        assert limiter.concurrency == expected
    limiter.on_success()
    assert limiter.concurrency == 2


def test_transient_backoff_starts_at_one_second_with_jitter() -> None:
    vt = VirtualTime()
    limiter = make(vt)
    first = [limiter.backoff(1) for _ in range(200)]
    assert min(first) >= 1.0  # Google: wait at least 1 s before the first retry
    assert max(first) <= 2.0
    assert max(first) - min(first) > 0.5  # jittered, so failed callers do not retry in step
    later = [limiter.backoff(attempt) for attempt in range(1, 12) for _ in range(20)]
    assert min(later) >= 1.0
    assert max(later) <= limiter.window_seconds
