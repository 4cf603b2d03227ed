"""Pure parts of the sinks: batch dedupe, dead-letter headers, backoff, bench arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from inboxflow.bench.sink import SinkBenchResult, bench_events
from schemas import headers as topic_headers
from schemas.errors import PermanentError
from schemas.models import EmailNormalized, JobKind, JobStateChanged, JobStatus
from sinks.base import Decoded, backoff_delay, dead_letter_headers
from sinks.contacts import latest_emails
from sinks.job_state import latest_job_states
from sinks.metrics import SinkMetrics

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def record(
    offset: int, value: bytes = b"v", headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=2,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers or [],
    )


def job(version: int, minutes: int, status: JobStatus = JobStatus.PROCESSING) -> JobStateChanged:
    return JobStateChanged(
        user_id="u",
        job_id="embed:u:m1",
        kind=JobKind.EMBED,
        status=status,
        attempts=version,
        subject_id="m1",
        version=version,
        occurred_at=T0 + timedelta(minutes=minutes),
    )


def test_batch_keeps_highest_version_and_earliest_time_per_job() -> None:
    items = [
        Decoded(record(0), job(2, minutes=5)),
        Decoded(record(1), job(3, minutes=9, status=JobStatus.DONE)),
        Decoded(record(2), job(1, minutes=1)),
    ]
    [row] = latest_job_states(items)
    assert (row["version"], row["status"], row["source_offset"]) == (3, "done", 1)
    assert row["created_at"] == T0 + timedelta(minutes=1)
    assert row["updated_at"] == T0 + timedelta(minutes=9)


def test_batch_prefers_the_later_record_on_equal_versions() -> None:
    items = [Decoded(record(7), job(2, minutes=5)), Decoded(record(8), job(2, minutes=5))]
    [row] = latest_job_states(items)
    assert row["source_offset"] == 8


def test_dead_letter_keeps_original_headers_first_and_untouched() -> None:
    original = [("trace", b"\xff\x00"), ("trace", b"again")]
    headers = dead_letter_headers(record(41, headers=original), PermanentError("é" * 2000), "grp")
    assert headers[:2] == original
    context = dict(headers[2:])
    assert context[topic_headers.ORIGINAL_TOPIC] == b"t"
    assert context[topic_headers.ORIGINAL_PARTITION] == b"2"
    assert context[topic_headers.ORIGINAL_OFFSET] == b"41"
    assert context[topic_headers.ORIGINAL_TIMESTAMP_TYPE] == b"CreateTime"
    assert context[topic_headers.ORIGINAL_CONSUMER_GROUP] == b"grp"
    assert context[topic_headers.EXCEPTION_CLASS] == b"schemas.errors.PermanentError"
    assert context[topic_headers.ERROR_CLASS] == b"permanent"
    assert context[topic_headers.STAGE] == b"sink"
    message = context[topic_headers.EXCEPTION_MESSAGE]
    assert len(message) <= topic_headers.EXCEPTION_MESSAGE_MAX_BYTES
    assert message.decode() == "PermanentError: " + "é" * 504  # cut on a character boundary


def test_dead_letter_message_never_quotes_the_rows_values() -> None:
    exc = ValueError("value 'Subject: quarterly numbers' too long for type character varying")

    context = dict(dead_letter_headers(record(41), exc, "grp"))

    assert context[topic_headers.EXCEPTION_MESSAGE] == b"ValueError"
    assert context[topic_headers.EXCEPTION_CLASS] == b"builtins.ValueError"


def test_dead_letter_header_keys_are_the_catalogued_ones() -> None:
    keys = {key for key, _ in dead_letter_headers(record(0), ValueError("x"), "g")}
    assert keys <= set(topic_headers.ALL_HEADERS)


@pytest.mark.parametrize("attempt", [0, 1, 5, 40])
def test_backoff_is_jittered_below_a_cap(attempt: int) -> None:
    delays = {backoff_delay(attempt, initial=0.1, cap=5.0) for _ in range(50)}
    ceiling = min(5.0, 0.1 * 2**attempt)
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(delays) > 1


def test_latest_email_normalization_wins() -> None:
    base = EmailNormalized(
        user_id="u",
        message_id="m",
        thread_id="t",
        sync_id="s",
        subject="old",
        text="",
        snippet="",
        size=0,
        normalized_at=T0,
    )
    newer = base.model_copy(update={"subject": "new", "normalized_at": T0 + timedelta(hours=1)})
    [row] = latest_emails([Decoded(record(0), newer), Decoded(record(1), base)])
    assert row["subject"] == "new"


def test_bench_result_ratio_and_events() -> None:
    result = SinkBenchResult(events=1000, batched_seconds=0.5, naive_seconds=10.0)
    assert result.to_dict()["ratio"] == 20.0
    events = bench_events("bench-x", 100)
    assert len(events) == 100
    assert len({e.job_id for e in events}) < 100  # repeats and several versions per job


def test_two_sinks_share_one_registry_under_their_own_labels() -> None:
    registry = CollectorRegistry()
    jobs, contacts = SinkMetrics("jobs", registry), SinkMetrics("contacts", registry)
    jobs.rows.inc(3)
    contacts.rows.inc(1)
    assert registry.get_sample_value("inboxflow_sink_rows_total", {"sink": "jobs"}) == 3
    assert registry.get_sample_value("inboxflow_sink_rows_total", {"sink": "contacts"}) == 1
