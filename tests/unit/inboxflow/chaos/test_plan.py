"""The fault schedule: reproducible from its seed, every kind drawn, outages never overlapping."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxflow.chaos.plan import EXCLUSIVE, FaultKind, PlannedFault, plan_faults

PROCESSES = ("agent-sync", "agent-normalize", "sink-jobs", "scheduler")
SCALABLE = ("normalize", "extract")


def plan(
    seed: int, count: int = 12, kinds: frozenset[FaultKind] = frozenset(FaultKind)
) -> list[PlannedFault]:
    return plan_faults(
        seed=seed,
        window=60.0,
        count=count,
        kinds=kinds,
        processes=PROCESSES,
        scalable=SCALABLE,
        session_timeout=6.0,
    )


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    assert plan(7) == plan(7)
    assert plan(7) != plan(8)


def test_every_kind_is_drawn_when_the_count_allows() -> None:
    kinds = {fault.kind for fault in plan(3, count=len(FaultKind))}
    assert kinds == set(FaultKind)


def test_only_the_allowed_kinds_are_drawn() -> None:
    allowed = frozenset({FaultKind.KILL_WORKER, FaultKind.GMAIL_FAILING})
    assert {fault.kind for fault in plan(5, kinds=allowed)} <= allowed


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 40))
def test_plans_are_ordered_and_outages_never_overlap(seed: int, count: int) -> None:
    faults = plan(seed, count)
    assert [f.at for f in faults] == sorted(f.at for f in faults)
    outages = [f for f in faults if f.kind in EXCLUSIVE]
    for earlier, later in itertools.pairwise(outages):
        assert later.at >= earlier.at + earlier.duration, (earlier, later)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 40))
def test_targets_durations_and_pairs_are_sound(seed: int, count: int) -> None:
    faults = plan(seed, count)
    for fault in faults:
        if fault.kind is FaultKind.KILL_WORKER:
            assert fault.target in PROCESSES
        if fault.kind is FaultKind.BROKER_PAUSE:
            assert fault.duration > 6.0, "a pause must outlast the session timeout"
        assert fault.duration >= 0
    outs = [f for f in faults if f.kind is FaultKind.SCALE_OUT]
    ins = [f for f in faults if f.kind is FaultKind.SCALE_IN]
    assert len(ins) == len(outs)
    for scale_in in ins:
        assert any(o.target == scale_in.target and o.at <= scale_in.at for o in outs)


def test_an_empty_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="count >= 1"):
        plan(1, count=0)
