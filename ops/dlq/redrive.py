"""Redrive: send a group's dead letters back to be retried, paced, each record at most once.

Follows Uber's DLQ tooling: a redrive sends dead letters to the group's *first retry tier*, so
they are retried by the retry relay and never queue in front of live traffic; a group without
retry tiers gets them back on the source topic they came from (``x-original-topic``). Key, value
and headers stay byte-identical except ``x-due-ts`` (now: due at once), ``x-retry-topic`` and a
new ``x-replay-id``; ``x-attempts`` is kept, so the next attempt is attempts + 1 and the job
version in Postgres keeps moving forward. Sends are paced by an ``aiolimiter.AsyncLimiter`` and a
record is marked handled (``ops.dlq.progress``) only after the broker acknowledged its copy
(acks=all, idempotent producer). The tool assigns partitions itself (it never joins the group):
run one redrive or purge of a DLQ at a time. This is the only ``ops`` module that produces; it
must not commit progress past a record that was not acknowledged, nor delete records.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiolimiter import AsyncLimiter

from ops.dlq.letters import DeadLetter, dead_letter_from, scan
from ops.dlq.progress import RedriveProgress, load_progress, redrive_group_id
from ops.offsets import OPERATOR_CLIENT_ID, commit_offsets, topic_partitions
from schemas import headers as h
from schemas.errors import PermanentError
from topics.catalogue import ConsumerGroup
from topics.kafka import KafkaClients

logger = logging.getLogger(__name__)

REDRIVE_CLIENT_ID = "inboxflow-redrive"
"""Client id of the producer that sends the copies."""

_REPLACED_ON_REDRIVE = frozenset({h.DUE_TIMESTAMP, h.RETRY_TOPIC, h.REPLAY_ID})


class RedriveError(PermanentError):
    """A redrive could not send every record; the ones acknowledged are marked done."""


def redrive_headers(
    headers: Sequence[tuple[str, bytes]], *, retry_topic: str | None, replay_id: str, now_ms: int
) -> list[tuple[str, bytes]]:
    """Return a dead letter's headers for its redrive: all kept in order, due now. Pure.

    ``x-due-ts``, ``x-retry-topic`` and ``x-replay-id`` are replaced; ``x-attempts``, the
    original-* and error headers and the source record's own headers stay byte-identical.
    """
    kept = [(k, v) for k, v in headers if k not in _REPLACED_ON_REDRIVE]
    kept.append((h.DUE_TIMESTAMP, h.encode_text(now_ms)))
    if retry_topic is not None:
        kept.append((h.RETRY_TOPIC, h.encode_text(retry_topic)))
    kept.append((h.REPLAY_ID, h.encode_text(replay_id)))
    return kept


def redrive_target(group: ConsumerGroup, letter: DeadLetter) -> tuple[str, bool]:
    """Return where a dead letter is redriven and whether that is a retry tier. Pure.

    The first retry tier; a group without tiers gets the record back on its original source.
    """
    if group.retry_tiers:
        return group.retry_tiers[0].topic, True
    sources = [source.name for source in group.sources]
    original = letter.original_topic
    return (original if original in sources else sources[0]), False


@dataclass
class RedriveReport:
    """What a redrive sent (or, dry run, would send) and what it left."""

    group_id: str
    dlq_topic: str
    target_topic: str
    target_is_retry_tier: bool
    replay_id: str
    dry_run: bool
    moved: int = 0  # sent and acknowledged (dry run: would be sent)
    already_redriven: int = 0  # handled by an earlier redrive or purge: skipped
    other_class: int = 0  # left in the DLQ by the error-class filter
    failed: int = 0
    stopped: str | None = None  # why it ended before the end of the DLQ
    by_error_class: Counter[str] = field(default_factory=Counter)
    by_partition: Counter[int] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "group_id": self.group_id,
            "dlq_topic": self.dlq_topic,
            "target_topic": self.target_topic,
            "target_is_retry_tier": self.target_is_retry_tier,
            "replay_id": self.replay_id,
            "dry_run": self.dry_run,
            "moved": self.moved,
            "already_redriven": self.already_redriven,
            "other_class": self.other_class,
            "failed": self.failed,
            "stopped": self.stopped,
            "by_error_class": dict(sorted(self.by_error_class.items())),
            "by_partition": {str(p): n for p, n in sorted(self.by_partition.items())},
        }


_Letter = tuple[DeadLetter, bytes | None]  # the view drops the value; a redrive needs the bytes


@dataclass
class _Redrive:
    """State of one redrive run; one instance per call."""

    group: ConsumerGroup
    report: RedriveReport
    progress: dict[TopicPartition, RedriveProgress]
    error_class: str | None
    limit: int | None
    limiter: AsyncLimiter
    producer: AIOKafkaProducer | None
    clock: Callable[[], float]
    full: set[TopicPartition] = field(default_factory=set)  # progress metadata at its limit

    def at_limit(self) -> bool:
        return self.limit is not None and self.report.moved >= self.limit

    def select(self, batch: list[Any]) -> list[_Letter]:
        """Return the records of ``batch`` to send, with their values, counting those skipped."""
        chosen: list[_Letter] = []
        for message in batch:
            letter = dead_letter_from(message)
            tp = TopicPartition(letter.topic, letter.partition)
            if self.progress[tp].handled(letter.offset):
                self.report.already_redriven += 1
            elif self.error_class is not None and letter.error_class != self.error_class:
                self.report.other_class += 1
            elif tp in self.full or not self.progress[tp].fits_with(letter.offset):
                self.full.add(tp)
                self.report.stopped = (
                    f"too many gaps left by the error-class filter in partition {tp.partition}: "
                    "redrive or purge the other classes, then run again"
                )
            elif self.at_limit():
                self.report.stopped = f"limit of {self.limit} records reached"
                break
            else:
                chosen.append((letter, message.value))
                # Reserve the offset now, so fits_with sees the ranges this batch will add.
                self.progress[tp].done.add(letter.offset)
                self.report.moved += 1
        for letter, _value in chosen:  # reservations undone; marked for real once acknowledged
            self.progress[TopicPartition(letter.topic, letter.partition)].done.discard(
                letter.offset
            )
        return chosen

    async def send(self, chosen: list[_Letter]) -> set[TopicPartition]:
        """Send ``chosen``, wait for every acknowledgement, mark the acknowledged ones done."""
        letters = [letter for letter, _value in chosen]
        if self.producer is None:
            for letter in letters:
                self._count(letter)
            return set()
        futures = []
        for letter, value in chosen:
            await self.limiter.acquire()
            target, is_tier = redrive_target(self.group, letter)
            headers = redrive_headers(
                letter.headers,
                retry_topic=target if is_tier else None,
                replay_id=self.report.replay_id,
                now_ms=int(self.clock() * 1000),
            )
            try:
                future = await self.producer.send(
                    target, value=value, key=letter.key, partition=letter.partition, headers=headers
                )
            except KafkaError as exc:  # refused before sending, e.g. a record too large
                future = asyncio.get_running_loop().create_future()
                future.set_exception(exc)
            futures.append(future)
        results = await asyncio.gather(*futures, return_exceptions=True)
        touched: set[TopicPartition] = set()
        for letter, result in zip(letters, results, strict=True):
            tp = TopicPartition(letter.topic, letter.partition)
            if isinstance(result, BaseException):
                self.report.failed += 1
                self.report.moved -= 1
                logger.warning(
                    "redrive send failed topic=%s partition=%s offset=%s: %s",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    result,
                )
                continue
            self.progress[tp].mark(letter.offset)
            self._count(letter)
            touched.add(tp)
        return touched

    def _count(self, letter: DeadLetter) -> None:
        self.report.by_error_class[letter.error_class] += 1
        self.report.by_partition[letter.partition] += 1


async def redrive(
    kafka: KafkaClients,
    group: ConsumerGroup,
    *,
    dry_run: bool = True,
    rate_per_second: float = 50.0,
    error_class: str | None = None,
    limit: int | None = None,
    replay_id: str | None = None,
    clock: Callable[[], float] = time.time,
) -> RedriveReport:
    """Send ``group``'s dead letters to its first retry tier, due now; skip what was sent before.

    Reads the DLQ from the redrive group's progress to the end offsets seen at the start (records
    dead-lettered meanwhile wait for the next run). After each batch it waits for the broker's
    acknowledgements, then commits progress; a crash resends at most that batch (stages are
    idempotent). A dry run reads the same records and commits nothing.

    Args:
        kafka: the cluster and its security (``inboxflow.wiring.kafka_from``).
        group: the consumer group whose DLQ is redriven.
        dry_run: only count what would move (default).
        rate_per_second: most records sent per second (keep it a few percent of live traffic);
            no bursts: one send every ``1 / rate_per_second`` seconds.
        error_class: only records whose ``x-error-class`` is this RetryClass value.
        limit: at most this many records (e.g. a canary of 100 before the rest).
        replay_id: ``x-replay-id`` of the copies; default ``redrive-<random>``.
        clock: epoch seconds for the due header, for tests.

    Raises:
        TopicNotFoundError: the DLQ or its target topic does not exist.
        RedriveError: some sends failed (the acknowledged ones are committed) or the target has
            fewer partitions than the DLQ.
        TransientError: Kafka unreachable.
        ValueError: ``rate_per_second`` is not positive.
    """
    if rate_per_second <= 0:
        raise ValueError(f"rate must be positive, got {rate_per_second}")
    report = RedriveReport(
        group_id=group.group_id,
        dlq_topic=group.dlq.name,
        target_topic=", ".join(_target_names(group)),
        target_is_retry_tier=bool(group.retry_tiers),
        replay_id=replay_id or f"redrive-{uuid.uuid4().hex[:12]}",
        dry_run=dry_run,
    )
    kafka = kafka.with_client_id(OPERATOR_CLIENT_ID)
    async with (
        kafka.started(kafka.consumer(group_id=redrive_group_id(group))) as consumer,
        kafka.started(kafka.admin()) as admin,
    ):
        partitions = await topic_partitions(admin, [group.dlq.name])
        await _check_targets(admin, group, len(partitions))
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        progress = await load_progress(admin, redrive_group_id(group), partitions, starts)
        # Records below the committed offset are not read again; count them as handled.
        report.already_redriven = sum(
            max(0, min(progress[tp].base, ends[tp]) - starts[tp]) for tp in partitions
        )
        async with _producer_unless(dry_run, kafka) as producer:
            run = _Redrive(
                group,
                report,
                progress,
                error_class,
                limit,
                # Bursts of at most one record: one send per 1/rate seconds, the first at once.
                AsyncLimiter(1, 1 / rate_per_second),
                producer,
                clock,
            )
            await _redrive_all(consumer, run, ends)
    _log_redrive(report)
    if report.failed:
        raise RedriveError(
            f"{report.failed} record(s) of {group.dlq.name} not acknowledged by Kafka; "
            f"{report.moved} sent and committed. Run the redrive again to send the rest"
        )
    return report


async def _redrive_all(
    consumer: AIOKafkaConsumer, run: _Redrive, ends: dict[TopicPartition, int]
) -> None:
    positions = {tp: progress.base for tp, progress in run.progress.items()}
    async for batch in scan(consumer, positions, ends):
        touched = await run.send(run.select(batch))
        if touched:
            await commit_offsets(
                consumer,
                redrive_group_id(run.group),
                {tp: (run.progress[tp].base, run.progress[tp].metadata()) for tp in touched},
            )
        if run.at_limit():
            break


def _target_names(group: ConsumerGroup) -> list[str]:
    if group.retry_tiers:
        return [group.retry_tiers[0].topic]
    return [source.name for source in group.sources]


async def _check_targets(admin: AIOKafkaAdminClient, group: ConsumerGroup, dlq_parts: int) -> None:
    for topic in _target_names(group):
        count = len(await topic_partitions(admin, [topic]))
        if count < dlq_parts:
            raise RedriveError(
                f"{topic} has {count} partitions, fewer than the {dlq_parts} of {group.dlq.name}: "
                "a redrive keeps partition numbers. Run `inboxflow topics apply`"
            )


@asynccontextmanager
async def _producer_unless(
    dry_run: bool, kafka: KafkaClients
) -> AsyncIterator[AIOKafkaProducer | None]:
    """Yield a started producer (acks=all, idempotent), or None for a dry run: it sends nothing."""
    if dry_run:
        yield None
        return
    producer = kafka.producer(client_id=REDRIVE_CLIENT_ID)
    async with kafka.started(producer) as running:
        yield running


def _log_redrive(report: RedriveReport) -> None:
    logger.info(
        "redrive %s group=%s dlq=%s to=%s replay_id=%s moved=%s already=%s other_class=%s "
        "failed=%s stopped=%s",
        "planned" if report.dry_run else "done",
        report.group_id,
        report.dlq_topic,
        report.target_topic,
        report.replay_id,
        report.moved,
        report.already_redriven,
        report.other_class,
        report.failed,
        report.stopped,
    )
