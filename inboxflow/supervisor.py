"""Run consumer groups as processes: one faust worker per agent, one process per sink.

``inboxflow worker --agent normalize`` runs one group in this process (what a deployment scales
by replicas). ``inboxflow worker`` with no agent starts every group and both sinks as child
processes and stops them together, for single-machine deployments and the main job.

``inboxflow worker`` forks its children from itself rather than starting new interpreters: it
imports what they run and starts no thread, so each child shares those pages until it writes
to them, and nine processes that each imported faust, aiokafka, pydantic, psycopg and the stages
take half the memory. Callers that run threads (the main job, benches, tests) start new
interpreters, as forking beside a thread can leave a child holding a lock that thread held.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import faust
from mode import ServiceT

from inboxflow.health import agent_health
from inboxflow.logs import bind
from inboxflow.settings import Settings
from inboxflow.wiring import AGENTS, POSTGRES_AGENTS, build_worker, catalogue_from, kafka_from
from schemas.errors import TransientError
from streams.runtime.fork_server import ForkedProcess
from streams.runtime.heap import settle_after_start
from streams.runtime.liveness import StallTracker, export_stalls
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

SINKS = ("jobs", "contacts")
SOURCES = ("scheduler",)  # processes that put events onto topics from outside the agents
PUSH_SOURCE = "push-receiver"  # started too when a Pub/Sub topic is configured


# What the children import beyond this module, imported here before they are forked so that
# they share it: the stages, the sinks, the scheduler, Postgres, Google's client and the parts
# of faust a worker loads as it starts. A module missing here costs memory, never correctness.
FORK_PRELOAD = (
    "faust.assignor.leader_assignor",
    "faust.tables.sets",
    "faust.fixups.base",
    "mode.worker",
    "psycopg",
    "psycopg_pool",
    "db.accounts",
    "db.agent_state",
    "db.pool",
    "streams.stages.sync",
    "streams.stages.fetch",
    "streams.stages.gmail.watch",
    "streams.stages.normalize",
    "streams.stages.extract",
    "streams.stages.embed",
    "streams.stages.embedding_model",
    "streams.stages.insight",
    "streams.sources.scheduler",
    "sinks.contacts",
    "sinks.job_state",
    "sinks.mailbox_changes",
    "inboxflow.cli.sink",
    "inboxflow.scheduling",
)

START_WAIT_GRACE = 10.0  # seconds of waiting for Kafka at start before saying so
START_WAIT_REMINDER = 60.0
START_WAIT_MAX_DELAY = 5.0


def check_kafka(settings: Settings) -> None:
    """Before starting a worker: authenticate to Kafka once, waiting while it is unreachable.

    faust (like the sinks) would log aiokafka's refusal and exit 1 without saying which setting
    is wrong; one connection of our own first turns bad credentials or TLS files into one clear
    error. A cluster that cannot be reached yet (a broker restarting while workers start) is
    waited for here instead: faust and the sinks exit at once when they cannot bootstrap, and
    an orchestrator would restart them in a loop, each time with an ERROR line.

    Raises:
        KafkaAuthError: the cluster refused the credentials or failed TLS verification.
        KafkaConfigError: the INBOXFLOW_KAFKA_* settings contradict each other.
    """
    asyncio.run(await_kafka(kafka_from(settings, client_id="inboxflow-preflight")))


async def await_kafka(kafka: KafkaClients, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once a bootstrap server accepts a connection (and the credentials, if any).

    Quiet for ``START_WAIT_GRACE`` seconds, then one WARNING a minute while it waits, and one
    when Kafka answers after an announced wait.
    """
    started = clock()
    announced: float | None = None
    delay = 0.25
    while True:
        try:
            await kafka.check()
        except TransientError as exc:
            waited = clock() - started
            if waited >= START_WAIT_GRACE and (
                announced is None or clock() - announced >= START_WAIT_REMINDER
            ):
                log.warning("waiting for Kafka to start (%.0fs so far): %s", waited, exc)
                announced = clock()
            await asyncio.sleep(delay)
            delay = min(delay * 2, START_WAIT_MAX_DELAY)
        else:
            if announced is not None:
                log.warning("Kafka reachable after %.0fs; starting", clock() - started)
            return


def run_agent(agent: str, settings: Settings, *, loglevel: str = "WARNING") -> None:
    """Run one consumer group's faust worker in this process until SIGTERM or Ctrl-C.

    Call ``check_kafka`` first: faust itself says nothing useful about refused credentials.
    """
    # Logging is the process's own (inboxflow.logs, configured by the CLI); the worker must not
    # replace it: mode's Worker would clear the root handlers for colorlog ones
    # (override_logging), and faust's start-up spinner writes cursor-control codes (ESC[?25l,
    # backspaces) even when its output is a file.
    group_id = catalogue_from(settings).group(agent).group_id
    bind(agent=agent, group=group_id)
    stalls = StallTracker(group_id, settings.stall_bound())
    export_stalls(stalls)
    app = build_worker(agent, settings, stalls=stalls)
    # /metrics, /healthz and /readyz on the worker's own event loop (inboxflow.health).
    services: list[ServiceT] = []
    if settings.metrics_port:
        services.append(agent_health(app, settings, stalls, postgres=agent in POSTGRES_AGENTS))
    worker = faust.Worker(
        app,
        *services,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None  # faust then logs "Ready" instead of drawing on stdout
    settle_after_start()  # this process's long-lived objects are made: keep them out of GC
    worker.execute_from_commandline()


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "inboxflow", *args]


class ForkedChild:
    """A child forked from this process: the part of ``subprocess.Popen`` a group uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # The pid stays ours until we reap it; its pidfd lets `wait` sleep until the child exits.
        self._exits = ForkedProcess(pid, os.pidfd_open(pid))

    def poll(self) -> int | None:
        """Return the exit code once the child has exited (reaping it), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._exits.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Return the exit code; raises ``subprocess.TimeoutExpired`` after ``timeout`` s."""
        if self.returncode is None and not self._exits.wait(timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        code = self.poll()
        if code is None:  # cannot happen: the pidfd said the child exited
            raise ChildProcessError(f"pid {self.pid} exited but was not reaped")
        return code


def fork_child(
    name: str, args: Sequence[str], env: Mapping[str, str], out: int | None
) -> ForkedChild:
    """Run ``inboxflow ARGS`` with ``env`` in a child forked from this process.

    The child has a session of its own (as ``start_new_session``), stdin from /dev/null, its
    output on ``out`` if given, and ``name`` as its process name (``ps -o comm``, ``top``).
    It shares every page this process holds until it writes to one. Call only while this
    process is single-threaded: a child forked beside other threads may inherit a lock that
    one of them held.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child would write what this process had buffered, again
    # Out of the collector's walks, here and in the child: a collection in the child would
    # write to the header of every object, and so copy every page it shares with this process.
    gc.collect()
    gc.freeze()
    pid = os.fork()
    if pid:
        return ForkedChild(pid)
    status = 1
    try:
        status = _run_forked(name, args, env, out)
    finally:
        os._exit(status)  # never back into the caller's stack, nor its atexit handlers


def _run_forked(name: str, args: Sequence[str], env: Mapping[str, str], out: int | None) -> int:
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if out is not None:
        os.dup2(out, 1)
        os.dup2(out, 2)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])  # the kernel keeps 15 bytes
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["inboxflow", *args]
    from inboxflow.cli import cli

    try:
        cli.main(args=list(args), prog_name="inboxflow")
        status = 0
    except SystemExit as exit_:
        code = exit_.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
    # What the interpreter runs on its way out (logging flushes its handlers, and so on).
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return status


@dataclass
class ProcessGroup:
    """Child processes started together and stopped together.

    ``fork``: while this process is single-threaded, children running ``inboxflow`` commands
    are forked from it (``fork_child``) and share what it imported; otherwise each is a new
    interpreter. Either way each child has a session of its own.
    """

    processes: dict[str, subprocess.Popen[bytes] | ForkedChild] = field(default_factory=dict)
    launches: dict[str, tuple[list[str], dict[str, str], Path | None]] = field(default_factory=dict)
    fork: bool = False

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: Path | None
    ) -> None:
        """Start a child in its own session, its output in ``log_dir/<name>.log`` if given."""
        self.launches[name] = (list(argv), dict(env), log_dir)
        out = (log_dir / f"{name}.log").open("ab") if log_dir else None
        try:
            self.processes[name] = self._launch(name, argv, env, out)
        finally:
            if out:
                out.close()
        how = "forked" if isinstance(self.processes[name], ForkedChild) else "new interpreter"
        log.info("started %s pid=%s (%s)", name, self.processes[name].pid, how)

    def _launch(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], out: BinaryIO | None
    ) -> subprocess.Popen[bytes] | ForkedChild:
        prefix = _command()
        ours = list(argv[: len(prefix)]) == prefix
        if self.fork and ours and threading.active_count() == 1:
            return fork_child(name, argv[len(prefix) :], env, out.fileno() if out else None)
        if self.fork:
            log.info("%s starts as a new interpreter: threads are running here", name)
        return subprocess.Popen(  # noqa: S603 - our own command line
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        """SIGKILL a child and its process group (no cleanup runs: a crash)."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def restart(self, name: str) -> None:
        """Start a child again with the command line and environment it was started with."""
        argv, env, log_dir = self.launches[name]
        self.start(name, argv, env=env, log_dir=log_dir)

    def exited(self) -> dict[str, int]:
        """Return children that have exited, with their codes."""
        return {
            name: code
            for name, process in self.processes.items()
            if (code := process.poll()) is not None
        }

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child, then SIGKILL those that outlive ``timeout``."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in %.0fs; killing it", name, timeout)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def start_all(
    env: Mapping[str, str],
    *,
    agents: Sequence[str] = AGENTS,
    sinks: Sequence[str] = SINKS,
    sources: Sequence[str] | None = None,
    log_dir: Path | None = None,
    fork: bool = False,
) -> ProcessGroup:
    """Start every agent, sink and source as a child process with ``env``.

    ``sources`` default: the scheduler, and the push receiver when ``env`` configures push.
    ``fork``: import what the children run (``FORK_PRELOAD``) and fork them from this process
    (``ProcessGroup``), for a caller that runs no threads: ``inboxflow worker``. Nine children
    that each import faust, aiokafka, pydantic, psycopg and the stages held 560 MiB PSS idle as
    new interpreters, 290 MiB forked.
    """
    if sources is None:
        push = bool(env.get("INBOXFLOW_GMAIL_PUBSUB_TOPIC"))
        sources = (*SOURCES, PUSH_SOURCE) if push else SOURCES
    if fork:
        for module in FORK_PRELOAD:
            importlib.import_module(module)
    group = ProcessGroup(fork=fork)
    base_port = int(env.get("INBOXFLOW_METRICS_PORT", "0") or 0)
    names = [(f"agent-{a}", _command("worker", "--agent", a)) for a in agents]
    names += [(f"sink-{s}", _command("sink", s)) for s in sinks]
    names += [(source, _command(source)) for source in sources]
    for index, (name, argv) in enumerate(names):
        # Each process serves its own metrics: the base port plus its index.
        port = str(base_port + index) if base_port else "0"
        group.start(name, argv, env={**env, "INBOXFLOW_METRICS_PORT": port}, log_dir=log_dir)
    return group
