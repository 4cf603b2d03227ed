"""Carry out planned faults on the campaign's own processes, broker, database and emulators.

Faults run as overlapping asyncio tasks, each started at its planned offset; the blocking parts
(a JVM or postmaster starting again) run in threads. Outages of the broker and of Postgres hold
one lock, so one ends (the service is back and accepting) before the next begins, whatever the
plan's estimate of a restart was.

Between faults the injector also plays the orchestrator a deployment has (systemd, Kubernetes):
a worker that exits on its own is counted and started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from devstack.embedding_emulator import EmbeddingEmulator, EmulatorFaults
from devstack.gmail_emulator.faults import FaultConfig
from devstack.gmail_emulator.server import GmailEmulator
from devstack.kafka import KafkaBroker
from devstack.postgres import PostgresServer
from inboxflow.chaos.plan import EXCLUSIVE, FaultKind, PlannedFault
from inboxflow.supervisor import ProcessGroup

log = logging.getLogger(__name__)

RESTART_TIMEOUT = 180.0  # a JVM start on a loaded 2-core machine
SCALE_IN_GRACE = 30.0

GMAIL_SLOW = FaultConfig(latency_ms=600.0, latency_sigma=0.6)
GMAIL_FAILING = FaultConfig(rate_429=0.3, rate_500=0.1, rate_503=0.05, throttle_seconds=2.0)
EMBED_SLOW = EmulatorFaults(latency=1.5)
EMBED_FAILING = EmulatorFaults(rate_limit_ratio=0.5, retry_after=1.0)


@dataclass
class Targets:
    """Everything a fault may act on."""

    broker: KafkaBroker
    postgres: PostgresServer
    workers: ProcessGroup
    gmail: GmailEmulator
    embeddings: EmbeddingEmulator
    worker_env: dict[str, str]
    log_dir: Path


@dataclass
class InjectionLog:
    """What was injected and what the orchestrator had to do."""

    injected: Counter[str] = field(default_factory=Counter)
    exits: Counter[str] = field(default_factory=Counter)  # workers that exited on their own
    lines: list[str] = field(default_factory=list)


class Injector:
    """Runs a plan against ``targets``."""

    def __init__(self, targets: Targets, *, echo: Callable[[str], None] | None = None) -> None:
        self.targets = targets
        self.log = InjectionLog()
        self._echo = echo
        self._outage = asyncio.Lock()
        self._gmail_token = 0
        self._embed_token = 0
        self._extra = 0
        self._expected_down: set[str] = set()  # killed on purpose, not yet restarted
        self._started = time.monotonic()

    async def run(self, plan: list[PlannedFault]) -> None:
        """Start each fault at its offset; return when every fault has ended."""
        self._started = time.monotonic()
        tasks = []
        for fault in plan:
            delay = fault.at - self._elapsed()
            if delay > 0:
                await self.watch_exits(delay)
            tasks.append(asyncio.create_task(self._inject(fault)))
        await asyncio.gather(*tasks)

    async def watch_exits(self, seconds: float) -> None:
        """For ``seconds``, restart workers that exited without being told to."""
        deadline = time.monotonic() + seconds
        while True:
            self.restart_exited()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(0.5, left))

    def restart_exited(self) -> None:
        """Start again any worker that exited on its own (what an orchestrator does)."""
        for name, code in self.targets.workers.exited().items():
            if name in self._expected_down:
                continue
            self.log.exits[name] += 1
            self._note(f"{name} exited with {code} ({self._last_error(name)}); restarting it")
            self.targets.workers.restart(name)

    def _last_error(self, name: str) -> str:
        """The last ERROR or CRITICAL line of a worker's log, shortened, for the timeline."""
        path = self.targets.log_dir / f"{name}.log"
        try:
            with path.open("rb") as log_file:
                log_file.seek(max(0, path.stat().st_size - 65536))
                lines = log_file.read().decode(errors="replace").splitlines()
        except OSError:
            return "no log"
        for line in reversed(lines):
            if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line:
                return line[:300]
        return "no error logged"

    async def _inject(self, fault: PlannedFault) -> None:
        if fault.kind in EXCLUSIVE:
            async with self._outage:  # the previous outage has ended: the service is back
                await self._apply(fault, late=True)
        else:
            await self._apply(fault)

    async def _apply(self, fault: PlannedFault, *, late: bool = False) -> None:
        self._note(fault.describe() + (f" (began t+{self._elapsed():.1f}s)" if late else ""))
        self.log.injected[fault.kind.value] += 1
        match fault.kind:
            case FaultKind.KILL_WORKER:
                await self._kill_worker(fault)
            case FaultKind.BROKER_STOP:
                await self._broker_down(signal.SIGTERM, fault.duration)
            case FaultKind.BROKER_KILL:
                await self._broker_down(signal.SIGKILL, fault.duration)
            case FaultKind.BROKER_PAUSE:
                await self._broker_paused(fault.duration)
            case FaultKind.POSTGRES_RESTART:
                await self._postgres_down(fault.duration)
            case FaultKind.GMAIL_SLOW | FaultKind.GMAIL_FAILING:
                slow = fault.kind is FaultKind.GMAIL_SLOW
                await self._gmail_trouble(GMAIL_SLOW if slow else GMAIL_FAILING, fault)
            case FaultKind.EMBED_SLOW | FaultKind.EMBED_FAILING:
                slow = fault.kind is FaultKind.EMBED_SLOW
                await self._embed_trouble(EMBED_SLOW if slow else EMBED_FAILING, fault.duration)
            case FaultKind.SCALE_OUT:
                self._scale_out(fault.target or "extract")
            case FaultKind.SCALE_IN:
                await asyncio.to_thread(self._scale_in, fault.target or "extract")

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    async def _kill_worker(self, fault: PlannedFault) -> None:
        name = fault.target or ""
        workers = self.targets.workers
        if name not in workers.processes or workers.processes[name].poll() is not None:
            return  # already down (an earlier kill not yet restarted)
        self._expected_down.add(name)
        try:
            workers.kill(name)
            await asyncio.sleep(fault.duration)
            workers.restart(name)
        finally:
            self._expected_down.discard(name)

    async def _broker_down(self, sig: signal.Signals, seconds: float) -> None:
        broker = self.targets.broker
        await asyncio.to_thread(broker.halt, sig)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(broker.start, RESTART_TIMEOUT)
        self._note(f"broker back after {sig.name}")

    async def _broker_paused(self, seconds: float) -> None:
        pid = self.targets.broker.pid
        os.killpg(pid, signal.SIGSTOP)  # the JVM leads its own process group
        try:
            await asyncio.sleep(seconds)
        finally:
            os.killpg(pid, signal.SIGCONT)

    async def _postgres_down(self, seconds: float) -> None:
        postgres = self.targets.postgres
        await asyncio.to_thread(postgres.halt)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(postgres.start)
        self._note("postgres back")

    async def _gmail_trouble(self, config: FaultConfig, fault: PlannedFault) -> None:
        self._gmail_token += 1
        token = self._gmail_token
        # A seed per fault: the draws differ between faults, and repeat between runs.
        self.targets.gmail.set_faults(replace(config, seed=int(fault.at * 10)))
        await asyncio.sleep(fault.duration)
        if token == self._gmail_token:  # a later fault owns the knobs now
            self.targets.gmail.set_faults(FaultConfig())

    async def _embed_trouble(self, faults: EmulatorFaults, seconds: float) -> None:
        self._embed_token += 1
        token = self._embed_token
        self.targets.embeddings.faults = replace(faults)
        await asyncio.sleep(seconds)
        if token == self._embed_token:
            self.targets.embeddings.faults = EmulatorFaults()

    def _scale_out(self, agent: str) -> None:
        self._extra += 1
        name = f"agent-{agent}-extra-{self._extra}"
        argv = [sys.executable, "-m", "inboxflow", "worker", "--agent", agent]
        env = {**self.targets.worker_env, "INBOXFLOW_METRICS_PORT": "0"}
        self.targets.workers.start(name, argv, env=env, log_dir=self.targets.log_dir)

    def _scale_in(self, agent: str) -> None:
        """Stop the newest extra process of ``agent``'s group gracefully, as a scale-down does."""
        workers = self.targets.workers
        extras = [name for name in workers.processes if name.startswith(f"agent-{agent}-extra-")]
        if not extras:
            return
        name = extras[-1]
        self._expected_down.add(name)
        process = workers.processes.pop(name)
        workers.launches.pop(name, None)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=SCALE_IN_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def _note(self, line: str) -> None:
        self.log.lines.append(line)
        log.info("chaos: %s", line)
        if self._echo is not None:
            self._echo(line)
