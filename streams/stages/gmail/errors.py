"""Gmail's side of the failure vocabulary: a response or exception -> a retry class and its wait.

This is where the Gmail dependency is wrapped, once: ``classify`` reads Google's status, reason and
``Retry-After`` (pure, it takes ``now``; table-tested) and ``to_error`` turns the result into the
``schemas.errors`` exception of the same retry class, which ``schemas.errors.classify`` then reads
like any other. 404 is classified PERMANENT here;
callers that know better (a deleted message, a stale history id) handle it before raising.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httplib2
from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from schemas.errors import (
    AccountRevokedError,
    CredentialsError,
    InboxflowError,
    RetryClass,
    TransientError,
    error_for,
    safe_error_message,
)

_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
_QUOTA_REASONS = {"dailyLimitExceeded", "quotaExceeded"}
_RETRY_AFTER_TEXT = re.compile(r"Retry after (\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:?\d\d)?)")
DAILY_QUOTA_RECHECK_SECONDS = 3600.0
# The longest wait believed from a response. A stated time further out (a proxy's or a bug's
# "Retry-After: 86400", a skewed clock) would park the record for that long, and the retry tier's
# partition behind it. One hour is how often a spent daily quota is rechecked anyway, so a wait
# cut to it only costs one more question to Gmail. Waits this long are never slept in-process:
# the client raises them (``client.MAX_IN_PROCESS_WAIT_SECONDS``) and the retry ladder waits.
MAX_RETRY_AFTER_SECONDS = 3600.0
# failedPrecondition is permanent for the request: retrying does not enable Gmail for an account.
_FAILED_PRECONDITION_ACTION = (
    "Gmail does not serve this mailbox: Gmail is disabled or the account suspended, or a service "
    "account lacks domain-wide delegation for it. Operator action: fix the account, then redrive "
    "the record from the dead-letter topic."
)


@dataclass(frozen=True)
class GmailFailure:
    """A classified failure.

    Attributes:
        retry_class: what to do with it.
        wait: seconds the remote asked us to wait (parsed), ``None`` when it did not say.
        status: HTTP status, 0 for transport errors.
        reason: Google's ``errors[0].reason`` or the exception type.
        message: Google's ``error.message`` or the exception text.
        concurrency: the per-user concurrent-request limit was hit (lower concurrency).
    """

    retry_class: RetryClass
    wait: float | None
    status: int
    reason: str
    message: str
    concurrency: bool = False


def _error_body(content: bytes | str | None) -> tuple[str, str]:
    try:
        body: Any = json.loads(content or b"{}")
        error = body.get("error", {})
        reason = (error.get("errors") or [{}])[0].get("reason", "") or error.get("status", "")
        return str(reason), str(error.get("message", ""))
    except (ValueError, AttributeError, TypeError):
        return "", content.decode("utf-8", "replace")[:200] if isinstance(content, bytes) else ""


def parse_retry_wait(message: str, retry_after_header: str | None, now: datetime) -> float | None:
    """Seconds to wait from "Retry after <ISO time>" text or an HTTP ``Retry-After`` header.

    The later of the two, never negative, at most :data:`MAX_RETRY_AFTER_SECONDS`.
    """
    waits = []
    match = _RETRY_AFTER_TEXT.search(message)
    if match:
        stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        waits.append((stamp.replace(tzinfo=stamp.tzinfo or UTC) - now).total_seconds())
    if retry_after_header:
        value = retry_after_header.strip()
        if value.isdigit():
            waits.append(float(value))
        else:
            with contextlib.suppress(TypeError, ValueError):
                waits.append((parsedate_to_datetime(value) - now).total_seconds())
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, *waits)) if waits else None


def classify_response(
    status: int, content: bytes | str | None, headers: dict[str, str] | None, now: datetime
) -> GmailFailure:
    """Classify an HTTP error response (status >= 400)."""
    reason, message = _error_body(content)
    header = {k.lower(): v for k, v in (headers or {}).items()}.get("retry-after")
    wait = parse_retry_wait(message, header, now)
    concurrent = "concurrent" in message.lower()
    if status == 429 or (status == 403 and reason in _RATE_REASONS):
        return GmailFailure(RetryClass.RATE_LIMIT, wait, status, reason, message, concurrent)
    if status == 403 and reason in _QUOTA_REASONS:
        return GmailFailure(
            RetryClass.QUOTA, wait or DAILY_QUOTA_RECHECK_SECONDS, status, reason, message
        )
    if status >= 500 or status == 408:
        return GmailFailure(RetryClass.TRANSIENT, wait, status, reason, message)
    if status == 400 and reason == "failedPrecondition":
        text = f"{message} {_FAILED_PRECONDITION_ACTION}".strip()
        return GmailFailure(RetryClass.PERMANENT, None, status, reason, text)
    return GmailFailure(RetryClass.PERMANENT, None, status, reason, message)


def classify(exc: BaseException, now: datetime | None = None) -> GmailFailure:
    """Classify an exception raised by google-api-python-client or the transport under it."""
    now = now or datetime.now(UTC)
    if isinstance(exc, HttpError):
        headers = {str(k): str(v) for k, v in dict(exc.resp).items()}
        return classify_response(int(exc.resp.status), exc.content, headers, now)
    name = type(exc).__name__
    text = safe_error_message(exc)  # a parser's error may quote the mail it choked on
    if isinstance(exc, socket.timeout | TimeoutError):
        return GmailFailure(RetryClass.TIMEOUT, None, 0, name, text)
    if isinstance(exc, ConnectionError | ssl.SSLError | httplib2.HttpLib2Error | OSError):
        return GmailFailure(RetryClass.TRANSIENT, None, 0, name, text)
    return GmailFailure(RetryClass.PERMANENT, None, 0, name, text)


def to_error(failure: GmailFailure, context: str) -> InboxflowError:
    """The ``schemas.errors`` exception for ``failure`` (raise it ``from`` the original)."""
    text = f"gmail {context}: {failure.status} {failure.reason}: {failure.message}"
    return error_for(failure.retry_class, text, retry_after=failure.wait)


def refresh_failure(exc: BaseException, user: str) -> InboxflowError | None:
    """The error for a failure to get an access token for ``user``; None for any other exception.

    google-auth refreshes tokens inside the HTTP call (and retries the token endpoint's 5xx
    itself), so its errors surface from ``execute``:

    * ``RefreshError`` ``invalid_grant`` (revoked or expired grant, deleted service account key,
      unknown subject): ``AccountRevokedError``, permanent; the sync stage marks the account;
    * a ``RefreshError`` Google marks retryable, or the token endpoint unreachable
      (``TransportError``): ``TransientError``;
    * any other ``RefreshError`` (``invalid_client``, ``unauthorized_client``: a service account
      without domain-wide delegation of the scope): ``CredentialsError``, permanent.

    The text is Google's error code and description, never a token.
    """
    if isinstance(exc, auth_exceptions.RefreshError):
        code, detail = _oauth_error(exc)
        if code == "invalid_grant":
            return AccountRevokedError(user, detail)
        if exc.retryable:
            return TransientError(f"gmail token refresh for {user} failed: {detail}")
        return CredentialsError(
            f"Google refused to issue a Gmail access token for {user} ({detail}). Operator "
            "action: check the OAuth client, or the service account's domain-wide delegation of "
            "the scope, then add the account's credentials again and redrive."
        )
    if isinstance(exc, auth_exceptions.TransportError):
        return TransientError(f"gmail token endpoint unreachable for {user}: {type(exc).__name__}")
    return None


def _oauth_error(exc: auth_exceptions.RefreshError) -> tuple[str, str]:
    """The OAuth error code and ``code: description`` of a RefreshError."""
    payload = exc.args[1] if len(exc.args) > 1 else None
    text = str(exc.args[0]) if exc.args else ""
    if isinstance(payload, dict):
        code = str(payload.get("error", ""))
        description = payload.get("error_description")
        return code, f"{code}: {description}" if description else code
    code = text.split(":", 1)[0].strip() if ":" in text else ""
    return code, text[:200]
