"""Dead-letter tooling against a real broker: list, show, redrive, purge, and their CLI.

Dead letters are built by ``streams.runtime.routing.forward_failed``, the function the pipeline
itself uses, so the headers under test are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

from inboxflow.cli.ops import dlq
from inboxflow.settings import Settings
from ops.dlq import (
    PROGRESS_PREFIX,
    DeadLetter,
    RedriveError,
    RedriveProgress,
    list_dlqs,
    purge,
    read_dlq,
    redrive,
    redrive_headers,
    redrive_target,
)
from ops.offsets import TopicNotFoundError
from schemas import headers as h
from schemas.errors import Decision, Failure, RetryClass
from streams.runtime.retry_relay import RetryRelay
from streams.runtime.routing import attempts_so_far, forward_failed
from streams.runtime.stage import Outgoing, Record
from topics.admin import ensure_topics
from topics.catalogue import Catalogue, ConsumerGroup, build_catalogue
from topics.kafka import KafkaClients

pytestmark = pytest.mark.timeout(180)

LADDERS = {"normalize": [5, 30]}
SOURCE_HEADERS = (("traceparent", b"00-abc-01"), ("content-type", b"avro/binary"))


@dataclass(frozen=True)
class Letter:
    """A dead letter as produced, with what the test wants to compare later."""

    partition: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    retry_class: RetryClass


async def _catalogue(bootstrap: str, namespace: str, ladders: Any = None) -> Catalogue:
    catalogue = build_catalogue(namespace, partitions=2, retry_ladders=ladders or LADDERS)
    group = catalogue.normalize
    await ensure_topics(KafkaClients(bootstrap), [*group.sources, *group.failure_topics])
    return catalogue


def _dead_letter(
    group: ConsumerGroup, *, partition: int, offset: int, retry_class: RetryClass
) -> Outgoing:
    """Fail a source record once into the first tier (when there is one), then into the DLQ."""
    now = time.time()
    record = Record(
        topic=group.sources[0].name,
        partition=partition,
        offset=offset,
        timestamp_ms=int(now * 1000) - 60_000,
        key=f"user-{offset}@example.org".encode(),
        value=b"\xc3\x01raw-" + bytes([offset % 256]) * 50,
        headers=SOURCE_HEADERS,
    )
    failure = Failure(retry_class, f"{retry_class.value} failure of {offset}")
    attempt = 1
    if group.retry_tiers and retry_class is not RetryClass.PERMANENT:
        tier = group.retry_tiers[0].topic
        out = forward_failed(
            record,
            decision=Decision(tier, now + 5, dead=False),
            failure=failure,
            attempt=attempt,
            group_id=group.group_id,
            handler=group.agent,
            now=now,
        )
        record = Record(
            tier, partition, offset, record.timestamp_ms, out.key, out.value, out.headers
        )
        attempt = 2
    return forward_failed(
        record,
        decision=Decision(group.dlq.name, None, dead=True),
        failure=failure,
        attempt=attempt,
        group_id=group.group_id,
        handler=group.agent,
        now=now,
    )


async def _put_dead_letters(
    bootstrap: str, group: ConsumerGroup, classes: Sequence[tuple[int, RetryClass]], first: int = 0
) -> list[Outgoing]:
    """Produce one dead letter per (partition, class), offsets numbered from ``first``."""
    outs = [
        _dead_letter(group, partition=p, offset=first + i, retry_class=c)
        for i, (p, c) in enumerate(classes)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for out in outs:
            await producer.send_and_wait(
                out.topic,
                out.value,
                key=out.key,
                partition=out.partition,
                headers=list(out.headers),
            )
    finally:
        await producer.stop()
    return outs


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Return every record of ``topic`` up to its current end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]  # every test topic has 2
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"{topic} not read to its end within 30 s"
            batches = await consumer.getmany(timeout_ms=500)
            records += [m for batch in batches.values() for m in batch]
    finally:
        await consumer.stop()
    return records


MIXED = [
    (0, RetryClass.PERMANENT),
    (0, RetryClass.TRANSIENT),
    (0, RetryClass.PERMANENT),
    (1, RetryClass.TRANSIENT),
    (1, RetryClass.PERMANENT),
]


# --- list and show --------------------------------------------------------------------------


async def test_list_counts_pending_by_error_class(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    before = int(time.time() * 1000)
    await _put_dead_letters(kafka_bootstrap, catalogue.normalize, MIXED)

    summaries = {s.agent: s for s in await list_dlqs(KafkaClients(kafka_bootstrap), catalogue)}

    normalize = summaries["normalize"]
    assert normalize.exists
    assert (normalize.records, normalize.pending) == (5, 5)
    assert normalize.by_error_class == {"permanent": 3, "transient": 2}
    assert normalize.oldest_ms is not None
    assert normalize.newest_ms is not None
    assert before <= normalize.oldest_ms <= normalize.newest_ms <= int(time.time() * 1000)
    assert not summaries["extract"].exists  # its topics were never created
    assert [s.agent for s in summaries.values()] == [g.agent for g in catalogue.groups]


async def test_show_decodes_context(kafka_bootstrap: str, unique_name: Callable[..., str]) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    outs = await _put_dead_letters(kafka_bootstrap, group, [(1, RetryClass.TRANSIENT)], first=41)

    [letter] = await read_dlq(KafkaClients(kafka_bootstrap), group.dlq.name, limit=10)

    assert isinstance(letter, DeadLetter)
    assert (letter.partition, letter.offset) == (1, 0)
    assert letter.key == outs[0].key
    assert letter.value_size == len(outs[0].value)
    d = letter.to_dict()
    assert d["original_topic"] == group.sources[0].name
    assert (d["original_partition"], d["original_offset"]) == (1, 41)
    assert d["attempts"] == 2  # failed on the live topic, then on the first tier
    assert d["error_class"] == "transient"
    assert d["exception_message"] == "transient failure of 41"
    assert d["handler"] == "normalize"
    assert d["original_consumer_group"] == group.group_id
    assert d["key"] == "user-41@example.org"


async def test_show_reads_from_partition_and_offset(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    topic = catalogue.normalize.dlq.name
    await _put_dead_letters(kafka_bootstrap, catalogue.normalize, MIXED)

    all_records = await read_dlq(KafkaClients(kafka_bootstrap), topic, limit=100)
    limited = await read_dlq(KafkaClients(kafka_bootstrap), topic, limit=2)
    tail = await read_dlq(KafkaClients(kafka_bootstrap), topic, limit=100, partition=0, offset=1)

    assert len(all_records) == 5
    assert len(limited) == 2
    assert [(d.partition, d.offset) for d in tail] == [(0, 1), (0, 2)]
    with pytest.raises(TopicNotFoundError):
        await read_dlq(KafkaClients(kafka_bootstrap), catalogue.extract.dlq.name, limit=1)


# --- redrive ----------------------------------------------------------------------------------


async def test_dry_run_redrive_moves_nothing(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    await _put_dead_letters(kafka_bootstrap, group, MIXED)

    report = await redrive(KafkaClients(kafka_bootstrap), group)  # dry run is the default

    assert report.dry_run
    assert report.moved == 5
    assert report.by_error_class == {"permanent": 3, "transient": 2}
    assert report.by_partition == {0: 3, 1: 2}
    assert report.target_topic == group.retry_tiers[0].topic
    assert await _read_all(kafka_bootstrap, group.retry_tiers[0].topic) == []
    [summary] = [
        s
        for s in await list_dlqs(KafkaClients(kafka_bootstrap), catalogue)
        if s.agent == "normalize"
    ]
    assert summary.pending == 5  # nothing committed
    again = await redrive(KafkaClients(kafka_bootstrap), group)
    assert again.moved == 5


async def test_redrive_sends_identical_records_to_first_tier_once(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    outs = await _put_dead_letters(kafka_bootstrap, group, MIXED)
    tier = group.retry_tiers[0].topic

    started_ms = int(time.time() * 1000)
    report = await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False, replay_id="op-42")
    finished_ms = int(time.time() * 1000)

    assert (report.moved, report.failed, report.stopped) == (5, 0, None)
    sent = await _read_all(kafka_bootstrap, tier)
    assert len(sent) == 5
    by_key = {m.key: m for m in sent}
    for out in outs:
        copy = by_key[out.key]
        assert copy.value == out.value
        assert copy.partition == out.partition
        headers = tuple(copy.headers)
        assert headers[: len(SOURCE_HEADERS)] == SOURCE_HEADERS
        # Every DLQ header kept, in order, byte for byte; only due/retry-topic/replay-id added.
        assert headers[:-3] == out.headers
        assert h.header_value(headers, h.ATTEMPTS) == h.header_value(out.headers, h.ATTEMPTS)
        due = h.header_int(headers, h.DUE_TIMESTAMP)
        assert due is not None
        assert started_ms <= due <= finished_ms
        assert h.header_value(headers, h.REPLAY_ID) == "op-42"
        assert h.header_value(headers, h.RETRY_TOPIC) == tier

    second = await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)
    assert (second.moved, second.already_redriven) == (0, 5)
    assert len(await _read_all(kafka_bootstrap, tier)) == 5

    await _put_dead_letters(kafka_bootstrap, group, [(1, RetryClass.QUOTA)], first=100)
    third = await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)
    assert (third.moved, third.by_error_class) == (1, {"quota": 1})
    assert len(await _read_all(kafka_bootstrap, tier)) == 6
    [summary] = [
        s
        for s in await list_dlqs(KafkaClients(kafka_bootstrap), catalogue)
        if s.agent == "normalize"
    ]
    assert (summary.records, summary.pending) == (6, 0)


async def test_redrive_by_error_class_leaves_the_others_pending(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    await _put_dead_letters(kafka_bootstrap, group, MIXED)
    tier = group.retry_tiers[0].topic

    permanent = await redrive(
        KafkaClients(kafka_bootstrap), group, dry_run=False, error_class="permanent"
    )
    assert (permanent.moved, permanent.other_class) == (3, 2)
    [summary] = [
        s
        for s in await list_dlqs(KafkaClients(kafka_bootstrap), catalogue)
        if s.agent == "normalize"
    ]
    assert summary.by_error_class == {"transient": 2}

    rest = await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)
    assert (rest.moved, rest.already_redriven, rest.by_error_class) == (2, 3, {"transient": 2})
    sent = await _read_all(kafka_bootstrap, tier)
    assert sorted(h.header_value(m.headers, h.ERROR_CLASS) or "" for m in sent) == [
        "permanent",
        "permanent",
        "permanent",
        "transient",
        "transient",
    ]
    assert (await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)).moved == 0


async def test_redrive_limit_is_a_canary_then_the_rest(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    await _put_dead_letters(kafka_bootstrap, group, MIXED)

    canary = await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False, limit=2)
    rest = await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)

    assert canary.moved == 2
    assert rest.moved == 3
    assert len(await _read_all(kafka_bootstrap, group.retry_tiers[0].topic)) == 5


async def test_redrive_is_rate_limited(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    await _put_dead_letters(kafka_bootstrap, group, MIXED * 2)

    started = time.monotonic()
    report = await redrive(
        KafkaClients(kafka_bootstrap), group, dry_run=False, rate_per_second=10.0
    )
    elapsed = time.monotonic() - started

    assert report.moved == 10
    assert elapsed >= 0.85  # 10 sends at 10/s: the first is free, nine wait 0.1 s each


async def test_redrive_without_tiers_returns_to_the_source_topic(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"), ladders={"normalize": []})
    group = catalogue.normalize
    outs = await _put_dead_letters(kafka_bootstrap, group, [(1, RetryClass.TRANSIENT)])

    report = await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)

    assert not report.target_is_retry_tier
    [copy] = await _read_all(kafka_bootstrap, group.sources[0].name)
    assert (copy.partition, copy.key, copy.value) == (1, outs[0].key, outs[0].value)
    assert h.header_value(copy.headers, h.RETRY_TOPIC) is None
    assert h.header_value(copy.headers, h.REPLAY_ID) == report.replay_id


async def test_retry_relay_runs_a_redriven_record_as_its_next_attempt(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    """The real consumer of the first tier picks the copy up at once, as attempt n + 1."""
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    [out] = await _put_dead_letters(kafka_bootstrap, group, [(1, RetryClass.TRANSIENT)])
    await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)
    ran: list[Record] = []
    stop = asyncio.Event()

    class Recorder:  # stands in for the stage's StageRunner: records what the relay runs
        async def run_until_done(self, records: Sequence[Record]) -> None:
            ran.extend(records)
            stop.set()

    relay = RetryRelay(
        kafka=KafkaClients(kafka_bootstrap),
        group_id=group.retry_group_id,
        tier_topics=[tier.topic for tier in group.retry_tiers],
        runners={group.sources[0].name: Recorder()},  # type: ignore[dict-item]
    )
    task = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.wait_for(stop.wait(), timeout=60)
    finally:
        stop.set()
        await task

    [record] = ran
    assert (record.key, record.value, record.partition) == (out.key, out.value, 1)
    assert attempts_so_far(record) + 1 == 3  # failed twice before the DLQ; this is attempt 3


async def test_refused_records_stay_pending_until_a_later_redrive(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    await _put_dead_letters(kafka_bootstrap, group, MIXED)
    tier = group.retry_topics[0]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:  # a tier that refuses every record: the broker answers RecordTooLarge
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, tier.name, {"max.message.bytes": "64"})]
        )
    finally:
        await admin.close()

    with pytest.raises(RedriveError, match="5 record"):
        await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)
    [summary] = [
        s
        for s in await list_dlqs(KafkaClients(kafka_bootstrap), catalogue)
        if s.agent == "normalize"
    ]
    assert summary.pending == 5

    await ensure_topics(KafkaClients(kafka_bootstrap), [tier])  # back to the catalogue's configs
    assert (await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)).moved == 5


# --- purge ------------------------------------------------------------------------------------


async def test_purge_marks_everything_handled_and_keeps_records(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    await _put_dead_letters(kafka_bootstrap, group, MIXED)

    planned = await purge(KafkaClients(kafka_bootstrap), group)
    assert (planned.dry_run, planned.total) == (True, 5)
    assert (
        await redrive(KafkaClients(kafka_bootstrap), group)
    ).moved == 5  # the dry run changed nothing

    done = await purge(KafkaClients(kafka_bootstrap), group, dry_run=False)
    assert (done.total, done.purged, done.deleted) == (5, {0: 3, 1: 2}, False)
    [summary] = [
        s
        for s in await list_dlqs(KafkaClients(kafka_bootstrap), catalogue)
        if s.agent == "normalize"
    ]
    assert (summary.records, summary.pending) == (5, 0)
    assert (
        len(await read_dlq(KafkaClients(kafka_bootstrap), group.dlq.name, limit=10)) == 5
    )  # still readable
    assert (await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False)).moved == 0

    await _put_dead_letters(kafka_bootstrap, group, [(0, RetryClass.TIMEOUT)], first=50)
    assert (
        await redrive(KafkaClients(kafka_bootstrap), group)
    ).moved == 1  # later arrivals stay pending


async def test_purge_after_partial_redrive_counts_only_pending(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = await _catalogue(kafka_bootstrap, unique_name("t"))
    group = catalogue.normalize
    await _put_dead_letters(kafka_bootstrap, group, MIXED)
    await redrive(KafkaClients(kafka_bootstrap), group, dry_run=False, error_class="transient")

    report = await purge(KafkaClients(kafka_bootstrap), group, dry_run=False, delete=True)

    assert (report.total, report.deleted) == (3, True)
    [summary] = [
        s
        for s in await list_dlqs(KafkaClients(kafka_bootstrap), catalogue)
        if s.agent == "normalize"
    ]
    assert (summary.records, summary.pending) == (0, 0)
    assert await read_dlq(KafkaClients(kafka_bootstrap), group.dlq.name, limit=10) == []


# --- CLI --------------------------------------------------------------------------------------


def _settings(bootstrap: str, namespace: str) -> Settings:
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        topic_namespace=namespace,
        topic_partitions=2,
        retry_ladders=LADDERS,
    )


def _invoke(settings: Settings, args: list[str]) -> Any:
    result = CliRunner().invoke(dlq, args, obj=settings, catch_exceptions=False)
    return result


async def _setup_for_cli(bootstrap: str, namespace: str) -> Catalogue:
    catalogue = await _catalogue(bootstrap, namespace)
    await _put_dead_letters(bootstrap, catalogue.normalize, MIXED)
    return catalogue


# The CLI runs its own event loop (asyncio.run), so these tests are synchronous.
def test_cli_list_show_redrive_purge(kafka_bootstrap: str, unique_name: Callable[..., str]) -> None:
    namespace = unique_name("t")
    catalogue = asyncio.run(_setup_for_cli(kafka_bootstrap, namespace))
    settings = _settings(kafka_bootstrap, namespace)

    listed = _invoke(settings, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = [r for r in json.loads(listed.output) if r["agent"] == "normalize"]
    assert row["pending"] == 5

    text = _invoke(settings, ["list"]).output
    assert "permanent=3, transient=2" in text

    shown = json.loads(_invoke(settings, ["show", "normalize", "--limit", "3", "--json"]).output)
    assert len(shown) == 3
    assert {r["handler"] for r in shown} == {"normalize"}

    dry = _invoke(settings, ["redrive", catalogue.normalize.group_id])
    assert "would send 5 record(s)" in dry.output
    assert "dry run" in dry.output

    sent = _invoke(settings, ["redrive", "normalize", "--execute", "--limit", "1", "--json"])
    assert json.loads(sent.output)["moved"] == 1

    purged = _invoke(settings, ["purge", "normalize", "--execute"])
    assert "purged 4 pending record(s)" in purged.output


def test_cli_rejects_unknown_group(kafka_bootstrap: str, unique_name: Callable[..., str]) -> None:
    settings = _settings(kafka_bootstrap, unique_name("t"))
    result = CliRunner().invoke(dlq, ["show", "nope"], obj=settings)
    assert result.exit_code == 2
    assert "no consumer group 'nope'" in result.output


def test_cli_reports_a_missing_topic_as_an_error(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    settings = _settings(kafka_bootstrap, unique_name("t"))
    result = CliRunner().invoke(dlq, ["redrive", "normalize"], obj=settings)
    assert result.exit_code == 1
    assert "does not exist" in result.output


# --- pure parts -------------------------------------------------------------------------------


def test_progress_round_trips_through_commit_metadata() -> None:
    progress = RedriveProgress(10)
    for offset in (10, 11, 14, 15, 16, 20):
        progress.mark(offset)
    assert progress.base == 12
    assert progress.metadata() == f"{PROGRESS_PREFIX} 14-16,20"
    again = RedriveProgress.parse(progress.base, progress.metadata())
    assert [again.handled(o) for o in range(10, 22)] == [
        o < 12 or o in {14, 15, 16, 20} for o in range(10, 22)
    ]
    again.mark(12)
    again.mark(13)
    assert (again.base, again.metadata()) == (17, f"{PROGRESS_PREFIX} 20")


def test_progress_ignores_foreign_metadata_and_offsets_below_base() -> None:
    assert RedriveProgress.parse(5, "inboxflow-replay").done == set()
    assert RedriveProgress.parse(5, f"{PROGRESS_PREFIX} 1-3,7").done == {7}


def test_progress_refuses_metadata_past_the_broker_limit() -> None:
    progress = RedriveProgress(0)
    offset = 1
    while progress.fits_with(offset):
        progress.mark(offset)
        offset += 2  # every record leaves a hole: one range each
    assert len(progress.metadata()) <= 3000
    assert progress.fits_with(offset - 1)  # extending a range costs nothing


def test_redrive_headers_replace_only_due_topic_and_replay_id() -> None:
    headers = (("trace", b"t"), (h.ATTEMPTS, b"3"), (h.DUE_TIMESTAMP, b"1"), (h.REPLAY_ID, b"old"))
    out = redrive_headers(headers, retry_topic="ns.normalize.retry.5s", replay_id="r", now_ms=9)
    assert out == [
        ("trace", b"t"),
        (h.ATTEMPTS, b"3"),
        (h.DUE_TIMESTAMP, b"9"),
        (h.RETRY_TOPIC, b"ns.normalize.retry.5s"),
        (h.REPLAY_ID, b"r"),
    ]


def test_redrive_target_is_the_first_tier_or_the_original_source() -> None:
    catalogue = build_catalogue("ns", retry_ladders={"normalize": [5, 30], "sync": []})
    letter = DeadLetter(
        "ns.sync.dlq",
        0,
        0,
        0,
        None,
        0,
        ((h.ORIGINAL_TOPIC, catalogue.message_discovered.name.encode()),),
    )
    assert redrive_target(catalogue.normalize, letter) == ("ns.normalize.retry.5s", True)
    assert redrive_target(catalogue.sync, letter) == (catalogue.message_discovered.name, False)
    bare = DeadLetter("ns.sync.dlq", 0, 0, 0, None, 0, ())
    assert redrive_target(catalogue.sync, bare) == (catalogue.sync_requested.name, False)


@pytest.mark.parametrize("rate", [0.0, -1.0])
async def test_redrive_refuses_a_rate_that_is_not_positive(rate: float) -> None:
    group = build_catalogue("ns", retry_ladders=LADDERS).normalize
    with pytest.raises(ValueError, match="positive"):  # before any connection: no broker here
        await redrive(KafkaClients("127.0.0.1:1"), group, dry_run=False, rate_per_second=rate)
