"""Job-state sink against a real broker and a real Postgres: final tables, rejects, offsets."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from aiokafka import TopicPartition

from db.migrate import load_migrations
from devstack.postgres import PostgresServer
from schemas import serde
from sinks.base import SinkConfig
from sinks.job_state import JobStateWriter
from sinks.offsets import StaleOffsetError, advance_offsets, load_offsets
from tests.helpers import async_wait_until
from tests.integration.sink_support import (
    count_rows,
    create_topic,
    expected_jobs,
    job_events,
    kafka_committed,
    merge_ends,
    produce,
    produce_events,
    read_jobs,
    read_topic,
    running_sink,
    shuffled_with_duplicates,
    sink_config,
    stored_offsets,
)


def _config(kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]) -> SinkConfig:
    return sink_config(
        kafka_bootstrap,
        database_url,
        unique_name,
        max_batch_records=3000,
        backoff_initial=0.05,
        backoff_max=0.5,
    )


def _caught_up(database_url: str, config: SinkConfig, ends: dict[int, int]) -> bool:
    stored = stored_offsets(database_url, config.group_id)
    return all(stored.get(partition) == offset for partition, offset in ends.items())


@pytest.mark.parametrize("method", ["copy", "executemany"])
async def test_shuffled_duplicated_versions_leave_latest_state(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str], method: str
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic)
    events = job_events(jobs=2000, versions=4)
    ends = await produce_events(kafka_bootstrap, topic, shuffled_with_duplicates(events, 0.25))
    config = _config(kafka_bootstrap, database_url, unique_name)

    async with running_sink(config, {topic: JobStateWriter(method)}):  # type: ignore[arg-type]
        await async_wait_until(
            lambda: _caught_up(database_url, config, ends),
            timeout=60,
            message="stored offsets reach the end of the topic",
        )

    assert read_jobs(database_url) == expected_jobs(events)


async def test_hundred_thousand_events_converge_within_a_minute(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic, partitions=6)
    events = job_events(jobs=16_000, versions=5)  # 80 000 + 25 % repeats = 100 000 records
    mixed = shuffled_with_duplicates(events, 0.25)
    assert len(mixed) == 100_000
    produce_started = time.monotonic()
    ends = await produce_events(kafka_bootstrap, topic, mixed)
    print(f"produced 100000 records in {time.monotonic() - produce_started:.1f}s")
    config = _config(kafka_bootstrap, database_url, unique_name)

    started = time.monotonic()
    async with running_sink(config, {topic: JobStateWriter()}) as running:
        await async_wait_until(
            lambda: _caught_up(database_url, config, ends),
            timeout=60,
            interval=0.5,
            message="100 000 records written",
        )
        rows = running.value("inboxflow_sink_rows_total")
    elapsed = time.monotonic() - started

    assert read_jobs(database_url) == expected_jobs(events)
    assert rows == 100_000
    print(f"100000 records in {elapsed:.1f}s ({100_000 / elapsed:.0f} records/s)")


async def test_refused_rows_go_alone_to_the_dead_letter_topic(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    good = job_events(jobs=200, versions=1)
    refused_check = good[57].model_copy(update={"job_id": "bad:check", "attempts": -1})
    refused_text = good[58].model_copy(update={"job_id": "bad:nul", "last_error": "nul \x00 byte"})
    check_value, text_value = serde.encode(refused_check), serde.encode(refused_text)
    headers = [("trace-id", b"\x00\xffabc"), ("trace-id", b"second")]
    ends = merge_ends(
        await produce_events(kafka_bootstrap, topic, good[:100]),
        await produce(kafka_bootstrap, topic, [(b"bad-key", check_value)], headers=headers),
        await produce_events(kafka_bootstrap, topic, good[100:150]),
        await produce(kafka_bootstrap, topic, [(b"nul-key", text_value)]),
        await produce_events(kafka_bootstrap, topic, good[150:]),
    )
    config = _config(kafka_bootstrap, database_url, unique_name)
    await create_topic(kafka_bootstrap, config.dlq_topic, partitions=1)

    async with running_sink(config, {topic: JobStateWriter()}) as running:
        await async_wait_until(
            lambda: _caught_up(database_url, config, ends),
            message="offset past the refused records",
        )
        assert running.value("inboxflow_sink_rejected_rows_total") == 2

    assert read_jobs(database_url) == expected_jobs(good)
    check_letter, text_letter = await read_topic(kafka_bootstrap, config.dlq_topic, 2)
    assert (check_letter.key, check_letter.value) == (b"bad-key", check_value)
    assert list(check_letter.headers[:2]) == headers
    context = dict(check_letter.headers[2:])
    assert context["x-original-topic"] == topic.encode()
    assert context["x-original-offset"] == b"100"
    assert context["x-original-consumer-group"] == config.group_id.encode()
    assert context["x-exception-class"] == b"psycopg.errors.CheckViolation"
    assert context["x-stage"] == b"sink"
    assert (text_letter.key, text_letter.value) == (b"nul-key", text_value)
    assert dict(text_letter.headers)["x-original-offset"] == b"151"


async def test_undecodable_record_is_dead_lettered_and_skipped(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic, partitions=1)
    good = job_events(jobs=10, versions=1)
    ends = merge_ends(
        await produce(kafka_bootstrap, topic, [(b"k", b"not avro at all")]),
        await produce_events(kafka_bootstrap, topic, good),
    )
    config = _config(kafka_bootstrap, database_url, unique_name)
    await create_topic(kafka_bootstrap, config.dlq_topic, partitions=1)

    async with running_sink(config, {topic: JobStateWriter()}):
        await async_wait_until(
            lambda: _caught_up(database_url, config, ends),
            message="offset past the undecodable record",
        )

    [letter] = await read_topic(kafka_bootstrap, config.dlq_topic, 1)
    assert letter.value == b"not avro at all"
    assert dict(letter.headers)["x-exception-class"] == b"schemas.errors.UndecodableRecordError"
    assert read_jobs(database_url) == expected_jobs(good)


async def test_restart_resumes_from_stored_offsets_without_rewriting(
    kafka_bootstrap: str, database_url: str, unique_name: Callable[..., str]
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic)
    first, second = (
        job_events(jobs=300, versions=2, seed=1),
        job_events(jobs=300, versions=3, seed=2),
    )
    ends = await produce_events(kafka_bootstrap, topic, first)
    config = _config(kafka_bootstrap, database_url, unique_name)
    async with running_sink(config, {topic: JobStateWriter()}):
        await async_wait_until(lambda: _caught_up(database_url, config, ends))

    ends = merge_ends(ends, await produce_events(kafka_bootstrap, topic, second))
    async with running_sink(config, {topic: JobStateWriter()}) as running:
        await async_wait_until(lambda: _caught_up(database_url, config, ends))
        rows = running.value("inboxflow_sink_rows_total")

    assert rows == len(second)  # only the new records were read again
    # Kafka gets the same offsets after each commit, for lag monitoring.
    assert await kafka_committed(kafka_bootstrap, config.group_id, topic, 3) == ends
    assert read_jobs(database_url) == expected_jobs([*first, *second])
    assert count_rows(database_url, "jobs") == 300


async def test_database_restart_mid_stream_loses_and_doubles_nothing(
    kafka_bootstrap: str,
    database_url: str,
    unique_name: Callable[..., str],
    postgres_server: PostgresServer,
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic)
    events = job_events(jobs=3000, versions=3, seed=5)
    ends = await produce_events(kafka_bootstrap, topic, shuffled_with_duplicates(events, 0.1))
    config = _config(kafka_bootstrap, database_url, unique_name)
    config = dataclasses.replace(config, max_batch_records=500)

    async with running_sink(config, {topic: JobStateWriter()}) as running:
        await async_wait_until(lambda: count_rows(database_url, "jobs") > 0)
        postgres_server.halt()
        try:
            await async_wait_until(
                lambda: running.value("inboxflow_sink_database_errors_total") > 0,
                message="sink notices the database is gone",
            )
        finally:
            postgres_server.start()
        await async_wait_until(
            lambda: _caught_up(database_url, config, ends),
            timeout=60,
            message="sink resumes by itself and catches up",
        )

    assert read_jobs(database_url) == expected_jobs(events)


async def _zombie_batch(zombie: psycopg.AsyncConnection[Any], tp: TopicPartition) -> None:
    async with zombie.transaction():
        await zombie.execute("INSERT INTO sink_offsets VALUES ('other', 't', 0, 5)")
        await advance_offsets(zombie, "g", {tp: (-1, 20)})


async def test_stale_owner_cannot_move_offsets(database_url: str) -> None:
    tp = TopicPartition("t", 0)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as owner:
        async with owner.transaction():
            assert await load_offsets(owner, "g", [tp]) == {tp: -1}
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as zombie:
            async with owner.transaction():
                await advance_offsets(owner, "g", {tp: (-1, 10)})
            with pytest.raises(StaleOffsetError):
                await _zombie_batch(zombie, tp)
    assert count_rows(database_url, "sink_offsets") == 1  # the zombie's insert rolled back
    assert stored_offsets(database_url, "g") == {0: 10}


async def test_sink_started_while_the_database_is_down_waits_and_catches_up(
    kafka_bootstrap: str,
    database_url: str,
    unique_name: Callable[..., str],
    postgres_server: PostgresServer,
) -> None:
    topic = unique_name("jobs")
    await create_topic(kafka_bootstrap, topic)
    events = job_events(jobs=500, versions=2, seed=8)
    ends = await produce_events(kafka_bootstrap, topic, events)
    config = _config(kafka_bootstrap, database_url, unique_name)

    postgres_server.halt()
    try:
        async with running_sink(config, {topic: JobStateWriter()}) as running:
            await async_wait_until(
                lambda: running.value("inboxflow_sink_database_errors_total") >= 3,
                message="the sink keeps retrying the connection",
            )
            assert running.value("inboxflow_sink_rows_total") == 0
            postgres_server.start()
            await async_wait_until(lambda: _caught_up(database_url, config, ends), timeout=60)
    finally:
        if not postgres_server.pid:
            postgres_server.start()

    assert read_jobs(database_url) == expected_jobs(events)


def test_migration_lifts_done_rows_written_before_done_was_final(database_url: str) -> None:
    # Rows written with the old versions (done at attempt * 10 + 5) must outrank a redelivery too.
    migration = next(m for m in load_migrations() if m.name.startswith("0009_"))
    with psycopg.connect(database_url) as conn:
        for job, status, version in [
            ("done-0", "done", 15),
            ("done-1", "done", 1_000_025),
            ("dead-0", "dead", 84),
        ]:
            conn.execute(
                "INSERT INTO jobs (id, user_id, kind, status, subject_id, version)"
                " VALUES (%s, 'u', 'normalize_google_email', %s, 'm', %s)",
                (job, status, version),
            )
        conn.execute(migration.sql)
        versions = dict(conn.execute("SELECT id, version FROM jobs").fetchall())
    assert versions == {"done-0": 999_999, "done-1": 1_999_999, "dead-0": 84}
