"""``ForkedChild``: the Popen-like handle of a child the supervisor forked."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from inboxflow.supervisor import ForkedChild


def forked(status: int, after: float = 0.0) -> ForkedChild:
    pid = os.fork()
    if pid == 0:  # the child: no Python clean-up, no pytest
        time.sleep(after)
        os._exit(status)
    return ForkedChild(pid)


def test_wait_returns_the_exit_code_and_poll_keeps_it() -> None:
    child = forked(3)

    assert child.wait(timeout=30) == 3
    assert child.poll() == 3
    assert child.wait(timeout=0) == 3  # reaped once, answered again


def test_wait_times_out_while_the_child_runs_and_poll_says_none() -> None:
    child = forked(0, after=60)
    try:
        assert child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
