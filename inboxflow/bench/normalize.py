"""``inboxflow bench normalize``: messages/s of the pure normalize function, alone and in a pool.

Three figures on the same generated messages (``generate_messages``, realistic MIME, about
3 KB each):

- **one core**: ``streams.stages.mime.normalized_body`` called in a loop on this process;
- **pool of N**: the same messages through a :class:`streams.runtime.cpu_pool.CpuPool` of N
  worker processes, as the normalize stage sends them (``normalize_in_pool``: chunks of several
  messages per call, all submitted at once), for each N asked for;
- **scaling**: the largest pool's rate over the one-process pool's;
- **machine scaling**: the same parse in as many independent processes (no pool, no hand-over,
  each its own share of the messages, started together): what this machine's cores give this
  work at all. The pool's scaling over it is the pool's own efficiency; on shared or
  throttled cores the machine's figure is well under the core count.

Before timing, each side normalizes messages of another seed, so imports, worker start-up and
the parser's per-process caches are warm, as in a long-running worker; the timed messages are
new to it. Rates are wall-clock; on a machine busy with other work they come out low.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inboxflow.bench.pipeline import fetched_events
from schemas.models import GmailMessageFetched
from streams.runtime.cpu_pool import CpuPool
from streams.stages.mime import RawMessage, normalized_body
from streams.stages.normalize import normalize_in_pool

_WARMUP_MESSAGES = 200


@dataclass(frozen=True)
class PoolRate:
    """Messages/s through a pool of ``processes`` workers, and where the CPU time went.

    ``parent_cpu_ms_per_message`` is this process (handing over, pickling, the event loop);
    ``workers_cpu_ms_per_message`` all workers together (parsing, pickling), read from
    ``/proc`` (``None`` where there is none). Their sum against the cores there are tells how
    far the pool can scale: the parent's share is not parallel work.
    """

    processes: int
    messages_per_second: float
    parent_cpu_ms_per_message: float
    workers_cpu_ms_per_message: float | None


@dataclass(frozen=True)
class NormalizeBenchResult:
    """Figures of one run."""

    messages: int
    average_message_bytes: float
    single_core_messages_per_second: float
    pool: tuple[PoolRate, ...]
    scaling: float | None  # largest pool over the 1-process pool; None without both
    machine_scaling: float | None  # independent processes, as many as the largest pool
    pool_efficiency: float | None  # scaling / machine_scaling

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def run_normalize_bench(
    messages: int, seed: int, processes: tuple[int, ...] = (1, 2)
) -> NormalizeBenchResult:
    """Time ``normalized_body`` on ``messages`` generated messages, alone and in pools.

    Arguments:
        messages: Messages timed on each side.
        seed: Seed of the timed messages (warm-up uses ``seed + 1``).
        processes: Pool sizes to time; ``()`` times the single core only.
    """
    if messages < 1:
        raise ValueError(f"the bench needs at least one message, got {messages}")
    timed = fetched_events(messages, seed=seed)
    warmup = fetched_events(min(messages, _WARMUP_MESSAGES), seed=seed + 1)
    single = _single_core_rate(timed, warmup)
    rates = tuple(asyncio.run(_pool_rate(count, timed, warmup)) for count in processes)
    by_size = {rate.processes: rate.messages_per_second for rate in rates}
    largest = max(by_size, default=0)
    scaling = by_size[largest] / by_size[1] if 1 in by_size and largest > 1 else None
    machine = None
    if scaling is not None:
        machine = _independent_rate(largest, messages, seed) / _independent_rate(1, messages, seed)
    return NormalizeBenchResult(
        messages=messages,
        average_message_bytes=sum(len(event.raw) for event in timed) / messages,
        single_core_messages_per_second=single,
        pool=rates,
        scaling=scaling,
        machine_scaling=machine,
        pool_efficiency=None if scaling is None or not machine else scaling / machine,
    )


def _independent_rate(processes: int, messages: int, seed: int) -> float:
    """Messages/s of ``processes`` processes parsing shares of the messages side by side."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.SimpleQueue()
    share = -(-messages // processes)
    children = [
        context.Process(target=_parse_share, args=(share, seed, start, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        elapsed = [float(results.get()) for _ in children]
    finally:
        for child in children:
            child.join()
    return share * processes / max(elapsed)


def _parse_share(count: int, seed: int, start: Any, results: Any) -> None:
    """A child of ``_independent_rate``: warm up, wait for the others, time ``count`` parses."""
    timed = fetched_events(count, seed=seed)
    warmup = fetched_events(min(count, _WARMUP_MESSAGES), seed=seed + 1)
    now = datetime.now(UTC)
    for message in map(RawMessage.of, warmup):
        normalized_body(message, now)
    messages = [RawMessage.of(event) for event in timed]
    start.wait()
    began = time.perf_counter()
    for message in messages:
        normalized_body(message, now)
    results.put(time.perf_counter() - began)


def _single_core_rate(
    timed: Sequence[GmailMessageFetched], warmup: Sequence[GmailMessageFetched]
) -> float:
    now = datetime.now(UTC)
    for message in map(RawMessage.of, warmup):
        normalized_body(message, now)
    messages = [RawMessage.of(event) for event in timed]
    started = time.perf_counter()
    for message in messages:
        normalized_body(message, now)
    return len(timed) / (time.perf_counter() - started)


async def _pool_rate(
    processes: int, timed: Sequence[GmailMessageFetched], warmup: Sequence[GmailMessageFetched]
) -> PoolRate:
    pool = CpuPool(processes, name="bench-normalize", preload=["streams.stages.mime"])
    try:
        await asyncio.to_thread(pool.start)
        await _normalize_in(pool, warmup)
        workers_before = _workers_cpu_seconds(pool)
        parent_before = time.process_time()
        started = time.perf_counter()
        await _normalize_in(pool, timed)
        elapsed = time.perf_counter() - started
        parent = time.process_time() - parent_before
        workers_after = _workers_cpu_seconds(pool)
    finally:
        await pool.aclose()
    workers = (
        None if workers_before is None or workers_after is None else workers_after - workers_before
    )
    return PoolRate(
        processes=processes,
        messages_per_second=len(timed) / elapsed,
        parent_cpu_ms_per_message=parent * 1000 / len(timed),
        workers_cpu_ms_per_message=None if workers is None else workers * 1000 / len(timed),
    )


def _workers_cpu_seconds(pool: CpuPool) -> float | None:
    """CPU seconds the pool's workers have used, from ``/proc/<pid>/stat``; None without it."""
    total = 0.0
    for pid in pool.pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the command name: state is field 3, utime 14 and stime 15 (proc(5)).
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _normalize_in(pool: CpuPool, events: Sequence[GmailMessageFetched]) -> None:
    items = [(RawMessage.of(event), None) for event in events]
    results = await normalize_in_pool(pool, items, datetime.now(UTC), record_timeout=None)
    failed = [result for result in results if isinstance(result, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} generated messages failed to normalize: {failed[0]!r}")
