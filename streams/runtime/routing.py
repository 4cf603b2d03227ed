"""Build the records a stage produces about its work: forwards to retry/DLQ topics and job states.

Pure: no I/O and no clock (callers pass ``now`` in epoch seconds). Job states are encoded with
the serde the caller passes, the one every producer of the deployment uses (a registry-backed
serde may fetch a schema id once per process). A forwarded record keeps its
key, value bytes and original headers byte-identical; ``schemas.headers`` context is added, the
``x-original-*`` headers once at the first failure, the error headers replaced at each failure.
"""

from __future__ import annotations

from schemas import headers as h
from schemas.errors import Decision, Failure, RetryClass
from schemas.models import JobKind, JobStateChanged, JobStatus
from schemas.serde import Serde
from streams.runtime.stage import JobRef, Outgoing, Record

# Job versions are derived, not read from a clock, so they order the same on every machine:
# version = phase * 1_000_000 + attempt * 10 + rank. A later phase (normalize after fetch, for
# the same message job) always wins, then a later attempt; within one attempt the state only
# moves forward; a replay of the same attempt rewrites the same version and changes nothing.
#
# ``done`` is final within its phase: it takes the phase's highest version whatever the attempt.
# A record redelivered after a crash, or replayed, runs again at attempt 1 or later; without
# this, its ``processing`` (or a ``dead`` once its budget ran out) would outrank the earlier
# ``done`` and move a finished job backwards. Only a later phase moves a done job on.
PHASE_WEIGHT = 1_000_000
DONE_IN_PHASE = PHASE_WEIGHT - 1
_MAX_ATTEMPT = PHASE_WEIGHT // 10 - 2  # keeps every non-done version below DONE_IN_PHASE
_INT32_MAX = 2**31 - 1
_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.RETRYING: 2,
    JobStatus.ERROR: 3,
    JobStatus.DEAD: 4,
}


def job_version(attempt: int, status: JobStatus, phase: int = 0) -> int:
    """Return the monotonic version of a job state at attempt ``attempt`` (0 for queued)."""
    if status is JobStatus.DONE:
        return phase * PHASE_WEIGHT + DONE_IN_PHASE
    return phase * PHASE_WEIGHT + min(attempt, _MAX_ATTEMPT) * 10 + _RANK[status]


def job_id(kind: JobKind, ref: JobRef) -> str:
    """Return the id of the ``jobs`` row for this unit of work."""
    return f"{kind.value}:{ref.user_id}:{ref.subject_id}"


def attempts_so_far(record: Record) -> int:
    """Return how many times this record already failed (0 for live traffic)."""
    return h.header_int(record.headers, h.ATTEMPTS) or 0


def job_state(
    topic: str,
    kind: JobKind,
    ref: JobRef,
    status: JobStatus,
    *,
    attempt: int,
    now: float,
    serde: Serde,
    failure: Failure | None = None,
    phase: int = 0,
) -> Outgoing:
    """Return the JobStateChanged record for a job reaching ``status`` on ``attempt``.

    Raises:
        TransientError: ``serde`` needs a schema registry that cannot be reached (retry later).
    """
    # Five states per message go through here, so no model is built: every value is ours and
    # typed, the Avro writer checks each field (``schemas.flat_writer``: 4 against fastavro's
    # 16 us), and the two rules validation would apply are applied here (attempts fit an Avro
    # int; the time is whole milliseconds).
    fields = {
        "user_id": ref.user_id,
        "job_id": job_id(kind, ref),
        "kind": kind.value,
        "status": status.value,
        "attempts": min(attempt, _INT32_MAX),
        "batch_id": ref.batch_id,
        "subject_id": ref.subject_id,
        "last_error": failure.message if failure else None,
        "last_error_class": failure.retry_class.value if failure else None,
        "version": job_version(attempt, status, phase),
        "occurred_at": int(now * 1000),  # timestamp-millis takes the long as it is
    }
    return Outgoing(topic, ref.user_id.encode(), serde.encode_fields(JobStateChanged, fields))


def failed_status(decision: Decision, failure: Failure) -> JobStatus:
    """Return the job status after a failure: retrying, or error/dead in the dead-letter topic.

    ``error``: permanent on its own (bad input or a bug); fix the cause, then redrive.
    ``dead``: retries exhausted on a retryable failure; a redrive may simply succeed.
    """
    if not decision.dead:
        return JobStatus.RETRYING
    return JobStatus.ERROR if failure.retry_class is RetryClass.PERMANENT else JobStatus.DEAD


def forward_failed(
    record: Record,
    *,
    decision: Decision,
    failure: Failure,
    attempt: int,
    group_id: str,
    handler: str,
    now: float,
) -> Outgoing:
    """Return ``record`` addressed to its retry tier or dead-letter topic, with context headers."""
    kept = tuple((k, v) for k, v in record.headers if k not in _REPLACED)
    added: list[tuple[str, bytes]] = []
    if h.header_value(record.headers, h.ORIGINAL_TOPIC) is None:
        origin = h.Origin(
            record.topic, record.partition, record.offset, record.timestamp_ms, group_id
        )
        added += h.origin_headers(origin)
        added.append((h.FIRST_FAILURE_TIMESTAMP, h.encode_text(int(now * 1000))))
    added.append((h.ATTEMPTS, h.encode_text(attempt)))
    added += h.error_headers(failure, stage="handle", handler=handler)
    if decision.due_at is not None:
        added += [
            (h.DUE_TIMESTAMP, h.encode_text(int(decision.due_at * 1000))),
            (h.RETRY_TOPIC, h.encode_text(decision.topic)),
        ]
    return Outgoing(decision.topic, record.key, record.value, kept + tuple(added), record.partition)


_REPLACED = frozenset({h.ATTEMPTS, h.DUE_TIMESTAMP, h.RETRY_TOPIC, h.RETRY_AFTER, *h.ERROR_HEADERS})
