"""CpuPool with real worker processes: order, deadlines that kill the work, crashes that stay local.

One pool serves the module (starting workers is the slow part); tests that kill a worker leave
the pool to replace it, which is part of what they check.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.errors import RetryClass, StageTimeoutError, classify
from streams.runtime.cpu_pool import CpuPool, WorkerLostError
from tests.helpers import async_wait_until
from tests.unit.streams import cpu_work


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (Linux ``/proc``); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def alive(pid: int) -> bool:
    """True while the process runs (an exited one not yet reaped by its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def pool() -> Iterator[CpuPool]:
    running = CpuPool(2, name="test-cpu")
    running.start()
    try:
        yield running
    finally:
        running.shutdown()


async def test_results_come_back_in_call_order_from_parallel_workers(pool: CpuPool) -> None:
    squares = await asyncio.gather(*(pool.run(cpu_work.square, n) for n in range(20)))
    assert squares == [n * n for n in range(20)]

    pids = await asyncio.gather(*(pool.run(cpu_work.busy, 0.3) for _ in range(2)))
    assert len(set(pids)) == 2  # both workers at once


async def test_a_call_past_its_deadline_fails_alone_and_its_worker_stops(pool: CpuPool) -> None:
    slow = asyncio.create_task(pool.run(cpu_work.busy, 60, max_seconds=0.3))
    fine = asyncio.create_task(pool.run(cpu_work.busy, 0.6, max_seconds=30))
    busy_pids = set(pool.pids())

    with pytest.raises(StageTimeoutError, match=r"busy ran past 0.3s") as caught:
        await slow
    assert classify(caught.value).retry_class is RetryClass.TIMEOUT
    assert await fine in busy_pids  # the other call was not disturbed
    killed = busy_pids - {await fine}
    # The abandoned work does not go on: its process is gone, not left spinning.
    await async_wait_until(lambda: not any(alive(p) for p in killed), timeout=10)
    assert await pool.run(cpu_work.square, 7) == 49  # a new worker took its place
    assert len(pool.pids()) == 2


async def test_a_worker_that_dies_fails_only_its_call(pool: CpuPool) -> None:
    neighbour = asyncio.create_task(pool.run(cpu_work.busy, 0.5))
    with pytest.raises(WorkerLostError, match="died running crash") as caught:
        await pool.run(cpu_work.crash)
    assert caught.value.retry_class is RetryClass.TIMEOUT
    assert await neighbour > 0
    assert await pool.run(cpu_work.square, 3) == 9


async def test_cancelling_the_caller_kills_the_work(pool: CpuPool) -> None:
    await async_wait_until(lambda: len(pool.pids()) == 2, timeout=30)
    before = {pid: cpu_seconds(pid) for pid in pool.pids()}
    call = asyncio.create_task(pool.run(cpu_work.busy, 60))
    # Cancel once a worker is computing, not while the call waits for one.
    await async_wait_until(
        lambda: any(cpu_seconds(pid) > used + 0.05 for pid, used in before.items()), timeout=30
    )
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await async_wait_until(lambda: len(set(before) - set(pool.pids())) == 1, timeout=10)
    gone = set(before) - set(pool.pids())
    await async_wait_until(lambda: not any(alive(p) for p in gone), timeout=10)


async def test_a_stopping_process_group_lets_calls_in_flight_finish() -> None:
    # The supervisor stops an agent by signalling its process group, workers included.
    pool = CpuPool(1, name="test-cpu-term")
    try:
        worker = await pool.run(cpu_work.pid)
        used = cpu_seconds(worker)
        call = asyncio.create_task(pool.run(cpu_work.busy, 1.0))
        await async_wait_until(lambda: cpu_seconds(worker) > used + 0.05, timeout=30)
        os.kill(worker, signal.SIGTERM)
        assert await call == worker  # answered, not failed as a lost worker
        await async_wait_until(lambda: not alive(worker), timeout=10)  # then it left
        assert await pool.run(cpu_work.square, 5) == 25
    finally:
        await pool.aclose()


def memory_kib(pid: int) -> dict[str, int]:
    """The process's memory by kind, in KiB (``/proc/<pid>/smaps_rollup``)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {line.split()[0].rstrip(":"): int(line.split()[1]) for line in rollup}


async def test_workers_share_the_memory_of_what_the_fork_server_imported() -> None:
    pool = CpuPool(1, name="test-cpu-shared", preload=["streams.stages.mime"])
    try:
        worker = await pool.run(cpu_work.pid)
        memory = memory_kib(worker)
        # The parser's modules were imported once, by the server: a worker's copy-on-write
        # share of them is most of its memory, what it wrote itself the lesser part.
        assert memory["Shared_Dirty"] > memory["Private_Dirty"], memory
        assert await pool.run(cpu_work.loaded, "streams.stages.mime")
    finally:
        await pool.aclose()


async def test_workers_keep_serving_when_the_fork_server_dies_and_it_comes_back() -> None:
    pool = CpuPool(2, name="test-cpu-server")
    try:
        pool.start()
        server = pool.fork_server_pid()
        assert server is not None
        os.kill(server, signal.SIGKILL)
        await async_wait_until(lambda: not alive(server), timeout=10)
        # The workers talk to the pool, not to the server: they go on.
        squares = await asyncio.gather(*(pool.run(cpu_work.square, n) for n in range(4)))
        assert squares == [0, 1, 4, 9]
        # A worker that dies is replaced by a new server's child.
        with pytest.raises(WorkerLostError):
            await pool.run(cpu_work.crash)
        both = await asyncio.gather(*(pool.run(cpu_work.busy, 0.2) for _ in range(2)))
        assert len(set(both)) == 2  # the lost worker's slot was filled again
        restarted = pool.fork_server_pid()
        assert restarted not in (None, server)
        assert len(pool.pids()) == 2
    finally:
        await pool.aclose()
    assert not alive(restarted or 0)


async def test_exceptions_of_the_function_reach_the_caller(pool: CpuPool) -> None:
    with pytest.raises(ValueError, match="not a message"):
        await pool.run(cpu_work.refuse, "not a message")
    assert await pool.run(cpu_work.square, 4) == 16  # the worker stays
    with pytest.raises((pickle.PicklingError, AttributeError)):
        await pool.run(cpu_work.square, lambda: 4)  # refused before anything is sent
    assert await pool.run(cpu_work.square, 5) == 25


async def test_a_closed_pool_refuses_calls_and_leaves_no_process() -> None:
    pool = CpuPool(1, name="test-cpu-closed")
    worker = await pool.run(cpu_work.pid)
    server = pool.fork_server_pid()
    await pool.aclose()
    assert not alive(worker)
    assert server is not None
    assert not alive(server)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(cpu_work.square, 2)


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        CpuPool(0)
