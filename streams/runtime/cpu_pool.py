"""Worker processes for CPU-bound pure functions, with a deadline per call that stops the work.

The normalize stage parses MIME here and the local embedding model runs here, so neither holds
the event loop (heartbeats, fetches, other partitions) nor the GIL while it computes, and a
worker can use every core. Each call runs in one worker process, one call per process at a time:

* a call that runs past its ``max_seconds``, or whose caller is cancelled (the stage's own deadline,
  a batch timeout, shutdown), kills its worker with SIGKILL; the worker is replaced on next use.
  A thread cannot be stopped, a process can: nothing keeps computing for a caller that left.
* a worker that dies during a call (the OOM killer, a crash in native code) fails that call only,
  with :class:`WorkerLostError` (TIMEOUT class: retried like a deadline), and is replaced. The
  other workers and their calls are not touched, unlike ``concurrent.futures``, whose pool breaks
  as a whole when one worker dies.

Workers are forked from a fork server (:mod:`streams.runtime.fork_server`): a fresh,
single-threaded interpreter that imports the modules named in ``preload`` once (about half a
second, never counted in a deadline) and then only forks, so workers share its pages and a
replacement starts in milliseconds. Nothing is ever forked from the pool's own process, which
runs faust's event loop and several threads (a child would inherit locks other threads held),
and ``multiprocessing`` is not used: its start methods add a resource-tracker process (13 MiB
for nothing: a worker holds no semaphores or shared memory) and import the program's main script
again in each worker. Each worker talks to the pool over its own socket pair with
multiprocessing's :class:`~multiprocessing.connection.Connection`; one whose pool is gone reads
the end of its socket and leaves.

Arguments and results are pickled: send the bytes to work on and get the result back, never
object graphs the worker does not need. The blocking pipe I/O of a call (a 60 MiB
message is handed over in tens of milliseconds) runs on a thread of the pool, one per worker,
never on the event loop.

This module reads no settings and knows nothing about stages or Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import queue
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

from schemas.errors import StageTimeoutError, TransientError
from streams.runtime.fork_server import ForkedProcess, ForkServer

__all__ = ["CpuPool", "WorkerLostError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_ABANDONED = object()  # what a call's thread returns when its caller has already left


class WorkerLostError(StageTimeoutError):
    """A CPU worker process died while running the call; it is retried like a timeout."""


@dataclass(eq=False)  # identity: workers live in a set
class _Worker:
    process: ForkedProcess
    conn: Connection

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        # SIGKILL: a worker finishes its call before it obeys SIGTERM (see `_serve`), and it may
        # be deep in native code (the embedding engine). An exited worker is not signalled.
        self.process.kill()

    def discard(self) -> None:
        """Kill the process, wait for it to exit and close its handles (blocking; pool thread)."""
        self.kill()
        self.process.wait(timeout=10)
        self.process.close()
        self.conn.close()


class _Call:
    """One call's hand-over between the event loop (which may abandon it) and its pool thread."""

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], on_start: Callable[[], None]
    ) -> None:
        self.fn = fn
        self.args = args
        self.on_start = on_start
        self.abandoned = False
        self.worker: _Worker | None = None
        self._lock = threading.Lock()

    def begin(self, worker: _Worker) -> bool:
        """Bind the call to ``worker``; False if its caller already left."""
        with self._lock:
            if self.abandoned:
                return False
            self.worker = worker
        self.on_start()
        return True

    def end(self) -> bool:
        """Unbind the worker; True if the caller left meanwhile (the worker may be dying)."""
        with self._lock:
            self.worker = None
            return self.abandoned

    def abandon(self) -> None:
        """The caller left: kill the worker if the call is running, skip the call if queued."""
        with self._lock:
            self.abandoned = True
            worker = self.worker
        # Only a worker still bound to this call is killed: once `end` ran it may serve another.
        if worker is not None:
            worker.kill()


class CpuPool:
    """A fixed number of worker processes running pure functions, one call per worker at a time.

    Calls beyond the number of workers wait their turn, in order of arrival; the deadline of a
    call starts when a worker takes it. Processes start on first use. Usable from any event loop
    (nothing in it is bound to one) and from several at once.
    """

    def __init__(
        self,
        workers: int,
        *,
        name: str = "cpu",
        preload: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        """Configure the pool; no process starts yet.

        Arguments:
            workers: Worker processes, at least 1; size it to the cores the process may use.
            name: Names the processes and threads (``<name>-worker``), for ``ps`` and logs.
            preload: Modules the fork server imports before it forks workers: they share them,
                and no call spends its deadline importing them.
            start_timeout: Seconds the fork server may take to start (its imports included),
                and a new worker to answer, before the call fails with ``TransientError``.
        """
        if workers < 1:
            raise ValueError(f"a CPU pool needs at least one worker, got {workers}")
        self.workers = workers
        self.name = name
        self._start_timeout = start_timeout
        self._server = ForkServer(name, preload, start_timeout)
        # One slot per worker; None until the slot's process is started.
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        for _ in range(workers):
            self._idle.put(None)
        # One thread more than workers: while a thread rebuilds a worker's answer, another hands
        # that worker its next call (see `_execute`).
        self._threads = ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix=name)
        self._live: set[_Worker] = set()
        self._live_lock = threading.Lock()
        self._closed = False

    async def run(self, fn: Callable[..., T], /, *args: Any, max_seconds: float | None = None) -> T:
        """Return ``fn(*args)`` computed in a worker process.

        ``fn`` must be importable by name (a module-level function) and, like ``args`` and its
        result, picklable. An exception ``fn`` raises is raised here.

        Arguments:
            fn: The function to run.
            args: Its positional arguments.
            max_seconds: Seconds the call may run once a worker has taken it; ``None``: no
                limit but the caller's own (cancelling the caller kills the worker too).

        Raises:
            StageTimeoutError: The call ran past ``max_seconds``; its worker was killed.
            WorkerLostError: The worker died during the call.
            TransientError: No worker could be started.
        """
        if self._closed:
            raise RuntimeError(f"CPU pool {self.name} is closed")
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def on_start() -> None:
            # RuntimeError: the loop is gone, and nobody waits for this call any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, started)

        call = _Call(fn, args, on_start)
        done = loop.run_in_executor(self._threads, self._execute, call)
        try:
            # Waiting for a free worker (and for one to start) is not part of the deadline.
            either: set[asyncio.Future[Any]] = {started, done}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            deadline = asyncio.timeout(max_seconds)
            try:
                async with deadline:
                    result = await done
            except TimeoutError as exc:
                if not deadline.expired():
                    raise  # fn itself raised TimeoutError
                name = getattr(fn, "__qualname__", repr(fn))
                raise StageTimeoutError(
                    f"{name} ran past {max_seconds:g}s in CPU pool {self.name}; "
                    "its worker was killed"
                ) from exc
        finally:
            # A no-op once the call has finished; otherwise (deadline, cancellation) it kills
            # the worker running it, or keeps it from starting.
            call.abandon()
            started.cancel()
        return cast(T, result)

    def pids(self) -> list[int]:
        """Return the process ids of the running workers (for tests and diagnostics)."""
        with self._live_lock:
            return sorted(w.pid for w in self._live)

    def fork_server_pid(self) -> int | None:
        """Return the process id of the pool's fork server while it runs (tests, diagnostics)."""
        return self._server.pid

    def start(self) -> None:
        """Start every worker now instead of on first use (blocking: call it off the loop)."""
        list(self._threads.map(lambda _: self._warm(), range(self.workers)))

    def shutdown(self) -> None:
        """Stop every worker and the pool's threads; calls in flight fail. Blocking, idempotent."""
        self._closed = True
        with self._live_lock:
            busy = list(self._live)
        for worker in busy:
            worker.kill()  # unblocks the threads waiting on these workers
        self._threads.shutdown(wait=True, cancel_futures=True)
        with self._live_lock:
            left, self._live = list(self._live), set()
        for worker in left:
            worker.discard()
        self._server.close()

    async def aclose(self) -> None:
        """Stop the workers without blocking the event loop (worker shutdown calls this)."""
        await asyncio.to_thread(self.shutdown)

    # --- pool threads -----------------------------------------------------------------------

    def _warm(self) -> None:
        worker = self._idle.get()
        try:
            worker = self._ready(worker)
        finally:
            self._idle.put(worker)

    def _execute(self, call: _Call) -> Any:
        # Blocks while every slot is taken: there is one thread more than slots.
        worker = self._idle.get()
        released = False
        try:
            if call.abandoned:
                return _ABANDONED
            worker = self._ready(worker)
            if not call.begin(worker):
                return _ABANDONED
            lost: BaseException | None = None
            answer = b""
            try:
                worker.conn.send((call.fn, call.args))  # pickling errors raise before a write
                answer = worker.conn.recv_bytes()
            except (EOFError, OSError) as exc:
                lost = exc
            finally:
                # Unbound in every case, or a late `abandon` could kill it serving another call.
                abandoned = call.end()
            if abandoned or lost is not None:
                # The worker died, or its caller left and it may have been killed since: replace.
                self._forget(worker)
                worker = None
                if abandoned:
                    return _ABANDONED
                raise WorkerLostError(
                    f"a worker of CPU pool {self.name} died running "
                    f"{getattr(call.fn, '__qualname__', call.fn)}: {lost!r}"
                ) from lost
            # The worker is free: it takes the next call while this thread rebuilds the answer
            # (milliseconds for a chunk of emails, time the worker would otherwise sit idle).
            self._idle.put(worker)
            released = True
            status, value = _unpickle(answer)
            if status == "error":
                raise value
            return value
        finally:
            if not released:
                self._idle.put(worker)

    def _ready(self, worker: _Worker | None) -> _Worker:
        if worker is not None and worker.is_alive():
            return worker
        if worker is not None:
            log.warning("CPU worker gone pool=%s pid=%s; starting another", self.name, worker.pid)
            self._forget(worker)
        if self._closed:
            raise RuntimeError(f"CPU pool {self.name} is closed")
        return self._spawn()

    def _spawn(self) -> _Worker:
        parent, child = socket.socketpair()
        try:
            process = self._server.fork(child)
        except TransientError:
            parent.close()
            raise
        conn = Connection(parent.detach())
        worker = _Worker(process, conn)
        with self._live_lock:
            self._live.add(worker)
        try:
            started = conn.poll(self._start_timeout) and conn.recv() is not None  # hello
        except (EOFError, OSError):
            started = False  # it died on the way: an import failed, or it was killed
        if not started:
            self._forget(worker)
            raise TransientError(
                f"a worker of CPU pool {self.name} did not start within "
                f"{self._start_timeout:g}s; see its output on stderr"
            )
        log.info("CPU worker started pool=%s pid=%s", self.name, process.pid)
        return worker

    def _forget(self, worker: _Worker) -> None:
        with self._live_lock:
            self._live.discard(worker)
        worker.discard()


def _unpickle(answer: bytes) -> Any:
    """Rebuild a worker's answer, the cyclic garbage collector paused meanwhile.

    An answer is thousands of new objects (a normalized email: a dozen models, their dicts and
    strings), enough to set off several collections while it is rebuilt, and a collection of
    the older generations walks the whole heap of this process (faust, aiokafka, the batch):
    with the collector running, unpickling took 2.5 times as long (about 100 us a message, most
    of what the parent spends on one). Nothing it builds is garbage while it runs.
    """
    with _gc_paused():
        return pickle.loads(answer)  # noqa: S301 - our own worker's answer, as Connection.recv does


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Re-enabled only by whoever disabled it: a thread that found it off leaves it alone.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Lifecycle:
    """A worker's state for its SIGTERM handler: leave now when idle, after the call when busy."""

    def __init__(self) -> None:
        self.busy = False
        self.stopping = False

    def on_term(self, signum: int, frame: object) -> None:
        # A stop of the agent's process group (the supervisor, Kubernetes) reaches the workers
        # too: a call in flight is finished and answered rather than failed as a lost worker.
        if not self.busy:
            raise SystemExit(0)
        self.stopping = True


def serve_connection(fd: int) -> None:
    """A worker process's entry point (a child of the fork server): serve the pool on ``fd``."""
    _serve(Connection(fd))


def _serve(conn: Connection) -> None:
    """A worker's main loop: run each call it is sent and send back its result or exception."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    life = _Lifecycle()
    signal.signal(signal.SIGTERM, life.on_term)
    conn.send(("ready", os.getpid()))
    while not life.stopping:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pipe
        life.busy = True
        try:
            answer: tuple[str, Any] = ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - raised again in the parent
            answer = ("error", exc)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            conn.send(("error", RuntimeError(f"result of {fn!r} cannot be pickled: {exc!r}")))
        life.busy = False
