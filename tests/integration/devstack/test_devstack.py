"""The local stack answers for real: keyed records with headers, a faust worker, migrations."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from db.migrate import apply_migrations, load_migrations
from tests.helpers import async_wait_until

ECHO_APP = Path(__file__).with_name("faust_echo_app.py")


async def create_topics(bootstrap: str, *names: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list:  # type: ignore[type-arg]
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list = []  # type: ignore[type-arg]
    try:

        async def enough() -> bool:
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(record for part in batch.values() for record in part)
            return len(records) >= count

        await async_wait_until(enough, timeout=timeout, message=f"{count} records on {topic}")
    finally:
        await consumer.stop()
    return records


async def test_produce_consume_round_trip_keeps_keys_headers_and_partition_order(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("t")
    await create_topics(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(30):
            user = f"user-{i % 3}"
            await producer.send(
                topic, f"m{i}".encode(), key=user.encode(), headers=[("seq", str(i).encode())]
            )
        await producer.flush()
    finally:
        await producer.stop()

    records = await read_all(kafka_bootstrap, topic, 30)

    assert len(records) == 30
    by_user: dict[bytes, list[int]] = {}
    for record in records:
        seq = int(dict(record.headers)["seq"])
        assert record.value == f"m{seq}".encode()
        by_user.setdefault(record.key, []).append(seq)
    assert set(by_user) == {b"user-0", b"user-1", b"user-2"}
    for seqs in by_user.values():
        assert seqs == sorted(seqs), "records of one key must keep their order"
    partitions_per_key = {record.key: set() for record in records}
    for record in records:
        partitions_per_key[record.key].add(record.partition)
    assert all(len(parts) == 1 for parts in partitions_per_key.values())


async def test_faust_agent_in_real_worker_consumes_and_produces(
    kafka_bootstrap: str, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    source, target = unique_name("src"), unique_name("dst")
    await create_topics(kafka_bootstrap, source, target)
    env = {
        **os.environ,
        "ECHO_APP_ID": unique_name("inboxflow-echo"),
        "ECHO_BOOTSTRAP": kafka_bootstrap,
        "ECHO_SOURCE": source,
        "ECHO_TARGET": target,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(  # noqa: S603
        [sys.executable, str(ECHO_APP), "worker", "-l", "info", "--without-web"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(
                    source, f"hello {i}".encode(), key=b"user-a", headers=[("n", str(i).encode())]
                )
        finally:
            await producer.stop()

        records = await read_all(kafka_bootstrap, target, 5, timeout=90)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()

    assert [record.value for record in records] == [f"HELLO {i}".encode() for i in range(5)]
    assert {record.key for record in records} == {b"user-a"}
    assert [dict(record.headers)["n"] for record in records] == [str(i).encode() for i in range(5)]
    assert all(
        dict(record.headers)["echoed-by"] == env["ECHO_APP_ID"].encode() for record in records
    )


def test_migrations_applied_twice_change_nothing(database_url: str) -> None:
    # The fixture's database is already migrated: a second run applies nothing.
    assert apply_migrations(database_url) == []
    with psycopg.connect(database_url) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == [migration.name for migration in load_migrations()]
    assert names[0] == "0001_create_jobs"


def test_jobs_table_has_the_three_partial_indexes(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        indexes = dict(
            conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'")
        )
    live = indexes["jobs_live_by_user_idx"]
    assert "(user_id, status, kind, updated_at)" in live
    assert "'queued'" in live
    assert "'processing'" in live
    batch = indexes["jobs_batch_idx"]
    assert "(batch_id, status, user_id)" in batch
    assert "batch_id IS NOT NULL" in batch
    failed = indexes["jobs_failed_retried_idx"]
    assert "(user_id, status, attempts, updated_at)" in failed
    assert "'error'" in failed
    assert "attempts > 0" in failed


def test_fresh_database_gets_every_migration_once(stack, unique_name) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import _with_database

    name = unique_name("m").replace("-", "_")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(stack.database_url, name)
    try:
        first = apply_migrations(url)
        assert first == [migration.name for migration in load_migrations()]
        assert apply_migrations(url) == []
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_a_port_taken_before_the_server_binds_it_is_retried_with_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import devstack.postgres
    from devstack.postgres import start_postgres
    from devstack.stack import with_fresh_ports

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        offered = iter([taken])
        real_free_port = devstack.postgres.free_port
        monkeypatch.setattr(
            devstack.postgres, "free_port", lambda: next(offered, 0) or real_free_port()
        )

        server = with_fresh_ports(lambda: start_postgres(root=None, die_with_parent=True))
        try:
            assert server.port != taken
            with psycopg.connect(server.url()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            server.stop()
