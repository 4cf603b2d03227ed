"""The Gmail error classifier, table-tested on Google's real envelopes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httplib2
import pytest

from schemas.errors import QuotaExceededError, RateLimitedError, RetryClass
from streams.stages.gmail.errors import classify_response, parse_retry_wait, to_error

NOW = datetime(2026, 9, 11, 19, 59, 30, tzinfo=UTC)


def envelope(code: int, message: str, reason: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "code": code,
                "message": message,
                "errors": [{"reason": reason, "message": message}],
            }
        }
    ).encode()


@pytest.mark.parametrize(
    ("status", "message", "reason", "expected", "wait"),
    [
        (
            403,
            "User-rate limit exceeded.  Retry after 2026-09-11T20:00:00.000Z",
            "rateLimitExceeded",
            RetryClass.RATE_LIMIT,
            30.0,
        ),
        (403, "User Rate Limit Exceeded", "userRateLimitExceeded", RetryClass.RATE_LIMIT, None),
        (
            429,
            "Too many concurrent requests for user",
            "rateLimitExceeded",
            RetryClass.RATE_LIMIT,
            None,
        ),
        (403, "Daily Limit Exceeded", "dailyLimitExceeded", RetryClass.QUOTA, 3600.0),
        (500, "Backend Error", "backendError", RetryClass.TRANSIENT, None),
        (503, "unavailable", "backendError", RetryClass.TRANSIENT, None),
        (400, "Precondition check failed.", "failedPrecondition", RetryClass.TRANSIENT, None),
        (404, "Requested entity was not found.", "notFound", RetryClass.PERMANENT, None),
        (403, "Domain policy", "domainPolicy", RetryClass.PERMANENT, None),
        (401, "Invalid Credentials", "authError", RetryClass.PERMANENT, None),
    ],
)
def test_classify_response(
    status: int, message: str, reason: str, expected: RetryClass, wait: float | None
) -> None:
    failure = classify_response(status, envelope(status, message, reason), {}, NOW)
    assert failure.retry_class is expected
    assert failure.wait == (pytest.approx(wait) if wait is not None else None)


def test_concurrency_throttle_is_flagged() -> None:
    body = envelope(429, "Too many concurrent requests for user", "rateLimitExceeded")
    assert classify_response(429, body, {}, NOW).concurrency


def test_retry_after_header_and_text_take_the_later() -> None:
    assert parse_retry_wait("Retry after 2026-09-11T19:59:40Z", "20", NOW) == pytest.approx(20)
    assert parse_retry_wait("nothing", None, NOW) is None
    assert parse_retry_wait("Retry after 2026-09-11T19:59:00Z", None, NOW) == 0.0


def test_transport_exceptions() -> None:
    from streams.stages.gmail.errors import classify

    assert classify(TimeoutError("read")).retry_class is RetryClass.TIMEOUT
    assert classify(ConnectionResetError()).retry_class is RetryClass.TRANSIENT
    assert classify(httplib2.ServerNotFoundError("x")).retry_class is RetryClass.TRANSIENT
    assert classify(KeyError("bug")).retry_class is RetryClass.PERMANENT


def test_to_error_carries_class_and_wait() -> None:
    body = envelope(
        403, "User-rate limit exceeded.  Retry after 2026-09-11T20:00:00.000Z", "rateLimitExceeded"
    )
    error = to_error(classify_response(403, body, {}, NOW), "users.messages.get")
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == pytest.approx(30)
    daily = to_error(classify_response(403, envelope(403, "x", "dailyLimitExceeded"), {}, NOW), "x")
    assert isinstance(daily, QuotaExceededError)
