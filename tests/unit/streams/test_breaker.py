"""Circuit breaker transitions on an injected clock."""

from __future__ import annotations

from streams.runtime.breaker import BreakerConfig, BreakerRegistry, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    config = BreakerConfig(window_seconds=10, min_calls=4, failure_rate=0.5, open_seconds=5)
    return CircuitBreaker("embedding", config, clock)


def test_stays_closed_below_the_minimum_number_of_calls() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        assert b.allow()
        b.record(success=False)
    assert b.state is BreakerState.CLOSED


def test_opens_at_the_failure_rate_and_refuses_calls_until_the_probe() -> None:
    clock = Clock()
    b = breaker(clock)
    for ok in (True, False, True, False):
        b.record(success=ok)
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.wait_seconds() == 5
    clock.now += 5
    assert b.allow(), "one probe after open_seconds"
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow(), "only one probe at a time"


def test_probe_success_closes_and_probe_failure_reopens() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.record(success=False)
    clock.now += 5
    assert b.allow()
    b.record(success=False)
    assert b.state is BreakerState.OPEN
    assert b.wait_seconds() == 5
    clock.now += 5
    assert b.allow()
    b.record(success=True)
    assert b.state is BreakerState.CLOSED
    assert b.allow()


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record(success=False)
    clock.now += 11
    for _ in range(3):
        b.record(success=True)
    b.record(success=False)
    assert b.state is BreakerState.CLOSED


def test_registry_returns_one_breaker_per_name() -> None:
    registry = BreakerRegistry()
    assert registry.get("gmail") is registry.get("gmail")
    assert registry.get("gmail") is not registry.get("gmail:u@example.org")


def test_can_pass_tells_without_taking_the_probe() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.record(success=False)
    assert not b.can_pass()
    clock.now += 5
    assert b.can_pass()
    assert b.can_pass(), "asking twice takes nothing"
    assert b.allow()
    assert not b.can_pass(), "the probe is out"
