"""A broker killed under a running worker: one line when the outage starts, one when it ends.

aiokafka logs every retry of an unreachable broker at ERROR, thousands of lines a minute from
each process; ``inboxflow.logs.KafkaNoiseFilter`` turns them into an announcement after its grace
period, a reminder a minute and a recovery line. Its unit tests run on a simulated clock; this
kills a real broker of the test's own (the session's serves the other tests) under a real extract
worker and the jobs sink for about 20 s, starts it again on the same ports and storage, and
reads what the processes wrote, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.kafka import KafkaBroker, start_broker
from devstack.stack import with_fresh_ports
from inboxflow.logs import KAFKA_LOGGERS
from inboxflow.settings import Settings
from inboxflow.supervisor import ProcessGroup, start_all
from inboxflow.wiring import catalogue_from, kafka_from
from schemas.examples import example_events
from schemas.models import EmailNormalized
from schemas.serde import serde_for
from tests.helpers import wait_until
from topics.admin import ensure_topics

pytestmark = pytest.mark.chaos

USER = "owner@outage.test"
OUTAGE_SECONDS = 20.0  # as the operations issue tried it: well under the 300 s ERROR threshold
RESTART_TIMEOUT = 120.0  # a JVM start on a busy 2-core machine
OUTAGE_LINE = "Kafka unreachable for"
RECOVERY_LINE = "Kafka reachable again after"
PROCESSES = ("agent-extract", "sink-jobs")


@pytest.fixture(scope="module")
def kafka_cache_dir() -> Path:
    """Where the session's broker jars are cached (read before ``clean_environ`` runs)."""
    return Path(os.environ.get("INBOXFLOW_STATE_DIR", "~/.cache/inboxflow")).expanduser()


@pytest.fixture
def private_broker(kafka_cache_dir: Path, tmp_path: Path) -> Iterator[KafkaBroker]:
    """A PLAINTEXT broker for this test alone, stopped afterwards."""
    broker = with_fresh_ports(
        lambda: start_broker(
            cache_dir=kafka_cache_dir, work_dir=tmp_path / "kafka", die_with_parent=True
        )
    )
    try:
        yield broker
    finally:
        broker.stop()


def mail(message_id: str) -> EmailNormalized:
    example = example_events()[EmailNormalized]
    assert isinstance(example, EmailNormalized)
    return example.model_copy(update={"user_id": USER, "message_id": message_id})


async def produce(settings: Settings, topic: str, value: bytes) -> None:
    producer = kafka_from(settings).producer()
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=USER.encode())
    finally:
        await producer.stop()


def job_statuses(database_url: str, message_id: str) -> list[tuple[str, int]]:
    """Return (status, attempts) of every extract_contacts job row of ``message_id``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT status, attempts FROM jobs"
            " WHERE kind = 'extract_contacts' AND user_id = %s AND subject_id = %s",
            (USER, message_id),
        ).fetchall()
    return [(status, attempts) for status, attempts in rows]


def json_lines(path: Path, start: int = 0) -> list[dict[str, Any]]:
    """Return the lines of ``path`` from byte ``start`` on, each parsed (every one is JSON)."""
    with path.open("rb") as log:
        log.seek(start)
        text = log.read().decode("ascii")
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}: a line that is not JSON: {line[:200]!r}")
    return parsed


def test_broker_outage_is_one_line_when_it_starts_and_one_when_it_ends(
    private_broker: KafkaBroker, database_url: str, tmp_path: Path
) -> None:
    broker = private_broker
    namespace = f"outage-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap, topic_namespace=namespace, topic_partitions=1
    )
    catalogue = catalogue_from(settings)
    asyncio.run(ensure_topics(kafka_from(settings), catalogue.topics))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "1",
    }
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    logs = {name: logs_dir / f"{name}.log" for name in PROCESSES}
    workers: list[ProcessGroup] = []
    topic = catalogue.email_normalized.name
    serde = serde_for(None)
    try:
        workers.append(start_all(env, agents=["extract"], sinks=(), sources=(), log_dir=logs_dir))
        workers.append(start_all(env, agents=(), sinks=("jobs",), sources=(), log_dir=logs_dir))

        def alive() -> None:
            for group in workers:
                assert not group.exited(), {n: p.read_text()[-3000:] for n, p in logs.items()}

        def done(message_id: str) -> bool:
            alive()
            return [status for status, _ in job_statuses(database_url, message_id)] == ["done"]

        asyncio.run(produce(settings, topic, serde.encode(mail("before-outage"))))
        # Both joined their groups: the agent extracted the contacts, the sink wrote the job.
        wait_until(
            lambda: done("before-outage"), timeout=120, interval=0.5, message="job before outage"
        )

        def settled() -> bool:
            # The start-up wait for the group coordinator ends with a line of its own.
            texts = [path.read_text() for path in logs.values()]
            return all("waiting for Kafka" not in t or "Kafka ready after" in t for t in texts)

        wait_until(settled, timeout=60, interval=0.5, message="the start-up Kafka waits are over")

        offsets = {name: path.stat().st_size for name, path in logs.items()}
        broker.halt(signal.SIGKILL)
        killed_at = time.monotonic()

        def since_kill(name: str) -> str:
            with logs[name].open("rb") as log:
                log.seek(offsets[name])
                return log.read().decode("ascii", errors="replace")

        def announced() -> bool:
            alive()
            return all(OUTAGE_LINE in since_kill(name) for name in PROCESSES)

        wait_until(announced, timeout=60, interval=0.5, message="the outage line in every log")
        announced_after = time.monotonic() - killed_at
        wait_until(
            lambda: time.monotonic() - killed_at >= OUTAGE_SECONDS,
            timeout=OUTAGE_SECONDS + 5,
            interval=0.2,
            message=f"{OUTAGE_SECONDS:.0f}s since the kill",
        )
        broker.start(timeout=RESTART_TIMEOUT)
        down_for = time.monotonic() - killed_at

        asyncio.run(produce(settings, topic, serde.encode(mail("after-outage"))))
        wait_until(
            lambda: done("after-outage"), timeout=120, interval=0.5, message="job after outage"
        )

        def recovered() -> bool:
            alive()
            return all(RECOVERY_LINE in since_kill(name) for name in PROCESSES)

        wait_until(recovered, timeout=60, interval=0.5, message="the recovery line in every log")
    finally:
        for group in workers:
            group.stop()

    for group in workers:
        assert set(group.exited().values()) == {0}, group.exited()
    jobs = {m: job_statuses(database_url, m) for m in ("before-outage", "after-outage")}
    assert {m: [status for status, _ in rows] for m, rows in jobs.items()} == {
        "before-outage": ["done"],
        "after-outage": ["done"],
    }

    print(f"\nbroker down {down_for:.1f}s, outage announced {announced_after:.1f}s after the kill")
    print(f"extract_contacts job rows (status, attempts): {jobs}")
    for name, path in logs.items():
        lines = json_lines(path)
        recent = json_lines(path, offsets[name])
        errors = [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]
        library = [line for line in recent if line["logger"].startswith(KAFKA_LOGGERS)]
        outage = [line for line in recent if line["msg"].startswith(OUTAGE_LINE)]
        recovery = [line for line in recent if line["msg"].startswith(RECOVERY_LINE)]
        suppressed = sum(int(line.get("suppressed", 0)) for line in recovery)
        print(
            f"{name}: {len(lines)} lines in total, {len(recent)} since the kill "
            f"({len(library)} from aiokafka/faust/mode), {len(errors)} at ERROR or above, "
            f"{suppressed} suppressed by the filter"
        )
        for line in recent:
            print(f"  {line['level']} {line['logger']}: {line['msg'][:240]}")
        assert errors == [], f"{name}: {errors}"
        assert len(library) <= 10, f"{name}: {len(library)} library lines about the outage"
        assert len(outage) == 1, f"{name}: {[line['msg'] for line in outage]}"
        assert outage[0]["level"] == "WARNING"
        assert len(recovery) == 1, f"{name}: {[line['msg'] for line in recovery]}"
        assert recovery[0]["level"] == "WARNING"
        assert suppressed > 0, f"{name}: the outage produced no suppressed lines"
