"""The topic catalogue: the one place that names every inboxflow topic and consumer group.

Kafka names are state (renaming one orphans data and offsets), so they are spelled out here and
nowhere else; agents, sinks, tools and tests ask the catalogue. Everything is built from a
namespace so tests get their own topics (``build_catalogue("t-my-test-1a2b3c4d")``).

Naming (also in ``docs/topics.md``):
- event topics ``<ns>.<domain>.<event>.v<major>``, e.g. ``inboxflow.gmail.message-fetched.v1``;
  dots between parts, hyphens within, never ``_`` (Kafka's metric names confuse ``.`` and ``_``);
  ``v<major>`` changes only with an incompatible schema, as a new topic;
- consumer group = faust app id ``<ns>-<agent>``, e.g. ``inboxflow-normalize``; its retry tiers
  are consumed by ``<ns>-<agent>-retry``;
- retry tiers ``<ns>.<agent>.retry.<delay>``, e.g. ``inboxflow.normalize.retry.30s``;
- dead-letter topic ``<ns>.<agent>.dlq``.

Every event topic is keyed by the user id (UTF-8), so one user's events stay in order on one
partition; its value is the Avro record named in ``value_schema``. Retry and dead-letter topics
carry the failed record's key and value bytes unchanged, plus ``schemas.headers``.

Pure: builds data, talks to nothing (``topics.admin`` applies it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.errors import RetryTier
from schemas.models import (
    ContactExtracted,
    EmailEmbedded,
    EmailNormalized,
    Event,
    GmailMessageFetched,
    InsightProduced,
    JobStateChanged,
    MessageDeleted,
    MessageDiscovered,
    MessageLabelsChanged,
    SyncRequested,
)

DEFAULT_NAMESPACE = "inboxflow"
DEFAULT_RETRY_LADDER: tuple[int, ...] = (5, 30, 120, 600)
"""Seconds each retry tier waits: 5 s, 30 s, 2 min, 10 min, then the dead-letter topic."""

KEY_DESCRIPTION = "user_id as UTF-8 bytes"

_MIB = 1024 * 1024
_DAY_MS = 24 * 60 * 60 * 1000
_FOREVER = -1
_NAMESPACE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MAX_TOPIC_NAME = 249  # Kafka's limit


class TopicRole(StrEnum):
    """What a topic is for."""

    EVENT = "event"  # Avro events, the pipeline's contract
    RETRY = "retry"  # failed records waiting for their next attempt
    DLQ = "dlq"  # failed records waiting for an operator


@dataclass(frozen=True, eq=True)
class TopicSpec:
    """Everything ``topics apply`` needs to create one topic, and what readers need to use it."""

    name: str
    role: TopicRole
    partitions: int
    replication: int
    configs: Mapping[str, str] = field(hash=False)
    description: str
    value_model: type[Event] | None = None  # None: retry/DLQ topics carry the source's bytes
    key: str = KEY_DESCRIPTION

    @property
    def value_schema(self) -> str | None:
        """Return the Avro full name of the value, or None for retry and dead-letter topics."""
        return self.value_model.avro_full_name() if self.value_model else None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (``topics describe --json``)."""
        return {
            "name": self.name,
            "role": self.role.value,
            "key": self.key,
            "value_schema": self.value_schema,
            "partitions": self.partitions,
            "replication": self.replication,
            "configs": dict(sorted(self.configs.items())),
            "description": self.description,
        }


@dataclass(frozen=True)
class ConsumerGroup:
    """One consumer group (= faust app id): what it reads, writes, and where failures go."""

    agent: str
    group_id: str
    description: str
    sources: tuple[TopicSpec, ...]
    produces: tuple[TopicSpec, ...]
    retry_topics: tuple[TopicSpec, ...]  # the ladder's topics, shortest delay first
    retry_delays: tuple[int, ...]  # seconds, one per retry topic
    dlq: TopicSpec

    @property
    def retry_tiers(self) -> tuple[RetryTier, ...]:
        """Return the retry ladder as ``schemas.errors`` decides on it."""
        return tuple(
            RetryTier(spec.name, delay)
            for spec, delay in zip(self.retry_topics, self.retry_delays, strict=True)
        )

    @property
    def retry_group_id(self) -> str:
        """Return the group that consumes this group's retry tiers (``<group_id>-retry``)."""
        return f"{self.group_id}-retry"

    @property
    def failure_topics(self) -> tuple[TopicSpec, ...]:
        """Return the group's retry tiers then its dead-letter topic."""
        return (*self.retry_topics, self.dlq)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (``topics describe --json``)."""
        return {
            "agent": self.agent,
            "group_id": self.group_id,
            "description": self.description,
            "sources": [t.name for t in self.sources],
            "produces": [t.name for t in self.produces],
            "retry_ladder": [
                {"delay_seconds": tier.delay_seconds, "topic": tier.topic}
                for tier in self.retry_tiers
            ],
            "retry_group_id": self.retry_group_id,
            "dlq": self.dlq.name,
        }


@dataclass(frozen=True)
class Catalogue:
    """Every topic and consumer group of one inboxflow deployment (or one test)."""

    namespace: str
    sync_requested: TopicSpec
    message_discovered: TopicSpec
    backfill_requested: TopicSpec
    backfill_discovered: TopicSpec
    message_deleted: TopicSpec
    message_labels_changed: TopicSpec
    message_fetched: TopicSpec
    email_normalized: TopicSpec
    contact_extracted: TopicSpec
    email_embedded: TopicSpec
    insight_produced: TopicSpec
    job_state_changed: TopicSpec
    sync: ConsumerGroup
    normalize: ConsumerGroup
    extract: ConsumerGroup
    embed: ConsumerGroup
    insight: ConsumerGroup
    sink_jobs: ConsumerGroup
    sink_contacts: ConsumerGroup

    @property
    def event_topics(self) -> tuple[TopicSpec, ...]:
        """Return the event topics in pipeline order."""
        return (
            self.sync_requested,
            self.message_discovered,
            self.backfill_requested,
            self.backfill_discovered,
            self.message_deleted,
            self.message_labels_changed,
            self.message_fetched,
            self.email_normalized,
            self.contact_extracted,
            self.email_embedded,
            self.insight_produced,
            self.job_state_changed,
        )

    @property
    def groups(self) -> tuple[ConsumerGroup, ...]:
        """Return the consumer groups in pipeline order."""
        return (
            self.sync,
            self.normalize,
            self.extract,
            self.embed,
            self.insight,
            self.sink_jobs,
            self.sink_contacts,
        )

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        """Return every topic: event topics, then each group's retry tiers and dead-letter topic."""
        return (*self.event_topics, *(t for g in self.groups for t in g.failure_topics))

    def topic(self, name: str) -> TopicSpec:
        """Return the topic called ``name``; KeyError when the catalogue has none."""
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(f"no topic {name!r} in catalogue {self.namespace!r}")

    def topic_for(self, model: type[Event]) -> TopicSpec:
        """Return the live event topic whose values are ``model`` records (the backfill lane's
        topics carry ``SyncRequested`` and ``MessageDiscovered`` too, and come after)."""
        for spec in self.event_topics:
            if spec.value_model is model:
                return spec
        raise KeyError(f"no topic carries {model.__name__} in catalogue {self.namespace!r}")

    def group(self, agent_or_group_id: str) -> ConsumerGroup:
        """Return the group with this agent name (``normalize``) or group id."""
        for group in self.groups:
            if agent_or_group_id in (group.agent, group.group_id):
                return group
        raise KeyError(f"no consumer group {agent_or_group_id!r} in {self.namespace!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the whole map, JSON-ready (``topics describe --json``)."""
        return {
            "namespace": self.namespace,
            "topics": [t.to_dict() for t in self.topics],
            "groups": [g.to_dict() for g in self.groups],
        }


# --- building -------------------------------------------------------------------------------------


def delay_label(seconds: int) -> str:
    """Return the tier suffix for a delay: ``5s``, ``2m``, ``1h``, ``90s``. Pure."""
    if seconds <= 0:
        raise ValueError(f"a retry delay must be positive, got {seconds}")
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _base_configs(replication: int, retention_ms: int) -> dict[str, str]:
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(retention_ms),
        # acks=all then survives one broker down; with fewer than 3 replicas nothing can be spared.
        "min.insync.replicas": str(2 if replication >= 3 else 1),
    }


@dataclass(frozen=True)
class _EventTopic:
    domain: str
    event: str
    model: type[Event]
    retention_days: int | None  # None: keep forever
    max_message_mib: int | None  # None: broker default (1 MiB)
    description: str


# Retention, argued:
# - message-fetched is the archive every replay reads (so replays never call Gmail): forever.
# - result topics are what other teams subscribe to and replay: a year; older results are rebuilt
#   by replaying message-fetched through a new consumer group.
# - job-state is keyed by user id like every topic, so compaction would keep one job per user and
#   destroy the rest: delete policy, 30 days. Postgres `jobs` is the durable state; a new sink
#   rebuilds recent state from the topic, older jobs are already in the table.
# - sync-requested and message-discovered are commands and work lists, useful for audits only.
# - backfill-requested and backfill-discovered are the backfill lane's copies of those two: the
#   same records on topics of their own, so a backfill never queues in front of live traffic.
_EVENT_TOPICS = (
    _EventTopic(
        "gmail", "sync-requested", SyncRequested, 30, None, "Requests to sync one user's mailbox."
    ),
    _EventTopic(
        "gmail",
        "message-discovered",
        MessageDiscovered,
        30,
        None,
        "Gmail message ids found by a sync, still to be fetched.",
    ),
    _EventTopic(
        "gmail",
        "backfill-requested",
        SyncRequested,
        30,
        None,
        "Backfills (full resyncs at a capped share of the user's quota) and their listing pages.",
    ),
    _EventTopic(
        "gmail",
        "backfill-discovered",
        MessageDiscovered,
        30,
        None,
        "Gmail message ids found by a backfill, fetched at the backfill's share of the quota.",
    ),
    _EventTopic(
        "gmail",
        "message-deleted",
        MessageDeleted,
        365,
        None,
        "Messages gone from a mailbox (deleted in Gmail, or missing at a full resync); "
        "consumers drop what they derived from them.",
    ),
    _EventTopic(
        "gmail",
        "message-labels-changed",
        MessageLabelsChanged,
        365,
        None,
        "Each message's whole label set after a change (read, archived, starred, trashed).",
    ),
    _EventTopic(
        "gmail",
        "message-fetched",
        GmailMessageFetched,
        None,
        64,  # raw RFC 822 messages: Gmail accepts mail up to 50 MB
        "Raw Gmail messages as fetched; the archive replays read instead of calling Gmail.",
    ),
    _EventTopic(
        "mail",
        "email-normalized",
        EmailNormalized,
        365,
        16,  # the whole plain-text body of a long message
        "Messages parsed into typed headers, addresses, text body and attachment list.",
    ),
    _EventTopic(
        "mail",
        "contact-extracted",
        ContactExtracted,
        365,
        None,
        "One correspondent per message and role.",
    ),
    _EventTopic(
        "mail",
        "email-embedded",
        EmailEmbedded,
        365,
        16,  # many chunks of a long message, each with its vector
        "Vector embeddings of message text, one per chunk.",
    ),
    _EventTopic(
        "insights",
        "insight-produced",
        InsightProduced,
        365,
        None,
        "Mailbox insights per user: correspondents, volume, reply latency, unanswered threads.",
    ),
    _EventTopic(
        "jobs",
        "job-state-changed",
        JobStateChanged,
        30,
        None,
        "State changes of every unit of work; the jobs table is built from it.",
    ),
)

RETRY_RETENTION_MARGIN_DAYS = 7
"""Retry tiers keep records their delay plus a week, so a stopped tier consumer loses nothing."""
DLQ_RETENTION_DAYS = 90
"""A quarter to fix the cause and redrive."""


def _event_topic(namespace: str, spec: _EventTopic, partitions: int, replication: int) -> TopicSpec:
    retention = _FOREVER if spec.retention_days is None else spec.retention_days * _DAY_MS
    configs = _base_configs(replication, retention)
    if spec.max_message_mib:
        configs["max.message.bytes"] = str(spec.max_message_mib * _MIB)
    return TopicSpec(
        name=f"{namespace}.{spec.domain}.{spec.event}.v1",
        role=TopicRole.EVENT,
        partitions=partitions,
        replication=replication,
        configs=configs,
        description=spec.description,
        value_model=spec.model,
    )


def _failure_configs(
    sources: Sequence[TopicSpec], replication: int, retention_ms: int
) -> dict[str, str]:
    configs = _base_configs(replication, retention_ms)
    # A forwarded record must fit: take the largest limit among the sources.
    limits = [
        int(s.configs["max.message.bytes"]) for s in sources if "max.message.bytes" in s.configs
    ]
    if limits:
        configs["max.message.bytes"] = str(max(limits))
    return configs


@dataclass(frozen=True)
class _GroupPlan:
    agent: str
    description: str
    sources: tuple[str, ...]
    produces: tuple[str, ...]


_GROUPS = (
    _GroupPlan(
        "sync",
        "Lists a mailbox on each sync request and fetches each discovered message from Gmail; "
        "backfills go through a lane of their own at a capped share of the quota.",
        ("sync_requested", "message_discovered", "backfill_requested", "backfill_discovered"),
        (
            "message_discovered",
            "backfill_requested",
            "backfill_discovered",
            "message_deleted",
            "message_labels_changed",
            "message_fetched",
            "job_state_changed",
        ),
    ),
    _GroupPlan(
        "normalize",
        "Parses raw messages into EmailNormalized.",
        ("message_fetched",),
        ("email_normalized", "job_state_changed"),
    ),
    _GroupPlan(
        "extract",
        "Extracts one ContactExtracted per address and role.",
        ("email_normalized",),
        ("contact_extracted", "job_state_changed"),
    ),
    _GroupPlan(
        "embed",
        "Chunks message text and embeds each chunk.",
        ("email_normalized",),
        ("email_embedded", "job_state_changed"),
    ),
    _GroupPlan(
        "insight",
        "Recomputes mailbox insights per user.",
        ("email_normalized",),
        ("insight_produced", "job_state_changed"),
    ),
    _GroupPlan(
        "sink-jobs",
        "Upserts job state into Postgres (jobs table), newest version wins.",
        ("job_state_changed",),
        (),
    ),
    _GroupPlan(
        "sink-contacts",
        "Upserts contacts (and emails) into Postgres; removes deleted messages, updates labels.",
        ("contact_extracted", "message_deleted", "message_labels_changed"),
        (),
    ),
)


def _consumer_group(
    namespace: str,
    plan: _GroupPlan,
    events: Mapping[str, TopicSpec],
    ladder: Sequence[int],
    replication: int,
) -> ConsumerGroup:
    sources = tuple(events[name] for name in plan.sources)
    partitions = max(s.partitions for s in sources)  # so a tier can keep the partition number
    retry_topics = tuple(
        TopicSpec(
            name=f"{namespace}.{plan.agent}.retry.{delay_label(delay)}",
            role=TopicRole.RETRY,
            partitions=partitions,
            replication=replication,
            configs=_failure_configs(
                sources, replication, (delay + RETRY_RETENTION_MARGIN_DAYS * 86400) * 1000
            ),
            description=f"Records {plan.agent} failed, retried {delay_label(delay)} later.",
        )
        for delay in ladder
    )
    dlq = TopicSpec(
        name=f"{namespace}.{plan.agent}.dlq",
        role=TopicRole.DLQ,
        partitions=partitions,
        replication=replication,
        configs=_failure_configs(sources, replication, DLQ_RETENTION_DAYS * _DAY_MS),
        description=f"Records {plan.agent} gave up on: permanent errors and exhausted retries.",
    )
    return ConsumerGroup(
        agent=plan.agent,
        group_id=f"{namespace}-{plan.agent}",
        description=plan.description,
        sources=sources,
        produces=tuple(events[name] for name in plan.produces),
        retry_topics=retry_topics,
        retry_delays=tuple(ladder),
        dlq=dlq,
    )


def _check_arguments(
    namespace: str, partitions: int, replication: int, ladders: Mapping[str, Sequence[int]]
) -> None:
    if not _NAMESPACE.match(namespace):
        raise ValueError(
            f"namespace {namespace!r} must be lower-case letters and digits joined by single "
            "hyphens (no '.' or '_': they are the topic name's separators)"
        )
    if len(namespace) > _MAX_TOPIC_NAME - 40:
        raise ValueError(f"namespace {namespace!r} too long for Kafka's 249-character names")
    if partitions < 1 or replication < 1:
        raise ValueError(
            f"partitions and replication must be >= 1, got {partitions}, {replication}"
        )
    unknown = set(ladders) - {plan.agent for plan in _GROUPS}
    if unknown:
        raise ValueError(f"retry ladders given for unknown agents: {sorted(unknown)}")
    for agent, ladder in ladders.items():
        labels = [delay_label(d) for d in ladder]
        if len(set(labels)) != len(labels) or list(ladder) != sorted(ladder):
            raise ValueError(
                f"retry ladder of {agent} must be distinct increasing delays: {ladder}"
            )


def build_catalogue(
    namespace: str = DEFAULT_NAMESPACE,
    partitions: int = 6,
    replication: int = 1,
    retry_ladders: Mapping[str, Sequence[int]] | None = None,
) -> Catalogue:
    """Return the catalogue of one deployment.

    Args:
        namespace: first part of every topic and group name; ``inboxflow`` in production, a
            unique slug per test.
        partitions: partitions of every topic (retry and dead-letter topics match their sources,
            so a forwarded record can keep its partition number).
        replication: replication factor of every topic; 3 in production.
        retry_ladders: delays in seconds per agent (``{"sync": (30, 300)}``), overriding
            ``DEFAULT_RETRY_LADDER``; an empty ladder sends failures straight to the DLQ.

    Raises:
        ValueError: a namespace that would make unsafe names, or a malformed ladder.
    """
    ladders = dict(retry_ladders or {})
    _check_arguments(namespace, partitions, replication, ladders)
    events = {
        attr: _event_topic(namespace, spec, partitions, replication)
        for attr, spec in zip(_EVENT_ATTRIBUTES, _EVENT_TOPICS, strict=True)
    }
    groups = {
        plan.agent: _consumer_group(
            namespace, plan, events, ladders.get(plan.agent, DEFAULT_RETRY_LADDER), replication
        )
        for plan in _GROUPS
    }
    return Catalogue(
        namespace=namespace,
        sync_requested=events["sync_requested"],
        message_discovered=events["message_discovered"],
        backfill_requested=events["backfill_requested"],
        backfill_discovered=events["backfill_discovered"],
        message_deleted=events["message_deleted"],
        message_labels_changed=events["message_labels_changed"],
        message_fetched=events["message_fetched"],
        email_normalized=events["email_normalized"],
        contact_extracted=events["contact_extracted"],
        email_embedded=events["email_embedded"],
        insight_produced=events["insight_produced"],
        job_state_changed=events["job_state_changed"],
        sync=groups["sync"],
        normalize=groups["normalize"],
        extract=groups["extract"],
        embed=groups["embed"],
        insight=groups["insight"],
        sink_jobs=groups["sink-jobs"],
        sink_contacts=groups["sink-contacts"],
    )


_EVENT_ATTRIBUTES = (
    "sync_requested",
    "message_discovered",
    "backfill_requested",
    "backfill_discovered",
    "message_deleted",
    "message_labels_changed",
    "message_fetched",
    "email_normalized",
    "contact_extracted",
    "email_embedded",
    "insight_produced",
    "job_state_changed",
)

DEFAULT_CATALOGUE = build_catalogue()
"""The production map: namespace ``inboxflow``, 6 partitions, replication 1 (override in CLI)."""
