"""Run a stage over a batch of records and produce everything that follows from it.

The runner is the one place where a stage's work turns into Kafka records: its outputs, the
``queued``/``processing``/``done``/``retrying``/``error``/``dead`` job states, and the failed
records forwarded to a retry tier or the dead-letter topic. ``run`` returns only when Kafka
has acknowledged all of them, so the caller may then ack the source records (at-least-once).
Failures of single records never escape: every record leaves through an output or a forward.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import groupby

from aiokafka.errors import KafkaError, KafkaTimeoutError

from schemas.errors import Failure, RetryClass, RetryPolicy, StageTimeoutError, classify, decide
from schemas.models import JobStatus
from streams.runtime.breaker import BreakerRegistry, CircuitBreaker
from streams.runtime.metrics import AgentMetrics, agent_metrics
from streams.runtime.publisher import Publisher
from streams.runtime.routing import attempts_so_far, failed_status, forward_failed, job_state
from streams.runtime.stage import JobRef, Outcome, Outgoing, Record, Stage
from topics.catalogue import ConsumerGroup

log = logging.getLogger(__name__)

BREAKER_MAX_WAIT = 30.0  # seconds a batch waits on an open breaker before going ahead


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
    ) -> None:
        self.breakers = breakers or BreakerRegistry()
        self.metrics = metrics or agent_metrics()
        self.stage = stage
        self.group = group
        self.job_topic = job_topic
        self.publisher = publisher
        self.policy = policy or RetryPolicy.default()
        self.clock = clock
        self.ladder = group.retry_tiers

    async def run(self, records: Sequence[Record]) -> None:
        """Process records (any partitions), keeping each partition's order; publish the results.

        Partitions are processed concurrently: they hold different users, so one user's slow
        work does not wait on another's, while one user's records stay in order.
        """
        by_partition = [
            list(group)
            for _, group in groupby(
                sorted(records, key=lambda r: (r.topic, r.partition, r.offset)),
                key=lambda r: (r.topic, r.partition),
            )
        ]
        await asyncio.gather(*(self._run_partition(batch) for batch in by_partition))

    async def run_until_done(self, records: Sequence[Record]) -> None:
        """Run a batch until it has gone through; only cancellation (shutdown) stops trying.

        A batch must never be dropped unacked: faust would then skip a lone missing offset at
        commit time (losing the record) or stop committing the partition altogether. Records
        of the batch that already went through run again, which every stage tolerates.
        """
        delay = 0.5
        while True:
            try:
                await self.run(records)
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

    async def _run_partition(self, records: list[Record]) -> None:
        started_at = time.perf_counter()
        breakers = [self.breakers.get(name) for name in self.stage.dependencies(records)]
        await self._wait_for(breakers)
        refs = [self._job_of(record) for record in records]
        attempts = [attempts_so_far(record) + 1 for record in records]
        starts = [
            self._state(ref, JobStatus.PROCESSING, n, self.clock())
            for ref, n in zip(refs, attempts, strict=True)
            if ref is not None
        ]
        started = await self._send_best_effort(starts)
        outcomes = await self._process(records)
        self._record_health(breakers, outcomes)
        results: list[Outgoing] = []
        for record, ref, attempt, outcome in zip(records, refs, attempts, outcomes, strict=True):
            results += self._follow_up(record, ref, attempt, outcome)
        await self._publish_until_acked(results, started, records, refs, attempts)
        for outcome in outcomes:
            if outcome.error is None and outcome.after_publish is not None:
                await self._after_publish(outcome.after_publish)
        self.metrics.batch_seconds.labels(self.group.group_id, self.stage.name).observe(
            time.perf_counter() - started_at
        )

    async def _send_best_effort(self, records: list[Outgoing]) -> list[asyncio.Future[object]]:
        # `processing` states are informative: if Kafka is unreachable they are sent with the
        # results instead (the version guard keeps the row right either way).
        try:
            return await self.publisher.send(records)
        except KafkaError as exc:
            log.warning("processing states not sent group=%s: %s", self.group.group_id, exc)
            return []

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
        # The outputs are safe in Kafka; a failed hook only means work is redone next time.
        try:
            await hook()
        except Exception:
            log.exception("after-publish step failed group=%s", self.group.group_id)

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
    ) -> list[Outgoing]:
        now = self.clock()
        if outcome.error is None:
            self.metrics.records.labels(self.group.group_id, self.stage.name, "done").inc()
            follow = list(outcome.outputs)
            follow += [
                job_state(self.job_topic, kind, queued, JobStatus.QUEUED, attempt=0, now=now)
                for kind, queued in outcome.queued
            ]
            if ref is not None and outcome.finishes_job:
                follow.append(self._state(ref, JobStatus.DONE, attempt, now))
            return follow
        return self._route_failure(record, ref, attempt, classify(outcome.error), now)

    def _route_failure(
        self, record: Record, ref: JobRef | None, attempt: int, failure: Failure, now: float
    ) -> list[Outgoing]:
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
        follow = [
            forward_failed(
                record,
                decision=decision,
                failure=failure,
                attempt=attempt,
                group_id=self.group.group_id,
                handler=self.stage.name,
                now=now,
            )
        ]
        if ref is not None:
            status = failed_status(decision, failure)
            follow.append(self._state(ref, status, attempt, now, failure))
        return follow

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
            failure=failure,
            phase=self.stage.phase,
        )

    async def _publish_until_acked(
        self,
        results: list[Outgoing],
        pending: list[asyncio.Future[object]],
        records: list[Record],
        refs: list[JobRef | None],
        attempts: list[int],
    ) -> None:
        # Returning without every record acked would let the caller ack the source and lose
        # work, so a Kafka outage is waited out here (only cancellation ends the wait). An error
        # retrying cannot fix (a result over the topic's size limit, no authorization) sends
        # the batch's source records to the dead-letter topic instead of looping forever.
        delay = 0.5
        while True:
            try:
                await asyncio.gather(*pending)
                await self.publisher.publish(results)
            except KafkaError as exc:
                if not exc.retriable and not isinstance(exc, KafkaTimeoutError):
                    log.exception("results refused group=%s", self.group.group_id)
                    results = self._dead_letter_all(records, refs, attempts, exc)
                else:
                    log.warning(
                        "publish failed group=%s, retrying in %.1fs: %s",
                        self.group.group_id,
                        delay,
                        exc,
                    )
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                    delay = min(delay * 2, 30.0)
                pending = []
            else:
                return

    def _dead_letter_all(
        self,
        records: list[Record],
        refs: list[JobRef | None],
        attempts: list[int],
        exc: BaseException,
    ) -> list[Outgoing]:
        failure = Failure(RetryClass.PERMANENT, f"results refused by Kafka: {exc}"[:500])
        now = self.clock()
        dead: list[Outgoing] = []
        for record, ref, attempt in zip(records, refs, attempts, strict=True):
            dead += self._route_failure(record, ref, attempt, failure, now)
        return dead
