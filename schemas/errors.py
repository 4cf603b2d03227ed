"""Failure taxonomy shared by every stage: the contract for DLQ headers and job rows.

``RetryClass`` values are written to DLQ headers and ``jobs.last_error_class``.

Each exception carries the retry class that decides what happens to the record that raised it::

    InboxflowError                  (PERMANENT unless a subclass says otherwise)
    ├── TransientError              TRANSIENT   network blips, 5xx, database restarts
    │   └── DependencyUnavailableError  TRANSIENT   circuit breaker open
    ├── RateLimitedError            RATE_LIMIT  429 / 403 rateLimitExceeded; retry_after set
    ├── QuotaExceededError          QUOTA       daily or per-minute quota used up; due at the reset
    ├── StageTimeoutError           TIMEOUT     a stage ran past its per-kind deadline
    └── PermanentError              PERMANENT   retrying cannot help
        ├── UndecodableRecordError  PERMANENT   bytes that no known schema reads
        └── StaleHistoryError       PERMANENT   historyId too old; sync does a full resync

This module must not import anything outside the standard library.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class RetryClass(StrEnum):
    """How a failure is retried. The values are written to headers and Postgres: never rename."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    TIMEOUT = "timeout"


class InboxflowError(Exception):
    """Unexpected inboxflow error."""

    retry_class: ClassVar[RetryClass] = RetryClass.PERMANENT

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message or self.__doc__)
        self.retry_after = retry_after  # seconds, when the remote said so


class TransientError(InboxflowError):
    """A dependency failed in a way that usually passes; retry later."""

    retry_class = RetryClass.TRANSIENT


class DependencyUnavailableError(TransientError):
    """A circuit breaker is open for this dependency; the record waits instead of failing."""


class RateLimitedError(InboxflowError):
    """The remote asked us to slow down; retry after the time it gave."""

    retry_class = RetryClass.RATE_LIMIT


class QuotaExceededError(InboxflowError):
    """A quota is used up; retry when it resets."""

    retry_class = RetryClass.QUOTA


class StageTimeoutError(InboxflowError):
    """A stage ran past its deadline; the record is retried with the same deadline."""

    retry_class = RetryClass.TIMEOUT


class PermanentError(InboxflowError):
    """Retrying cannot help; the record goes to the dead-letter topic."""


class UndecodableRecordError(PermanentError):
    """The record's bytes match no known schema; fix the producer, then redrive from the DLQ."""


class StaleHistoryError(PermanentError):
    """The stored historyId is older than Gmail keeps; a full resync is needed."""
