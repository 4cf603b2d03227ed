"""The status snapshot: what ``inboxflow status`` prints and the console draws, as plain data.

Frozen dataclasses of JSON-ready values (``Snapshot.to_dict``); ``ops.status.assemble`` builds
them from two samples. Times are ISO 8601 strings (UTC) or epoch milliseconds, rates are per
second over the interval between the samples, and every figure a reader could not get is None
rather than a guess. This module holds data only: it must not read Kafka, Postgres or metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TREND_RISING = "rising"
TREND_FALLING = "falling"
TREND_FLAT = "flat"

BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}
"""``inboxflow_breaker_state`` values (``streams.runtime.metrics``) and their names."""


@dataclass(frozen=True)
class PartitionStatus:
    """One partition a group consumes: its committed offset, the log end and the lag."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed here (lag counts from the start)
    start: int
    end: int
    lag: int
    lag_change: int | None  # since the previous sample


@dataclass(frozen=True)
class TierStatus:
    """One retry tier: records its relay has not taken yet, and when the first of them is due."""

    topic: str
    delay_seconds: int
    exists: bool
    depth: int  # end - committed of the relay group, over every partition
    oldest_due_ms: int | None  # smallest x-due-ts among the first pending record per partition
    due_in_seconds: float | None  # oldest_due_ms - now; below 0: overdue


@dataclass(frozen=True)
class DlqStatus:
    """A group's dead-letter topic: records in it and those no redrive or purge handled."""

    topic: str
    exists: bool
    records: int
    pending: int
    pending_change: int | None


@dataclass(frozen=True)
class GroupStatus:
    """One consumer group (an agent or a sink) with its retry ladder and dead-letter topic.

    ``in_per_second`` is records consumed (committed offsets moving); ``out_per_second`` records
    written to the topics only this group produces (job states, which every agent writes, are on
    the topic), or rows committed for a sink (from its metrics). Error rates and outcomes come
    from the workers' metrics and are None when no scraped worker runs the group.
    """

    agent: str
    group_id: str
    kind: str  # "agent" or "sink"
    description: str
    state: str | None  # Kafka's group state: Stable, Empty, Dead...
    members: int | None
    sources: list[str]
    produces: list[str]
    partitions: list[PartitionStatus]
    lag: int
    lag_change: int | None
    trend: str | None  # rising, falling or flat lag; None on the first sample
    in_per_second: float | None
    out_per_second: float | None
    errors_per_second: dict[str, float] | None  # failed attempts by retry class
    errors_total: dict[str, float] | None  # since each worker started
    outcomes_per_second: dict[str, float] | None  # done, retry, dead
    blocked_partitions: float | None
    retry_group_id: str
    tiers: list[TierStatus]
    dlq: DlqStatus


@dataclass(frozen=True)
class TopicStatus:
    """One topic of the catalogue: records retained and how fast records arrive."""

    name: str
    role: str  # event, retry or dlq
    exists: bool
    partitions: int
    records: int  # end - start offsets, over every partition
    end: int  # sum of end offsets: records ever written
    per_second: float | None


@dataclass(frozen=True)
class BreakerStatus:
    """A circuit breaker as one worker reports it."""

    name: str
    state: str  # closed, half-open, open (or the raw value when unknown)
    value: float
    worker: str  # the metrics URL it came from


@dataclass(frozen=True)
class WorkerStatus:
    """One metrics endpoint: whether it answered, and the groups and sinks it reports."""

    url: str
    up: bool
    error: str | None
    groups: list[str]


@dataclass(frozen=True)
class AccountStatus:
    """One mailbox: its state, how current its sync is, its Gmail watch and quota use."""

    user_id: str
    state: str
    last_sync_requested_at: str | None
    last_synced_at: str | None
    last_sync_outcome: str | None
    last_sync_error: str | None
    staleness_seconds: float | None  # since the last finished sync; None: never synced
    stale: bool  # active and not synced for longer than the scheduler allows
    watch_expires_at: str | None
    watch_expires_in_seconds: float | None
    quota_units: float | None  # units charged in the last quota window; None: unknown
    quota_ceiling: int


@dataclass(frozen=True)
class QuotaStatus:
    """How the per-account quota figures were obtained."""

    window_seconds: float
    ceiling: int  # per user and window
    known: bool
    note: str | None


@dataclass(frozen=True)
class Snapshot:
    """Everything ``inboxflow status`` shows, at one moment."""

    taken_at: str
    namespace: str
    interval_seconds: float | None  # between the two samples the rates come from
    max_staleness_seconds: float
    groups: list[GroupStatus]
    topics: list[TopicStatus]
    breakers: list[BreakerStatus]
    workers: list[WorkerStatus]
    accounts: list[AccountStatus] | None  # None: Postgres could not be read
    quota: QuotaStatus
    jobs: dict[str, dict[str, int]] | None  # kind -> status -> rows; None: not read
    problems: list[str]  # what could not be read, and why

    def to_dict(self) -> dict[str, Any]:
        """Return the snapshot as JSON-ready dictionaries and lists."""
        return asdict(self)
