"""Read-only views of a running pipeline: records per topic, job rows by status, DLQ sizes.

Used by the main job's progress bars and summary and by tests; it never changes anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.runtime.routing import PHASE_WEIGHT
from topics.catalogue import Catalogue
from topics.kafka import KafkaClients

TERMINAL = ("done", "error", "dead")

JOBS_BY_KIND_AND_STATUS = """
SELECT kind, status, count(*) FROM jobs
WHERE user_id = ANY(%(users)s)
GROUP BY kind, status
"""


NORMALIZED_MESSAGES = """
SELECT count(*) FROM jobs
WHERE user_id = ANY(%(users)s) AND kind = 'normalize_google_email' AND status = 'done'
  AND version >= %(phase)s
"""


def normalized_messages(database_url: str, users: list[str]) -> int:
    """Messages whose normalize job finished in the normalize stage itself (phase 1).

    A message deleted in Gmail before its fetch also ends ``done``, but in the fetch phase, and
    queues no downstream jobs; it is not counted here.
    """
    with psycopg.connect(database_url) as conn:
        row = conn.execute(NORMALIZED_MESSAGES, {"users": users, "phase": PHASE_WEIGHT}).fetchone()
    return int(row[0]) if row else 0


@dataclass
class JobCounts:
    """Job rows per kind and status."""

    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, kind: str, statuses: Iterable[str] | None = None) -> int:
        """Rows of ``kind`` (in ``statuses`` when given)."""
        rows = self.by_kind.get(kind, {})
        return sum(n for status, n in rows.items() if statuses is None or status in statuses)

    def by_status(self) -> dict[str, int]:
        """Rows per status over all kinds."""
        totals: dict[str, int] = {}
        for rows in self.by_kind.values():
            for status, n in rows.items():
                totals[status] = totals.get(status, 0) + n
        return dict(sorted(totals.items()))


def job_counts(database_url: str, users: list[str]) -> JobCounts:
    """Return job rows of ``users`` grouped by kind and status."""
    counts = JobCounts()
    with psycopg.connect(database_url) as conn:
        for kind, status, n in conn.execute(JOBS_BY_KIND_AND_STATUS, {"users": users}):
            counts.by_kind.setdefault(kind, {})[status] = n
    return counts


class TopicCounter:
    """Counts records per topic from end offsets (cheap: reads no records)."""

    def __init__(self, kafka: KafkaClients) -> None:
        self._kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self._running = AsyncExitStack()

    async def __aenter__(self) -> TopicCounter:
        # Started by ``KafkaClients``: refused credentials become one clear KafkaAuthError.
        self._consumer = await self._running.enter_async_context(
            self._kafka.started(self._kafka.consumer())
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._running.aclose()

    async def records(self, topics: Iterable[str]) -> dict[str, int]:
        """Return records ever written to each topic (end minus start offsets)."""
        assert self._consumer is not None  # noqa: S101 - used inside `async with`
        names = list(topics)
        partitions = []
        for name in names:
            found = self._consumer.partitions_for_topic(name)
            if found is None:
                await self._consumer._client.force_metadata_update()  # first look at a topic
                found = self._consumer.partitions_for_topic(name) or set()
            partitions += [TopicPartition(name, p) for p in found]
        ends = await self._consumer.end_offsets(partitions) if partitions else {}
        starts = await self._consumer.beginning_offsets(partitions) if partitions else {}
        totals = dict.fromkeys(names, 0)
        for tp, end in ends.items():
            totals[tp.topic] += end - starts.get(tp, 0)
        return totals


def stage_topics(catalogue: Catalogue) -> dict[str, str]:
    """Return the topics that show each stage's progress, by a short label."""
    return {
        "discovered": catalogue.message_discovered.name,
        "fetched": catalogue.message_fetched.name,
        "normalized": catalogue.email_normalized.name,
        "contacts": catalogue.contact_extracted.name,
        "embedded": catalogue.email_embedded.name,
        "insights": catalogue.insight_produced.name,
    }


def dlq_topics(catalogue: Catalogue) -> dict[str, str]:
    """Return each consumer group's dead-letter topic, by agent name."""
    return {group.agent: group.dlq.name for group in catalogue.groups}
