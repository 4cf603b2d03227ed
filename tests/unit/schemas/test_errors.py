"""classify() and decide(): every exception gets a class; every class a next stop."""

from __future__ import annotations

import random

import aiohttp
import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

from schemas.errors import (
    DependencyUnavailableError,
    Failure,
    QuotaExceededError,
    RateLimitedError,
    RetryClass,
    RetryPolicy,
    RetryTier,
    StageTimeoutError,
    StaleHistoryError,
    TransientError,
    UndecodableRecordError,
    classify,
    decide,
)

LADDER = [RetryTier("t.retry.5s", 5), RetryTier("t.retry.30s", 30), RetryTier("t.retry.2m", 120)]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransientError("blip"), RetryClass.TRANSIENT),
        (DependencyUnavailableError("breaker open"), RetryClass.TRANSIENT),
        (RateLimitedError("slow down", retry_after=12), RetryClass.RATE_LIMIT),
        (QuotaExceededError("daily"), RetryClass.QUOTA),
        (StageTimeoutError("late"), RetryClass.TIMEOUT),
        (UndecodableRecordError("bad bytes"), RetryClass.PERMANENT),
        (StaleHistoryError("old"), RetryClass.PERMANENT),
        (TimeoutError(), RetryClass.TIMEOUT),
        (psycopg.OperationalError("server closed"), RetryClass.TRANSIENT),
        (aiohttp.ClientConnectionError("refused"), RetryClass.TRANSIENT),
        (ConnectionResetError(), RetryClass.TRANSIENT),
        (KafkaConnectionError(), RetryClass.TRANSIENT),
        (UnknownTopicOrPartitionError(), RetryClass.TRANSIENT),
        (KeyError("field"), RetryClass.PERMANENT),
        (ValueError("bug"), RetryClass.PERMANENT),
    ],
)
def test_classify_maps_each_exception_to_its_class(
    exc: BaseException, expected: RetryClass
) -> None:
    assert classify(exc).retry_class is expected


def test_classify_keeps_the_remote_wait_and_a_bounded_message() -> None:
    failure = classify(RateLimitedError("x" * 2000, retry_after=42.5))
    assert failure.retry_after == 42.5
    assert failure.message.startswith("RateLimitedError: xxx")
    assert len(failure.message) <= 500


def test_permanent_failures_go_straight_to_the_dead_letter_topic() -> None:
    decision = decide(
        Failure(RetryClass.PERMANENT, "bad"),
        attempts=1,
        ladder=LADDER,
        dead_letter_topic="dlq",
        now=0,
    )
    assert decision.dead
    assert decision.topic == "dlq"
    assert decision.due_at is None


def test_transient_failures_climb_the_ladder_with_jitter() -> None:
    rng = random.Random(1)
    topics, waits = [], []
    for attempt in (1, 2, 3, 4, 5):
        decision = decide(
            Failure(RetryClass.TRANSIENT, "5xx"),
            attempts=attempt,
            ladder=LADDER,
            dead_letter_topic="dlq",
            now=1000.0,
            rng=rng,
        )
        topics.append(decision.topic)
        waits.append(decision.due_at - 1000.0)  # type: ignore[operator]
    assert topics == ["t.retry.5s", "t.retry.30s", "t.retry.2m", "t.retry.2m", "t.retry.2m"]
    for wait, tier in zip(waits, [5, 30, 120, 120, 120], strict=True):
        assert 0.8 * tier <= wait <= 1.2 * tier


def test_rate_limits_are_due_no_earlier_than_the_remote_asked() -> None:
    decision = decide(
        Failure(RetryClass.RATE_LIMIT, "429", retry_after=57.0),
        attempts=1,
        ladder=LADDER,
        dead_letter_topic="dlq",
        now=100.0,
    )
    assert decision.topic == "t.retry.2m", "a tier at least as long as the wait"
    assert decision.due_at is not None
    assert decision.due_at >= 157.0


def test_a_short_remote_wait_keeps_the_attempts_tier() -> None:
    decision = decide(
        Failure(RetryClass.RATE_LIMIT, "429", retry_after=2.0),
        attempts=2,
        ladder=LADDER,
        dead_letter_topic="dlq",
        now=0.0,
    )
    assert decision.topic == "t.retry.30s"


def test_a_wait_longer_than_every_tier_goes_to_the_last() -> None:
    decision = decide(
        Failure(RetryClass.QUOTA, "daily", retry_after=3600.0),
        attempts=1,
        ladder=LADDER,
        dead_letter_topic="dlq",
        now=0.0,
    )
    assert decision.topic == "t.retry.2m"
    assert decision.due_at is not None
    assert decision.due_at >= 3600.0


def test_each_class_dies_when_its_budget_is_spent() -> None:
    policy = RetryPolicy.default()
    for retry_class, budget in policy.max_attempts.items():
        if retry_class is RetryClass.PERMANENT:
            continue
        before = decide(
            Failure(retry_class, "x"),
            attempts=budget - 1,
            ladder=LADDER,
            dead_letter_topic="dlq",
            now=0,
        )
        at = decide(
            Failure(retry_class, "x"),
            attempts=budget,
            ladder=LADDER,
            dead_letter_topic="dlq",
            now=0,
        )
        assert not before.dead, retry_class
        assert at.dead, retry_class


def test_rate_limits_get_a_larger_budget_than_transient_faults() -> None:
    budget = RetryPolicy.default().max_attempts
    assert (
        budget[RetryClass.RATE_LIMIT] > budget[RetryClass.TRANSIENT] > budget[RetryClass.PERMANENT]
    )


def test_an_empty_ladder_sends_everything_to_the_dead_letter_topic() -> None:
    decision = decide(
        Failure(RetryClass.TRANSIENT, "x"), attempts=1, ladder=[], dead_letter_topic="dlq", now=0
    )
    assert decision.dead
