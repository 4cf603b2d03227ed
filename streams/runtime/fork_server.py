"""A fork server for CPU pool workers: one clean interpreter that imports once and forks them.

A CPU pool's workers used to be fresh interpreters, each importing the parser for itself (half
a second) and holding its own copy of every module it loaded: 24 MiB private per worker, most of
it code objects identical in all of them. Workers forked from one server share those pages with
it and with each other (copy-on-write; the server freezes them out of the cyclic collector's
walks first, so a collection in a worker does not copy them), and a worker replacing one killed
at its deadline starts in milliseconds.

The server is never forked from the pool's own process: that runs faust's event loop and several
threads, and a child forked from it would inherit locks other threads held at that moment. It is
a fresh interpreter started with :mod:`subprocess`, single-threaded for its whole life, that
imports the pool's ``preload`` modules and then only forks. This is multiprocessing's
``forkserver`` without what that brings along (a resource-tracker process, the main script
imported again in every child, pickled process objects).

Its control socket is a ``SOCK_SEQPACKET`` pair (messages keep their boundaries). For each
worker the pool sends the worker's end of a fresh socket pair (``SCM_RIGHTS``); the server forks,
the child serves the pool on that socket (:func:`streams.runtime.cpu_pool.serve_connection`),
and the server answers with the child's pid and a pidfd for it. The pool signals and watches the
worker through the pidfd: a pid could be reused once the server reaps the child, a pidfd cannot.
The server leaves when the pool closes its end or its process dies; workers leave when their own
socket ends, as before.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from schemas.errors import TransientError

__all__ = ["ForkServer", "ForkedProcess", "serve_forks"]

_READY = b"ready"
_FORK = b"fork"
_REAP_SECONDS = 1.0  # how long an exited worker may stay a zombie of the server


class ForkedProcess:
    """A worker forked by the server: signalled and awaited through its pidfd, from any thread."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._lock = threading.Lock()  # `kill` may race `close` (a caller leaving, a discard)

    def is_alive(self) -> bool:
        """Return True until the process has exited."""
        return not self.wait(0)

    def kill(self) -> None:
        """Send SIGKILL; a no-op once the process is gone or this handle is closed."""
        with self._lock:
            if self._pidfd < 0:
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def wait(self, timeout: float | None) -> bool:
        """Return True once the process has exited, waiting up to ``timeout`` s (None: for ever)."""
        with self._lock:
            pidfd = self._pidfd
        if pidfd < 0:
            return True
        poll = select.poll()
        poll.register(pidfd, select.POLLIN)  # a pidfd reads as ready once its process exits
        return bool(poll.poll(None if timeout is None else timeout * 1000))

    def close(self) -> None:
        """Release the pidfd (the process is not touched)."""
        with self._lock:
            pidfd, self._pidfd = self._pidfd, -1
        if pidfd >= 0:
            os.close(pidfd)


class ForkServer:
    """Starts the fork server on first use (and again if it died); forks workers from it.

    Thread-safe: a pool's threads start workers concurrently.
    """

    def __init__(self, name: str, preload: Sequence[str], start_timeout: float) -> None:
        self.name = name
        self._preload = tuple(preload)
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def fork(self, conn: socket.socket) -> ForkedProcess:
        """Fork a worker that serves the pool on ``conn`` (the worker's end; closed here).

        Raises:
            TransientError: The server did not start or answer within the start timeout.
        """
        with self._lock, conn:
            try:
                control = self._running()
                socket.send_fds(control, [_FORK], [conn.fileno()])
                reply, fds, _, _ = socket.recv_fds(control, 32, 1)
            except OSError as exc:
                self._stop()
                raise TransientError(
                    f"the fork server of CPU pool {self.name} did not fork a worker: {exc!r}; "
                    "see its output on stderr"
                ) from exc
            if not reply or len(fds) != 1:
                self._stop()
                raise TransientError(f"the fork server of CPU pool {self.name} stopped")
            return ForkedProcess(int(reply), fds[0])

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for tests and diagnostics)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def close(self) -> None:
        """Stop the server (its workers are the pool's to stop). Blocking, idempotent."""
        with self._lock:
            self._stop()

    def _running(self) -> socket.socket:
        if self._control is not None and self._process is not None:
            if self._process.poll() is None:
                return self._control
            self._stop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with child:
            self._process = subprocess.Popen(  # noqa: S603 - this interpreter, our own module
                _server_command(child.fileno(), self._preload),
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self._control = parent
        parent.settimeout(self._start_timeout)  # the first answer waits for the imports
        if parent.recv(16) != _READY:
            raise OSError("the fork server ended before it was ready")
        return parent

    def _stop(self) -> None:
        control, self._control = self._control, None
        process, self._process = self._process, None
        if control is not None:
            control.close()  # the server reads the end of its socket and leaves
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# The server's command line: ``python -c _SERVER_CODE FD PATH PRELOAD...``. It looks for modules
# where this process does (a test's rootdir, a source checkout), as multiprocessing's spawn would.
_SERVER_CODE = (
    "import os, sys; sys.path[:0] = sys.argv[2].split(os.pathsep); "
    "from streams.runtime.fork_server import serve_forks; serve_forks(sys.argv[1], sys.argv[3:])"
)


def _server_command(fd: int, preload: Sequence[str]) -> list[str]:
    path = os.pathsep.join(entry or str(Path.cwd()) for entry in sys.path)
    return [sys.executable, "-c", _SERVER_CODE, str(fd), path, *preload]


def serve_forks(fd: str, preload: Sequence[str]) -> None:
    """The fork server's entry point: import ``preload``, then fork a worker per request."""
    # Ctrl-C in a terminal reaches the whole process group; the pool decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=int(fd))
    for module in preload:
        importlib.import_module(module)
    # The cpu pool's worker loop too: a worker forked before it was imported would import it.
    importlib.import_module("streams.runtime.cpu_pool")
    # Everything imported so far lives as long as the workers: out of the collector's walks,
    # which would otherwise write to (and so copy) every page of it in every worker.
    gc.collect()
    gc.freeze()
    control.sendall(_READY)
    while True:
        ready, _, _ = select.select([control], [], [], _REAP_SECONDS)
        _reap()
        if not ready:
            continue
        request, fds, _, _ = socket.recv_fds(control, 16, 1)
        if not request:
            return  # the pool closed its end, or its process is gone
        if len(fds) != 1:
            for stray in fds:
                os.close(stray)
            continue
        pid = os.fork()
        if pid == 0:
            _become_worker(control, fds[0])
        os.close(fds[0])
        # Opened before the next `_reap`, so the pid is still this child's.
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(control, [str(pid).encode()], [pidfd])
        finally:
            os.close(pidfd)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _become_worker(control: socket.socket, fd: int) -> None:
    """A forked child: serve the pool on ``fd`` and exit, never returning to the server's loop."""
    status = 1
    try:
        control.close()
        from streams.runtime.cpu_pool import serve_connection

        serve_connection(fd)
        status = 0
    except SystemExit as stop:  # a SIGTERM between calls
        status = stop.code if isinstance(stop.code, int) else 0
    finally:
        # Not sys.exit: the server's atexit handlers and buffered streams are not the worker's.
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(status)
