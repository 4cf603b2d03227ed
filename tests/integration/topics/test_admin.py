"""``ensure_topics`` and ``inboxflow topics apply`` against a real broker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

from inboxflow.cli import cli
from schemas.errors import TransientError
from topics.admin import ensure_topics
from topics.catalogue import TopicSpec, build_catalogue
from topics.kafka import KafkaClients

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def _overrides(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    [(_code, _message, _type, _name, entries)] = response.resources
    return {entry[0]: entry[1] for entry in entries if entry[3] == 1}  # topic-level overrides


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> int:
    topics = {t["topic"]: t for t in await admin.describe_topics()}
    return len(topics[topic]["partitions"])


async def test_apply_creates_the_catalogue_then_changes_nothing(
    kafka_bootstrap: str, unique_name: Callable[..., str], admin: AIOKafkaAdminClient
) -> None:
    catalogue = build_catalogue(unique_name("t"), partitions=2)
    names = [spec.name for spec in catalogue.topics]

    first = await ensure_topics(KafkaClients(kafka_bootstrap), catalogue.topics)
    second = await ensure_topics(KafkaClients(kafka_bootstrap), catalogue.topics)

    assert sorted(first.created) == sorted(names)
    assert (first.updated, first.unchanged, first.warnings) == ([], [], [])
    assert sorted(second.unchanged) == sorted(names)
    assert (second.created, second.updated, second.warnings, second.changed) == ([], [], [], False)
    fetched = catalogue.message_fetched
    assert await _overrides(admin, fetched.name) == dict(fetched.configs)
    assert await _partitions(admin, catalogue.normalize.dlq.name) == 2


async def test_apply_converges_drifted_configs(
    kafka_bootstrap: str, unique_name: Callable[..., str], admin: AIOKafkaAdminClient
) -> None:
    spec = build_catalogue(unique_name("t"), partitions=1).job_state_changed
    await ensure_topics(KafkaClients(kafka_bootstrap), [spec])
    drifted = {**spec.configs, "retention.ms": "1000", "segment.ms": "600000"}
    await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, drifted)])

    report = await ensure_topics(KafkaClients(kafka_bootstrap), [spec])

    [change] = report.updated
    assert change.configs_set == {"retention.ms": ("1000", spec.configs["retention.ms"])}
    assert change.configs_removed == {"segment.ms": "600000"}
    assert await _overrides(admin, spec.name) == dict(spec.configs)
    assert (await ensure_topics(KafkaClients(kafka_bootstrap), [spec])).unchanged == [spec.name]


async def test_apply_adds_partitions_and_never_removes_them(
    kafka_bootstrap: str, unique_name: Callable[..., str], admin: AIOKafkaAdminClient
) -> None:
    spec = build_catalogue(unique_name("t"), partitions=2).sync_requested
    await ensure_topics(KafkaClients(kafka_bootstrap), [spec])

    grown = await ensure_topics(
        KafkaClients(kafka_bootstrap), [dataclasses.replace(spec, partitions=3)]
    )
    shrunk = await ensure_topics(
        KafkaClients(kafka_bootstrap), [dataclasses.replace(spec, partitions=1)]
    )

    assert [c.partitions for c in grown.updated] == [(2, 3)]
    assert shrunk.unchanged == [spec.name]
    assert len(shrunk.warnings) == 1
    assert "cannot remove partitions" in shrunk.warnings[0]
    assert await _partitions(admin, spec.name) == 3


async def test_replication_difference_is_reported_not_changed(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    spec = build_catalogue(unique_name("t"), partitions=1).sync_requested
    await ensure_topics(KafkaClients(kafka_bootstrap), [spec])
    asks_for_three = TopicSpec(**{**spec.__dict__, "replication": 3})

    report = await ensure_topics(KafkaClients(kafka_bootstrap), [asks_for_three])

    assert report.unchanged == [spec.name]
    assert ["replication factor 1" in w for w in report.warnings] == [True]


async def test_unreachable_cluster_is_a_transient_error() -> None:
    with pytest.raises(TransientError, match="unreachable"):
        await asyncio.wait_for(
            ensure_topics(KafkaClients("127.0.0.1:9"), [], request_timeout_ms=2000), 60
        )


def test_cli_apply_twice_then_describe(
    kafka_bootstrap: str, unique_name: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("INBOXFLOW_TOPIC_PARTITIONS", "1")
    namespace = unique_name("t")
    count = len(build_catalogue(namespace).topics)
    runner = CliRunner()

    first = runner.invoke(cli, ["topics", "apply", "--namespace", namespace])
    second = runner.invoke(cli, ["topics", "apply", "--namespace", namespace])

    assert first.exit_code == 0, first.output
    assert f"{count} created, 0 updated, 0 unchanged, 0 warnings" in first.output
    assert second.exit_code == 0, second.output
    assert f"0 created, 0 updated, {count} unchanged, 0 warnings" in second.output
