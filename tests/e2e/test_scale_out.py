"""Scale-out of one consumer group: processes join and leave while records flow.

The extract group reads a 6-partition topic fed steadily with EmailNormalized events of many
users, each user's events numbered in the order they are produced. One worker process starts,
a second and a third join, then the first is killed with SIGKILL (its partitions move only after
the session timeout). Every input must end with its job row ``done``, every input must have its
ContactExtracted on the output topic, and each user's outputs must appear in input order on
their partition: a replay after a rebalance may repeat a prefix (at-least-once), but a later
message never comes out before an earlier one's first output. Duplicates are counted and printed.

Speed is a benchmark matter: the feed is paced, so the rates printed per phase are what the
group kept up with, not its capacity.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from devstack.stack import Stack
from inboxflow.settings import Settings
from inboxflow.supervisor import ProcessGroup
from inboxflow.wiring import catalogue_from, kafka_from, serde_from
from ops.offsets import group_state
from schemas.models import Address, ContactExtracted, EmailNormalized
from schemas.serde import Serde
from tests.helpers import wait_until
from tests.pipeline_support import read_topic, stack_settings
from topics.admin import ensure_topics
from topics.kafka import KafkaClients

pytestmark = pytest.mark.chaos

PARTITIONS = 6
USERS = [f"user{index:02d}@scale.test" for index in range(30)]
ROUND_PAUSE = 0.4  # seconds between rounds of one message per user: ~75 records/s
MAX_ROUNDS = 400  # a bound on the feed should a step never come
STEP_TIMEOUT = 90.0
WORKER = [sys.executable, "-m", "inboxflow", "worker", "--agent", "extract"]
JOBS_SINK = [sys.executable, "-m", "inboxflow", "sink", "jobs"]
DONE_JOBS = "SELECT count(*) FROM jobs WHERE kind = 'extract_contacts' AND status = 'done'"
JOBS_BY_STATUS = "SELECT status, count(*) FROM jobs WHERE kind = 'extract_contacts' GROUP BY 1"


def message_id(user: str, seq: int) -> str:
    """Return the message id of a user's ``seq``-th message (the sequence is readable in it)."""
    return f"{user}#{seq:05d}"


def seq_of(message: str) -> int:
    """Return the sequence number in a ``message_id``."""
    return int(message.rsplit("#", 1)[1])


def email(user: str, seq: int, now: datetime) -> EmailNormalized:
    """Return a message with exactly one contact (its sender), hence one output."""
    return EmailNormalized(
        user_id=user,
        message_id=message_id(user, seq),
        thread_id=f"t{seq}",
        sync_id="scale-out",
        subject=f"message {seq}",
        sender=Address(address=f"peer{seq % 7}@example.com"),
        text="hello",
        snippet="hello",
        size=5,
        normalized_at=now,
    )


def settings_for(stack: Stack, database_url: str, namespace: str) -> Settings:
    """Return the test's view of the deployment: the stack's Kafka, 6 partitions a topic."""
    return stack_settings(
        stack,
        database_url=database_url,
        topic_namespace=namespace,
        topic_partitions=PARTITIONS,
    )


@dataclass
class Feeder:
    """Produces rounds of one message per user, in a thread of its own, until told to stop."""

    kafka: KafkaClients
    topic: str
    serde: Serde
    rounds: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start feeding."""
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Ask the feed to end after the current round, without waiting (cleanup)."""
        self._stop.set()

    def stop(self) -> int:
        """Finish the current round and return how many records were produced."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        if self.error is not None:
            raise AssertionError("the feeder failed") from self.error
        return self.rounds * len(USERS)

    def _run(self) -> None:
        try:
            asyncio.run(self._feed())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by stop()
            self.error = exc

    async def _feed(self) -> None:
        async with self.kafka.started(self.kafka.producer()) as producer:
            while not self._stop.is_set() and self.rounds < MAX_ROUNDS:
                now = datetime.now(UTC)
                for user in USERS:
                    value = self.serde.encode(email(user, self.rounds, now))
                    await producer.send(self.topic, value, key=user.encode())
                await producer.flush()  # a round is in Kafka before it counts
                self.rounds += 1
                await asyncio.sleep(ROUND_PAUSE)  # pacing the feed, not waiting on anything


def test_processes_join_and_leave_mid_stream_lose_nothing_and_keep_user_order(
    stack: Stack, database_url: str
) -> None:
    namespace = f"scale-{uuid.uuid4().hex[:8]}"
    security = stack.kafka_security
    settings = settings_for(stack, database_url, namespace)
    catalogue = catalogue_from(settings)
    kafka = kafka_from(settings)
    asyncio.run(ensure_topics(kafka, catalogue.topics))
    group_id = catalogue.extract.group_id
    env = {
        **os.environ,
        **stack.client_env(),
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": str(PARTITIONS),
        "INBOXFLOW_SESSION_TIMEOUT_SECONDS": "6",
        "INBOXFLOW_BATCH_SIZE": "25",
        "INBOXFLOW_CPU_WORKERS": "1",
    }
    logs = Path(tempfile.mkdtemp(prefix=f"inboxflow-{namespace}-"))
    processes = ProcessGroup()
    killed: set[str] = set()
    feeder = Feeder(kafka, catalogue.email_normalized.name, serde_from(settings))

    def check_processes() -> None:
        exited = {n: c for n, c in processes.exited().items() if n not in killed}
        if exited:
            tails = {n: (logs / f"{n}.log").read_text(errors="replace")[-3000:] for n in exited}
            raise AssertionError(f"processes exited {exited}: {tails}")

    def done() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(DONE_JOBS).fetchone()
        return int(row[0]) if row else 0

    def settle(members: int, step: str) -> tuple[float, int]:
        """Wait for a stable group of ``members`` that then completes more work."""
        started = time.monotonic()

        def stable() -> bool:
            check_processes()
            return asyncio.run(_group_state(kafka, group_id)) == ("Stable", members)

        wait_until(stable, timeout=STEP_TIMEOUT, interval=0.25, message=f"{step}: group stable")
        floor = done()

        def progressed() -> int:
            check_processes()
            now = done()
            return now if now >= floor + 2 * len(USERS) else 0

        reached = wait_until(
            progressed, timeout=STEP_TIMEOUT, interval=0.25, message=f"{step}: progress"
        )
        return time.monotonic() - started, reached

    phases: list[tuple[str, float, int]] = []
    try:
        processes.start("sink-jobs", JOBS_SINK, env=env, log_dir=logs)
        feeder.start()
        began = time.monotonic()
        processes.start("extract-1", WORKER, env=env, log_dir=logs)
        phases.append(("1 process", *settle(1, "first process")))
        processes.start("extract-2", WORKER, env=env, log_dir=logs)
        phases.append(("2 processes", *settle(2, "second process joined")))
        processes.start("extract-3", WORKER, env=env, log_dir=logs)
        phases.append(("3 processes", *settle(3, "third process joined")))
        processes.kill("extract-1")
        killed.add("extract-1")
        phases.append(("kill -9 of one", *settle(2, "first process killed")))
        total = feeder.stop()

        def all_done() -> int:
            check_processes()
            return total if done() == total else 0

        wait_until(all_done, timeout=STEP_TIMEOUT, interval=0.25, message="every job done")
        elapsed = time.monotonic() - began

        with psycopg.connect(database_url) as conn:
            statuses: dict[str, int] = dict(conn.execute(JOBS_BY_STATUS).fetchall())
        assert statuses == {"done": total}, "one done job row per input, nothing else"

        records = asyncio.run(
            read_topic(kafka.bootstrap_servers, catalogue.contact_extracted.name, security=security)
        )
        serde = serde_from(settings)
        outputs: dict[str, list[int]] = {user: [] for user in USERS}
        partitions: dict[str, set[int]] = {user: set() for user in USERS}
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            contact = serde.decode(record.value or b"", ContactExtracted)
            outputs[contact.user_id].append(seq_of(contact.message_id))
            partitions[contact.user_id].add(record.partition)

        rounds = total // len(USERS)
        duplicates: Counter[str] = Counter()
        for user, seqs in outputs.items():
            assert len(partitions[user]) == 1, f"{user} is keyed to one partition"
            assert set(seqs) == set(range(rounds)), f"{user}: outputs lost"
            first_seen: list[int] = []
            seen: set[int] = set()
            for seq in seqs:
                if seq in seen:
                    duplicates[user] += 1
                else:
                    seen.add(seq)
                    first_seen.append(seq)
            assert first_seen == list(range(rounds)), f"{user}: first outputs out of input order"
        print(
            f"\nscale-out: {total} inputs ({len(USERS)} users x {rounds}), "
            f"{len(records)} outputs, {sum(duplicates.values())} duplicates "
            f"over {len(duplicates)} users, {elapsed:.1f}s in all"
        )
        for name, seconds, reached in phases:
            print(f"  {name}: stable and progressing after {seconds:.1f}s, {reached} jobs done")
    finally:
        feeder.halt()
        processes.stop()
    shutil.rmtree(logs, ignore_errors=True)  # only when passed: a failure keeps the logs


async def _group_state(kafka: KafkaClients, group_id: str) -> tuple[str, int]:
    async with kafka.started(kafka.admin()) as admin:
        return await group_state(admin, group_id)
