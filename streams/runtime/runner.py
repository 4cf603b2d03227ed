"""Run a stage over a batch of records and produce everything that follows from it.

The runner is the one place where a stage's work turns into Kafka records: its outputs, the
``queued``/``processing``/``done``/``retrying``/``error``/``dead`` job states, and the failed
records forwarded to a retry tier or the dead-letter topic. ``run`` returns only when Kafka
has acknowledged all of them, so the caller may then ack the source records (at-least-once).
Failures of single records never escape: every record leaves through an output or a forward.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from aiokafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import Gauge

from schemas.errors import (
    Failure,
    RetryClass,
    RetryPolicy,
    StageTimeoutError,
    classify,
    decide,
    safe_error_text,
)
from schemas.models import JobStatus
from schemas.serde import Serde, serde_for
from streams.runtime.breaker import BreakerRegistry, CircuitBreaker
from streams.runtime.metrics import AgentMetrics, agent_metrics
from streams.runtime.publisher import Publisher
from streams.runtime.routing import attempts_so_far, failed_status, forward_failed, job_state
from streams.runtime.stage import JobRef, Outcome, Outgoing, Record, Stage
from topics.catalogue import ConsumerGroup

log = logging.getLogger(__name__)

BREAKER_MAX_WAIT = 30.0  # seconds a batch waits on an open breaker before going ahead
AFTER_PUBLISH_RETRY_SECONDS = 60.0  # how long a failing after-publish step is retried
# A first attempt says `processing` only once it has run this long: the jobs sink would fold a
# quicker one into its `done` anyway, and the state cost a record per job (a fifth to a half of
# the job-state traffic). Retries say it at once: an operator watches those.
PROCESSING_STATE_AFTER = 1.0


class StageRunner:
    """Runs one stage for one consumer group; shared by the live agent and the retry relay."""

    def __init__(
        self,
        stage: Stage,
        group: ConsumerGroup,
        *,
        job_topic: str,
        publisher: Publisher,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        breakers: BreakerRegistry | None = None,
        metrics: AgentMetrics | None = None,
        serde: Serde | None = None,
        processing_state_after: float = PROCESSING_STATE_AFTER,
    ) -> None:
        """``processing_state_after``: seconds a first attempt runs before its jobs say
        ``processing`` (0: at once)."""
        # The deployment's serde encodes job states like every other event (Confluent framing
        # with a registry); without one, single-object encoding.
        self.serde = serde or serde_for(None)
        self.breakers = breakers or BreakerRegistry()
        self.metrics = metrics or agent_metrics()
        self.stage = stage
        self.group = group
        self.job_topic = job_topic
        self.publisher = publisher
        self.policy = policy or RetryPolicy.default()
        self.clock = clock
        self.ladder = group.retry_tiers
        self.processing_state_after = processing_state_after

    async def run(
        self, records: Sequence[Record], *, after: asyncio.Future[Any] | None = None
    ) -> None:
        """Process records (any partitions), keeping each partition's order; publish the results.

        Partitions are processed concurrently: they hold different users, so one user's slow
        work does not wait on another's, while one user's records stay in order. If one
        partition fails, the others are cancelled before this returns: a caller that runs the
        batch again must not find a partition of the first try still running beside it.

        ``after``: the previous batch's run, when batches are at work at once. This one is
        processed meanwhile but publishes only once that one is done (its retries included),
        so a partition's results reach Kafka in the order of its records.
        """
        by_partition = [
            list(group)
            for _, group in groupby(
                sorted(records, key=lambda r: (r.topic, r.partition, r.offset)),
                key=lambda r: (r.topic, r.partition),
            )
        ]
        async with asyncio.TaskGroup() as partitions:
            for batch in by_partition:
                partitions.create_task(self._run_partition(batch, after))

    async def run_until_done(
        self, records: Sequence[Record], *, after: asyncio.Future[Any] | None = None
    ) -> None:
        """Run a batch until it has gone through; only cancellation (shutdown) stops trying.

        A batch must never be dropped unacked: faust would then skip a lone missing offset at
        commit time (losing the record) or stop committing the partition altogether. Records
        of the batch that already went through run again, which every stage tolerates.
        """
        delay = 0.5
        while True:
            try:
                await self.run(records, after=after)
            except Exception:
                log.exception(
                    "batch failed group=%s records=%s; retrying in %.1fs",
                    self.group.group_id,
                    len(records),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            else:
                return

    async def _run_partition(
        self, records: list[Record], after: asyncio.Future[Any] | None
    ) -> None:
        started_at = time.perf_counter()
        breakers = [self.breakers.get(name) for name in self.stage.dependencies(records)]
        await self._wait_for(breakers)
        refs = [self._job_of(record) for record in records]
        attempts = [attempts_so_far(record) + 1 for record in records]
        processing_at = time.perf_counter()
        outcomes, started = await self._process_saying_so(records, refs, attempts)
        self.metrics.process_seconds.labels(self.group.group_id, self.stage.name).observe(
            time.perf_counter() - processing_at
        )
        self._record_health(breakers, outcomes)
        items = [
            _Pending(record, ref, attempt, outcome, *self._follow_up(record, ref, attempt, outcome))
            for record, ref, attempt, outcome in zip(records, refs, attempts, outcomes, strict=True)
        ]
        await self._settle_best_effort(started)
        if after is not None and not after.done():
            # wait(), not await: this partition's cancellation must not cancel that batch.
            await asyncio.wait([after])
        # Results first, then the states that report them: a job is never `done` (or
        # `retrying`) in Postgres while the record that says so is missing from Kafka.
        await self._publish_until_acked(items, _Wave.RESULTS)
        await self._publish_until_acked(items, _Wave.STATES)
        for item in items:
            hook = item.outcome.after_publish
            if item.outcome.error is None and not item.dead_lettered and hook is not None:
                await self._after_publish(hook)
        self.metrics.batch_seconds.labels(self.group.group_id, self.stage.name).observe(
            time.perf_counter() - started_at
        )

    async def _process_saying_so(
        self, records: list[Record], refs: list[JobRef | None], attempts: list[int]
    ) -> tuple[list[Outcome], list[asyncio.Future[object]]]:
        """Run the stage; the jobs say `processing` at once for retries, later for first tries.

        Returns the outcomes and the sends of the `processing` states (to settle before the
        final states go out, so a job's states reach Kafka in order).
        """
        now = self.clock()  # a late `processing` state still says when the work began
        jobs = [(ref, n) for ref, n in zip(refs, attempts, strict=True) if ref is not None]
        late = self.processing_state_after > 0
        at_once = [(ref, n) for ref, n in jobs if n > 1 or not late]
        later = [(ref, n) for ref, n in jobs if n == 1 and late]

        def states(of: list[tuple[JobRef, int]]) -> list[Outgoing]:
            return [self._state(ref, JobStatus.PROCESSING, n, now) for ref, n in of]

        started = await self._send_best_effort(states(at_once)) if at_once else []
        work = asyncio.ensure_future(self._process(records))
        try:
            if later:
                finished, _ = await asyncio.wait({work}, timeout=self.processing_state_after)
                if not finished:
                    started += await self._send_best_effort(states(later))
            return await work, started
        finally:
            work.cancel()  # only if the caller was cancelled: the stage's work is then unwanted

    async def _send_best_effort(self, records: list[Outgoing]) -> list[asyncio.Future[object]]:
        # `processing` states are informative: one that Kafka refuses is dropped, never retried
        # and never a reason to fail the batch; the final state supersedes it (version guard).
        try:
            return await self.publisher.send(records)
        except KafkaError as exc:
            log.warning("processing states not sent group=%s: %s", self.group.group_id, exc)
            return []

    async def _settle_best_effort(self, futures: list[asyncio.Future[object]]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        lost = [r for r in results if isinstance(r, BaseException)]
        if lost:
            log.warning(
                "%d processing states not acknowledged group=%s: %s",
                len(lost),
                self.group.group_id,
                lost[0],
            )

    async def _wait_for(self, breakers: list[CircuitBreaker]) -> None:
        # An open breaker parks this partition's batch (unacked, so faust stops fetching more)
        # instead of burning records into retry tiers. The wait is capped: a batch held for
        # minutes would stall rebalances (faust waits for in-flight events), so after the cap
        # the batch goes ahead and its failures take the retry ladder.
        deadline = time.monotonic() + BREAKER_MAX_WAIT
        while breakers and time.monotonic() < deadline:
            waits = [b.wait_seconds() for b in breakers]
            # Check every breaker first: taking one's half-open probe and then finding another
            # closed to us would leak that probe.
            if max(waits) <= 0 and all(b.can_pass() for b in breakers):
                for breaker in breakers:
                    breaker.allow()
                break
            self._export(breakers)
            await asyncio.sleep(min(max(max(waits), 0.05), 0.5))
        self._export(breakers)

    def _record_health(self, breakers: list[CircuitBreaker], outcomes: list[Outcome]) -> None:
        if not breakers:
            return
        unhealthy = any(
            outcome.error is not None
            and classify(outcome.error).retry_class in (RetryClass.TRANSIENT, RetryClass.TIMEOUT)
            for outcome in outcomes
        )
        for breaker in breakers:
            breaker.record(success=not unhealthy)
        self._export(breakers)

    def _export(self, breakers: list[CircuitBreaker]) -> None:
        for breaker in breakers:
            self.metrics.breaker_state.labels(breaker.name).set(int(breaker.state))

    async def _after_publish(self, hook: Callable[[], Awaitable[None]]) -> None:
        # The outputs are safe in Kafka, but the next record of this partition may depend on
        # what the hook stores (a sync's checkpoint and the end of its listing: without them
        # every later sync of the mailbox joined a listing that had ended, for ten minutes, after
        # a two-second Postgres restart). So a transient failure is retried while the partition
        # waits; only past AFTER_PUBLISH_RETRY_SECONDS, or on a permanent error, is it given up:
        # the hooks are idempotent and the work is redone by a later record.
        deadline = time.monotonic() + AFTER_PUBLISH_RETRY_SECONDS
        delay = 0.5
        while True:
            try:
                await hook()
            except Exception as exc:
                transient = classify(exc).retry_class in (RetryClass.TRANSIENT, RetryClass.TIMEOUT)
                if transient and time.monotonic() + delay < deadline:
                    log.info(
                        "after-publish step failed group=%s, retrying in %.1fs: %s",
                        self.group.group_id,
                        delay,
                        safe_error_text(exc),
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                log.exception("after-publish step failed group=%s", self.group.group_id)
            return

    def _job_of(self, record: Record) -> JobRef | None:
        try:
            return self.stage.job_of(record)
        except Exception:  # noqa: BLE001 - undecodable: process() sends the record to the DLQ
            return None

    async def _process(self, records: list[Record]) -> list[Outcome]:
        try:
            async with asyncio.timeout(self.stage.timeout):
                outcomes = await self.stage.process(records)
        except TimeoutError:
            error: BaseException = StageTimeoutError(
                f"{self.stage.name} took longer than {self.stage.timeout:.0f}s "
                f"on a batch of {len(records)}"
            )
            return [Outcome(error=error) for _ in records]
        except Exception as exc:  # noqa: BLE001 - a whole-batch failure fails each record alike
            return [Outcome(error=exc) for _ in records]
        if len(outcomes) != len(records):
            bug = RuntimeError(f"{self.stage.name} returned {len(outcomes)} outcomes")
            return [Outcome(error=bug) for _ in records]
        return outcomes

    def _follow_up(
        self, record: Record, ref: JobRef | None, attempt: int, outcome: Outcome
    ) -> tuple[list[Outgoing], list[Outgoing]]:
        """Return the records that follow from one outcome: (results, the job's own state)."""
        now = self.clock()
        if outcome.error is None:
            self.metrics.records.labels(self.group.group_id, self.stage.name, "done").inc()
            results = list(outcome.outputs)
            results += [
                job_state(
                    self.job_topic,
                    kind,
                    queued,
                    JobStatus.QUEUED,
                    attempt=0,
                    now=now,
                    serde=self.serde,
                )
                for kind, queued in outcome.queued
            ]
            if ref is not None and outcome.finishes_job:
                return results, [self._state(ref, JobStatus.DONE, attempt, now)]
            return results, []
        return self._route_failure(record, ref, attempt, classify(outcome.error), now)

    def _route_failure(
        self, record: Record, ref: JobRef | None, attempt: int, failure: Failure, now: float
    ) -> tuple[list[Outgoing], list[Outgoing]]:
        decision = decide(
            failure,
            attempts=attempt,
            ladder=self.ladder,
            dead_letter_topic=self.group.dlq.name,
            now=now,
            policy=self.policy,
        )
        labels = (self.group.group_id, self.stage.name)
        self.metrics.records.labels(*labels, "dead" if decision.dead else "retry").inc()
        self.metrics.failures.labels(*labels, failure.retry_class.value).inc()
        log.log(
            logging.ERROR if decision.dead else logging.INFO,
            "record failed group=%s topic=%s partition=%s offset=%s attempt=%s class=%s to=%s: %s",
            self.group.group_id,
            record.topic,
            record.partition,
            record.offset,
            attempt,
            failure.retry_class.value,
            decision.topic,
            failure.message,
        )
        forward = forward_failed(
            record,
            decision=decision,
            failure=failure,
            attempt=attempt,
            group_id=self.group.group_id,
            handler=self.stage.name,
            now=now,
        )
        if ref is None:
            return [forward], []
        status = failed_status(decision, failure)
        return [forward], [self._state(ref, status, attempt, now, failure)]

    def _state(
        self,
        ref: JobRef,
        status: JobStatus,
        attempt: int,
        now: float,
        failure: Failure | None = None,
    ) -> Outgoing:
        return job_state(
            self.job_topic,
            self.stage.kind,
            ref,
            status,
            attempt=attempt,
            now=now,
            serde=self.serde,
            failure=failure,
            phase=self.stage.phase,
        )

    async def _publish_until_acked(self, items: list[_Pending], wave: _Wave) -> None:
        # Returning before every record's follow-ups are acknowledged would let the caller ack
        # the source and lose work, so a Kafka outage is waited out here (only cancellation
        # ends the wait). A record whose own results Kafka refuses for good (one over the
        # topic's size limit, no authorization) goes to the dead-letter topic instead, alone:
        # its neighbours' acknowledged results stand.
        delay = 0.5
        pending = items
        blocked = False
        try:
            while pending:
                errors = await self._publish_each(pending, wave)
                stuck = self._dead_letter_refused(pending, errors, wave)
                retry_from = next(
                    (i for i, e in enumerate(errors) if e is not None and _retriable(e)), None
                )
                if retry_from is not None:
                    # Later records' follow-ups go again too, so the last copy of each keeps
                    # the batch's order (a sync's adds and deletes must not swap).
                    pending = [
                        item
                        for i, (item, error) in enumerate(zip(pending, errors, strict=True))
                        if i >= retry_from or error is not None
                    ]
                else:
                    pending = [item for item, e in zip(pending, errors, strict=True) if e]
                if stuck != blocked:
                    blocked = stuck
                    self._blocked_gauge().inc(1 if stuck else -1)
                if retry_from is None and not stuck:
                    continue  # refused records go again at once, now as dead letters
                log.warning(
                    "publish failed group=%s records=%d, retrying in %.1fs",
                    self.group.group_id,
                    len(pending),
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, 30.0)
        finally:
            if blocked:
                self._blocked_gauge().dec()

    def _blocked_gauge(self) -> Gauge:
        return self.metrics.blocked_partitions.labels(self.group.group_id, self.stage.name)

    async def _publish_each(self, items: list[_Pending], wave: _Wave) -> list[KafkaError | None]:
        """Send every item's records of ``wave`` in order; return each item's first Kafka error."""
        # An item refused before queueing (too large, buffer timeout) gets its KafkaError.
        sent = await self.publisher.send_groups([item.wave(wave) for item in items])
        # One wait for the whole wave: a gather per source record costs more than its records.
        # Items share their batches' futures: each is awaited once.
        queued = list(
            dict.fromkeys(
                future
                for futures in sent
                if not isinstance(futures, KafkaError)
                for future in futures
            )
        )
        acked = dict(
            zip(queued, await asyncio.gather(*queued, return_exceptions=True), strict=True)
        )
        errors: list[KafkaError | None] = []
        for futures in sent:
            if isinstance(futures, KafkaError):
                errors.append(futures)
                continue
            mine = [acked[future] for future in futures]
            failure = next((r for r in mine if isinstance(r, BaseException)), None)
            if failure is not None and not isinstance(failure, KafkaError):
                raise failure
            errors.append(failure)
        return errors

    def _dead_letter_refused(
        self, items: list[_Pending], errors: list[KafkaError | None], wave: _Wave
    ) -> bool:
        """Turn each item's refused results into dead letters; True if that cannot help.

        A refused dead letter, or a refused job state (its results are already in Kafka), can
        only wait for an operator: the batch is held and the blocked-partitions gauge says so.
        """
        stuck = False
        for item, error in zip(items, errors, strict=True):
            if error is None or _retriable(error):
                continue
            if item.dead_lettered or wave is _Wave.STATES:
                stuck = True
                log.error(
                    "%s refused group=%s topic=%s partition=%s offset=%s: %s",
                    "job state" if wave is _Wave.STATES else "dead letter",
                    self.group.group_id,
                    item.record.topic,
                    item.record.partition,
                    item.record.offset,
                    error,
                )
                continue
            log.error(
                "results refused group=%s topic=%s partition=%s offset=%s: %s",
                self.group.group_id,
                item.record.topic,
                item.record.partition,
                item.record.offset,
                error,
            )
            failure = Failure(RetryClass.PERMANENT, f"results refused by Kafka: {error}"[:500])
            item.results, item.states = self._route_failure(
                item.record, item.ref, item.attempt, failure, self.clock()
            )
            item.dead_lettered = True
        return stuck


def _retriable(error: KafkaError) -> bool:
    return bool(error.retriable) or isinstance(error, KafkaTimeoutError)


class _Wave(enum.Enum):
    RESULTS = "results"  # outputs, queued jobs downstream, forwards to a tier or the DLQ
    STATES = "states"  # the record's own job state, once its results are acknowledged


@dataclass
class _Pending:
    """One source record and the records that follow from it."""

    record: Record
    ref: JobRef | None
    attempt: int
    outcome: Outcome
    results: list[Outgoing]
    states: list[Outgoing]
    dead_lettered: bool = False

    def wave(self, wave: _Wave) -> list[Outgoing]:
        return self.results if wave is _Wave.RESULTS else self.states
