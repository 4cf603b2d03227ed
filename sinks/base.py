"""Batching Kafka-to-Postgres consumer loop shared by the sinks; effectively exactly once.

A plain aiokafka consumer (not a faust agent: faust re-seeks to Kafka-committed offsets after
recovery, see ``docs/sinks.md``). Offsets live in
Postgres (``sinks.offsets``) and each batch is one transaction:

1. advance the stored offset of every partition in the batch with a compare-and-set (a
   consumer that lost its partition in a rebalance finds it moved and rolls back);
2. write the rows through the topic's ``RowWriter`` (idempotent, version-guarded upserts),
   bisecting a batch Postgres refuses so only the refused record goes to the dead-letter topic;
3. produce dead letters and wait for their delivery;
4. COMMIT, then commit the same offsets to Kafka (for lag monitoring only).

On assignment the partitions are paused until their stored offsets are read and sought. When
the database goes away (``psycopg.OperationalError``) every partition is paused, the batch
stays in memory and is retried after a jittered, capped backoff on a new connection.

This module knows nothing about any table: row types and SQL belong to the writers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from psycopg.rows import TupleRow

from schemas import headers as h
from schemas.errors import Failure, PermanentError, RetryClass, TransientError, safe_error_text
from sinks.metrics import SinkMetrics
from sinks.offsets import FROM_BEGINNING, StaleOffsetError, advance_offsets, load_offsets
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

Connection: TypeAlias = psycopg.AsyncConnection[TupleRow]
Record: TypeAlias = ConsumerRecord[bytes, bytes]
RowT = TypeVar("RowT")
RowT_co = TypeVar("RowT_co", covariant=True)

# Postgres refused a row (constraint, encoding): that record is bad, not the database.
REJECTED_ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError)

_TIMESTAMP_TYPES = {0: "CreateTime", 1: "LogAppendTime"}


@dataclass(frozen=True)
class Decoded(Generic[RowT]):
    """A row with the Kafka record it came from (for source columns and dead letters)."""

    record: Record
    row: RowT


class RowWriter(Protocol[RowT]):
    """Turns one topic's records into rows and upserts them; the part each sink supplies."""

    def decode(self, record: Record) -> RowT:
        """Return the row for a record; raise a PermanentError for bytes no schema reads."""
        ...

    async def prepare(self, conn: Connection) -> None:
        """Set up a new connection (temporary staging tables); runs outside any transaction."""
        ...

    async def write(self, conn: Connection, rows: Sequence[Decoded[RowT]]) -> None:
        """Upsert rows inside the caller's transaction; idempotent under replay and reorder.

        Raises one of REJECTED_ROW_ERRORS when Postgres refuses a row; the caller bisects.
        """
        ...


class ProgressObserver(Protocol):
    """Learns when a partition's records start waiting and when they are committed (liveness).

    ``streams.runtime.liveness.StallTracker`` is one; the sink calls it from its own loop.
    """

    def arrived(self, topic: str, partition: int, count: int = 1) -> None:
        """``count`` records of the partition were buffered."""
        ...

    def progressed(self, topic: str, partition: int, count: int) -> None:
        """``count`` buffered records of the partition were committed."""
        ...

    def forget(self, topic: str, partition: int) -> None:
        """The partition's buffered records were dropped (revoked, or to be read again)."""
        ...


@dataclass(frozen=True)
class SinkConfig:
    """Where a sink reads and writes and how it batches; explicit values, never env.

    Arguments:
        kafka: builds the sink's consumer and dead-letter producer.
        conninfo: libpq URL of the database holding the tables and ``sink_offsets``.
        group_id: consumer group, also the key of the stored offsets.
        dlq_topic: dead-letter topic for records that cannot be decoded or written.
        max_batch_records: flush when this many records are buffered.
        max_batch_seconds: flush this long after the first buffered record at the latest.
        backoff_initial: first wait after a database failure, seconds (doubled each time).
        backoff_max: cap of that wait; each wait is drawn from its upper half (jitter).
        idle_poll_seconds: longest single poll; bounds how late a stop request is seen.
        group_instance_id: static group membership (e.g. the pod name): a restarted process
            with the same id gets its partitions back at once, without a rebalance of the
            group. Never give two running processes the same id.
    """

    kafka: KafkaClients
    conninfo: str
    group_id: str
    dlq_topic: str
    max_batch_records: int = 5000
    max_batch_seconds: float = 0.2
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    idle_poll_seconds: float = 0.5
    group_instance_id: str | None = None


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Return the wait before retry ``attempt`` (0-based): uniform in [c/2, c], c = min(cap, i*2^n).

    Half-jittered: spread enough that restarted sinks do not reconnect in step, never near zero.
    """
    ceiling = min(cap, initial * 2 ** min(attempt, 30))
    return secrets.SystemRandom().uniform(ceiling / 2, ceiling)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards rebalance callbacks to the sink; they run while getmany() waits."""

    def __init__(self, sink: PostgresSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._sink.forget_partitions(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._sink.hold_partitions(assigned)


class PostgresSink:
    """Consume topics into Postgres until stopped; one writer per source topic.

    Arguments:
        config: connection and batching settings.
        writers: ``{topic: RowWriter}``; the consumer subscribes to exactly these topics.
        metrics: where rows, batch sizes, commit latency and rejections are counted.
        progress: told when records are buffered and committed (``/healthz``), if given.
    """

    def __init__(
        self,
        config: SinkConfig,
        writers: Mapping[str, RowWriter[Any]],
        metrics: SinkMetrics,
        progress: ProgressObserver | None = None,
    ) -> None:
        self._config = config
        self._progress = progress
        self._joined = False  # a first assignment arrived (an empty one counts)
        self._writers = dict(writers)
        self._metrics = metrics
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._conn: Connection | None = None
        self._failures = 0  # consecutive failed attempts, drives the backoff
        self._database_down = False
        self._unpositioned: set[TopicPartition] = set()  # assigned, stored offset not sought yet
        self._stored: dict[TopicPartition, int] = {}  # next_offset as stored in sink_offsets
        self._next: dict[TopicPartition, int] = {}  # next offset expected from Kafka
        self._buffer: dict[TopicPartition, list[Record]] = {}

    @property
    def positioned(self) -> frozenset[TopicPartition]:
        """Partitions this sink owns and reads from their stored offsets (for health checks)."""
        return frozenset(self._stored) - self._unpositioned

    @property
    def joined(self) -> bool:
        """True once the consumer joined its group and received an assignment (maybe empty)."""
        return self._joined

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """Partitions the consumer owns now (empty before it joined)."""
        consumer = self._consumer
        return frozenset(consumer.assignment()) if consumer is not None else frozenset()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and write until ``stop`` is set; the batch in progress finishes first."""
        consumer = self._config.kafka.consumer(
            group_id=self._config.group_id, group_instance_id=self._config.group_instance_id
        )
        producer = self._config.kafka.producer()
        consumer.subscribe(topics=sorted(self._writers), listener=_Rebalance(self))
        self._consumer, self._producer = consumer, producer
        await producer.start()
        try:
            await consumer.start()
            try:
                while not stop.is_set():
                    await self._step()
            finally:
                await consumer.stop()
        finally:
            await producer.stop()
            await self._close_connection()

    # Rebalance callbacks: plain state changes, no awaits (they must not block the poll).

    def hold_partitions(self, assigned: set[TopicPartition]) -> None:
        """Pause newly assigned partitions until their stored offsets have been sought."""
        consumer = self._require_consumer()
        self._joined = True
        for tp in assigned:
            self._forget(tp)
            self._unpositioned.add(tp)
        consumer.pause(*assigned)
        log.info("partitions assigned group=%s partitions=%s", self._config.group_id, assigned)

    def forget_partitions(self, revoked: set[TopicPartition]) -> None:
        """Drop buffered records and offsets of revoked partitions; their new owner rereads."""
        for tp in revoked:
            self._forget(tp)
            self._unpositioned.discard(tp)
        log.info("partitions revoked group=%s partitions=%s", self._config.group_id, revoked)

    def _forget(self, tp: TopicPartition) -> None:
        if self._progress is not None and self._buffer.get(tp):
            self._progress.forget(tp.topic, tp.partition)
        self._buffer.pop(tp, None)
        self._stored.pop(tp, None)
        self._next.pop(tp, None)

    # The loop.

    async def _step(self) -> None:
        try:
            conn = await self._connection()
            await self._position(conn)
            await self._fill()
            if any(self._buffer.values()):
                await self._flush(conn)
            self._failures = 0
        except psycopg.OperationalError as exc:
            self._metrics.database_down.inc()
            log.warning("database unavailable group=%s error=%s", self._config.group_id, exc)
            await self._close_connection()
            self._pause_all()
            await self._back_off()
        except TransientError as exc:
            # A writer could not decode for now (the schema registry is unreachable): nothing
            # was written, the batch stays buffered and is decoded again after the backoff.
            log.warning("records not decodable yet group=%s error=%s", self._config.group_id, exc)
            await self._back_off_paused()
        except KafkaError as exc:
            # Dead letters could not be delivered (broker down, DLQ topic missing): the batch's
            # transaction rolled back and is retried; nothing skips its dead letter.
            log.warning(
                "dead letters not delivered, batch retried group=%s dlq=%s error=%r",
                self._config.group_id,
                self._config.dlq_topic,
                exc,
            )
            await self._back_off()

    async def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(
            self._config.conninfo, autocommit=True, connect_timeout=5
        )
        try:
            for writer in self._writers.values():
                await writer.prepare(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        if self._database_down:
            self._database_down = False
            self._resume_positioned()
            log.info("database reachable again group=%s", self._config.group_id)
        return conn

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _pause_all(self) -> None:
        self._database_down = True
        consumer = self._require_consumer()
        consumer.pause(*consumer.assignment())

    def _resume_positioned(self) -> None:
        consumer = self._require_consumer()
        consumer.resume(*(consumer.assignment() - self._unpositioned))

    async def _back_off(self) -> None:
        delay = backoff_delay(
            self._failures, self._config.backoff_initial, self._config.backoff_max
        )
        self._failures += 1
        # Waiting inside getmany() keeps the group membership alive; all partitions are paused,
        # and anything it still returns is buffered normally.
        self._accept(await self._require_consumer().getmany(timeout_ms=int(delay * 1000)))

    async def _back_off_paused(self) -> None:
        # Pause what is flowing so the wait buffers nothing more; resume only those partitions
        # afterwards (others stay paused for their own reasons: database down, not positioned).
        consumer = self._require_consumer()
        paused = consumer.assignment() - consumer.paused()
        consumer.pause(*paused)
        try:
            await self._back_off()
        finally:
            still_ours = consumer.assignment() - self._unpositioned
            if not self._database_down:
                consumer.resume(*(paused & still_ours))

    async def _position(self, conn: Connection) -> None:
        consumer = self._require_consumer()
        pending = self._unpositioned & consumer.assignment()
        if not pending:
            return
        async with conn.transaction():
            stored = await load_offsets(conn, self._config.group_id, pending)
        for tp in pending:
            offset = stored[tp]
            try:
                if offset == FROM_BEGINNING:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            except IllegalStateError:
                continue  # revoked meanwhile
            if tp not in self._unpositioned or tp not in consumer.assignment():
                continue  # revoked during the awaits above (a stale read is fenced by the CAS)
            self._stored[tp] = offset
            self._next[tp] = max(offset, 0)
            self._buffer.pop(tp, None)
            self._unpositioned.discard(tp)
            if not self._database_down:
                consumer.resume(tp)
            log.info(
                "partition positioned group=%s topic=%s partition=%d offset=%d",
                self._config.group_id,
                tp.topic,
                tp.partition,
                offset,
            )

    async def _fill(self) -> None:
        """Buffer records until the batch is full or its time is up (or nothing arrives)."""
        consumer = self._require_consumer()
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            room = self._config.max_batch_records - self._buffered()
            if room <= 0:
                return
            if deadline is None:
                timeout = self._config.idle_poll_seconds
            else:
                timeout = max(0.0, deadline - loop.time())
            self._accept(await consumer.getmany(timeout_ms=int(timeout * 1000), max_records=room))
            if deadline is None:
                if not self._buffered():
                    return  # idle: let the loop look at stop and new assignments
                deadline = loop.time() + self._config.max_batch_seconds
            elif loop.time() >= deadline:
                return

    def _buffered(self) -> int:
        return sum(len(records) for records in self._buffer.values())

    def _accept(self, fetched: Mapping[TopicPartition, list[Record]]) -> None:
        for tp, records in fetched.items():
            expected = self._next.get(tp)
            if expected is None or tp in self._unpositioned:
                continue  # not sought to its stored offset yet: it will be read again
            buffer = self._buffer.setdefault(tp, [])
            before = len(buffer)
            for record in records:
                if record.offset < expected:
                    continue  # fetched before our seek
                buffer.append(record)
                expected = record.offset + 1
            self._next[tp] = expected
            if self._progress is not None:
                self._progress.arrived(tp.topic, tp.partition, len(buffer) - before)

    async def _flush(self, conn: Connection) -> None:
        batch = {tp: list(records) for tp, records in self._buffer.items() if records}
        moves = {tp: (self._stored[tp], records[-1].offset + 1) for tp, records in batch.items()}
        rows, dead = self._decode(batch)
        started = time.perf_counter()
        try:
            async with conn.transaction():
                await advance_offsets(conn, self._config.group_id, moves)
                for topic, items in rows.items():
                    dead.extend(await self._write_bisect(conn, self._writers[topic], items))
                await self._send_dead_letters(dead)
        except StaleOffsetError as exc:
            self._on_stale(exc)
            return
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        count = sum(len(records) for records in batch.values())
        self._metrics.rows.inc(count)
        self._metrics.batches.observe(count)
        self._metrics.rejected.inc(len(dead))
        committed = self._after_commit(moves)
        if self._progress is not None:
            for tp in committed:
                self._progress.progressed(tp.topic, tp.partition, len(batch[tp]))
        await self._commit_kafka(committed)

    def _decode(
        self, batch: Mapping[TopicPartition, list[Record]]
    ) -> tuple[dict[str, list[Decoded[Any]]], list[tuple[Record, BaseException]]]:
        rows: dict[str, list[Decoded[Any]]] = {}
        dead: list[tuple[Record, BaseException]] = []
        for tp, records in batch.items():
            writer = self._writers[tp.topic]
            for record in records:
                try:
                    row = writer.decode(record)
                except PermanentError as exc:
                    dead.append((record, exc))
                    continue
                rows.setdefault(tp.topic, []).append(Decoded(record, row))
        return rows, dead

    async def _write_bisect(
        self, conn: Connection, writer: RowWriter[Any], items: Sequence[Decoded[Any]]
    ) -> list[tuple[Record, BaseException]]:
        """Write items in a savepoint; on a refused row split in halves down to single records."""
        try:
            async with conn.transaction():
                await writer.write(conn, items)
        except REJECTED_ROW_ERRORS as exc:
            if len(items) == 1:
                return [(items[0].record, exc)]
            middle = len(items) // 2
            first = await self._write_bisect(conn, writer, items[:middle])
            return first + await self._write_bisect(conn, writer, items[middle:])
        return []

    async def _send_dead_letters(self, dead: Sequence[tuple[Record, BaseException]]) -> None:
        producer = self._require_producer()
        futures = [
            await producer.send(
                self._config.dlq_topic,
                key=record.key,
                value=record.value,
                headers=dead_letter_headers(record, exc, self._config.group_id),
            )
            for record, exc in dead
        ]
        for future in futures:
            await future  # delivered before the offsets that skip these records commit
        for record, exc in dead:
            log.warning(
                "record dead-lettered group=%s topic=%s partition=%d offset=%d error=%s",
                self._config.group_id,
                record.topic,
                record.partition,
                record.offset,
                type(exc).__name__,
            )

    def _on_stale(self, exc: StaleOffsetError) -> None:
        """Reread the stored offsets of partitions another consumer moved; keep the rest."""
        self._metrics.stale.inc()
        log.warning("stale batch rolled back group=%s error=%s", self._config.group_id, exc)
        consumer = self._require_consumer()
        assigned = consumer.assignment()
        for tp in exc.partitions:
            self._forget(tp)
            if tp in assigned:
                self._unpositioned.add(tp)
                consumer.pause(tp)

    def _after_commit(
        self, moves: Mapping[TopicPartition, tuple[int, int]]
    ) -> dict[TopicPartition, int]:
        committed: dict[TopicPartition, int] = {}
        for tp, (_, next_offset) in moves.items():
            if tp not in self._stored or tp in self._unpositioned:
                continue  # revoked (or reassigned) during the write; the new state wins
            self._stored[tp] = next_offset
            self._buffer.pop(tp, None)
            committed[tp] = next_offset
        return committed

    async def _commit_kafka(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self._require_consumer().commit(dict(offsets))
        except KafkaError as exc:
            # Postgres holds the truth; a failed Kafka commit only makes the lag look larger.
            log.info("kafka commit skipped group=%s error=%r", self._config.group_id, exc)

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise IllegalStateError("sink is not running")
        return self._consumer

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise IllegalStateError("sink is not running")
        return self._producer


def dead_letter_headers(
    record: Record, exc: BaseException, group_id: str
) -> list[tuple[str, bytes]]:
    """Return the record's headers unchanged followed by the context headers of a dead letter."""
    timestamp_type = _TIMESTAMP_TYPES.get(record.timestamp_type, "unknown")
    origin = h.Origin(
        record.topic, record.partition, record.offset, record.timestamp, group_id, timestamp_type
    )
    failure = Failure(RetryClass.PERMANENT, safe_error_text(exc))  # never the row's values
    return [
        *record.headers,
        *h.origin_headers(origin),
        *h.error_headers(
            failure, stage="sink", handler=group_id, exception_class=h.qualified_name(exc)
        ),
    ]
