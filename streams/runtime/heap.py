"""Give the C heap's free memory back to the system after a burst of work.

A burst fills faust's buffer and the agents' windows with thousands of records (raw mail, a few
KB each, allocated with ``malloc``). Once they are processed and freed, glibc keeps most of the
freed pages for reuse, so the process stays at its burst size: a normalize worker measured after
it had caught up sat at 125 or 150 MiB depending on how deep its buffers had been. Its
``malloc_trim`` hands whole free pages back; the agent worker calls it once after each stretch
of work, when every agent's window has emptied (never while records wait, and never on a loop
that is busy).

Where the C library has no ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
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
