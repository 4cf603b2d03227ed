"""Replay and lag against a real broker: offsets move only for inactive groups, and the group
then really reads the records again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from click.testing import CliRunner

from inboxflow.cli.ops import lag, replay_command
from inboxflow.settings import Settings
from ops.lag import group_lag, total_lag
from ops.offsets import group_state
from ops.replay import GroupActiveError, replay
from tests.helpers import async_wait_until
from topics.admin import ensure_topics
from topics.catalogue import Catalogue, build_catalogue
from topics.kafka import KafkaClients

pytestmark = pytest.mark.timeout(180)

NO_RETRIES: dict[str, list[int]] = {
    agent: [] for agent in ("sync", "normalize", "extract", "embed", "insight")
}
NO_RETRIES |= {"sink-jobs": [], "sink-contacts": []}
BASE_MS = int(time.time() * 1000) - 3_600_000  # an hour ago: every record is in the past
PER_PARTITION = {0: 5, 1: 3}  # records p0 at BASE+0..4 s, p1 at BASE+0..2 s


async def _source(bootstrap: str, namespace: str, *, all_topics: bool = False) -> Catalogue:
    """Create the catalogue's topics and put timestamped records on message-fetched."""
    catalogue = build_catalogue(namespace, partitions=2, retry_ladders=NO_RETRIES)
    await ensure_topics(
        KafkaClients(bootstrap), catalogue.topics if all_topics else [catalogue.message_fetched]
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, count in PER_PARTITION.items():
            for i in range(count):
                await producer.send_and_wait(
                    catalogue.message_fetched.name,
                    f"{partition}-{i}".encode(),
                    key=b"user@example.org",
                    partition=partition,
                    timestamp_ms=BASE_MS + i * 1000,
                )
    finally:
        await producer.stop()
    return catalogue


async def _consume(bootstrap: str, group_id: str, topic: str, count: int) -> list[bytes]:
    """Join ``group_id``, read ``count`` records, commit, leave; return the values read."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(values) < count:
            assert time.monotonic() < deadline, f"read {len(values)} of {count} within 60 s"
            batches = await consumer.getmany(timeout_ms=500)
            values += [m.value for batch in batches.values() for m in batch]
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def _committed(bootstrap: str, group_id: str, topic: str) -> dict[int, int | None]:
    lags = await group_lag(KafkaClients(bootstrap), group_id, [topic])
    return {tp.partition: lag.committed for tp, lag in lags.items()}


async def test_group_lag_counts_what_the_group_has_not_consumed(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _source(kafka_bootstrap, unique_name("t"))
    group_id, topic = catalogue.normalize.group_id, catalogue.message_fetched.name

    before = await group_lag(KafkaClients(kafka_bootstrap), group_id, [topic])
    assert {tp.partition: (lag.committed, lag.lag) for tp, lag in before.items()} == {
        0: (None, 5),
        1: (None, 3),
    }
    assert total_lag(before) == 8

    await _consume(kafka_bootstrap, group_id, topic, 8)

    after = await group_lag(KafkaClients(kafka_bootstrap), group_id, [topic])
    assert {tp.partition: (lag.committed, lag.end) for tp, lag in after.items()} == {
        0: (5, 5),
        1: (3, 3),
    }
    assert total_lag(after) == 0


async def test_replay_to_earliest_rewinds_an_inactive_group(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _source(kafka_bootstrap, unique_name("t"))
    group_id, topic = catalogue.normalize.group_id, catalogue.message_fetched.name
    await _consume(kafka_bootstrap, group_id, topic, 8)

    plan = await replay(KafkaClients(kafka_bootstrap), group_id=group_id, topics=[topic])  # dry run

    assert not plan.executed
    assert plan.group_state in {"Empty", "Dead"}
    assert [(m.partition, m.current, m.target) for m in plan.moves] == [(0, 5, 0), (1, 3, 0)]
    assert plan.records_to_reprocess == 8
    assert await _committed(kafka_bootstrap, group_id, topic) == {0: 5, 1: 3}

    done = await replay(
        KafkaClients(kafka_bootstrap), group_id=group_id, topics=[topic], dry_run=False
    )

    assert done.executed
    assert await _committed(kafka_bootstrap, group_id, topic) == {0: 0, 1: 0}
    again = await _consume(kafka_bootstrap, group_id, topic, 8)
    assert sorted(again) == sorted(
        f"{p}-{i}".encode() for p, n in PER_PARTITION.items() for i in range(n)
    )


async def test_replay_to_a_timestamp_uses_the_first_record_at_or_after_it(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _source(kafka_bootstrap, unique_name("t"))
    group_id, topic = catalogue.normalize.group_id, catalogue.message_fetched.name
    await _consume(kafka_bootstrap, group_id, topic, 8)
    when = datetime.fromtimestamp((BASE_MS + 3000) / 1000, UTC)

    plan = await replay(
        KafkaClients(kafka_bootstrap),
        group_id=group_id,
        topics=[topic],
        from_timestamp=when,
        dry_run=False,
    )

    # p0 has records at +3 s and +4 s; p1 ends at +2 s, so it stays at its end.
    assert [(m.partition, m.target) for m in plan.moves] == [(0, 3), (1, 3)]
    assert plan.records_to_reprocess == 2
    assert await _committed(kafka_bootstrap, group_id, topic) == {0: 3, 1: 3}
    assert sorted(await _consume(kafka_bootstrap, group_id, topic, 2)) == [b"0-3", b"0-4"]


async def test_replay_refuses_an_active_group(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _source(kafka_bootstrap, unique_name("t"))
    group_id, topic = catalogue.normalize.group_id, catalogue.message_fetched.name
    await _consume(kafka_bootstrap, group_id, topic, 8)
    member = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await member.start()
    try:
        await async_wait_until(member.assignment, timeout=60, message="member assigned")
        with pytest.raises(GroupActiveError, match="Operator action"):
            await replay(
                KafkaClients(kafka_bootstrap), group_id=group_id, topics=[topic], dry_run=False
            )
        with pytest.raises(GroupActiveError):
            await replay(
                KafkaClients(kafka_bootstrap), group_id=group_id, topics=[topic]
            )  # dry runs check too
        assert await _committed(kafka_bootstrap, group_id, topic) == {0: 5, 1: 3}
    finally:
        await member.stop()

    async def empty() -> bool:
        kafka = KafkaClients(kafka_bootstrap)
        async with kafka.started(kafka.admin()) as admin:
            return (await group_state(admin, group_id))[0] == "Empty"

    await async_wait_until(empty, timeout=60, message="group empty after the member left")
    await replay(KafkaClients(kafka_bootstrap), group_id=group_id, topics=[topic], dry_run=False)
    assert await _committed(kafka_bootstrap, group_id, topic) == {0: 0, 1: 0}


async def test_replay_needs_an_aware_target() -> None:
    with pytest.raises(ValueError, match="from_timestamp or to_earliest"):
        await replay(KafkaClients("127.0.0.1:1"), group_id="g", topics=["t"], to_earliest=False)
    with pytest.raises(ValueError, match="timezone-aware"):
        await replay(
            KafkaClients("127.0.0.1:1"),
            group_id="g",
            topics=["t"],
            from_timestamp=datetime(2026, 1, 1),  # noqa: DTZ001
        )


# --- CLI (synchronous: the commands run their own event loop) ---------------------------------


def _settings(bootstrap: str, namespace: str) -> Settings:
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        topic_namespace=namespace,
        topic_partitions=2,
        retry_ladders=NO_RETRIES,
    )


def test_cli_replay_dry_run_then_execute(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    namespace = unique_name("t")
    catalogue = asyncio.run(_source(kafka_bootstrap, namespace))
    group_id, topic = catalogue.normalize.group_id, catalogue.message_fetched.name
    asyncio.run(_consume(kafka_bootstrap, group_id, topic, 8))
    settings = _settings(kafka_bootstrap, namespace)
    runner = CliRunner()

    dry = runner.invoke(replay_command, ["normalize", "--earliest"], obj=settings)
    assert dry.exit_code == 0, dry.output
    assert f"{topic}[0] 5 -> 0" in dry.output
    assert "would rewind" in dry.output
    assert asyncio.run(_committed(kafka_bootstrap, group_id, topic)) == {0: 5, 1: 3}

    at = datetime.fromtimestamp((BASE_MS + 4000) / 1000, UTC).replace(tzinfo=None).isoformat()
    done = runner.invoke(
        replay_command, [group_id, "--from", at, "--execute", "--json"], obj=settings
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["records_to_reprocess"] == 1  # naive time read as UTC
    assert asyncio.run(_committed(kafka_bootstrap, group_id, topic)) == {0: 4, 1: 3}


def test_cli_replay_needs_exactly_one_target(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    settings = _settings(kafka_bootstrap, unique_name("t"))
    runner = CliRunner()
    neither = runner.invoke(replay_command, ["normalize"], obj=settings)
    both = runner.invoke(
        replay_command, ["normalize", "--earliest", "--from", "2026-01-01"], obj=settings
    )
    bad = runner.invoke(replay_command, ["normalize", "--from", "yesterday"], obj=settings)
    assert (neither.exit_code, both.exit_code, bad.exit_code) == (2, 2, 2)
    assert "exactly one" in neither.output
    assert "not ISO 8601" in bad.output


def test_cli_lag_lists_every_group(kafka_bootstrap: str, unique_name: Callable[..., str]) -> None:
    namespace = unique_name("t")
    catalogue = asyncio.run(_source(kafka_bootstrap, namespace, all_topics=True))
    settings = _settings(kafka_bootstrap, namespace)

    result = CliRunner().invoke(lag, ["--json"], obj=settings)

    assert result.exit_code == 0, result.output
    rows = {row["group_id"]: row for row in json.loads(result.output)}
    assert set(rows) == {group.group_id for group in catalogue.groups}  # no tiers, no relays
    assert rows[catalogue.normalize.group_id]["lag"] == 8
    assert rows[catalogue.extract.group_id]["lag"] == 0
    text = CliRunner().invoke(lag, [], obj=settings).output
    assert catalogue.normalize.group_id in text
