"""Child processes for the local stack: free ports, process groups, readiness, teardown.

Every service runs in its own process group so teardown reaches the JVM or postmaster and all
their children. A stack owned by a test session also asks the kernel to signal the service when
the owner dies (``PR_SET_PDEATHSIG``), so even a ``kill -9`` of pytest leaves no orphan.
This module must not import anything outside the standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """The local stack could not be started or stopped; the message says what to do."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Picked below the kernel's range of ephemeral ports where it can: a port from that range (what
    binding port 0 gives) may be taken by any outgoing connection before the service meant to
    listen on it starts (seen under load: a worker's health port taken while the stack's clients
    connected to Kafka, and the worker exiting on "address already in use").
    """
    below = _ephemeral_ports_start()
    if below is not None and below > _FIRST_USER_PORT:
        for _ in range(100):
            port = _PORTS.randrange(max(_FIRST_USER_PORT, below - _LISTEN_PORTS), below)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LISTEN_PORTS = 10_000  # how many ports below the ephemeral range free_port picks from
_FIRST_USER_PORT = 1024  # the ports below need privileges
_PORTS = random.Random()  # noqa: S311 - spreads ports, no secret; seeded per process by the OS


def _ephemeral_ports_start() -> int | None:
    """The first port the kernel hands out to outgoing connections (Linux), else None."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port_block(count: int, attempts: int = 50) -> int:
    """Return the first of ``count`` consecutive ports on 127.0.0.1 that were all free a moment ago.

    For processes that take ``base + index`` ports (each worker serves its own metrics).
    """
    for _ in range(attempts):
        base = free_port()
        if base + count <= 65535 and all(_bindable(base + i) for i in range(1, count)):
            return base
    raise StackError(f"no {count} consecutive free ports found in {attempts} tries")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """Return True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account to run a service as (PostgreSQL refuses to run as root)."""

    uid: int
    gid: int
    name: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        """Return the account called ``name`` or raise StackError naming the fix."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise StackError(
                f"user {name!r} does not exist; create it (useradd --system {name}) "
                "or run as a non-root user"
            ) from None
        return cls(uid=entry.pw_uid, gid=entry.pw_gid, name=name)


def _child_setup(run_as: RunAs | None, die_with_parent: bool) -> Callable[[], None]:
    def setup() -> None:
        if run_as is not None:
            os.setgid(run_as.gid)
            os.initgroups(run_as.name, run_as.gid)
            os.setuid(run_as.uid)
        if die_with_parent:
            # Set after the uid change: the kernel clears the death signal on credential changes.
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    run_as: RunAs | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a service in its own process group, its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - argv is built by the stack, never from input
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup(run_as, die_with_parent),
        )


def run_checked(argv: Sequence[str], *, what: str, run_as: RunAs | None = None) -> str:
    """Run a short command to completion; raise StackError with its output if it fails."""
    result = subprocess.run(  # noqa: S603 - argv is built by the stack
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=_child_setup(run_as, die_with_parent=False),
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise StackError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")
    return result.stdout


def pid_alive(pid: int) -> bool:
    """Return True if a process with this pid exists and is not a zombie we own."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return status.read_text().split(") ", 1)[1][:1] != "Z"
    return True


def stop_group(pid: int, *, sig: signal.Signals = signal.SIGTERM, grace: float = 20.0) -> None:
    """Signal the process group led by ``pid``, then SIGKILL it if it outlives ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_for(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll ``ready`` until it is true; fail early if ``process`` exits, or at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise StackError(f"{what} exited with {process.returncode}: {log_tail(log_path)}")
        time.sleep(0.1)
    raise StackError(f"{what} not ready after {timeout:.0f}s: {log_tail(log_path)}")


def log_tail(log_path: Path | None, lines: int = 8) -> str:
    """Return the last lines of a service log, joined for a one-line error."""
    if log_path is None or not log_path.exists():
        return "(no log)"
    text = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(text) or "(empty log)"
