"""What ``inboxflow status`` and ``inboxflow console`` show: one snapshot of a deployment.

One module per job: ``sample`` (Kafka offsets, group positions, retry-tier heads, DLQ
backlogs), ``scrape`` (the workers' Prometheus endpoints), ``assemble`` (two samples into a
snapshot: lag trend, rates, error rates, quota; pure) and ``model`` (the snapshot's
dataclasses). Like every ``ops`` module it takes explicit arguments and reads no settings;
``inboxflow.status`` adds the accounts and job rows from Postgres. This file only re-exports.
"""

from __future__ import annotations

from ops.status.assemble import AccountRow, Samples, StatusLimits, assemble_snapshot
from ops.status.model import (
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
from ops.status.sample import KafkaSample, KafkaSampler
from ops.status.scrape import MetricsSample, Scrape, parse_metrics, scrape_workers

__all__ = [
    "AccountRow",
    "AccountStatus",
    "BreakerStatus",
    "DlqStatus",
    "GroupStatus",
    "KafkaSample",
    "KafkaSampler",
    "MetricsSample",
    "PartitionStatus",
    "QuotaStatus",
    "Samples",
    "Scrape",
    "Snapshot",
    "StatusLimits",
    "TierStatus",
    "TopicStatus",
    "WorkerStatus",
    "assemble_snapshot",
    "parse_metrics",
    "scrape_workers",
]
