"""TokenBucket pacing and Retry-After parsing, on a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.stages.embedding import TokenBucket, parse_retry_after


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_bucket_allows_a_burst_then_paces() -> None:
    fake = FakeTime()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=fake.clock, sleep=fake.sleep)
    for _ in range(3):
        await bucket.acquire()
    assert fake.slept == []
    await bucket.acquire()
    await bucket.acquire()
    assert fake.slept == pytest.approx([0.5, 0.5])


async def test_bucket_refills_up_to_capacity_only() -> None:
    fake = FakeTime()
    bucket = TokenBucket(rate=1.0, capacity=2, clock=fake.clock, sleep=fake.sleep)
    await bucket.acquire(2)
    fake.now += 100
    await bucket.acquire(2)
    await bucket.acquire()
    assert fake.slept == pytest.approx([1.0])


async def test_hold_blocks_every_caller_then_restarts_empty() -> None:
    fake = FakeTime()
    bucket = TokenBucket(rate=4.0, capacity=4, clock=fake.clock, sleep=fake.sleep)
    bucket.hold(10)
    await bucket.acquire()
    assert fake.now == pytest.approx(10.25)  # the hold, then a quarter second for one token


def test_bucket_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, capacity=1)


async def test_bucket_rejects_more_than_capacity() -> None:
    with pytest.raises(ValueError, match="cannot take"):
        await TokenBucket(rate=1, capacity=1).acquire(2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("20", 20.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2026, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == expected
