"""The shape every pipeline stage has, whichever consumer feeds it.

A stage turns a batch of consumed records into outgoing records, one outcome per input. The
faust agent (live traffic) and the retry relay (retry tiers) both call the same ``process``, so a
retried record runs exactly the code a live one does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.models import JobKind


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, as raw bytes: decoding is the stage's job, so bad bytes fail
    one record (and go to the dead-letter topic), never the consumer."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Outgoing:
    """A record to produce: keyed by user id so each user's events stay on one partition."""

    topic: str
    key: bytes | None  # None only for a forwarded record that had no key: kept as it was
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None  # None: by key; retry tiers keep the source partition number


@dataclass(frozen=True)
class JobRef:
    """Identifies the unit of work a record stands for, for the ``jobs`` table."""

    user_id: str
    subject_id: str
    batch_id: str | None = None


@dataclass
class Outcome:
    """What processing one record produced: records to send, or the error that stopped it."""

    outputs: list[Outgoing] = field(default_factory=list)
    error: BaseException | None = None
    # Work this record created for other stages, reported as `queued` jobs: (kind, job).
    queued: list[tuple[JobKind, JobRef]] = field(default_factory=list)
    note: str | None = None  # a clean non-success outcome, e.g. "deleted in Gmail"
    # False when a later stage finishes the same job (fetch hands the message job to normalize).
    finishes_job: bool = True
    # Runs once Kafka has acknowledged the outputs (e.g. checkpoint a sync's historyId).
    after_publish: Callable[[], Awaitable[None]] | None = None


class Stage(Protocol):
    """A pipeline stage: a consumer group, its job kind, and the processing itself."""

    @property
    def name(self) -> str:
        """Agent name (``normalize``), as in the topic catalogue."""
        ...

    @property
    def kind(self) -> JobKind:
        """The ``jobs.kind`` of this stage's unit of work."""
        ...

    @property
    def phase(self) -> int:
        """Order of this stage among stages sharing a job kind (fetch 0, normalize 1)."""
        ...

    @property
    def timeout(self) -> float:
        """Seconds one batch may take before it is a TIMEOUT failure."""
        ...

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """Return the names of the circuit breakers a batch depends on (may be empty)."""
        ...

    def job_of(self, record: Record) -> JobRef | None:
        """Return the job a record stands for, or None when its bytes cannot be read."""
        ...

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Process a batch from one partition, in order; return one outcome per record.

        Expected failures are returned as ``Outcome.error`` so one bad record does not fail
        its batch; an exception raised here fails every record of the batch.
        """
        ...
