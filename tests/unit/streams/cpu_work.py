"""Functions the CPU pool tests send to worker processes (importable by name, light imports)."""

from __future__ import annotations

import os
import time


def square(x: int) -> int:
    return x * x


def busy(seconds: float) -> int:
    """Keep a core busy for ``seconds``; return the worker's pid."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass
    return os.getpid()


def pid() -> int:
    return os.getpid()


def crash() -> None:
    os._exit(3)  # as the OOM killer or a segfault would end it: no exception, no reply


def refuse(reason: str) -> None:
    raise ValueError(reason)


def loaded(module: str) -> bool:
    """Return True if the worker has ``module`` without importing it now."""
    import sys

    return module in sys.modules
