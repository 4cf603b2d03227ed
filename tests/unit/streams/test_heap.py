"""Free memory goes back to the system after a burst, once every agent's window is empty."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.runtime.heap import IdleTrim, release_free_memory

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@linux_only
def test_memory_freed_between_live_records_goes_back_to_the_system() -> None:
    # A burst of raw mail, a few KB a record, then all but every eighth freed: glibc keeps the
    # holes (only a free top of the heap is returned by itself) until it is asked to trim.
    burst = [bytes(8000) + bytes([n % 256]) for n in range(20_000)]
    kept = burst[::8]
    del burst
    before = rss_mib()

    assert release_free_memory()

    assert before - rss_mib() > 60  # of the 140 MiB freed
    assert len(kept) == 2500


@dataclass
class Window:
    held: int = 0


async def test_memory_is_released_once_after_work_and_only_with_every_window_empty() -> None:
    windows = [Window(), Window()]
    trim = IdleTrim(windows)

    assert not await trim.maybe_release()  # no work yet
    trim.worked()
    windows[1].held = 4096
    assert not await trim.maybe_release()  # records still held
    windows[1].held = 0
    assert await trim.maybe_release() == sys.platform.startswith("linux")
    assert not await trim.maybe_release()  # nothing new since
    trim.worked()
    assert await trim.maybe_release() == sys.platform.startswith("linux")


def test_after_start_the_heap_is_frozen_and_young_objects_collected_less_often() -> None:
    # In a child interpreter: freezing would keep this test process's garbage for good.
    code = (
        "import gc; from streams.runtime.heap import settle_after_start, YOUNG_COLLECTION_EVERY;"
        "made = [[n] for n in range(1000)]; before = gc.get_threshold();"
        "settle_after_start();"
        "print(gc.get_freeze_count() >= 1000, gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY,"
        " gc.get_threshold()[1:] == before[1:])"
    )
    found = subprocess.run(  # noqa: S603 - this interpreter, a fixed snippet
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.split() == ["True", "True", "True"]
