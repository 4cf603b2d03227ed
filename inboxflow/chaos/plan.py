"""The fault schedule of a campaign, drawn from one seed.

The plan is made before anything runs, so ``--seed N`` gives the same faults at the same
offsets on every run: a failing campaign can be run again under the same schedule (the
system's own timing still varies, as it would in production). Pure: no I/O here.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    """What a planned fault does."""

    KILL_WORKER = "kill_worker"  # SIGKILL a worker process (agent with its retry relay, sink,
    # scheduler), start it again after `duration`
    BROKER_STOP = "broker_stop"  # SIGTERM the broker, start it again after `duration`
    BROKER_KILL = "broker_kill"  # SIGKILL the broker, start it again after `duration`
    BROKER_PAUSE = "broker_pause"  # SIGSTOP the broker past the session timeout, then SIGCONT
    POSTGRES_RESTART = "postgres_restart"  # stop Postgres, start it again after `duration`
    GMAIL_SLOW = "gmail_slow"  # Gmail answers slowly for `duration`
    GMAIL_FAILING = "gmail_failing"  # Gmail answers 429 (Retry-After) and 5xx for `duration`
    EMBED_SLOW = "embed_slow"  # the embedding API answers slowly for `duration`
    EMBED_FAILING = "embed_failing"  # the embedding API throttles and fails for `duration`
    SCALE_OUT = "scale_out"  # one more process joins a group (a rebalance)
    SCALE_IN = "scale_in"  # a process added by SCALE_OUT leaves with SIGTERM (a rebalance)


BROKER_FAULTS = frozenset({FaultKind.BROKER_STOP, FaultKind.BROKER_KILL, FaultKind.BROKER_PAUSE})
# Outages of shared services are spaced apart: a broker restart on a busy 2-core machine takes
# 10-30 s, and overlapping outages only test the restart loop, not recovery.
EXCLUSIVE = BROKER_FAULTS | {FaultKind.POSTGRES_RESTART}

# Durations (seconds) drawn per kind: (low, high).
DURATIONS: dict[FaultKind, tuple[float, float]] = {
    FaultKind.KILL_WORKER: (0.0, 3.0),
    FaultKind.BROKER_STOP: (2.0, 8.0),
    FaultKind.BROKER_KILL: (2.0, 8.0),
    FaultKind.BROKER_PAUSE: (1.5, 2.5),  # in session timeouts: always longer than one
    FaultKind.POSTGRES_RESTART: (1.0, 6.0),
    FaultKind.GMAIL_SLOW: (5.0, 15.0),
    FaultKind.GMAIL_FAILING: (5.0, 15.0),
    FaultKind.EMBED_SLOW: (5.0, 15.0),
    FaultKind.EMBED_FAILING: (5.0, 15.0),
    FaultKind.SCALE_OUT: (0.0, 0.0),
    FaultKind.SCALE_IN: (0.0, 0.0),
}


# After every kind was drawn once, further draws favour the faults a long-running deployment
# meets most (a process dying, an API in trouble) over whole-service outages.
WEIGHTS: dict[FaultKind, int] = {
    FaultKind.KILL_WORKER: 6,
    FaultKind.GMAIL_FAILING: 2,
    FaultKind.EMBED_FAILING: 2,
    FaultKind.SCALE_OUT: 2,
}


@dataclass(frozen=True)
class PlannedFault:
    """One fault: when (seconds after the workload starts), what, on which process, how long."""

    at: float
    kind: FaultKind
    duration: float
    target: str | None = None  # the process of KILL_WORKER, the group of SCALE_OUT/SCALE_IN

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)

    def describe(self) -> str:
        """Return a one-line description for progress output."""
        target = f" {self.target}" if self.target else ""
        length = f" for {self.duration:.1f}s" if self.duration else ""
        return f"t+{self.at:.1f}s {self.kind.value}{target}{length}"


def plan_faults(
    *,
    seed: int,
    window: float,
    count: int,
    kinds: frozenset[FaultKind],
    processes: tuple[str, ...],
    scalable: tuple[str, ...],
    session_timeout: float,
) -> list[PlannedFault]:
    """Draw ``count`` faults at random times within ``window`` seconds, in time order.

    Every kind in ``kinds`` is drawn at least once when ``count`` allows, then kinds are drawn
    by ``WEIGHTS`` (1 for kinds not listed). Outages of the broker or Postgres never overlap: a
    later one is moved after the end of the earlier. A SCALE_IN always follows a SCALE_OUT of
    its group.

    Args:
        seed: the only source of randomness.
        window: seconds over which fault start times are spread.
        count: faults to draw.
        kinds: the kinds allowed.
        processes: names of the processes KILL_WORKER may pick.
        scalable: groups SCALE_OUT may grow (agent names).
        session_timeout: the consumers' session timeout; a broker pause outlasts it.
    """
    if count < 1 or window <= 0 or not kinds:
        raise ValueError("a plan needs count >= 1, a positive window and at least one kind")
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    ordered = sorted(kinds - {FaultKind.SCALE_IN})
    weights = [WEIGHTS.get(kind, 1) for kind in ordered]
    drawn = ordered[:count] + rng.choices(ordered, weights, k=max(0, count - len(ordered)))
    rng.shuffle(drawn)
    faults = [
        _draw(rng, kind, rng.uniform(0, window), processes, scalable, session_timeout)
        for kind in drawn
    ]
    faults.sort(key=lambda fault: fault.at)
    faults = _pair_scale_in(rng, faults, window, kinds)
    return _spaced(faults)


def _draw(
    rng: random.Random,
    kind: FaultKind,
    at: float,
    processes: tuple[str, ...],
    scalable: tuple[str, ...],
    session_timeout: float,
) -> PlannedFault:
    low, high = DURATIONS[kind]
    duration = round(rng.uniform(low, high), 1)
    target = None
    if kind is FaultKind.BROKER_PAUSE:
        duration = round(duration * session_timeout, 1)
    elif kind is FaultKind.KILL_WORKER:
        target = rng.choice(processes)
    elif kind is FaultKind.SCALE_OUT:
        target = rng.choice(scalable)
    return PlannedFault(round(at, 1), kind, duration, target)


def _pair_scale_in(
    rng: random.Random, faults: list[PlannedFault], window: float, kinds: frozenset[FaultKind]
) -> list[PlannedFault]:
    """After each SCALE_OUT, a SCALE_IN of the same group later in the window (if allowed)."""
    if FaultKind.SCALE_IN not in kinds:
        return faults
    paired = list(faults)
    for fault in faults:
        if fault.kind is FaultKind.SCALE_OUT:
            at = round(rng.uniform(fault.at, max(window, fault.at + 1)), 1)
            paired.append(PlannedFault(at, FaultKind.SCALE_IN, 0.0, fault.target))
    paired.sort(key=lambda fault: fault.at)
    return paired


def _spaced(faults: list[PlannedFault]) -> list[PlannedFault]:
    """Move exclusive faults so that no two outages of shared services overlap."""
    spaced: list[PlannedFault] = []
    busy_until = 0.0
    for fault in faults:
        if fault.kind in EXCLUSIVE:
            at = max(fault.at, busy_until)
            fault = PlannedFault(round(at, 1), fault.kind, fault.duration, fault.target)
            busy_until = at + fault.duration + 1.0
        spaced.append(fault)
    spaced.sort(key=lambda fault: fault.at)
    return spaced
