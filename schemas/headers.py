"""Kafka headers that inboxflow writes on retried and dead-lettered records: keys and builders.

Part of the failure vocabulary with ``schemas.errors``: the stage runtime, the sinks and the
operator tools all write and read these headers through this module, never through copies.

A record forwarded to a retry tier or a dead-letter topic keeps its key, value bytes and original
headers untouched; these headers are added. Values are UTF-8 text (numbers as decimal digits),
so ``kcat`` and the Kafka console tools show them as they are. The ``x-original-*`` headers are
written at the first failure and never overwritten; the error headers describe the last failure.

Header keys are part of the contract with operators and their tools: never rename one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.errors import Failure

# Where the record was first consumed (first failure only).
ORIGINAL_TOPIC = "x-original-topic"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
ORIGINAL_TIMESTAMP = "x-original-timestamp"  # epoch milliseconds of the source record
ORIGINAL_TIMESTAMP_TYPE = "x-original-timestamp-type"  # CreateTime or LogAppendTime
ORIGINAL_CONSUMER_GROUP = "x-original-consumer-group"

# Retry bookkeeping.
ATTEMPTS = "x-attempts"  # attempts made so far, 1 after the first failure
FIRST_FAILURE_TIMESTAMP = "x-first-failure-ts"  # epoch milliseconds
DUE_TIMESTAMP = "x-due-ts"  # epoch milliseconds; the tier consumer waits until then
RETRY_TOPIC = "x-retry-topic"  # tier the record was last sent to

# The last failure.
ERROR_CLASS = "x-error-class"  # a schemas.errors.RetryClass value, e.g. "rate_limit"
EXCEPTION_CLASS = "x-exception-class"  # fully qualified class name
EXCEPTION_MESSAGE = "x-exception-message"  # at most EXCEPTION_MESSAGE_MAX_BYTES
EXCEPTION_STACKTRACE = "x-exception-stacktrace"  # optional, at most EXCEPTION_STACKTRACE_MAX_BYTES
STAGE = "x-stage"  # deserialize, handle, sink or produce
HANDLER = "x-handler"  # agent or sink that failed
RETRY_AFTER = "x-retry-after"  # seconds the remote asked us to wait, when it did

# Redrive and replay.
REPLAY_ID = "x-replay-id"  # set by a DLQ merge or a replay, to trace and count its records
IDEMPOTENCY_KEY = "x-idempotency-key"  # stable id of the work, for deduplicating sinks

EXCEPTION_MESSAGE_MAX_BYTES = 1024
EXCEPTION_STACKTRACE_MAX_BYTES = 8192

ORIGINAL_HEADERS = (
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    ORIGINAL_TIMESTAMP_TYPE,
    ORIGINAL_CONSUMER_GROUP,
)
"""Written once, at the first failure."""

ERROR_HEADERS = (
    ERROR_CLASS,
    EXCEPTION_CLASS,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    STAGE,
    HANDLER,
    RETRY_AFTER,
)
"""Replaced at every failure, so a record carries only its last error."""

ALL_HEADERS = (
    *ORIGINAL_HEADERS,
    ATTEMPTS,
    FIRST_FAILURE_TIMESTAMP,
    DUE_TIMESTAMP,
    RETRY_TOPIC,
    *ERROR_HEADERS,
    REPLAY_ID,
    IDEMPOTENCY_KEY,
)


def encode_text(value: str | int, *, max_bytes: int | None = None) -> bytes:
    """Return a header value as UTF-8 (numbers as decimal text), cut to ``max_bytes`` if given.

    Cutting never splits a UTF-8 sequence. Pure.
    """
    data = str(value).encode()
    if max_bytes is not None and len(data) > max_bytes:
        data = data[:max_bytes].decode(errors="ignore").encode()
    return data


def header_value(headers: Sequence[tuple[str, bytes]], key: str) -> str | None:
    """Return the last value of header ``key`` as text, or None when absent. Pure."""
    for name, value in reversed(headers):
        if name == key:
            return value.decode(errors="replace")
    return None


def header_int(headers: Sequence[tuple[str, bytes]], key: str) -> int | None:
    """Return header ``key`` as an int, or None when absent or not a number. Pure."""
    text = header_value(headers, key)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Origin:
    """Where a failed record was consumed: written as the ``x-original-*`` headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    consumer_group: str
    timestamp_type: str | None = None  # CreateTime or LogAppendTime, when the consumer knows


def origin_headers(origin: Origin) -> list[tuple[str, bytes]]:
    """Return the ``x-original-*`` headers of a record's first failure. Pure."""
    headers = [
        (ORIGINAL_TOPIC, encode_text(origin.topic)),
        (ORIGINAL_PARTITION, encode_text(origin.partition)),
        (ORIGINAL_OFFSET, encode_text(origin.offset)),
        (ORIGINAL_TIMESTAMP, encode_text(origin.timestamp_ms)),
    ]
    if origin.timestamp_type is not None:
        headers.append((ORIGINAL_TIMESTAMP_TYPE, encode_text(origin.timestamp_type)))
    headers.append((ORIGINAL_CONSUMER_GROUP, encode_text(origin.consumer_group)))
    return headers


def error_headers(
    failure: Failure, *, stage: str, handler: str, exception_class: str | None = None
) -> list[tuple[str, bytes]]:
    """Return the headers that describe a record's last failure (``ERROR_HEADERS``). Pure.

    Args:
        failure: the classified failure; its message is cut to ``EXCEPTION_MESSAGE_MAX_BYTES``.
        stage: where it failed: ``deserialize``, ``handle``, ``sink`` or ``produce``.
        handler: the agent or sink that failed.
        exception_class: the fully qualified class of the exception, when known.
    """
    headers = [(ERROR_CLASS, encode_text(failure.retry_class.value))]
    if exception_class is not None:
        headers.append((EXCEPTION_CLASS, encode_text(exception_class)))
    headers += [
        (EXCEPTION_MESSAGE, encode_text(failure.message, max_bytes=EXCEPTION_MESSAGE_MAX_BYTES)),
        (STAGE, encode_text(stage)),
        (HANDLER, encode_text(handler)),
    ]
    if failure.retry_after is not None:
        headers.append((RETRY_AFTER, encode_text(f"{failure.retry_after:.3f}")))
    return headers


def qualified_name(exc: BaseException) -> str:
    """Return the fully qualified class name of ``exc`` (the ``x-exception-class`` value)."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"
