"""Run consumer groups as processes: one faust worker per agent, one process per sink.

``inboxflow worker --agent normalize`` runs one group in this process (what a deployment scales
by replicas). ``inboxflow worker`` with no agent starts every group and both sinks as child
processes and stops them together, for single-machine deployments and the main job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faust
from mode import ServiceT

from inboxflow.health import agent_health
from inboxflow.logs import bind
from inboxflow.settings import Settings
from inboxflow.wiring import AGENTS, POSTGRES_AGENTS, build_worker, catalogue_from, kafka_from
from schemas.errors import TransientError
from streams.runtime.heap import settle_after_start
from streams.runtime.liveness import StallTracker, export_stalls
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

SINKS = ("jobs", "contacts")
SOURCES = ("scheduler",)  # processes that put events onto topics from outside the agents
PUSH_SOURCE = "push-receiver"  # started too when a Pub/Sub topic is configured


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


@dataclass
class ProcessGroup:
    """Child processes started together and stopped together."""

    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    launches: dict[str, tuple[list[str], dict[str, str], Path | None]] = field(default_factory=dict)

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: Path | None
    ) -> None:
        """Start a child in its own session, its output in ``log_dir/<name>.log`` if given."""
        self.launches[name] = (list(argv), dict(env), log_dir)
        out = (log_dir / f"{name}.log").open("ab") if log_dir else None
        self.processes[name] = subprocess.Popen(  # noqa: S603 - our own command line
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        if out:
            out.close()

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
) -> ProcessGroup:
    """Start every agent, sink and source as a child process with ``env``.

    ``sources`` default: the scheduler, and the push receiver when ``env`` configures push.
    """
    if sources is None:
        push = bool(env.get("INBOXFLOW_GMAIL_PUBSUB_TOPIC"))
        sources = (*SOURCES, PUSH_SOURCE) if push else SOURCES
    group = ProcessGroup()
    base_port = int(env.get("INBOXFLOW_METRICS_PORT", "0") or 0)
    names = [(f"agent-{a}", _command("worker", "--agent", a)) for a in agents]
    names += [(f"sink-{s}", _command("sink", s)) for s in sinks]
    names += [(source, _command(source)) for source in sources]
    for index, (name, argv) in enumerate(names):
        # Each process serves its own metrics: the base port plus its index.
        port = str(base_port + index) if base_port else "0"
        group.start(name, argv, env={**env, "INBOXFLOW_METRICS_PORT": port}, log_dir=log_dir)
    return group
