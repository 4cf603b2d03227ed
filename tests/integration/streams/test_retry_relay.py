"""The retry relay on a real broker: nothing runs before its due time, nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer

from schemas import headers as h
from schemas.errors import TransientError
from schemas.models import JobKind
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.retry_relay import RetryRelay
from streams.runtime.runner import StageRunner
from streams.runtime.stage import JobRef, Outcome, Record
from tests.helpers import async_wait_until
from tests.integration.devstack.test_devstack import read_all
from topics.admin import ensure_topics
from topics.catalogue import build_catalogue
from topics.kafka import KafkaClients


class RecordingStage:
    """Remembers when each record ran; fails the values it is told to fail once."""

    name = "normalize"
    kind = JobKind.NORMALIZE_GOOGLE_EMAIL
    phase = 0
    timeout = 10.0

    def __init__(self, fail_once: set[bytes]) -> None:
        self.ran: dict[bytes, list[float]] = {}
        self.fail_once = set(fail_once)

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        return []

    def job_of(self, record: Record) -> JobRef | None:
        return None

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        outcomes = []
        for record in records:
            self.ran.setdefault(record.value, []).append(time.time())
            if record.value in self.fail_once:
                self.fail_once.discard(record.value)
                outcomes.append(Outcome(error=TransientError("flaky")))
            else:
                outcomes.append(Outcome())
        return outcomes


async def test_records_run_at_their_due_time_and_failures_climb_the_ladder(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    catalogue = build_catalogue(unique_name("t"), partitions=2, retry_ladders={"normalize": [1, 2]})
    await ensure_topics(KafkaClients(kafka_bootstrap), catalogue.topics)
    group = catalogue.normalize
    first_tier = group.retry_tiers[0].topic
    stage = RecordingStage(fail_once={b"flaky"})
    publisher = KafkaPublisher(KafkaClients(kafka_bootstrap))
    runner = StageRunner(
        stage, group, job_topic=catalogue.job_state_changed.name, publisher=publisher
    )
    now = time.time()
    # Due times out of order within a partition: a later record is due earlier.
    due = {b"late": now + 3.0, b"early": now + 0.5, b"flaky": now + 0.2, b"other": now + 1.0}
    partition = {b"late": 0, b"early": 0, b"flaky": 1, b"other": 1}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for value in (b"late", b"early", b"flaky", b"other"):
            headers = [
                (h.ORIGINAL_TOPIC, catalogue.message_fetched.name.encode()),
                (h.ATTEMPTS, b"1"),
                (h.DUE_TIMESTAMP, str(int(due[value] * 1000)).encode()),
            ]
            await producer.send_and_wait(
                first_tier, value, key=b"u", partition=partition[value], headers=headers
            )
    finally:
        await producer.stop()

    relay = RetryRelay(
        kafka=KafkaClients(kafka_bootstrap),
        group_id=group.retry_group_id,
        tier_topics=[tier.topic for tier in group.retry_tiers],
        runners={catalogue.message_fetched.name: runner},
        session_timeout=6,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await async_wait_until(
            lambda: len(stage.ran) == 4 and len(stage.ran[b"flaky"]) == 2,
            timeout=60,
            message="every record ran, the flaky one twice",
        )
    finally:
        stop.set()
        await task
        await publisher.stop()

    for value, times in stage.ran.items():
        assert times[0] >= due[value] - 0.01, f"{value!r} ran {due[value] - times[0]:.3f}s early"
    assert sorted(len(times) for times in stage.ran.values()) == [1, 1, 1, 2]
    # A paused partition holds up nobody else: partition 1 ran while partition 0 waited.
    assert stage.ran[b"other"][0] < due[b"late"]
    # Order within a partition holds: "early" sits behind "late", so it waits for it.
    assert stage.ran[b"early"][0] >= stage.ran[b"late"][0]
    # The flaky record went to the next tier with its attempt count, and ran again when due.
    second_tier = await read_all(kafka_bootstrap, group.retry_tiers[1].topic, 1)
    forwarded = second_tier[0]
    assert forwarded.value == b"flaky"
    assert forwarded.partition == 1
    assert h.header_int(list(forwarded.headers), h.ATTEMPTS) == 2
    retried_due = h.header_int(list(forwarded.headers), h.DUE_TIMESTAMP)
    assert retried_due is not None
    assert stage.ran[b"flaky"][1] >= retried_due / 1000 - 0.01
