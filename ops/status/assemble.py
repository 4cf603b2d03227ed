"""Turn samples into a ``Snapshot``: lag and its trend, rates, tiers, DLQs, breakers, accounts.

Pure: no I/O, no clock (``now`` and the samples' monotonic times come in). Rates and trends
compare a sample with the one before it (``inboxflow status`` takes two ``--interval`` apart,
the console keeps its previous tick); without a previous sample they are None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition

from ops.lag import PartitionLag
from ops.status.model import (
    BREAKER_STATES,
    TREND_FALLING,
    TREND_FLAT,
    TREND_RISING,
    AccountStatus,
    BreakerStatus,
    DlqStatus,
    GroupStatus,
    PartitionStatus,
    QuotaStatus,
    Snapshot,
    TierStatus,
    TopicStatus,
    WorkerStatus,
)
from ops.status.sample import KafkaSample
from ops.status.scrape import (
    MetricsSample,
    Scrape,
    counter_increase,
    label,
    merge_sums,
    sum_by,
)
from topics.catalogue import Catalogue, ConsumerGroup, TopicSpec

GMAIL_UNITS = "inboxflow_gmail_user_units"
SINK_PREFIX = "sink-"


@dataclass(frozen=True)
class AccountRow:
    """What the snapshot needs of one ``accounts`` row (``db.accounts.Account``)."""

    user_id: str
    state: str
    last_sync_requested_at: datetime | None
    last_synced_at: datetime | None
    last_sync_outcome: str | None
    last_sync_error: str | None
    watch_expires_at: datetime | None


@dataclass(frozen=True)
class StatusLimits:
    """The deployment's thresholds the snapshot compares against."""

    max_staleness: float  # INBOXFLOW_SYNC_MAX_STALENESS
    stale_after: float  # seconds without a finished sync before an active account is stale
    quota_ceiling: int  # Gmail units per user and window
    quota_window: float  # seconds


@dataclass(frozen=True)
class Samples:
    """A sample of each source and the one taken before it (None on the first)."""

    kafka: KafkaSample | None
    previous_kafka: KafkaSample | None = None
    metrics: MetricsSample | None = None
    previous_metrics: MetricsSample | None = None


def assemble_snapshot(
    catalogue: Catalogue,
    samples: Samples,
    *,
    accounts: Sequence[AccountRow] | None,
    jobs: Mapping[str, Mapping[str, int]] | None,
    limits: StatusLimits,
    now: datetime,
    problems: Sequence[str] = (),
) -> Snapshot:
    """Return the snapshot the samples describe. Pure."""
    kafka = samples.kafka
    metrics = _MetricsView(samples.metrics, samples.previous_metrics, catalogue)
    groups = (
        [
            _group(g, catalogue, kafka, samples.previous_kafka, metrics, now)
            for g in catalogue.groups
        ]
        if kafka is not None
        else []
    )
    topics = (
        [_topic(spec, kafka, samples.previous_kafka) for spec in catalogue.topics]
        if kafka is not None
        else []
    )
    interval = (
        kafka.at - samples.previous_kafka.at
        if kafka is not None and samples.previous_kafka is not None
        else None
    )
    quota, units = metrics.quota(limits)
    return Snapshot(
        taken_at=now.isoformat(timespec="seconds"),
        namespace=catalogue.namespace,
        interval_seconds=round(interval, 3) if interval is not None else None,
        max_staleness_seconds=limits.max_staleness,
        groups=groups,
        topics=topics,
        breakers=metrics.breakers(),
        workers=metrics.workers(),
        accounts=(
            [_account(row, limits, now, units) for row in accounts]
            if accounts is not None
            else None
        ),
        quota=quota,
        jobs={kind: dict(sorted(rows.items())) for kind, rows in sorted(jobs.items())}
        if jobs is not None
        else None,
        problems=list(problems),
    )


# --- Kafka ----------------------------------------------------------------------------------


def _partitions_of(sample: KafkaSample, topics: Sequence[str]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in topics for p in range(sample.partitions.get(t, 0))]


def _lag(sample: KafkaSample, group_id: str, tp: TopicPartition) -> PartitionLag:
    return PartitionLag(
        committed=sample.committed.get(group_id, {}).get(tp),
        start=sample.starts.get(tp, 0),
        end=sample.ends.get(tp, 0),
    )


def _position(lag: PartitionLag) -> int:
    return lag.start if lag.committed is None else max(lag.committed, lag.start)


def _per_second(change: float, seconds: float | None) -> float | None:
    if seconds is None or seconds <= 0:
        return None
    return round(change / seconds, 3)


def _trend(change: int | None) -> str | None:
    if change is None:
        return None
    return TREND_RISING if change > 0 else TREND_FALLING if change < 0 else TREND_FLAT


def _group(
    group: ConsumerGroup,
    catalogue: Catalogue,
    kafka: KafkaSample,
    previous: KafkaSample | None,
    metrics: _MetricsView,
    now: datetime,
) -> GroupStatus:
    seconds = kafka.at - previous.at if previous is not None else None
    partitions: list[PartitionStatus] = []
    consumed = 0
    for tp in _partitions_of(kafka, [s.name for s in group.sources]):
        lag = _lag(kafka, group.group_id, tp)
        change = None
        if previous is not None and tp in previous.ends:
            before = _lag(previous, group.group_id, tp)
            change = lag.lag - before.lag
            consumed += _position(lag) - _position(before)
        partitions.append(
            PartitionStatus(
                tp.topic, tp.partition, lag.committed, lag.start, lag.end, lag.lag, change
            )
        )
    lag_change = sum(p.lag_change or 0 for p in partitions) if previous is not None else None
    kind = "sink" if group.agent.startswith(SINK_PREFIX) else "agent"
    if kind == "sink":
        out = metrics.sink_rows_per_second(group.agent.removeprefix(SINK_PREFIX))
    else:
        exclusive = _exclusive_outputs(group, catalogue)
        written = sum(
            kafka.ends[tp] - previous.ends[tp]
            for tp in _partitions_of(kafka, exclusive)
            if previous is not None and tp in previous.ends
        )
        out = _per_second(written, seconds) if exclusive else None
    state = kafka.group_states.get(group.group_id)
    return GroupStatus(
        agent=group.agent,
        group_id=group.group_id,
        kind=kind,
        description=group.description,
        state=state[0] if state else None,
        members=state[1] if state else None,
        sources=[s.name for s in group.sources],
        produces=[t.name for t in group.produces],
        partitions=partitions,
        lag=sum(p.lag for p in partitions),
        lag_change=lag_change,
        trend=_trend(lag_change),
        in_per_second=_per_second(consumed, seconds),
        out_per_second=out,
        errors_per_second=metrics.errors_per_second(group, kind),
        errors_total=metrics.errors_total(group, kind),
        outcomes_per_second=metrics.outcomes_per_second(group) if kind == "agent" else None,
        blocked_partitions=metrics.blocked(group) if kind == "agent" else None,
        retry_group_id=group.retry_group_id,
        tiers=[_tier(group, spec, delay, kafka, now) for spec, delay in _ladder(group)],
        dlq=_dlq(group, kafka, previous),
    )


def _ladder(group: ConsumerGroup) -> list[tuple[TopicSpec, int]]:
    return list(zip(group.retry_topics, group.retry_delays, strict=True))


def _exclusive_outputs(group: ConsumerGroup, catalogue: Catalogue) -> list[str]:
    """Topics only this group writes: their arrivals are its output (job states are shared)."""
    others = {t.name for g in catalogue.groups if g is not group for t in g.produces}
    return [t.name for t in group.produces if t.name not in others]


def _tier(
    group: ConsumerGroup, spec: TopicSpec, delay: int, kafka: KafkaSample, now: datetime
) -> TierStatus:
    tps = _partitions_of(kafka, [spec.name])
    depth = sum(_lag(kafka, group.retry_group_id, tp).lag for tp in tps)
    dues = [due for tp in tps if (due := kafka.tier_heads.get(tp)) is not None]
    oldest = min(dues) if dues else None
    due_in = round(oldest / 1000 - now.timestamp(), 1) if oldest is not None else None
    return TierStatus(spec.name, delay, spec.name in kafka.partitions, depth, oldest, due_in)


def _dlq(group: ConsumerGroup, kafka: KafkaSample, previous: KafkaSample | None) -> DlqStatus:
    name = group.dlq.name
    tps = _partitions_of(kafka, [name])
    pending = kafka.dlq_pending.get(name, 0)
    change = None
    if previous is not None and name in previous.dlq_pending:
        change = pending - previous.dlq_pending[name]
    return DlqStatus(
        topic=name,
        exists=name in kafka.partitions,
        records=sum(kafka.ends[tp] - kafka.starts[tp] for tp in tps),
        pending=pending,
        pending_change=change,
    )


def _topic(spec: TopicSpec, kafka: KafkaSample, previous: KafkaSample | None) -> TopicStatus:
    tps = _partitions_of(kafka, [spec.name])
    end = sum(kafka.ends[tp] for tp in tps)
    rate = None
    if previous is not None:
        before = sum(previous.ends.get(tp, kafka.ends[tp]) for tp in tps)
        rate = _per_second(end - before, kafka.at - previous.at)
    return TopicStatus(
        name=spec.name,
        role=spec.role.value,
        exists=spec.name in kafka.partitions,
        partitions=len(tps),
        records=sum(kafka.ends[tp] - kafka.starts[tp] for tp in tps),
        end=end,
        per_second=rate,
    )


# --- accounts ------------------------------------------------------------------------------


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when is not None else None


def _account(
    row: AccountRow, limits: StatusLimits, now: datetime, units: Mapping[str, float] | None
) -> AccountStatus:
    staleness = (now - row.last_synced_at).total_seconds() if row.last_synced_at else None
    stale = row.state == "active" and (staleness is None or staleness > limits.stale_after)
    expires_in = (
        (row.watch_expires_at - now).total_seconds() if row.watch_expires_at is not None else None
    )
    return AccountStatus(
        user_id=row.user_id,
        state=row.state,
        last_sync_requested_at=_iso(row.last_sync_requested_at),
        last_synced_at=_iso(row.last_synced_at),
        last_sync_outcome=row.last_sync_outcome,
        last_sync_error=row.last_sync_error,
        staleness_seconds=round(staleness, 1) if staleness is not None else None,
        stale=stale,
        watch_expires_at=_iso(row.watch_expires_at),
        watch_expires_in_seconds=round(expires_in, 1) if expires_in is not None else None,
        quota_units=units.get(row.user_id, 0.0) if units is not None else None,
        quota_ceiling=limits.quota_ceiling,
    )


# --- worker metrics ------------------------------------------------------------------------


class _MetricsView:
    """The figures a snapshot takes from the workers' metrics, over the scrapes that answered."""

    def __init__(
        self,
        current: MetricsSample | None,
        previous: MetricsSample | None,
        catalogue: Catalogue,
    ) -> None:
        self._current = current
        self._catalogue = catalogue
        self._up = [s for s in current.scrapes if s.up] if current is not None else []
        self._previous = previous.by_url() if previous is not None else {}
        self._seconds = current.at - previous.at if current and previous else None

    def _increase(self, name: str, **match: str) -> list[dict[tuple[tuple[str, str], ...], float]]:
        return [counter_increase(s, self._previous.get(s.url), name, **match) for s in self._up]

    def _rate(self, name: str, key: str, **match: str) -> dict[str, float] | None:
        if self._seconds is None:
            return None
        grown = merge_sums(sum_by(part, key) for part in self._increase(name, **match))
        return {k: round(v / self._seconds, 3) for k, v in sorted(grown.items())}

    def _total(self, name: str, key: str, **match: str) -> dict[str, float]:
        return merge_sums(sum_by(s.values(name, **match), key) for s in self._up)

    def _reports(self, name: str, **match: str) -> bool:
        return any(s.values(name, **match) for s in self._up)

    def errors_per_second(self, group: ConsumerGroup, kind: str) -> dict[str, float] | None:
        if kind == "sink":
            sink = group.agent.removeprefix(SINK_PREFIX)
            if not self._reports("inboxflow_sink_rows_total", sink=sink):
                return None
            rejected = self._rate("inboxflow_sink_rejected_rows_total", "sink", sink=sink)
            down = self._rate("inboxflow_sink_database_errors_total", "sink", sink=sink)
            if rejected is None or down is None:
                return None
            return {"permanent": rejected.get(sink, 0.0), "transient": down.get(sink, 0.0)}
        if not self._reports("inboxflow_agent_records_total", group=group.group_id):
            return None
        return self._rate("inboxflow_agent_failures_total", "retry_class", group=group.group_id)

    def errors_total(self, group: ConsumerGroup, kind: str) -> dict[str, float] | None:
        if kind == "sink":
            sink = group.agent.removeprefix(SINK_PREFIX)
            if not self._reports("inboxflow_sink_rows_total", sink=sink):
                return None
            rejected = self._total("inboxflow_sink_rejected_rows_total", "sink", sink=sink)
            down = self._total("inboxflow_sink_database_errors_total", "sink", sink=sink)
            return {"permanent": rejected.get(sink, 0.0), "transient": down.get(sink, 0.0)}
        if not self._reports("inboxflow_agent_records_total", group=group.group_id):
            return None
        return self._total("inboxflow_agent_failures_total", "retry_class", group=group.group_id)

    def outcomes_per_second(self, group: ConsumerGroup) -> dict[str, float] | None:
        if not self._reports("inboxflow_agent_records_total", group=group.group_id):
            return None
        return self._rate("inboxflow_agent_records_total", "outcome", group=group.group_id)

    def blocked(self, group: ConsumerGroup) -> float | None:
        name = "inboxflow_agent_blocked_partitions"
        if not self._reports(name, group=group.group_id):
            return None
        return sum(sum(s.values(name, group=group.group_id).values()) for s in self._up)

    def sink_rows_per_second(self, sink: str) -> float | None:
        if not self._reports("inboxflow_sink_rows_total", sink=sink):
            return None
        rates = self._rate("inboxflow_sink_rows_total", "sink", sink=sink)
        return rates.get(sink, 0.0) if rates is not None else None

    def breakers(self) -> list[BreakerStatus]:
        found = []
        for scrape in self._up:
            for labels, value in scrape.values("inboxflow_breaker_state").items():
                name = label(labels, "breaker") or "?"
                state = BREAKER_STATES.get(int(value), str(value))
                found.append(BreakerStatus(name, state, value, scrape.url))
        return sorted(found, key=lambda b: (b.name, b.worker))

    def workers(self) -> list[WorkerStatus]:
        if self._current is None:
            return []
        return [
            WorkerStatus(s.url, s.up, s.error, self._groups_of(s)) for s in self._current.scrapes
        ]

    def _groups_of(self, scrape: Scrape) -> list[str]:
        groups: set[str] = set()
        for name, labels in scrape.samples:
            group = label(labels, "group")
            if name.startswith("inboxflow_agent_") and group:
                groups.add(group)
            sink = label(labels, "sink")
            if name.startswith("inboxflow_sink_") and sink:
                try:
                    groups.add(self._catalogue.group(SINK_PREFIX + sink).group_id)
                except KeyError:
                    groups.add(SINK_PREFIX + sink)
        return sorted(groups)

    def quota(self, limits: StatusLimits) -> tuple[QuotaStatus, dict[str, float] | None]:
        def status(known: bool, note: str | None) -> QuotaStatus:
            return QuotaStatus(limits.quota_window, limits.quota_ceiling, known, note)

        if self._current is None:
            note = "unknown: no worker metrics to read (--metrics URL, or INBOXFLOW_METRICS_PORT)"
            return status(False, note), None
        if not self._reports(GMAIL_UNITS):
            note = (
                f"unknown: no worker that answered reports {GMAIL_UNITS} (the sync worker "
                "exports it from its first Gmail call)"
            )
            return status(False, note), None
        units = merge_sums(sum_by(s.values(GMAIL_UNITS), "user") for s in self._up)
        return status(True, None), units
