"""StageRunner without a broker: outputs, job states, retry tiers and dead letters it publishes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
)
from prometheus_client import CollectorRegistry

from schemas import headers as h
from schemas.errors import PermanentError, RetryClass, RetryPolicy, TransientError
from schemas.models import ErrorClass, JobKind, JobStateChanged, JobStatus
from schemas.serde import decode
from streams.runtime.metrics import AgentMetrics
from streams.runtime.runner import StageRunner
from streams.runtime.stage import JobRef, Outcome, Outgoing, Record, Stage
from tests.helpers import async_wait_until
from tests.memory_publisher import MemoryPublisher
from topics.catalogue import build_catalogue

CATALOGUE = build_catalogue("unit")
GROUP = CATALOGUE.normalize
SOURCE = CATALOGUE.message_fetched.name
OUTPUT = CATALOGUE.email_normalized.name
JOBS = CATALOGUE.job_state_changed.name
TIERS = [tier.topic for tier in GROUP.retry_tiers]
DLQ = GROUP.dlq.name
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TRANSIENT_BUDGET = RetryPolicy.default().max_attempts[RetryClass.TRANSIENT]


def record(
    offset: int,
    value: bytes,
    *,
    partition: int = 0,
    topic: str = SOURCE,
    key: bytes = b"user-1",
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Record:
    return Record(topic, partition, offset, 1_767_000_000_000 + offset, key, value, headers)


class ScriptedStage:
    """Outputs ``out:<value>`` for each record unless its value is scripted to fail."""

    name = "normalize"
    kind = JobKind.NORMALIZE_GOOGLE_EMAIL
    phase = 0

    def __init__(
        self, errors: dict[bytes, BaseException] | None = None, *, timeout: float = 5.0
    ) -> None:
        self.errors = errors or {}
        self.timeout = timeout
        self.batches: list[list[Record]] = []

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        return []

    def job_of(self, record: Record) -> JobRef | None:
        return JobRef((record.key or b"").decode(), record.value.decode(errors="replace"), "s-1")

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        self.batches.append(list(records))
        return [self._outcome(r) for r in records]

    def _outcome(self, r: Record) -> Outcome:
        if r.value in self.errors:
            return Outcome(error=self.errors[r.value])
        return Outcome(outputs=[Outgoing(OUTPUT, r.key or b"", b"out:" + r.value)])


class HangingStage(ScriptedStage):
    """Never finishes a batch; notes that it was cancelled."""

    def __init__(self) -> None:
        super().__init__(timeout=0.01)
        self.cancelled = False

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


class RaisingStage(ScriptedStage):
    """Raises from ``process`` itself: the whole batch fails."""

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        raise TransientError("database restarting")


def runner(
    stage: Stage, publisher: MemoryPublisher, *, processing_state_after: float = 0
) -> StageRunner:
    """A runner whose jobs say `processing` at once (unless told to wait), as they did always."""
    return StageRunner(
        stage,
        GROUP,
        job_topic=JOBS,
        publisher=publisher,
        clock=lambda: NOW,
        metrics=AgentMetrics(CollectorRegistry()),
        processing_state_after=processing_state_after,
    )


def states(publisher: MemoryPublisher) -> list[JobStateChanged]:
    return [decode(r.value, JobStateChanged) for r in publisher.on(JOBS)]


def states_of(publisher: MemoryPublisher, subject: str) -> list[JobStateChanged]:
    return [s for s in states(publisher) if s.subject_id == subject]


def failure_topics(publisher: MemoryPublisher) -> dict[str, list[Outgoing]]:
    return {t: publisher.on(t) for t in (*TIERS, DLQ) if publisher.on(t)}


# --- success -------------------------------------------------------------------------------------


async def test_success_publishes_outputs_and_processing_then_done_with_rising_versions() -> None:
    publisher = MemoryPublisher()
    await runner(ScriptedStage(), publisher).run([record(7, b"m-1")])

    topics = [r.topic for r in publisher.records]
    assert topics == [JOBS, OUTPUT, JOBS]  # processing goes out before the stage's results
    assert publisher.on(OUTPUT) == [Outgoing(OUTPUT, b"user-1", b"out:m-1")]
    processing, done = states(publisher)
    assert (processing.status, done.status) == (JobStatus.PROCESSING, JobStatus.DONE)
    assert processing.version < done.version
    for state in (processing, done):
        assert state.job_id == "normalize_google_email:user-1:m-1"
        assert state.user_id == "user-1"
        assert state.batch_id == "s-1"
        assert state.attempts == 1
        assert state.last_error is None
        assert state.occurred_at == datetime.fromtimestamp(NOW, UTC)
    assert publisher.on(JOBS)[0].key == b"user-1"
    assert failure_topics(publisher) == {}


async def test_a_batch_processed_early_publishes_only_once_the_batch_before_it_is_done() -> None:
    publisher = MemoryPublisher()
    stage = ScriptedStage()
    before: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    second = asyncio.create_task(runner(stage, publisher).run([record(8, b"m-2")], after=before))
    await async_wait_until(lambda: len(stage.batches) == 1, timeout=10.0, interval=0.005)
    for _ in range(50):  # turns of the loop in which it could have published
        await asyncio.sleep(0)

    assert publisher.on(OUTPUT) == []  # processed, waiting for the batch before it
    before.set_result(None)
    await asyncio.wait_for(second, timeout=10.0)
    assert publisher.on(OUTPUT) == [Outgoing(OUTPUT, b"user-1", b"out:m-2")]


async def test_a_batch_cancelled_while_it_waits_leaves_the_batch_before_it_running() -> None:
    stage = ScriptedStage()
    before: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(
        runner(stage, MemoryPublisher()).run([record(8, b"m-2")], after=before)
    )
    await async_wait_until(lambda: len(stage.batches) == 1, timeout=10.0, interval=0.005)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not before.cancelled()


async def test_after_publish_hook_runs_once_outputs_are_acked_and_its_failure_is_swallowed() -> (
    None
):
    seen: list[int] = []

    async def checkpoint() -> None:
        seen.append(len(publisher.on(OUTPUT)))
        raise RuntimeError("checkpoint store down")

    class HookStage(ScriptedStage):
        async def process(self, records: Sequence[Record]) -> list[Outcome]:
            outcomes = await super().process(records)
            for outcome in outcomes:
                outcome.after_publish = checkpoint
            return outcomes

    publisher = MemoryPublisher()
    await runner(HookStage({b"bad": PermanentError("x")}), publisher).run(
        [record(1, b"a"), record(2, b"bad")]
    )

    assert seen == [1]  # only the successful record's hook, after its output was published
    assert [s.status for s in states_of(publisher, "a")][-1] is JobStatus.DONE


async def test_a_transient_after_publish_failure_is_retried_until_it_succeeds() -> None:
    """A sync's checkpoint that fails on a Postgres restart is stored before the batch ends."""
    calls: list[str] = []

    class CheckpointStage(ScriptedStage):
        def _outcome(self, r: Record) -> Outcome:
            outcome = super()._outcome(r)
            value = r.value or b""

            async def checkpoint() -> None:
                calls.append(value.decode())
                if calls.count(value.decode()) < 3:
                    raise TransientError("agent state database unavailable")

            outcome.after_publish = checkpoint
            return outcome

    publisher = MemoryPublisher()
    await runner(CheckpointStage(), publisher).run([record(1, b"first"), record(2, b"second")])

    assert calls == ["first", "first", "first", "second", "second", "second"]


async def test_an_after_publish_step_failing_past_its_bound_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streams.runtime.runner.AFTER_PUBLISH_RETRY_SECONDS", 0.0)
    calls: list[int] = []

    class DownStage(ScriptedStage):
        def _outcome(self, r: Record) -> Outcome:
            outcome = super()._outcome(r)

            async def checkpoint() -> None:
                calls.append(1)
                raise TransientError("still down")

            outcome.after_publish = checkpoint
            return outcome

    publisher = MemoryPublisher()
    await runner(DownStage(), publisher).run([record(1, b"a")])

    assert calls == [1]
    assert [s.status for s in states_of(publisher, "a")][-1] is JobStatus.DONE


# --- failures ------------------------------------------------------------------------------------


async def test_transient_error_forwards_the_record_unchanged_to_the_first_retry_tier() -> None:
    source = record(
        41, b"\xc3\x01payload", partition=3, key=b"user-9", headers=(("traceparent", b"00-ab"),)
    )
    publisher = MemoryPublisher()
    stage = ScriptedStage({source.value: TransientError("gmail answered 503")})
    await runner(stage, publisher).run([source])

    assert list(failure_topics(publisher)) == [TIERS[0]]
    (forwarded,) = publisher.on(TIERS[0])
    assert (forwarded.key, forwarded.value, forwarded.partition) == (b"user-9", source.value, 3)
    assert forwarded.headers[: len(source.headers)] == source.headers
    added = dict(forwarded.headers)
    assert added[h.ATTEMPTS] == b"1"
    assert added[h.ORIGINAL_TOPIC] == SOURCE.encode()
    assert added[h.ORIGINAL_PARTITION] == b"3"
    assert added[h.ORIGINAL_OFFSET] == b"41"
    assert added[h.ORIGINAL_TIMESTAMP] == str(source.timestamp_ms).encode()
    assert added[h.ORIGINAL_CONSUMER_GROUP] == GROUP.group_id.encode()
    assert added[h.FIRST_FAILURE_TIMESTAMP] == str(int(NOW * 1000)).encode()
    assert added[h.ERROR_CLASS] == b"transient"
    assert b"gmail answered 503" in added[h.EXCEPTION_MESSAGE]
    assert added[h.HANDLER] == b"normalize"
    assert added[h.RETRY_TOPIC] == TIERS[0].encode()
    delay = GROUP.retry_tiers[0].delay_seconds
    due_ms = int(added[h.DUE_TIMESTAMP])
    assert (NOW + delay * 0.8) * 1000 <= due_ms <= (NOW + delay * 1.2) * 1000  # tier delay ±20 %
    processing, retrying = states_of(publisher, source.value.decode(errors="replace"))
    assert processing.status is JobStatus.PROCESSING
    assert retrying.status is JobStatus.RETRYING
    assert retrying.version > processing.version
    assert retrying.attempts == 1
    assert retrying.last_error_class is ErrorClass.TRANSIENT
    assert "gmail answered 503" in (retrying.last_error or "")
    assert publisher.on(OUTPUT) == []


@pytest.mark.parametrize(
    "error", [PermanentError("unknown label"), ValueError("a bug")], ids=["permanent", "bug"]
)
async def test_permanent_error_goes_to_the_dead_letter_topic_with_status_error(
    error: Exception,
) -> None:
    publisher = MemoryPublisher()
    await runner(ScriptedStage({b"m-1": error}), publisher).run([record(5, b"m-1")])

    assert list(failure_topics(publisher)) == [DLQ]
    (dead,) = publisher.on(DLQ)
    headers = dict(dead.headers)
    assert dead.value == b"m-1"
    assert headers[h.ERROR_CLASS] == b"permanent"
    assert headers[h.ATTEMPTS] == b"1"
    assert h.DUE_TIMESTAMP not in headers
    final = states_of(publisher, "m-1")[-1]
    assert final.status is JobStatus.ERROR
    assert final.last_error_class is ErrorClass.PERMANENT


@pytest.mark.parametrize(
    ("attempts_before", "topic", "status"),
    [
        (1, TIERS[1], JobStatus.RETRYING),  # second failure: the next tier up
        (TRANSIENT_BUDGET - 2, TIERS[-1], JobStatus.RETRYING),  # one attempt left
        (TRANSIENT_BUDGET - 1, DLQ, JobStatus.DEAD),  # the last attempt failed
        (TRANSIENT_BUDGET, DLQ, JobStatus.DEAD),  # header already at the budget
    ],
)
async def test_retried_record_climbs_the_ladder_then_is_dead_when_the_budget_is_spent(
    attempts_before: int, topic: str, status: JobStatus
) -> None:
    first_failure = (
        (h.ORIGINAL_TOPIC, SOURCE.encode()),
        (h.ORIGINAL_PARTITION, b"2"),
        (h.ORIGINAL_OFFSET, b"99"),
        (h.FIRST_FAILURE_TIMESTAMP, b"1000"),
        (h.ATTEMPTS, str(attempts_before).encode()),
        (h.ERROR_CLASS, b"transient"),
        (h.DUE_TIMESTAMP, b"1"),
    )
    retried = record(3, b"m-1", partition=2, topic=TIERS[0], headers=first_failure)
    publisher = MemoryPublisher()
    await runner(ScriptedStage({b"m-1": TransientError("still down")}), publisher).run([retried])

    assert list(failure_topics(publisher)) == [topic]
    (forwarded,) = publisher.on(topic)
    pairs = list(forwarded.headers)
    assert h.header_int(pairs, h.ATTEMPTS) == attempts_before + 1
    assert [k for k, _ in pairs].count(h.ATTEMPTS) == 1  # replaced, not appended
    assert [k for k, _ in pairs].count(h.ORIGINAL_TOPIC) == 1  # the first failure's, kept
    assert h.header_value(pairs, h.ORIGINAL_OFFSET) == "99"
    assert h.header_value(pairs, h.FIRST_FAILURE_TIMESTAMP) == "1000"
    assert (h.DUE_TIMESTAMP in dict(pairs)) is (topic != DLQ)
    processing, final = states_of(publisher, "m-1")
    assert processing.attempts == final.attempts == attempts_before + 1
    assert final.status is status
    assert final.last_error_class is ErrorClass.TRANSIENT
    assert final.version > processing.version


async def test_a_stage_past_its_timeout_fails_every_record_of_the_batch_as_timeout() -> None:
    stage = HangingStage()
    publisher = MemoryPublisher()
    await runner(stage, publisher).run([record(1, b"a"), record(2, b"b"), record(3, b"c")])

    assert stage.cancelled
    forwarded = publisher.on(TIERS[0])
    assert [r.value for r in forwarded] == [b"a", b"b", b"c"]
    assert {dict(r.headers)[h.ERROR_CLASS] for r in forwarded} == {b"timeout"}
    finals = [s for s in states(publisher) if s.status is not JobStatus.PROCESSING]
    assert sorted(s.subject_id for s in finals) == ["a", "b", "c"]
    assert {(s.status, s.last_error_class) for s in finals} == {
        (JobStatus.RETRYING, ErrorClass.TIMEOUT)
    }
    assert publisher.on(OUTPUT) == []


async def test_one_bad_record_does_not_fail_its_neighbours() -> None:
    publisher = MemoryPublisher()
    stage = ScriptedStage({b"bad": PermanentError("cannot parse")})
    await runner(stage, publisher).run(
        [record(10, b"ok-1"), record(11, b"bad"), record(12, b"ok-2")]
    )

    assert [r.value for r in publisher.on(OUTPUT)] == [b"out:ok-1", b"out:ok-2"]
    assert [r.value for r in publisher.on(DLQ)] == [b"bad"]
    assert publisher.on(TIERS[0]) == []
    assert states_of(publisher, "ok-1")[-1].status is JobStatus.DONE
    assert states_of(publisher, "ok-2")[-1].status is JobStatus.DONE
    assert states_of(publisher, "bad")[-1].status is JobStatus.ERROR


async def test_an_exception_raised_by_process_fails_each_record_of_the_batch_alike() -> None:
    publisher = MemoryPublisher()
    await runner(RaisingStage(), publisher).run([record(1, b"a"), record(2, b"b")])

    assert [r.value for r in publisher.on(TIERS[0])] == [b"a", b"b"]
    assert [s.status for s in states(publisher)][-2:] == [JobStatus.RETRYING] * 2


# --- ordering ------------------------------------------------------------------------------------


async def test_records_of_each_partition_stay_in_offset_order() -> None:
    shuffled = [
        record(5, b"p1-5", partition=1),
        record(3, b"p0-3", partition=0),
        record(4, b"p1-4", partition=1),
        record(1, b"p0-1", partition=0),
        record(2, b"p0-2", partition=0),
    ]
    stage = ScriptedStage()
    publisher = MemoryPublisher()
    await runner(stage, publisher).run(shuffled)

    batches = sorted(([r.value for r in batch] for batch in stage.batches), key=lambda b: b[0])
    assert batches == [[b"p0-1", b"p0-2", b"p0-3"], [b"p1-4", b"p1-5"]]
    outputs = [r.value for r in publisher.on(OUTPUT)]
    assert [v for v in outputs if v.startswith(b"out:p0")] == [
        b"out:p0-1",
        b"out:p0-2",
        b"out:p0-3",
    ]
    assert [v for v in outputs if v.startswith(b"out:p1")] == [b"out:p1-4", b"out:p1-5"]


async def test_a_slow_partition_does_not_hold_up_another() -> None:
    other_partition_done = asyncio.Event()

    class WaitsForPartitionOne(ScriptedStage):
        async def process(self, records: Sequence[Record]) -> list[Outcome]:
            if records[0].partition == 0:
                await other_partition_done.wait()  # run one partition at a time: times out
            outcomes = await super().process(records)
            if records[0].partition == 1:
                other_partition_done.set()
            return outcomes

    publisher = MemoryPublisher()
    await runner(WaitsForPartitionOne(timeout=2.0), publisher).run(
        [record(1, b"p0", partition=0), record(1, b"p1", partition=1)]
    )

    assert sorted(r.value for r in publisher.on(OUTPUT)) == [b"out:p0", b"out:p1"]
    assert failure_topics(publisher) == {}


async def test_a_partition_that_fails_cancels_its_siblings_before_run_returns() -> None:
    release = asyncio.Event()
    cancelled: list[int] = []

    class HangsOnPartitionOne(ScriptedStage):
        async def process(self, records: Sequence[Record]) -> list[Outcome]:
            if records[0].partition == 1:
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    cancelled.append(1)
                    raise
            return await super().process(records)

    class BrokenPublisher(MemoryPublisher):
        async def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
            if any(r.topic == OUTPUT for r in records):
                raise RuntimeError("bug in the producer path")
            return await super().send(records)

    with pytest.raises(ExceptionGroup):
        await runner(HangsOnPartitionOne(), BrokenPublisher()).run(
            [record(1, b"p0", partition=0), record(1, b"p1", partition=1)]
        )
    # Had partition 1 kept running, run_until_done's next try would process it twice at once.
    assert cancelled == [1]


# --- publishing ----------------------------------------------------------------------------------


def output_of(value: bytes) -> Callable[[Outgoing], bool]:
    return lambda out: out.topic == OUTPUT and out.value == b"out:" + value


async def test_a_result_refused_for_good_dead_letters_its_own_source_only() -> None:
    publisher = MemoryPublisher()
    too_large = MessageSizeTooLargeError("result over max.message.bytes")
    publisher.refuse(output_of(b"a"), lambda: too_large)
    sources = [record(1, b"a", headers=(("trace", b"t1"),)), record(2, b"b")]
    await runner(ScriptedStage(), publisher).run(sources)

    assert [r.value for r in publisher.on(OUTPUT)] == [b"out:b"]  # b's result stands, once
    dead = publisher.on(DLQ)
    assert [(r.key, r.value) for r in dead] == [(b"user-1", b"a")]
    assert dead[0].headers[0] == ("trace", b"t1")
    headers = dict(dead[0].headers)
    assert headers[h.ERROR_CLASS] == b"permanent"
    assert b"results refused by Kafka" in headers[h.EXCEPTION_MESSAGE]
    finals = [s for s in states(publisher) if s.status is not JobStatus.PROCESSING]
    assert sorted((s.subject_id, s.status) for s in finals) == [
        ("a", JobStatus.ERROR),
        ("b", JobStatus.DONE),
    ]


async def test_a_refused_record_does_not_run_its_after_publish_hook() -> None:
    ran: list[bytes] = []

    class Checkpointing(ScriptedStage):
        def _outcome(self, r: Record) -> Outcome:
            async def checkpoint() -> None:
                ran.append(r.value)

            outcome = super()._outcome(r)
            outcome.after_publish = checkpoint
            return outcome

    publisher = MemoryPublisher()
    publisher.refuse(output_of(b"a"), lambda: MessageSizeTooLargeError("too large"))
    await runner(Checkpointing(), publisher).run([record(1, b"a"), record(2, b"b")])

    assert ran == [b"b"]  # a sync must not checkpoint past results that never reached Kafka


async def test_a_refused_dead_letter_backs_off_and_shows_in_a_metric_instead_of_spinning() -> None:
    publisher = MemoryPublisher()
    refused = KafkaError("topic authorization failed")  # not retriable
    publisher.refuse(lambda out: out.topic in (OUTPUT, DLQ), lambda: refused, times=None)
    registry = CollectorRegistry()
    stage_runner = runner(ScriptedStage(), publisher)
    stage_runner.metrics = AgentMetrics(registry)
    task = asyncio.create_task(stage_runner.run([record(1, b"a")]))

    def blocked() -> float | None:
        labels = {"group": GROUP.group_id, "stage": "normalize"}
        return registry.get_sample_value("inboxflow_agent_blocked_partitions", labels)

    await async_wait_until(lambda: blocked() == 1, timeout=10, message="blocked gauge at 1")
    sends_while_blocked = len(publisher.calls)
    await asyncio.sleep(0.2)  # a spinning loop would send thousands of times in 0.2 s
    assert len(publisher.calls) - sends_while_blocked <= 2
    assert not task.done()  # the source is never acked while its dead letter is refused
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert blocked() == 0


@pytest.mark.parametrize(
    "error",
    [lambda: KafkaTimeoutError(), lambda: KafkaConnectionError("broker gone")],
    ids=["timeout", "retriable"],
)
async def test_a_retriable_publish_failure_is_retried_until_acked(
    error: Callable[[], BaseException],
) -> None:
    publisher = MemoryPublisher()
    publisher.refuse(output_of(b"a"), error)  # the runner waits about 0.5 s before trying again
    await runner(ScriptedStage(), publisher).run([record(1, b"a"), record(2, b"b")])

    # b went through the first time; it goes again after a, so the last copies keep the order.
    assert [r.value for r in publisher.on(OUTPUT)] == [b"out:b", b"out:a", b"out:b"]
    assert [s.status for s in states_of(publisher, "a")] == [JobStatus.PROCESSING, JobStatus.DONE]
    assert failure_topics(publisher) == {}
    # A job is reported done only once its result is in: a's done comes after out:a.
    written = [(r.topic, r.value) for r in publisher.records]
    done_a = next(
        i
        for i, r in enumerate(publisher.records)
        if r.topic == JOBS
        and decode(r.value, JobStateChanged).status is JobStatus.DONE
        and decode(r.value, JobStateChanged).subject_id == "a"
    )
    assert written.index((OUTPUT, b"out:a")) < done_a


class SlowStage(ScriptedStage):
    """Works until ``release`` is set; notes when it began and whether it was cancelled."""

    def __init__(self) -> None:
        super().__init__(timeout=60)
        self.release = asyncio.Event()
        self.began = False
        self.cancelled = False

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        self.began = True
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return await super().process(records)


async def test_a_quick_first_attempt_goes_from_queued_straight_to_done() -> None:
    publisher = MemoryPublisher()
    await runner(ScriptedStage(), publisher, processing_state_after=30).run([record(7, b"m-1")])

    assert [r.topic for r in publisher.records] == [OUTPUT, JOBS]
    assert [s.status for s in states(publisher)] == [JobStatus.DONE]


async def test_a_long_first_attempt_says_processing_dated_when_it_began() -> None:
    publisher = MemoryPublisher()
    stage = SlowStage()
    times = [NOW]
    slow = StageRunner(
        stage,
        GROUP,
        job_topic=JOBS,
        publisher=publisher,
        clock=lambda: times[0],
        metrics=AgentMetrics(CollectorRegistry()),
        processing_state_after=0.05,
    )
    run = asyncio.create_task(slow.run([record(7, b"m-1")]))
    await async_wait_until(lambda: stage.began, timeout=5, message="the stage at work")
    times[0] = NOW + 5

    await async_wait_until(lambda: states(publisher), timeout=5, message="a processing state")
    stage.release.set()
    await asyncio.wait_for(run, 5)

    processing, done = states(publisher)
    assert (processing.status, done.status) == (JobStatus.PROCESSING, JobStatus.DONE)
    assert processing.occurred_at.timestamp() == NOW
    assert done.occurred_at.timestamp() == NOW + 5
    assert processing.version < done.version


async def test_a_retry_says_processing_at_once() -> None:
    failed_once = (
        (h.ORIGINAL_TOPIC, SOURCE.encode()),
        (h.ORIGINAL_PARTITION, b"0"),
        (h.ORIGINAL_OFFSET, b"7"),
        (h.FIRST_FAILURE_TIMESTAMP, b"1000"),
        (h.ATTEMPTS, b"1"),
        (h.ERROR_CLASS, b"transient"),
        (h.DUE_TIMESTAMP, b"1"),
    )
    retried = record(3, b"m-1", topic=TIERS[0], headers=failed_once)
    publisher = MemoryPublisher()
    await runner(ScriptedStage(), publisher, processing_state_after=30).run([retried])

    assert [(s.status, s.attempts) for s in states(publisher)] == [
        (JobStatus.PROCESSING, 2),
        (JobStatus.DONE, 2),
    ]


async def test_a_batch_cancelled_before_it_said_processing_stops_the_stage() -> None:
    publisher = MemoryPublisher()
    stage = SlowStage()
    run = asyncio.create_task(
        runner(stage, publisher, processing_state_after=30).run([record(7, b"m-1")])
    )
    await async_wait_until(lambda: stage.began, timeout=5, message="the stage at work")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    await async_wait_until(lambda: stage.cancelled, timeout=5, message="the stage cancelled")
    assert publisher.records == []


async def test_processing_states_are_best_effort_when_kafka_refuses_them() -> None:
    publisher = MemoryPublisher()
    publisher.fail_send(1, lambda: KafkaConnectionError("broker gone"))
    await runner(ScriptedStage(), publisher).run([record(1, b"a")])

    assert [r.value for r in publisher.on(OUTPUT)] == [b"out:a"]
    assert [s.status for s in states(publisher)] == [JobStatus.DONE]


async def test_a_processing_state_refused_for_good_fails_nothing() -> None:
    publisher = MemoryPublisher()
    publisher.refuse(
        lambda out: out.topic == JOBS, lambda: MessageSizeTooLargeError("too large"), times=2
    )
    await runner(ScriptedStage(), publisher).run([record(1, b"a"), record(2, b"b")])

    assert [r.value for r in publisher.on(OUTPUT)] == [b"out:a", b"out:b"]
    assert [s.status for s in states(publisher)] == [JobStatus.DONE, JobStatus.DONE]
    assert failure_topics(publisher) == {}
