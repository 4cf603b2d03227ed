"""Records about work: forwards keep the original bytes; job versions only move forward."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas import headers as h
from schemas.errors import Decision, Failure, RetryClass
from schemas.models import JobKind, JobStateChanged, JobStatus
from schemas.serde import decode, serde_for
from streams.runtime.routing import (
    attempts_so_far,
    failed_status,
    forward_failed,
    job_state,
    job_version,
)
from streams.runtime.stage import JobRef, Record

SOURCE = Record(
    topic="ns.gmail.message-fetched.v1",
    partition=2,
    offset=41,
    timestamp_ms=1_700_000_000_000,
    key=b"user@example.org",
    value=b"\xc3\x01original-bytes",
    headers=(("trace", b"abc"),),
)


def retry(record: Record, attempt: int, due: float = 1005.0) -> Record:
    out = forward_failed(
        record,
        decision=Decision("ns.normalize.retry.5s", due, dead=False),
        failure=Failure(RetryClass.TRANSIENT, f"boom {attempt}"),
        attempt=attempt,
        group_id="ns-normalize",
        handler="normalize",
        now=1000.0,
    )
    return Record(out.topic, out.partition or 0, 7, 0, out.key, out.value, out.headers)


def test_forward_keeps_key_value_headers_and_partition() -> None:
    out = forward_failed(
        SOURCE,
        decision=Decision("ns.normalize.retry.5s", 1005.0, dead=False),
        failure=Failure(RetryClass.RATE_LIMIT, "429", retry_after=3.0),
        attempt=1,
        group_id="ns-normalize",
        handler="normalize",
        now=1000.0,
    )
    assert out.topic == "ns.normalize.retry.5s"
    assert out.key == SOURCE.key
    assert out.value == SOURCE.value
    assert out.partition == 2
    assert out.headers[0] == ("trace", b"abc")
    headers = dict(out.headers)
    assert headers[h.ORIGINAL_TOPIC] == SOURCE.topic.encode()
    assert headers[h.ORIGINAL_PARTITION] == b"2"
    assert headers[h.ORIGINAL_OFFSET] == b"41"
    assert headers[h.ORIGINAL_CONSUMER_GROUP] == b"ns-normalize"
    assert headers[h.ATTEMPTS] == b"1"
    assert headers[h.DUE_TIMESTAMP] == b"1005000"
    assert headers[h.ERROR_CLASS] == b"rate_limit"
    assert headers[h.RETRY_AFTER] == b"3.000"


def test_a_record_without_a_key_is_forwarded_without_one() -> None:
    keyless = Record(SOURCE.topic, 2, 41, 0, None, b"poison")
    out = forward_failed(
        keyless,
        decision=Decision("ns.normalize.dlq", None, dead=True),
        failure=Failure(RetryClass.PERMANENT, "undecodable"),
        attempt=1,
        group_id="ns-normalize",
        handler="normalize",
        now=1000.0,
    )
    assert out.key is None  # not b"": an empty key is a key, and hashes to a partition
    assert (out.value, out.partition) == (b"poison", 2)


def test_second_failure_keeps_the_original_context_and_replaces_the_error() -> None:
    twice = retry(retry(SOURCE, 1), 2)
    assert attempts_so_far(twice) == 2
    assert h.header_value(twice.headers, h.ORIGINAL_OFFSET) == "41"
    assert [k for k, _ in twice.headers].count(h.ORIGINAL_TOPIC) == 1
    assert [k for k, _ in twice.headers].count(h.ATTEMPTS) == 1
    assert h.header_value(twice.headers, h.EXCEPTION_MESSAGE) == "boom 2"
    assert twice.value == SOURCE.value


def test_dead_letter_forward_has_no_due_time() -> None:
    out = forward_failed(
        SOURCE,
        decision=Decision("ns.normalize.dlq", None, dead=True),
        failure=Failure(RetryClass.PERMANENT, "undecodable"),
        attempt=1,
        group_id="ns-normalize",
        handler="normalize",
        now=1000.0,
    )
    assert out.topic == "ns.normalize.dlq"
    assert h.DUE_TIMESTAMP not in dict(out.headers)


def test_job_versions_only_move_forward() -> None:
    order = [
        job_version(0, JobStatus.QUEUED),
        job_version(1, JobStatus.PROCESSING),
        job_version(1, JobStatus.RETRYING),
        job_version(2, JobStatus.PROCESSING),
        job_version(2, JobStatus.DEAD),
        job_version(3, JobStatus.PROCESSING),  # a redrive after death
        job_version(3, JobStatus.DONE),
        job_version(1, JobStatus.PROCESSING, phase=1),  # normalize after fetch
        job_version(1, JobStatus.DONE, phase=1),
    ]
    assert order == sorted(order)
    assert len(set(order)) == len(order)


def test_done_outranks_every_later_attempt_of_its_phase_but_not_a_later_phase() -> None:
    done = job_version(1, JobStatus.DONE)
    assert done > job_version(2, JobStatus.PROCESSING)  # the same input redelivered after done
    assert done > job_version(10**9, JobStatus.DEAD)  # its retries then ran out
    assert done < job_version(0, JobStatus.QUEUED, phase=1)
    assert job_version(9, JobStatus.DONE) == done  # a replay of a done job changes nothing


# One run of a record through a stage: (phase, attempt, how it ended). A job's runs are its live
# attempts, redeliveries after a crash (the same attempt again) and replays (attempt 1 again).
_RUN = st.tuples(
    st.integers(0, 1),
    st.integers(1, 12),
    st.sampled_from([JobStatus.DONE, JobStatus.RETRYING, JobStatus.ERROR, JobStatus.DEAD]),
)


@given(runs=st.lists(_RUN, min_size=1, max_size=12), seed=st.integers())
def test_a_job_that_reached_done_in_its_last_phase_ends_done_whatever_the_interleaving(
    runs: list[tuple[int, int, JobStatus]], seed: int
) -> None:
    # Every run writes `processing` then its end state; the sink keeps the highest version
    # (sinks.job_state), so the row is the maximum of all events in any delivery order.
    events = [
        (job_version(attempt, status, phase), status)
        for phase, attempt, end in runs
        for status in (JobStatus.PROCESSING, end)
    ]
    random.Random(seed).shuffle(events)
    final_version, final_status = max(events, key=lambda event: event[0])
    last_phase = max(phase for phase, _, _ in runs)
    ends_in_last_phase = {end for phase, _, end in runs if phase == last_phase}
    assert (final_status is JobStatus.DONE) == (JobStatus.DONE in ends_in_last_phase)
    assert final_version // 1_000_000 == last_phase


def test_failed_status_tells_bad_input_from_exhausted_retries() -> None:
    dead = Decision("dlq", None, dead=True)
    assert failed_status(dead, Failure(RetryClass.PERMANENT, "x")) is JobStatus.ERROR
    assert failed_status(dead, Failure(RetryClass.TRANSIENT, "x")) is JobStatus.DEAD
    assert failed_status(Decision("t", 1.0, dead=False), Failure(RetryClass.QUOTA, "x")) is (
        JobStatus.RETRYING
    )


def test_job_state_event_carries_the_failure() -> None:
    out = job_state(
        "ns.jobs.job-state-changed.v1",
        JobKind.EMBED,
        JobRef("u@example.org", "m1", batch_id="s1"),
        JobStatus.RETRYING,
        attempt=2,
        now=1000.0,
        serde=serde_for(None),
        failure=Failure(RetryClass.TIMEOUT, "too slow"),
    )
    event = decode(out.value, JobStateChanged)
    assert out.key == b"u@example.org"
    assert event.job_id == "embed:u@example.org:m1"
    assert event.status is JobStatus.RETRYING
    assert event.attempts == 2
    assert event.last_error_class is not None
    assert event.last_error_class.value == "timeout"
    assert event.version == job_version(2, JobStatus.RETRYING)


@given(
    kind=st.sampled_from([k for k in JobKind if k is not JobKind.UNKNOWN]),
    status=st.sampled_from([s for s in JobStatus if s is not JobStatus.UNKNOWN]),
    attempt=st.integers(min_value=0, max_value=2**40),
    now=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    failed=st.sampled_from([None, *RetryClass]),
    batch_id=st.one_of(st.none(), st.text(max_size=8)),
)
def test_job_state_bytes_are_those_of_the_validated_model(
    kind: JobKind,
    status: JobStatus,
    attempt: int,
    now: float,
    failed: RetryClass | None,
    batch_id: str | None,
) -> None:
    # job_state skips pydantic for speed; what it writes must be what the model would.
    serde = serde_for(None)
    ref = JobRef("u@example.org", "m1", batch_id=batch_id)
    failure = Failure(failed, "why") if failed else None
    out = job_state("t", kind, ref, status, attempt=attempt, now=now, serde=serde, failure=failure)
    model = JobStateChanged(
        user_id=ref.user_id,
        job_id=f"{kind.value}:u@example.org:m1",
        kind=kind,
        status=status,
        attempts=min(attempt, 2**31 - 1),
        batch_id=batch_id,
        subject_id="m1",
        last_error="why" if failed else None,
        last_error_class=failed.value if failed else None,
        version=job_version(attempt, status),
        occurred_at=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(now * 1000)),
    )
    assert out.value == serde.encode(model)
    assert decode(out.value, JobStateChanged) == model
