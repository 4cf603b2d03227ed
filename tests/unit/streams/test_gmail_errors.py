"""The Gmail error classifier, table-tested on Google's real envelopes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httplib2
import pytest

from schemas.errors import PermanentError, QuotaExceededError, RateLimitedError, RetryClass
from streams.stages.gmail.errors import (
    MAX_RETRY_AFTER_SECONDS,
    classify_response,
    parse_retry_wait,
    to_error,
)

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
        (400, "Precondition check failed.", "failedPrecondition", RetryClass.PERMANENT, None),
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


def test_failed_precondition_is_permanent_and_says_what_to_do() -> None:
    body = envelope(400, "Precondition check failed.", "failedPrecondition")
    error = to_error(classify_response(400, body, {}, NOW), "users.getProfile")
    assert isinstance(error, PermanentError)
    assert error.retry_after is None
    text = str(error)
    assert "400 failedPrecondition: Precondition check failed." in text
    assert "Gmail does not serve this mailbox" in text
    assert "Operator action:" in text


@pytest.mark.parametrize(
    ("message", "header"),
    [
        ("Rate Limit Exceeded", "86400"),
        ("Rate Limit Exceeded", "Sat, 12 Sep 2026 19:59:30 GMT"),
        ("User-rate limit exceeded.  Retry after 2026-09-12T19:59:30.000Z", None),
    ],
)
def test_a_stated_wait_is_capped(message: str, header: str | None) -> None:
    assert parse_retry_wait(message, header, NOW) == MAX_RETRY_AFTER_SECONDS
    headers = {"Retry-After": header} if header else {}
    for status, reason in ((429, "rateLimitExceeded"), (403, "dailyLimitExceeded")):
        failure = classify_response(status, envelope(status, message, reason), headers, NOW)
        assert failure.wait == MAX_RETRY_AFTER_SECONDS
        assert to_error(failure, "x").retry_after == MAX_RETRY_AFTER_SECONDS


def test_waits_within_the_cap_are_kept() -> None:
    assert parse_retry_wait("x", "900", NOW) == 900.0
    assert parse_retry_wait("x", str(int(MAX_RETRY_AFTER_SECONDS)), NOW) == MAX_RETRY_AFTER_SECONDS
