"""One fault campaign: a throwaway stack, a mailbox workload, seeded faults, the invariant check.

The campaign always starts its own Kafka broker and Postgres cluster (it stops, kills and
pauses them) and its own Gmail and embedding API emulators (it makes them slow and failing),
so it never touches a configured deployment. Every agent, sink and the scheduler run as
processes, as ``inboxflow worker`` starts them. The workload:

- ``users`` mailboxes of generated mail, synced in full at the start;
- new mail delivered during the fault window, each followed by an incremental sync request;
- injected poison, which must end in dead-letter topics and nowhere else: one MIME bomb per
  mailbox (normalize refuses it, permanent) and undecodable records on normalize's input.

After the window every service is up again and the emulators are healthy; one last
incremental sync per user stands in for the scheduler's periodic one. The campaign waits until
every job row is final and every group has drained (restarting workers that exited, as an
orchestrator would), then runs the checker (``inboxflow.chaos.invariants``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from db.migrate import apply_migrations
from devstack.embedding_emulator import EmbeddingEmulator, EmulatorFaults
from devstack.gmail_emulator.faults import FaultConfig
from devstack.gmail_emulator.generator import GeneratedMessage, generate_messages
from devstack.gmail_emulator.mailbox import ListQuery
from devstack.gmail_emulator.server import GmailEmulator
from devstack.stack import Stack, start_stack
from inboxflow.chaos.injector import Injector, Targets
from inboxflow.chaos.invariants import Checker, Expectations, Findings, install_write_audit
from inboxflow.chaos.plan import FaultKind, PlannedFault, plan_faults
from inboxflow.scheduling import register_accounts
from inboxflow.settings import Settings
from inboxflow.supervisor import SINKS, SOURCES, start_all
from inboxflow.wiring import AGENTS, catalogue_from, kafka_from, request_syncs, serde_from
from topics.admin import ensure_topics

log = logging.getLogger(__name__)

BOMB_DEPTH = 60  # past the normalizer's nesting limit (50)
SESSION_TIMEOUT = 6.0  # seconds: rebalances after a kill or a pause settle quickly
# Short ladders that still outlast the longest injected trouble (about 30 s of failing APIs or a
# broker restart): a record dead-lettered because a ladder ran out is a violation.
RETRY_LADDER = [1, 2, 4, 8, 15, 30, 60, 90]
SCALABLE = ("normalize", "extract", "embed")


@dataclass(frozen=True)
class CampaignConfig:
    """Size and shape of one campaign."""

    seed: int = 1
    users: int = 3
    messages: int = 40  # per mailbox at the start
    new_mail: int = 30  # messages delivered during the fault window, in all
    faults: int = 24
    window: float = 90.0  # seconds over which faults start
    settle_timeout: float = 600.0
    kinds: frozenset[FaultKind] = frozenset(FaultKind)
    partitions: int = 3
    keep_logs: bool = False


@dataclass
class CampaignReport:
    """What ``inboxflow chaos --json`` prints."""

    seed: int
    plan: list[dict[str, Any]]
    faults_injected: dict[str, int]
    worker_exits: dict[str, int]
    messages: int
    bombs: int
    poison: int
    new_mail: int
    settled: bool
    settle_seconds: float
    elapsed_seconds: float
    findings: dict[str, Any]
    gmail_units: int
    logs: str | None
    timeline: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        """The invariants that did not hold (none on a good run)."""
        return list(self.findings["violations"])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def bomb(user: str, index: int) -> bytes:
    """A message whose multiparts nest ``BOMB_DEPTH`` levels: refused, never parsed."""
    head = (
        f"From: bomb{index}@chaos.test\r\nTo: {user}\r\nSubject: nested {index}\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    opening = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(BOMB_DEPTH)
    )
    closing = b"".join(f"\r\n--b{i}--".encode() for i in reversed(range(BOMB_DEPTH)))
    return head + opening + b"Content-Type: text/plain\r\n\r\ndeep" + closing


Inspect = Callable[[Checker, str], Awaitable[None]]


def run_campaign(
    config: CampaignConfig,
    cache_dir: Path,
    *,
    echo: Callable[[str], None] | None = None,
    inspect: Inspect | None = None,
) -> CampaignReport:
    """Run one campaign end to end on a stack of its own and return its report.

    Args:
        config: size and seed.
        cache_dir: where the Kafka jars are cached.
        echo: called with a line per fault as it is injected (progress output).
        inspect: called with the checker and the database URL after the workers stopped and
            before the stack goes (tests use it to prove the checker notices tampering).
    """
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so the workers are stopped (the broker and Postgres die with
    # this process by themselves).
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _run_on_own_stack(config, cache_dir, started, echo, inspect)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_on_own_stack(
    config: CampaignConfig,
    cache_dir: Path,
    started: float,
    echo: Callable[[str], None] | None,
    inspect: Inspect | None,
) -> CampaignReport:
    stack = start_stack(
        kafka_bootstrap=None,
        database_url=None,
        mode="local",
        cache_dir=cache_dir,
        die_with_parent=True,
    )
    try:
        apply_migrations(stack.database_url)
        install_write_audit(stack.database_url)
        with (
            EmbeddingEmulator(dimension=32).run_in_thread() as embeddings,
            _gmail_emulator() as gmail,
        ):
            campaign = _Campaign(config, stack, gmail, embeddings, echo=echo)
            campaign.inspect = inspect
            return asyncio.run(campaign.run(started))
    finally:
        stack.stop()


@contextmanager
def _gmail_emulator() -> Iterator[GmailEmulator]:
    gmail = GmailEmulator().start_in_thread()
    try:
        yield gmail
    finally:
        gmail.stop_thread()


class _Campaign:
    def __init__(
        self,
        config: CampaignConfig,
        stack: Stack,
        gmail: GmailEmulator,
        embeddings: EmbeddingEmulator,
        *,
        echo: Callable[[str], None] | None,
    ) -> None:
        self.config = config
        self.stack = stack
        self.gmail = gmail
        self.embeddings = embeddings
        self.echo = echo
        self.rng = random.Random(config.seed)  # noqa: S311 - a reproducible workload
        self.namespace = f"chaos-{config.seed}-{uuid.uuid4().hex[:6]}"
        self.users = [f"user{i}-{self.namespace}@chaos.test" for i in range(config.users)]
        self.bombs: dict[str, set[str]] = {}
        self.poison: list[bytes] = []
        self.delivered = 0
        self.inspect: Inspect | None = None
        self.settings = Settings(
            kafka_bootstrap_servers=stack.kafka_bootstrap,
            kafka_security_protocol="PLAINTEXT",
            database_url=stack.database_url,
            topic_namespace=self.namespace,
            topic_partitions=config.partitions,
            gmail_api_root=gmail.url,
            retry_ladders=self._ladders(),
        )
        self.catalogue = catalogue_from(self.settings)
        self.kafka = kafka_from(self.settings, client_id="inboxflow-chaos")

    def _ladders(self) -> dict[str, list[int]]:
        agents = [*AGENTS, *(f"sink-{sink}" for sink in SINKS)]
        return {agent: list(RETRY_LADDER) for agent in agents}

    def worker_env(self) -> dict[str, str]:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("INBOXFLOW_") or k == "INBOXFLOW_STATE_DIR"
        }
        return {
            **inherited,
            **self.stack.client_env(),
            "INBOXFLOW_GMAIL_API_ROOT": self.gmail.url,
            "INBOXFLOW_TOPIC_NAMESPACE": self.namespace,
            "INBOXFLOW_TOPIC_PARTITIONS": str(self.config.partitions),
            "INBOXFLOW_SESSION_TIMEOUT_SECONDS": str(SESSION_TIMEOUT),
            "INBOXFLOW_BATCH_SIZE": "10",
            "INBOXFLOW_INSIGHT_INTERVAL_SECONDS": "0.5",
            "INBOXFLOW_RETRY_LADDERS": json.dumps(self._ladders()),
            "INBOXFLOW_EMBEDDING_PROVIDER": "openai",
            "INBOXFLOW_EMBEDDING_API_URL": self.embeddings.url,
            "INBOXFLOW_EMBEDDING_MODEL": "chaos-embed",
            "INBOXFLOW_EMBEDDING_DIMENSION": str(self.embeddings.dimension),
            "INBOXFLOW_METRICS_PORT": "0",
        }

    def plan(self) -> list[PlannedFault]:
        processes = tuple(
            [f"agent-{agent}" for agent in AGENTS]
            + [f"sink-{sink}" for sink in SINKS]
            + list(SOURCES)
        )
        return plan_faults(
            seed=self.config.seed,
            window=self.config.window,
            count=self.config.faults,
            kinds=self.config.kinds,
            processes=processes,
            scalable=SCALABLE,
            session_timeout=SESSION_TIMEOUT,
        )

    async def run(self, started: float) -> CampaignReport:
        plan = self.plan()
        self._fill_mailboxes()
        await ensure_topics(self.kafka, self.catalogue.topics)
        logs = Path(tempfile.mkdtemp(prefix=f"inboxflow-{self.namespace}-"))
        env = self.worker_env()
        workers = start_all(env, log_dir=logs)
        broker, postgres = self.stack.kafka, self.stack.postgres
        if broker is None or postgres is None:
            raise RuntimeError("the campaign's stack has no broker or database of its own")
        targets = Targets(
            broker,
            postgres,
            workers,
            self.gmail,
            self.embeddings,
            env,
            logs,
        )
        injector = Injector(targets, echo=self.echo)
        try:
            await register_accounts(self.settings, self.users)
            await request_syncs(self.settings, self.users, full=True)
            await asyncio.gather(injector.run(plan), self._deliver_during(self.config.window))
            await self._after_faults()
            settle_started = time.monotonic()
            expected = self._expectations()
            checker = self._checker(expected)
            settled = await self._settle(checker, injector)
            settle_seconds = time.monotonic() - settle_started
            findings = await checker.check()
        finally:
            workers.stop()
        if self.inspect is not None:
            await self.inspect(checker, self.stack.database_url)
        kept = self.config.keep_logs or bool(findings.violations or injector.log.exits)
        if not kept:
            shutil.rmtree(logs, ignore_errors=True)
        return self._report(
            plan, injector, expected, findings, settled, settle_seconds, started, logs, kept
        )

    def _fill_mailboxes(self) -> None:
        for index, user in enumerate(self.users):
            self.gmail.add_user(
                user, messages=self.config.messages, seed=self.config.seed * 97 + index
            )
            self.bombs[user] = {self.gmail.add_message(user, bomb(user, index))}

    async def _deliver_during(self, window: float) -> None:
        """Deliver new mail at random times in the window, each followed by a sync request;
        produce the poison records at a random time too."""
        fresh = generate_messages(
            self.config.seed * 131 + 7, self.config.new_mail, "new@chaos.test"
        )
        events: list[tuple[float, GeneratedMessage | None]] = [
            (self.rng.uniform(0, window), message) for message in fresh
        ]
        events.append((self.rng.uniform(0, window), None))  # None: the poison
        events.sort(key=lambda event: event[0])
        started = time.monotonic()
        for at, message in events:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
            if message is None:
                await self._produce_poison()
                continue
            user = self.rng.choice(self.users)
            self.gmail.add_message(user, message.raw, message.label_ids)
            self.delivered += 1
            await self._request(user)

    async def _request(self, user: str) -> None:
        """Ask for an incremental sync; while the broker is down, keep asking until it takes it."""
        deadline = time.monotonic() + self.config.settle_timeout
        while True:
            try:
                await request_syncs(self.settings, [user], full=False)
            except Exception as exc:  # the broker may be down by design
                if time.monotonic() > deadline:
                    raise
                log.info("chaos: sync request for %s waits for Kafka: %s", user, exc)
                await asyncio.sleep(1.0)
            else:
                return

    async def _produce_poison(self) -> None:
        value = f"\x00chaos-poison-{self.config.seed}-{len(self.poison)}".encode()
        self.poison.append(value)
        topic = self.catalogue.message_fetched.name
        deadline = time.monotonic() + self.config.settle_timeout
        while True:
            try:
                async with self.kafka.started(self.kafka.producer()) as producer:
                    await producer.send_and_wait(topic, value, key=self.users[0].encode())
            except Exception:  # the broker may be down by design
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
            else:
                return

    async def _after_faults(self) -> None:
        """Healthy emulators, then one incremental sync per user (the scheduler's safety net)."""
        self.gmail.set_faults(FaultConfig())
        self.embeddings.faults = EmulatorFaults()
        for user in self.users:
            await self._request(user)

    def _expectations(self) -> Expectations:
        messages: dict[str, set[str]] = {}
        raw: dict[tuple[str, str], bytes] = {}
        with self.gmail.state.lock:
            for user in self.users:
                listed = self.gmail.mailbox(user).list(ListQuery())
                messages[user] = {m.id for m in listed}
                raw.update({(user, m.id): m.raw for m in listed})
        return Expectations(messages, raw, self.bombs, tuple(self.poison))

    def _checker(self, expected: Expectations) -> Checker:
        return Checker(
            self.stack.database_url,
            self.kafka,
            self.catalogue,
            serde_from(self.settings),
            expected,
        )

    async def _settle(self, checker: Checker, injector: Injector) -> bool:
        """Wait until every job is final and every group drained; False at the deadline."""
        deadline = time.monotonic() + self.config.settle_timeout
        while time.monotonic() < deadline:
            injector.restart_exited()
            if await asyncio.to_thread(checker.settled) and await checker.drained():
                return True
            await injector.watch_exits(2.0)
        return False

    def _report(
        self,
        plan: list[PlannedFault],
        injector: Injector,
        expected: Expectations,
        findings: Findings,
        settled: bool,
        settle_seconds: float,
        started: float,
        logs: Path,
        kept: bool,
    ) -> CampaignReport:
        if not settled:
            findings.violations.insert(0, "settled: not within the settle timeout")
        return CampaignReport(
            seed=self.config.seed,
            plan=[fault.to_dict() for fault in plan],
            faults_injected=dict(injector.log.injected),
            worker_exits=dict(injector.log.exits),
            messages=sum(len(ids) for ids in expected.messages.values()),
            bombs=sum(len(ids) for ids in self.bombs.values()),
            poison=len(self.poison),
            new_mail=self.delivered,
            settled=settled,
            settle_seconds=round(settle_seconds, 1),
            elapsed_seconds=round(time.monotonic() - started, 1),
            findings=findings.to_dict(),
            gmail_units=sum(self.gmail.accounting.units_by_user.values()),
            logs=str(logs) if kept else None,
            timeline=list(injector.log.lines),
        )
