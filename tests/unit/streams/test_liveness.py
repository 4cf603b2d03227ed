"""The stall tracker with a fake clock: idle is healthy, waiting without progress is not."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streams.runtime.liveness import (
    COMMIT_AGE_METRIC,
    STALL_BOUND_METRIC,
    Stall,
    StallTracker,
    export_stalls,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_an_idle_partition_is_never_stalled(clock: FakeClock) -> None:
    tracker = StallTracker("g", 10, clock=clock)
    clock.now += 3600
    assert tracker.stalled() == []
    assert tracker.ages() == {}


def test_records_waiting_past_the_bound_stall_their_partition(clock: FakeClock) -> None:
    tracker = StallTracker("g", 10, clock=clock)
    tracker.arrived("t", 0, 3)
    tracker.arrived("t", 1)
    clock.now += 10
    assert tracker.stalled() == []  # at the bound: not yet
    clock.now += 0.5
    stalls = tracker.stalled()
    assert [(s.topic, s.partition, s.waiting) for s in stalls] == [("t", 0, 3), ("t", 1, 1)]
    assert stalls[0].age == pytest.approx(10.5)
    assert stalls[0].as_json() == {
        "group": "g",
        "topic": "t",
        "partition": 0,
        "waiting_records": 3,
        "age_seconds": 10.5,
    }


def test_progress_restarts_the_clock_of_records_still_waiting(clock: FakeClock) -> None:
    tracker = StallTracker("g", 10, clock=clock)
    tracker.arrived("t", 0, 2)
    clock.now += 9
    tracker.progressed("t", 0, 1)
    clock.now += 9  # 18 s since the first record, 9 since progress
    assert tracker.stalled() == []
    assert tracker.ages() == {("t", 0): (1, 9.0)}
    clock.now += 2
    assert [s.partition for s in tracker.stalled()] == [0]


def test_later_arrivals_do_not_reset_an_old_wait(clock: FakeClock) -> None:
    tracker = StallTracker("g", 10, clock=clock)
    tracker.arrived("t", 0)
    clock.now += 8
    tracker.arrived("t", 0)  # more records behind a stuck one: still no progress
    clock.now += 3
    assert [s.waiting for s in tracker.stalled()] == [2]


def test_a_partition_done_with_everything_is_idle_again(clock: FakeClock) -> None:
    tracker = StallTracker("g", 10, clock=clock)
    tracker.arrived("t", 0, 2)
    tracker.progressed("t", 0, 2)
    clock.now += 60
    assert tracker.ages() == {}
    tracker.arrived("t", 0)
    clock.now += 5
    assert tracker.ages() == {("t", 0): (1, 5.0)}  # a new wait starts at the new record


def test_forgotten_and_unknown_partitions(clock: FakeClock) -> None:
    tracker = StallTracker("g", 10, clock=clock)
    tracker.progressed("t", 7, 1)  # nothing waiting there: ignored
    tracker.arrived("t", 0, 0)  # nothing arrived
    tracker.arrived("t", 1)
    tracker.forget("t", 1)  # revoked: its new owner reads the records again
    clock.now += 60
    assert tracker.stalled() == []


def test_the_most_stalled_partition_comes_first(clock: FakeClock) -> None:
    tracker = StallTracker("g", 1, clock=clock)
    tracker.arrived("t", 0)
    clock.now += 5
    tracker.arrived("t", 1)
    clock.now += 5
    assert tracker.stalled() == [Stall("g", "t", 0, 1, 10.0), Stall("g", "t", 1, 1, 5.0)]


def test_a_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        StallTracker("g", 0)


def test_ages_are_exported_and_go_back_to_zero(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    tracker = StallTracker("inboxflow-extract", 30, clock=clock)
    export_stalls(tracker, registry)
    assert registry.get_sample_value(STALL_BOUND_METRIC) == 30
    tracker.arrived("topic.a", 2)
    clock.now += 7
    labels = {"group": "inboxflow-extract", "topic": "topic.a", "partition": "2"}
    assert registry.get_sample_value(COMMIT_AGE_METRIC, labels) == 7
    tracker.progressed("topic.a", 2, 1)
    assert registry.get_sample_value(COMMIT_AGE_METRIC, labels) == 0
    text = generate_latest(registry).decode()
    assert f"# TYPE {COMMIT_AGE_METRIC} gauge" in text


def test_one_collector_serves_every_tracker_of_a_registry(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    first = StallTracker("a", 30, clock=clock)
    second = StallTracker("b", 20, clock=clock)
    export_stalls(first, registry)
    export_stalls(second, registry)  # registering twice would raise a duplicate error
    first.arrived("t", 0)
    second.arrived("t", 0)
    assert registry.get_sample_value(STALL_BOUND_METRIC) == 20  # the strictest
    groups = {
        sample.labels["group"]
        for metric in registry.collect()
        if metric.name == COMMIT_AGE_METRIC
        for sample in metric.samples
    }
    assert groups == {"a", "b"}


def test_a_partition_served_between_two_scrapes_still_shows_up(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    tracker = StallTracker("g", 30, clock=clock)
    export_stalls(tracker, registry)
    tracker.arrived("t", 1)
    tracker.progressed("t", 1, 1)
    labels = {"group": "g", "topic": "t", "partition": "1"}
    assert registry.get_sample_value(COMMIT_AGE_METRIC, labels) == 0
    tracker.forget("t", 1)  # revoked: the series goes with it
    assert registry.get_sample_value(COMMIT_AGE_METRIC, labels) is None
