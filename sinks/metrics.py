"""Prometheus metrics of the Postgres sinks: rows, batch sizes, commit latency, rejected rows.

Rows per second is ``rate(inboxflow_sink_rows_total[1m])``. The metric families exist once
per registry and each sink takes its own ``sink`` label, so the jobs and contacts sinks can
share a process; tests and the benchmark pass a private registry so runs do not collide.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 3000, 5000, 10000)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class _Families:
    rows: Counter
    batches: Histogram
    commit_seconds: Histogram
    rejected: Counter
    stale: Counter
    database_down: Counter


# Weak keys: the private registries of tests come and go (an id() could be reused).
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    found = _FAMILIES.get(registry)
    if found is None:
        found = _FAMILIES[registry] = _register(registry)
    return found


def _register(registry: CollectorRegistry) -> _Families:
    labels = ["sink"]
    return _Families(
        rows=Counter(
            "inboxflow_sink_rows", "Records committed to Postgres.", labels, registry=registry
        ),
        batches=Histogram(
            "inboxflow_sink_batch_records",
            "Records per committed batch.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        ),
        commit_seconds=Histogram(
            "inboxflow_sink_commit_seconds",
            "Time from BEGIN to COMMIT of one batch, rows and offsets together.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        rejected=Counter(
            "inboxflow_sink_rejected_rows",
            "Records sent to the dead-letter topic (undecodable or refused by Postgres).",
            labels,
            registry=registry,
        ),
        stale=Counter(
            "inboxflow_sink_stale_batches",
            "Batches rolled back because another consumer had moved the stored offset.",
            labels,
            registry=registry,
        ),
        database_down=Counter(
            "inboxflow_sink_database_errors",
            "Connection-level database failures that paused the sink.",
            labels,
            registry=registry,
        ),
    )


class SinkMetrics:
    """The metric children of one sink, labelled with its name (``jobs``, ``contacts``)."""

    def __init__(self, sink: str, registry: CollectorRegistry = REGISTRY) -> None:
        families = _families(registry)
        self.rows = families.rows.labels(sink)
        self.batches = families.batches.labels(sink)
        self.commit_seconds = families.commit_seconds.labels(sink)
        self.rejected = families.rejected.labels(sink)
        self.stale = families.stale.labels(sink)
        self.database_down = families.database_down.labels(sink)
