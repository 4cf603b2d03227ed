"""What to do with a record that failed: classify the exception, then pick its next stop.

Pure: no I/O, no clock (callers pass ``now``), no settings. ``classify`` maps any exception to a
``RetryClass``; ``decide`` turns that and the attempts so far into a retry tier with a due time,
or the dead-letter topic. Routing (producing the record there) lives in ``streams/routing.py``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import psycopg
from aiokafka.errors import KafkaError

from schemas.errors import InboxflowError, RetryClass

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
class Tier:
    """One step of a retry ladder: its topic and its delay in seconds."""

    topic: str
    delay: float


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
    ladder: Sequence[Tier],
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
        longer = [t for t in ladder if t.delay >= failure.retry_after] or [ladder[-1]]
        tier = max(tier, longer[0], key=lambda t: t.delay)
    jitter = (rng or random).uniform(0.8, 1.2)  # spreading load, not security
    wait = tier.delay * jitter
    if failure.retry_after is not None:
        wait = max(wait, failure.retry_after)
    return Decision(tier.topic, now + wait, dead=False)
