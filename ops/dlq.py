"""Operator tools for dead-letter topics: list, show, redrive (merge) and purge.

Follows Uber's DLQ tooling: a redrive sends dead letters to the group's *first retry tier*, so
they are retried by the retry relay and never queue in front of live traffic. Key, value and
headers stay byte-identical except ``x-due-ts`` (now: due at once), ``x-retry-topic`` and a new
``x-replay-id``; ``x-attempts`` is kept, so the next attempt is attempts + 1 and the job version
in Postgres keeps moving forward. A group without retry tiers gets its dead letters back on the
source topic they came from (``x-original-topic``), where its live consumer reads them.

Progress is kept in Kafka by one consumer group per DLQ, ``<group_id>-dlq-redrive``: a record is
marked handled only after the broker acknowledged its copy (acks=all, idempotent producer), and a
second redrive skips what the first sent. An error-class filter leaves holes (records of other
classes not sent yet); the committed offset stops at the first hole and the offsets sent beyond
it are kept in the commit metadata (``inboxflow-redrive/1 12-40,45``), so nothing is resent and
nothing skipped is lost. The tool assigns partitions itself (it never joins the group): run one
redrive or purge of a DLQ at a time.

Purge commits the redrive group to the end offsets (records stay readable until the DLQ's 90-day
retention, for audit); ``delete=True`` also deletes them with the DeleteRecords admin API.

Library: explicit arguments, no settings, no printing (``inboxflow.cli.ops`` prints).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.errors import KafkaConnectionError, KafkaError

from ops.replay import (
    commit_offsets,
    committed_offsets,
    existing_partitions,
    kafka_admin,
    kafka_consumer,
    topic_partitions,
)
from schemas import headers as h
from schemas.errors import PermanentError, TransientError
from topics.catalogue import Catalogue, ConsumerGroup

logger = logging.getLogger(__name__)

PROGRESS_PREFIX = "inboxflow-redrive/1"
_MAX_PROGRESS_CHARS = 3000  # brokers cap commit metadata at offset.metadata.max.bytes (4096)
_POLL_MS = 500
_STALL_SECONDS = 30.0
_MAX_REQUEST_BYTES = 65 * 1024 * 1024  # message-fetched dead letters may be 64 MiB
_REPLACED_ON_REDRIVE = frozenset({h.DUE_TIMESTAMP, h.RETRY_TOPIC, h.REPLAY_ID})


class RedriveError(PermanentError):
    """A redrive could not send every record; the ones acknowledged are marked done."""


def redrive_group_id(group: ConsumerGroup) -> str:
    """Return the consumer group that remembers redrive and purge progress of ``group``'s DLQ."""
    return f"{group.group_id}-dlq-redrive"


# --- decoded records --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter record with its context headers decoded."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value_size: int
    headers: tuple[tuple[str, bytes], ...]

    def _text(self, name: str) -> str | None:
        return h.header_value(self.headers, name)

    def _int(self, name: str) -> int | None:
        return h.header_int(self.headers, name)

    @property
    def original_topic(self) -> str | None:
        """Return the topic the record was first consumed from."""
        return self._text(h.ORIGINAL_TOPIC)

    @property
    def original_partition(self) -> int | None:
        """Return the partition the record was first consumed from."""
        return self._int(h.ORIGINAL_PARTITION)

    @property
    def original_offset(self) -> int | None:
        """Return the offset the record had on its original topic."""
        return self._int(h.ORIGINAL_OFFSET)

    @property
    def attempts(self) -> int:
        """Return the attempts made before it was dead-lettered (0 when unknown)."""
        return self._int(h.ATTEMPTS) or 0

    @property
    def error_class(self) -> str:
        """Return the RetryClass value of the last failure, ``unknown`` when absent."""
        return self._text(h.ERROR_CLASS) or "unknown"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (the value itself is left out: only its size)."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "value_size": self.value_size,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_timestamp_ms": self._int(h.ORIGINAL_TIMESTAMP),
            "original_consumer_group": self._text(h.ORIGINAL_CONSUMER_GROUP),
            "first_failure_ms": self._int(h.FIRST_FAILURE_TIMESTAMP),
            "attempts": self.attempts,
            "error_class": self.error_class,
            "exception_class": self._text(h.EXCEPTION_CLASS),
            "exception_message": self._text(h.EXCEPTION_MESSAGE),
            "stage": self._text(h.STAGE),
            "handler": self._text(h.HANDLER),
            "replay_id": self._text(h.REPLAY_ID),
        }


def dead_letter_from(message: Any) -> DeadLetter:
    """Return the DeadLetter view of an aiokafka ConsumerRecord."""
    value: bytes | None = message.value
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp,
        key=message.key,
        value_size=len(value) if value is not None else 0,
        headers=tuple(message.headers or ()),
    )


# --- redrive progress -------------------------------------------------------------------------


@dataclass
class RedriveProgress:
    """Handled offsets of one DLQ partition: everything below ``base``, plus ``done``."""

    base: int
    done: set[int] = field(default_factory=set)

    @classmethod
    def parse(cls, base: int, metadata: str) -> RedriveProgress:
        """Return the progress stored as a committed offset and its metadata. Pure."""
        progress = cls(base)
        if not metadata.startswith(PROGRESS_PREFIX):
            return progress
        for part in metadata[len(PROGRESS_PREFIX) :].split(","):
            first, _, last = part.strip().partition("-")
            if first:
                progress.done.update(range(int(first), int(last or first) + 1))
        progress.done = {offset for offset in progress.done if offset >= base}
        progress.compact()
        return progress

    def handled(self, offset: int) -> bool:
        """Return True when the record at ``offset`` was already redriven or purged."""
        return offset < self.base or offset in self.done

    def mark(self, offset: int) -> None:
        """Mark ``offset`` handled."""
        self.done.add(offset)
        self.compact()

    def compact(self) -> None:
        """Move ``base`` over handled offsets, so ``done`` keeps only offsets past a hole."""
        while self.base in self.done:
            self.done.discard(self.base)
            self.base += 1

    def metadata(self) -> str:
        """Return the commit metadata that stores ``done`` as inclusive ranges."""
        ranges: list[str] = []
        for first, last in _ranges(sorted(self.done)):
            ranges.append(str(first) if first == last else f"{first}-{last}")
        return f"{PROGRESS_PREFIX} {','.join(ranges)}" if ranges else ""

    def fits_with(self, offset: int) -> bool:
        """Return True when marking ``offset`` keeps the metadata within the broker's limit."""
        if offset - 1 in self.done or offset == self.base or offset + 1 in self.done:
            return True  # extends a range, or advances base
        return len(self.metadata()) + len(str(offset)) + 1 <= _MAX_PROGRESS_CHARS


def _ranges(offsets: Sequence[int]) -> Iterable[tuple[int, int]]:
    start = previous = None
    for offset in offsets:
        if start is None:
            start = previous = offset
        elif previous is not None and offset == previous + 1:
            previous = offset
        else:
            yield start, previous if previous is not None else start
            start = previous = offset
    if start is not None:
        yield start, previous if previous is not None else start


async def _load_progress(
    admin: AIOKafkaAdminClient,
    group_id: str,
    partitions: Sequence[TopicPartition],
    starts: dict[TopicPartition, int],
) -> dict[TopicPartition, RedriveProgress]:
    committed = await committed_offsets(admin, group_id, partitions)
    progress: dict[TopicPartition, RedriveProgress] = {}
    for tp in partitions:
        offset, metadata = committed.get(tp, (starts[tp], ""))
        found = RedriveProgress.parse(offset, metadata)
        if found.base < starts[tp]:  # retention or a delete removed the records below the start
            found = RedriveProgress.parse(starts[tp], found.metadata())
        progress[tp] = found
    return progress


# --- reading ----------------------------------------------------------------------------------


async def _scan(
    consumer: AIOKafkaConsumer,
    positions: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
) -> AsyncIterator[list[Any]]:
    """Yield batches of records from ``positions`` up to (not including) ``ends``."""
    remaining = {tp for tp in positions if positions[tp] < ends[tp]}
    if not remaining:
        return
    consumer.assign(list(positions))
    for tp in remaining:
        consumer.seek(tp, positions[tp])
    last_progress = time.monotonic()
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=_POLL_MS)
        records = [m for tp, messages in batches.items() for m in messages if m.offset < ends[tp]]
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        if records:
            last_progress = time.monotonic()
            yield records
        elif time.monotonic() - last_progress > _STALL_SECONDS:
            raise TransientError(f"no records read for {_STALL_SECONDS:g} s from {remaining}")


@dataclass(frozen=True)
class DlqSummary:
    """What one group's dead-letter topic holds."""

    agent: str
    group_id: str
    topic: str
    exists: bool
    records: int  # still in the topic (end - start offsets), handled or not
    pending: int  # not yet redriven or purged
    by_error_class: dict[str, int]  # of the pending records
    oldest_ms: int | None  # timestamps of the pending records
    newest_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "agent": self.agent,
            "group_id": self.group_id,
            "topic": self.topic,
            "exists": self.exists,
            "records": self.records,
            "pending": self.pending,
            "by_error_class": dict(sorted(self.by_error_class.items())),
            "oldest_ms": self.oldest_ms,
            "newest_ms": self.newest_ms,
        }


async def list_dlqs(bootstrap: str, catalogue: Catalogue) -> list[DlqSummary]:
    """Return a summary of every group's dead-letter topic, in pipeline order. Reads only.

    Reads every pending record (headers are where the error class is), so it costs one pass over
    what operators have not handled yet.

    Raises:
        TransientError: Kafka unreachable.
    """
    async with kafka_consumer(bootstrap, None) as consumer, kafka_admin(bootstrap) as admin:
        existing = await existing_partitions(admin)
        return [
            await _summarize(consumer, admin, group, group.dlq.name in existing)
            for group in catalogue.groups
        ]


async def _summarize(
    consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, group: ConsumerGroup, exists: bool
) -> DlqSummary:
    topic = group.dlq.name
    if not exists:
        return DlqSummary(group.agent, group.group_id, topic, False, 0, 0, {}, None, None)
    partitions = await topic_partitions(admin, [topic])
    starts = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    progress = await _load_progress(admin, redrive_group_id(group), partitions, starts)
    classes: Counter[str] = Counter()
    stamps: list[int] = []
    positions = {tp: progress[tp].base for tp in partitions}
    async for batch in _scan(consumer, positions, ends):
        for message in batch:
            tp = TopicPartition(message.topic, message.partition)
            if not progress[tp].handled(message.offset):
                classes[dead_letter_from(message).error_class] += 1
                stamps.append(message.timestamp)
    return DlqSummary(
        agent=group.agent,
        group_id=group.group_id,
        topic=topic,
        exists=True,
        records=sum(ends[tp] - starts[tp] for tp in partitions),
        pending=sum(classes.values()),
        by_error_class=dict(classes),
        oldest_ms=min(stamps, default=None),
        newest_ms=max(stamps, default=None),
    )


async def read_dlq(
    bootstrap: str,
    topic: str,
    *,
    limit: int,
    partition: int | None = None,
    offset: int | None = None,
) -> list[DeadLetter]:
    """Return up to ``limit`` records of a dead-letter topic, oldest timestamp first. Reads only.

    Args:
        bootstrap: Kafka bootstrap servers.
        topic: the dead-letter topic (``ConsumerGroup.dlq.name``).
        limit: most records returned.
        partition: only this partition.
        offset: start here (needs ``partition``); default the earliest retained record.

    Raises:
        TopicNotFoundError: no such topic.
        ValueError: ``offset`` without ``partition``, or ``limit`` < 1.
    """
    if offset is not None and partition is None:
        raise ValueError("offset needs a partition")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    async with kafka_consumer(bootstrap, None) as consumer, kafka_admin(bootstrap) as admin:
        partitions = [
            tp
            for tp in await topic_partitions(admin, [topic])
            if partition is None or tp.partition == partition
        ]
        if not partitions:
            raise ValueError(f"{topic} has no partition {partition}")
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        positions = {tp: max(starts[tp], offset or 0) for tp in partitions}
        # At most `limit` from each partition: offsets of a DLQ are contiguous (not compacted,
        # not transactional), so position + limit bounds the read.
        stops = {tp: min(ends[tp], positions[tp] + limit) for tp in partitions}
        letters = [
            dead_letter_from(m) async for batch in _scan(consumer, positions, stops) for m in batch
        ]
    letters.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return letters[:limit]


# --- redrive ----------------------------------------------------------------------------------


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


class TokenBucket:
    """Paces sends to ``rate`` per second, with bursts of at most one record."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Create a bucket; ``rate`` must be positive."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.clock = clock
        self._tokens = 1.0
        self._updated = clock()

    async def take(self) -> None:
        """Wait until one send is allowed, then use it."""
        while True:
            now = self.clock()
            self._tokens = min(1.0, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / self.rate)


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
    bucket: TokenBucket
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
            await self.bucket.take()
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
    bootstrap: str,
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
        bootstrap: Kafka bootstrap servers.
        group: the consumer group whose DLQ is redriven.
        dry_run: only count what would move (default).
        rate_per_second: most records sent per second (keep it a few percent of live traffic).
        error_class: only records whose ``x-error-class`` is this RetryClass value.
        limit: at most this many records (e.g. a canary of 100 before the rest).
        replay_id: ``x-replay-id`` of the copies; default ``redrive-<random>``.
        clock: epoch seconds for the due header, for tests.

    Raises:
        TopicNotFoundError: the DLQ or its target topic does not exist.
        RedriveError: some sends failed (the acknowledged ones are committed) or the target has
            fewer partitions than the DLQ.
        TransientError: Kafka unreachable.
    """
    report = RedriveReport(
        group_id=group.group_id,
        dlq_topic=group.dlq.name,
        target_topic=", ".join(_target_names(group)),
        target_is_retry_tier=bool(group.retry_tiers),
        replay_id=replay_id or f"redrive-{uuid.uuid4().hex[:12]}",
        dry_run=dry_run,
    )
    async with (
        kafka_consumer(bootstrap, redrive_group_id(group)) as consumer,
        kafka_admin(bootstrap) as admin,
    ):
        partitions = await topic_partitions(admin, [group.dlq.name])
        await _check_targets(admin, group, len(partitions))
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        progress = await _load_progress(admin, redrive_group_id(group), partitions, starts)
        # Records below the committed offset are not read again; count them as handled.
        report.already_redriven = sum(
            max(0, min(progress[tp].base, ends[tp]) - starts[tp]) for tp in partitions
        )
        producer = None if dry_run else await _start_producer(bootstrap)
        run = _Redrive(
            group,
            report,
            progress,
            error_class,
            limit,
            TokenBucket(rate_per_second),
            producer,
            clock,
        )
        try:
            await _redrive_all(consumer, run, ends)
        finally:
            if producer is not None:
                await producer.stop()
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
    async for batch in _scan(consumer, positions, ends):
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


async def _start_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="inboxflow-redrive",
        acks="all",
        enable_idempotence=True,
        max_request_size=_MAX_REQUEST_BYTES,
    )
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        raise TransientError(f"Kafka at {bootstrap} unreachable: {exc}") from exc
    return producer


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


# --- purge ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeReport:
    """What a purge marked handled (and deleted), or would, per partition."""

    group_id: str
    dlq_topic: str
    dry_run: bool
    deleted: bool
    purged: dict[int, int]  # partition -> records that were pending
    up_to: dict[int, int]  # partition -> end offset the redrive group now points at

    @property
    def total(self) -> int:
        """Return the pending records purged across partitions."""
        return sum(self.purged.values())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description."""
        return {
            "group_id": self.group_id,
            "dlq_topic": self.dlq_topic,
            "dry_run": self.dry_run,
            "deleted": self.deleted,
            "total": self.total,
            "purged": {str(p): n for p, n in sorted(self.purged.items())},
            "up_to": {str(p): n for p, n in sorted(self.up_to.items())},
        }


async def purge(
    bootstrap: str, group: ConsumerGroup, *, dry_run: bool = True, delete: bool = False
) -> PurgeReport:
    """Mark everything now in ``group``'s DLQ handled, so no redrive sends it.

    Commits the redrive group to the current end offsets; records dead-lettered afterwards stay
    pending. The records themselves stay in Kafka until the DLQ's retention (90 days) unless
    ``delete`` is set, which also removes them with DeleteRecords (irreversible).

    Raises:
        TopicNotFoundError: the DLQ does not exist.
        TransientError: Kafka unreachable.
        OffsetCommitError: the broker refused the commit.
    """
    async with (
        kafka_consumer(bootstrap, redrive_group_id(group)) as consumer,
        kafka_admin(bootstrap) as admin,
    ):
        partitions = await topic_partitions(admin, [group.dlq.name])
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        progress = await _load_progress(admin, redrive_group_id(group), partitions, starts)
        purged = {tp.partition: _pending(progress[tp], ends[tp]) for tp in partitions}
        if not dry_run:
            await commit_offsets(
                consumer, redrive_group_id(group), {tp: (ends[tp], "") for tp in partitions}
            )
            if delete:
                await _delete_records(admin, ends)
    report = PurgeReport(
        group.group_id,
        group.dlq.name,
        dry_run,
        delete and not dry_run,
        purged,
        {tp.partition: ends[tp] for tp in partitions},
    )
    logger.info(
        "purge %s group=%s dlq=%s records=%s deleted=%s",
        "planned" if dry_run else "done",
        group.group_id,
        group.dlq.name,
        report.total,
        report.deleted,
    )
    return report


def _pending(progress: RedriveProgress, end: int) -> int:
    return max(0, end - progress.base) - sum(1 for o in progress.done if o < end)


async def _delete_records(admin: AIOKafkaAdminClient, ends: dict[TopicPartition, int]) -> None:
    try:
        await admin.delete_records({tp: RecordsToDelete(end) for tp, end in ends.items()})
    except KafkaError as exc:
        raise PermanentError(f"DeleteRecords refused: {exc}") from exc
