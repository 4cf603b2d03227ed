"""``inboxflow sink jobs`` as a subprocess, killed with SIGKILL mid-batch and cut off from Postgres.

After every crash a restarted sink must leave exactly the expected ``jobs`` table, with the
stored offsets at the end of the topic: nothing lost, nothing applied twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack.postgres import PostgresServer
from tests.helpers import wait_until
from tests.integration.sink_support import (
    caught_up,
    count_rows,
    create_topic,
    expected_contacts,
    expected_jobs,
    job_events,
    produce_events,
    read_contacts,
    read_jobs,
    shuffled_with_duplicates,
    sightings,
    stored_offsets,
)

pytestmark = pytest.mark.chaos

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


@contextmanager
def sink_process(
    kafka_bootstrap: str,
    database_url: str,
    topic: str,
    group: str,
    log_path: Path,
    command: str = "jobs",
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``inboxflow sink <command>``; stop it with SIGTERM at the end unless it was killed."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    argv = [INBOXFLOW, "sink", command, "--topic", topic, "--group", group]
    argv += ["--dlq", f"{topic}-dlq"]
    if command == "contacts":
        argv += ["--deleted-topic", f"{topic}-deleted", "--labels-topic", f"{topic}-labels"]
    # Static membership: the restarted process takes its partitions back without waiting for
    # the killed member's session to expire.
    argv += ["--batch-records", "700", "--instance-id", f"{group}-0"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log_path.read_text()


def _progress(database_url: str, group: str, topic: str | None = None) -> int:
    return sum(max(offset, 0) for offset in stored_offsets(database_url, group, topic).values())


async def test_kill_9_mid_batch_several_times_loses_and_doubles_nothing(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    topic, group = unique_name("jobs"), unique_name("g")
    await create_topic(kafka_bootstrap, topic)
    events = job_events(jobs=12_000, versions=4, seed=21)
    ends = await produce_events(kafka_bootstrap, topic, shuffled_with_duplicates(events, 0.25))
    log_path = tmp_path / "sink.log"

    for _ in range(4):
        before = _progress(database_url, group)
        with sink_process(kafka_bootstrap, database_url, topic, group, log_path) as process:
            wait_until(
                lambda before=before: _progress(database_url, group) > before,  # type: ignore[misc]
                timeout=60,
                interval=0.01,
                message="the sink commits a batch",
            )
            process.kill()  # SIGKILL while the next batch is being read or written
            process.wait(timeout=10)
        assert not caught_up(database_url, group, ends), "killed too late to test anything"

    with sink_process(kafka_bootstrap, database_url, topic, group, log_path):
        wait_until(lambda: caught_up(database_url, group, ends), timeout=90, interval=0.2)

    assert read_jobs(database_url) == expected_jobs(events)
    assert count_rows(database_url, "jobs") == 12_000


async def test_postgres_restart_mid_stream_is_ridden_out(
    kafka_bootstrap: str,
    database_url: str,
    unique_name: Callable[..., str],
    tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:
    topic, group = unique_name("jobs"), unique_name("g")
    await create_topic(kafka_bootstrap, topic)
    events = job_events(jobs=10_000, versions=3, seed=22)
    ends = await produce_events(kafka_bootstrap, topic, shuffled_with_duplicates(events, 0.2))
    log_path = tmp_path / "sink.log"

    with sink_process(kafka_bootstrap, database_url, topic, group, log_path):
        wait_until(lambda: _progress(database_url, group) > 0, timeout=60, interval=0.01)
        postgres_server.halt()
        try:
            wait_until(
                lambda: "database unavailable" in log_path.read_text(),
                message="the sink notices the database is gone",
            )
        finally:
            postgres_server.start()
        wait_until(
            lambda: caught_up(database_url, group, ends),
            timeout=90,
            interval=0.2,
            message="the sink reconnects by itself and catches up",
        )

    assert read_jobs(database_url) == expected_jobs(events)


async def test_kill_9_of_the_contacts_sink_never_counts_a_sighting_twice(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    topic, group = unique_name("contacts"), unique_name("g")
    for name in (topic, f"{topic}-deleted", f"{topic}-labels"):
        await create_topic(kafka_bootstrap, name)
    events = sightings(30_000, seed=23)
    ends = await produce_events(kafka_bootstrap, topic, shuffled_with_duplicates(events, 0.25))
    log_path = tmp_path / "sink.log"

    for _ in range(3):
        before = _progress(database_url, group, topic)
        with sink_process(
            kafka_bootstrap, database_url, topic, group, log_path, "contacts"
        ) as process:
            wait_until(
                lambda before=before: _progress(database_url, group, topic) > before,  # type: ignore[misc]
                timeout=60,
                interval=0.01,
                message="the sink commits a batch",
            )
            process.kill()
            process.wait(timeout=10)
        assert not caught_up(database_url, group, ends, topic), "killed too late"

    with sink_process(kafka_bootstrap, database_url, topic, group, log_path, "contacts"):
        wait_until(lambda: caught_up(database_url, group, ends, topic), timeout=90, interval=0.2)

    assert read_contacts(database_url) == expected_contacts(events)
