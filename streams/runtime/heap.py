"""Give the C heap's free memory back to the system after a burst of work.

A burst fills faust's buffer and the agents' windows with thousands of records (raw mail, a few
KB each, allocated with ``malloc``). Once they are processed and freed, glibc keeps most of the
freed pages for reuse, so the process stays at its burst size: a normalize worker measured after
it had caught up sat at 125 or 150 MiB depending on how deep its buffers had been. Its
``malloc_trim`` hands whole free pages back; the agent worker calls it once after each stretch
of work, when every agent's window has emptied (never while records wait, and never on a loop
that is busy).

Where the C library has no ``malloc_trim`` (musl, macOS) this does nothing.

The cyclic garbage collector is tuned once an agent process has built its app
(``settle_after_start``): what start-up made (faust, aiokafka, the models: most of the heap)
is frozen out of every later collection, and the young generation is collected every 50,000
allocations instead of 700. A normalize agent spent a fifth of its CPU in the collector, walking
the same long-lived objects and the records of the batches at work again and again (1.1 of 5.9
CPU-seconds over 8,000 messages; 0.3 with both). Nearly everything an agent allocates is freed
by reference counting, so garbage in cycles waits a little longer, nothing more.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Sequence
from typing import Protocol


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()
YOUNG_COLLECTION_EVERY = 50_000  # allocations; CPython's default is 700


def settle_after_start() -> None:
    """Freeze the objects start-up made out of later collections; collect the young less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class _Held(Protocol):
    @property
    def held(self) -> int: ...


class IdleTrim:
    """Releases free memory once after each stretch of work, when every window is empty."""

    def __init__(self, windows: Sequence[_Held]) -> None:
        self.windows = windows
        self._worked = False

    def worked(self) -> None:
        """Note that a batch went through."""
        self._worked = True

    async def maybe_release(self) -> bool:
        """Release free memory if work was done since the last time and nothing is held now."""
        if not self._worked or any(window.held for window in self.windows):
            return False
        self._worked = False
        # On a thread: trimming a large heap takes milliseconds, the event loop serves meanwhile.
        return await asyncio.to_thread(release_free_memory)
