"""Google's JSON error envelopes, built exactly as the Gmail API sends them.

Pure functions returning ``(status, body)``; no I/O. Shapes follow the "Resolve errors" guide
and the field reports summarised in ``docs/gmail-api.md`` (section "Error responses").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

ErrorResponse = tuple[int, dict[str, Any]]

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def error(code: int, message: str, reason: str, domain: str = "global") -> ErrorResponse:
    """Return one Google error envelope with a single ``errors[]`` entry."""
    body = {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
            "status": _STATUS_NAMES.get(code, "UNKNOWN"),
        }
    }
    return code, body


def format_retry_time(wall_time: float) -> str:
    """Format a wall-clock time the way Gmail writes it in "Retry after" (ISO-8601, ms, Z)."""
    moment = datetime.fromtimestamp(wall_time, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def user_rate_limited(retry_at: float, status: int = 403) -> ErrorResponse:
    """Per-user throttle: 403 ``userRateLimitExceeded`` (or 429) with "Retry after <time>"."""
    text = f"User-rate limit exceeded.  Retry after {format_retry_time(retry_at)}"
    if status == 429:
        return error(429, text, "rateLimitExceeded")
    return error(403, text, "userRateLimitExceeded", domain="usageLimits")


def project_rate_limited(retry_at: float) -> ErrorResponse:
    """Per-project per-minute quota: 403 ``rateLimitExceeded`` naming the quota metric."""
    text = (
        "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service "
        f"'gmail.googleapis.com' for consumer 'project_number:0'. Retry after "
        f"{format_retry_time(retry_at)}"
    )
    return error(403, text, "rateLimitExceeded", domain="usageLimits")


def daily_limit_exceeded() -> ErrorResponse:
    """Daily project budget used up: 403 ``dailyLimitExceeded`` (not retried by the library)."""
    return error(403, "Daily Limit Exceeded", "dailyLimitExceeded", domain="usageLimits")


def too_many_concurrent() -> ErrorResponse:
    """Per-user concurrency limit: 429 "Too many concurrent requests for user"."""
    return error(429, "Too many concurrent requests for user", "rateLimitExceeded")


def too_many_requests(retry_at: float | None) -> ErrorResponse:
    """A plain 429, optionally with a "Retry after" time (bandwidth-style throttle)."""
    text = "Too many requests to the API"
    if retry_at is not None:
        text = f"User-rate limit exceeded.  Retry after {format_retry_time(retry_at)}"
    return error(429, text, "rateLimitExceeded")


def backend_error() -> ErrorResponse:
    """500 ``backendError``."""
    return error(500, "Backend Error", "backendError")


def unavailable() -> ErrorResponse:
    """503: the service is unavailable."""
    return error(503, "The service is currently unavailable.", "backendError")


def not_found() -> ErrorResponse:
    """404 for an unknown message, thread, attachment or an expired ``startHistoryId``."""
    return error(404, "Requested entity was not found.", "notFound")


def bad_request(
    message: str = "Invalid argument", reason: str = "invalidArgument"
) -> ErrorResponse:
    """400 with the given message."""
    return error(400, message, reason)


def failed_precondition() -> ErrorResponse:
    """400 ``failedPrecondition``: what Gmail says for a mailbox it does not serve."""
    return error(400, "Precondition check failed.", "failedPrecondition")
