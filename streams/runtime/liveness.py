"""Stalled-partition detection: how long records have waited on a partition with no progress.

A consumer can look alive (heartbeats, a joined group) while one of its partitions makes no
progress: the stalled consumer faust users hit (a stream that stops being fed, an ack that never
comes, a stage blocked on a dependency). The agent (or sink) tells a ``StallTracker`` when
records of a partition start waiting and when the partition makes progress (a batch acked, a
transaction committed); the tracker reports the partitions whose waiting records have gone
longer than its bound without progress. An idle partition (nothing waiting) is never stalled.

Exported as ``inboxflow_agent_commit_age_seconds{group,topic,partition}`` (0 when nothing waits)
and ``inboxflow_liveness_stall_bound_seconds``. Pure bookkeeping: no I/O, the clock is injected.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

COMMIT_AGE_METRIC = "inboxflow_agent_commit_age_seconds"
STALL_BOUND_METRIC = "inboxflow_liveness_stall_bound_seconds"


@dataclass(frozen=True)
class Stall:
    """One partition whose waiting records have gone ``age`` seconds without progress."""

    group: str
    topic: str
    partition: int
    waiting: int
    age: float

    def as_json(self) -> dict[str, object]:
        """Return the stall as the health endpoint reports it."""
        return {
            "group": self.group,
            "topic": self.topic,
            "partition": self.partition,
            "waiting_records": self.waiting,
            "age_seconds": round(self.age, 3),
        }


@dataclass
class _Partition:
    waiting: int = 0
    since: float = 0.0  # when the partition last made progress, or its first record waited


class StallTracker:
    """Per-partition count of records waiting, and since when none made progress.

    Called from one event loop (the agent's or the sink's); read by the health server on the
    same loop and by Prometheus scrapes, hence the lock.

    Arguments:
        group: consumer group, a label of the exported age.
        bound: seconds a partition may hold waiting records without progress before it counts
            as stalled.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self, group: str, bound: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if bound <= 0:
            raise ValueError(f"the stall bound must be positive, got {bound}")
        self.group = group
        self.bound = bound
        self.clock = clock
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._lock = threading.Lock()

    def arrived(self, topic: str, partition: int, count: int = 1) -> None:
        """Note ``count`` records of the partition now waiting to be processed and committed."""
        if count <= 0:
            return
        with self._lock:
            state = self._partitions.setdefault((topic, partition), _Partition())
            if state.waiting == 0:
                state.since = self.clock()
            state.waiting += count

    def progressed(self, topic: str, partition: int, count: int) -> None:
        """Note ``count`` waiting records of the partition done (acked or committed).

        Progress restarts the partition's clock: records still waiting behind them are not
        stalled until they too go ``bound`` seconds without progress.
        """
        with self._lock:
            state = self._partitions.get((topic, partition))
            if state is None:
                return
            state.waiting = max(0, state.waiting - count)
            state.since = self.clock()

    def forget(self, topic: str, partition: int) -> None:
        """Drop a partition's waiting records (revoked: its new owner reads them again)."""
        with self._lock:
            self._partitions.pop((topic, partition), None)

    def ages(self) -> dict[tuple[str, int], tuple[int, float]]:
        """Return ``{(topic, partition): (waiting records, seconds without progress)}``."""
        now = self.clock()
        with self._lock:
            return {
                key: (state.waiting, max(0.0, now - state.since))
                for key, state in self._partitions.items()
                if state.waiting
            }

    def exported_ages(self) -> dict[tuple[str, int], float]:
        """Return the age of every partition that ever had records here; 0 when idle now.

        Idle partitions keep a 0 sample, so graphs and alerts see a series fall back instead
        of vanishing.
        """
        now = self.clock()
        with self._lock:
            return {
                key: max(0.0, now - state.since) if state.waiting else 0.0
                for key, state in self._partitions.items()
            }

    def stalled(self) -> list[Stall]:
        """Return the partitions whose waiting records went longer than the bound, oldest first."""
        stalls = [
            Stall(self.group, topic, partition, waiting, age)
            for (topic, partition), (waiting, age) in self.ages().items()
            if age > self.bound
        ]
        return sorted(stalls, key=lambda stall: -stall.age)


class _StallCollector(Collector):
    """Exports every live tracker of the process at scrape time."""

    def __init__(self) -> None:
        self.trackers: weakref.WeakSet[StallTracker] = weakref.WeakSet()

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(COMMIT_AGE_METRIC, _COMMIT_AGE_HELP, labels=_LABELS)
        yield GaugeMetricFamily(STALL_BOUND_METRIC, _BOUND_HELP)

    def collect(self) -> Iterator[Metric]:
        ages = GaugeMetricFamily(COMMIT_AGE_METRIC, _COMMIT_AGE_HELP, labels=_LABELS)
        bound = GaugeMetricFamily(STALL_BOUND_METRIC, _BOUND_HELP)
        bounds = []
        for tracker in list(self.trackers):
            bounds.append(tracker.bound)
            for (topic, partition), age in sorted(tracker.exported_ages().items()):
                ages.add_metric([tracker.group, topic, str(partition)], age)
        if bounds:
            bound.add_metric([], min(bounds))
        yield ages
        yield bound


_COMMIT_AGE_HELP = (
    "Seconds the records waiting on a partition have gone without progress (an ack or a "
    "commit); 0 when nothing waits. Above inboxflow_liveness_stall_bound_seconds, /healthz fails."
)
_BOUND_HELP = "Seconds of waiting without progress after which a partition counts as stalled."
_LABELS = ["group", "topic", "partition"]

_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, _StallCollector] = (
    weakref.WeakKeyDictionary()
)


def export_stalls(tracker: StallTracker, registry: CollectorRegistry = REGISTRY) -> None:
    """Export ``tracker``'s ages in ``registry`` (one collector per registry, weak references)."""
    collector = _COLLECTORS.get(registry)
    if collector is None:
        collector = _COLLECTORS[registry] = _StallCollector()
        registry.register(collector)
    collector.trackers.add(tracker)
