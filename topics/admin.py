"""Apply topic specs to a Kafka cluster: create what is missing, converge what drifted. Idempotent.

``ensure_topics`` compares each ``TopicSpec`` with the cluster and then:
- creates a missing topic with its partitions, replication factor and configs;
- sets the configs of an existing topic to exactly the spec's. The catalogue owns every
  topic-level override: one set by hand and absent from the spec is removed (and reported);
- adds partitions when the spec asks for more. It never removes partitions (Kafka cannot, and
  the key-to-partition mapping would change anyway): it reports a warning instead;
- reports, but does not change, a different replication factor (that needs a reassignment).

Running it twice in a row changes nothing the second time. Uses aiokafka's admin client; it must
not produce or consume records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from schemas.errors import PermanentError, TransientError
from topics.catalogue import TopicSpec
from topics.kafka import KafkaClients

logger = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: an override set on this topic


class TopicAdminError(PermanentError):
    """The cluster refused a topic change; the message says which topic and why."""


@dataclass
class TopicChange:
    """What ``ensure_topics`` changed on one existing topic."""

    name: str
    configs_set: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # key: old, new
    configs_removed: dict[str, str] = field(default_factory=dict)  # overrides not in the spec
    partitions: tuple[int, int] | None = None  # old, new

    def describe(self) -> str:
        """Return a one-line summary for logs and the CLI."""
        parts = [f"{k}: {old} -> {new}" for k, (old, new) in sorted(self.configs_set.items())]
        parts += [
            f"{k}: {old} -> (broker default)" for k, old in sorted(self.configs_removed.items())
        ]
        if self.partitions:
            parts.append(f"partitions: {self.partitions[0]} -> {self.partitions[1]}")
        return f"{self.name}: " + ", ".join(parts)


@dataclass
class ApplyReport:
    """Outcome of ``ensure_topics``: one entry per spec in exactly one of the first three lists."""

    created: list[str] = field(default_factory=list)
    updated: list[TopicChange] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Return True when the cluster was modified."""
        return bool(self.created or self.updated)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary."""
        return {
            "created": self.created,
            "updated": [change.describe() for change in self.updated],
            "unchanged": self.unchanged,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _Existing:
    partitions: int
    replication: int


async def ensure_topics(
    kafka: KafkaClients,
    specs: Iterable[TopicSpec],
    *,
    request_timeout_ms: int = 30_000,
    client_id: str = "inboxflow-topics",
) -> ApplyReport:
    """Create or converge every topic in ``specs``; return what was done. Idempotent.

    Args:
        kafka: the cluster and its security (``inboxflow.wiring.kafka_from``).
        specs: topics to ensure (e.g. ``build_catalogue(...).topics``).
        request_timeout_ms: per admin request (default 30 s).
        client_id: client id the broker logs (default ``inboxflow-topics``).

    Raises:
        TransientError: the cluster cannot be reached.
        KafkaAuthError: the cluster refused the credentials (``topics.kafka``).
        TopicAdminError: the cluster refused a creation or change (bad config, too few brokers).
    """
    wanted = _unique(specs)
    kafka = kafka.with_client_id(client_id)
    admin = kafka.admin(request_timeout_ms=request_timeout_ms)
    async with kafka.started(admin):
        return await _apply(admin, wanted, request_timeout_ms / 1000)


def _unique(specs: Iterable[TopicSpec]) -> dict[str, TopicSpec]:
    wanted: dict[str, TopicSpec] = {}
    for spec in specs:
        if spec.name in wanted and wanted[spec.name] != spec:
            raise ValueError(f"two different specs for topic {spec.name}")
        wanted[spec.name] = spec
    return wanted


async def _apply(
    admin: AIOKafkaAdminClient, wanted: dict[str, TopicSpec], timeout_s: float
) -> ApplyReport:
    report = ApplyReport()
    existing = await _existing_topics(admin)
    missing = [spec for name, spec in wanted.items() if name not in existing]
    await _create(admin, missing, report)
    if missing:
        # Creation returns before every broker's metadata shows the topic; wait, so that callers
        # (and the next apply) see what was created. Raced topics exist but may be invisible too.
        existing = await _wait_visible(admin, [s.name for s in missing], timeout_s)
    created = set(report.created)
    present = [s for s in wanted.values() if s.name in existing and s.name not in created]
    overrides = await _topic_overrides(admin, [spec.name for spec in present])
    for spec in present:
        change = TopicChange(spec.name)
        _plan_configs(spec, overrides.get(spec.name, {}), change)
        _plan_partitions(spec, existing[spec.name], change, report)
        if change.configs_set or change.configs_removed or change.partitions:
            report.updated.append(change)
        else:
            report.unchanged.append(spec.name)
    await _alter_configs(admin, [wanted[c.name] for c in report.updated if _configs_differ(c)])
    await _add_partitions(admin, [c for c in report.updated if c.partitions])
    for change in report.updated:
        logger.info("topic updated %s", change.describe())
    return report


def _configs_differ(change: TopicChange) -> bool:
    return bool(change.configs_set or change.configs_removed)


async def _wait_visible(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float
) -> dict[str, _Existing]:
    deadline = time.monotonic() + timeout_s
    while True:
        existing = await _existing_topics(admin)
        absent = [name for name in names if name not in existing]
        if not absent:
            return existing
        if time.monotonic() > deadline:
            raise TransientError(f"created topics not visible after {timeout_s:g} s: {absent}")
        await asyncio.sleep(0.1)


async def _existing_topics(admin: AIOKafkaAdminClient) -> dict[str, _Existing]:
    # Metadata for *all* topics: asking for named topics would auto-create them on brokers with
    # auto.create.topics.enable=true (the default), with the wrong partitions and configs.
    found: dict[str, _Existing] = {}
    for topic in await admin.describe_topics():
        partitions = topic["partitions"]
        if topic["error_code"] or not partitions:
            continue
        found[topic["topic"]] = _Existing(len(partitions), len(partitions[0]["replicas"]))
    return found


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec], report: ApplyReport) -> None:
    if not specs:
        return
    response = await admin.create_topics(
        [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication,
                topic_configs=dict(spec.configs),
            )
            for spec in specs
        ]
    )
    for topic, code, *rest in response.topic_errors:
        if code == 0:
            report.created.append(topic)
            logger.info("topic created topic=%s", topic)
        elif code != _TOPIC_ALREADY_EXISTS:  # already there: someone raced us, converge it below
            message = rest[0] if rest else ""
            raise TopicAdminError(f"cannot create {topic}: {for_code(code).__name__} {message}")


async def _topic_overrides(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    overrides: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for code, message, _type, name, entries in response.resources:
            if code:
                raise TopicAdminError(f"cannot read configs of {name}: {message}")
            overrides[name] = {
                entry[0]: entry[1] for entry in entries if entry[3] == _DYNAMIC_TOPIC_CONFIG
            }
    return overrides


def _plan_configs(spec: TopicSpec, current: Mapping[str, str], change: TopicChange) -> None:
    for key, value in spec.configs.items():
        if current.get(key) != value:
            change.configs_set[key] = (current.get(key), value)
    for key, value in current.items():
        if key not in spec.configs:
            change.configs_removed[key] = value


def _plan_partitions(
    spec: TopicSpec, existing: _Existing, change: TopicChange, report: ApplyReport
) -> None:
    if spec.partitions > existing.partitions:
        change.partitions = (existing.partitions, spec.partitions)
    elif spec.partitions < existing.partitions:
        report.warnings.append(
            f"{spec.name} has {existing.partitions} partitions, the catalogue asks for "
            f"{spec.partitions}: Kafka cannot remove partitions, left as is"
        )
    if spec.replication != existing.replication:
        report.warnings.append(
            f"{spec.name} has replication factor {existing.replication}, the catalogue asks for "
            f"{spec.replication}: change it with a partition reassignment, left as is"
        )


async def _alter_configs(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    # AlterConfigs replaces a topic's whole override set, which is what a declarative catalogue
    # wants (aiokafka has no IncrementalAlterConfigs).
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, spec.name, dict(spec.configs)) for spec in specs
    ]
    for response in await admin.alter_configs(resources):
        for code, message, _type, name in response.resources:
            if code:
                raise TopicAdminError(f"cannot alter configs of {name}: {message}")


async def _add_partitions(admin: AIOKafkaAdminClient, changes: list[TopicChange]) -> None:
    if not changes:
        return
    try:
        await admin.create_partitions(
            {c.name: NewPartitions(total_count=c.partitions[1]) for c in changes if c.partitions}
        )
    except KafkaError as exc:
        raise TopicAdminError(f"cannot add partitions: {exc}") from exc
