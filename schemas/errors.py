"""The one failure vocabulary: what went wrong, how it is classified, where the record goes next.

Every package that handles a failure uses this module: the stage runtime, the retry relay, the
sinks and the operator tools. ``RetryClass`` values are written to dead-letter headers (their keys
are in ``schemas.headers``) and to ``jobs.last_error_class``: they are contract.

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

Each dependency is wrapped once, where it is called (the Gmail client, the embedding provider,
the sinks), into one of these classes. ``classify`` maps any exception to a ``Failure``: pure, and
an exception nobody expected is PERMANENT (a bug). ``decide`` turns a failure and the attempts so
far into the next stop on the group's retry ladder (``RetryTier``) or the dead-letter topic.
Pure throughout: no I/O, no clock (callers pass ``now``), no settings.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

import aiohttp
import psycopg
from aiokafka.errors import KafkaError


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


_ERROR_FOR_CLASS: dict[RetryClass, type[InboxflowError]] = {
    RetryClass.TRANSIENT: TransientError,
    RetryClass.RATE_LIMIT: RateLimitedError,
    RetryClass.QUOTA: QuotaExceededError,
    RetryClass.TIMEOUT: StageTimeoutError,
    RetryClass.PERMANENT: PermanentError,
}


def error_for(
    retry_class: RetryClass, message: str, *, retry_after: float | None = None
) -> InboxflowError:
    """Return the exception of ``retry_class`` (raise it ``from`` the dependency's own error)."""
    return _ERROR_FOR_CLASS[retry_class](message, retry_after=retry_after)


_MAX_MESSAGE = 500  # error text kept in headers and job rows


@dataclass(frozen=True)
class Failure:
    """A classified failure: its class, the wait the remote asked for, and a short message."""

    retry_class: RetryClass
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a class gets before the record is dead.

    Rate-limit and quota errors are the remote pacing us, not the record being bad, so they get a
    much larger budget than transient faults: at 30 % throttling a small budget would kill
    records that only needed to wait.
    """

    max_attempts: dict[RetryClass, int]

    @classmethod
    def default(cls) -> RetryPolicy:
        """Return the policy every stage uses unless configured otherwise."""
        return cls(
            {
                RetryClass.TRANSIENT: 8,
                RetryClass.TIMEOUT: 5,
                RetryClass.RATE_LIMIT: 30,
                RetryClass.QUOTA: 30,
                RetryClass.PERMANENT: 1,
            }
        )


@dataclass(frozen=True)
class RetryTier:
    """One step of a group's retry ladder: records wait ``delay_seconds`` there, then retry."""

    topic: str
    delay_seconds: int


@dataclass(frozen=True)
class Decision:
    """Where a failed record goes next.

    ``topic`` is a retry tier or the dead-letter topic; ``due_at`` (epoch seconds) is when a
    retry may run, None for the dead-letter topic.
    """

    topic: str
    due_at: float | None
    dead: bool


def classify(exc: BaseException) -> Failure:
    """Return the retry class of ``exc``; an exception nobody expected is PERMANENT (a bug)."""
    message = f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE]
    if isinstance(exc, InboxflowError):
        return Failure(exc.retry_class, message, exc.retry_after)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return Failure(RetryClass.TIMEOUT, message)
    if isinstance(exc, psycopg.OperationalError | aiohttp.ClientConnectionError | ConnectionError):
        return Failure(RetryClass.TRANSIENT, message)
    if isinstance(exc, KafkaError) and exc.retriable:
        return Failure(RetryClass.TRANSIENT, message)
    return Failure(RetryClass.PERMANENT, message)


def decide(
    failure: Failure,
    *,
    attempts: int,
    ladder: Sequence[RetryTier],
    dead_letter_topic: str,
    now: float,
    policy: RetryPolicy | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """Pick the next stop of a record that failed on its ``attempts``-th try (1-based).

    Tiers are used in order; once past the last one the record stays on the last tier until its
    class's budget is spent. A retry is due after the tier's delay with ±20 % jitter, and never
    before the wait the remote asked for (rate limits and quotas are due at their reset); such a
    wait also moves the record up to the first tier at least as long.
    """
    budget = (policy or RetryPolicy.default()).max_attempts.get(failure.retry_class, 1)
    if failure.retry_class is RetryClass.PERMANENT or attempts >= budget or not ladder:
        return Decision(dead_letter_topic, None, dead=True)
    tier = ladder[min(attempts - 1, len(ladder) - 1)]
    if failure.retry_after is not None:
        # A long wait goes to a tier at least that long: on a short tier it would pause the
        # tier's partition, and every other user's quick retries behind it, until its time.
        longer = [t for t in ladder if t.delay_seconds >= failure.retry_after] or [ladder[-1]]
        tier = max(tier, longer[0], key=lambda t: t.delay_seconds)
    jitter = (rng or random).uniform(0.8, 1.2)  # spreading load, not security
    wait = tier.delay_seconds * jitter
    if failure.retry_after is not None:
        wait = max(wait, failure.retry_after)
    return Decision(tier.topic, now + wait, dead=False)
