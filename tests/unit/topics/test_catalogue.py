"""The topic catalogue: names, keys, schemas, retention, ladders; describe output; AsyncAPI sync."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
from click.testing import CliRunner

from inboxflow.cli import cli
from schemas import headers
from schemas.errors import Failure, RetryClass, RetryPolicy, decide
from schemas.models import EVENT_MODELS, MessageDiscovered, SyncRequested
from topics.asyncapi import build_asyncapi, render_asyncapi
from topics.catalogue import (
    DEFAULT_RETRY_LADDER,
    TopicRole,
    build_catalogue,
    delay_label,
)

CATALOGUE = build_catalogue()
_PART = r"[a-z0-9]+(?:-[a-z0-9]+)*"


def test_every_event_has_exactly_one_topic_besides_the_backfill_lane() -> None:
    lane = (CATALOGUE.backfill_requested, CATALOGUE.backfill_discovered)
    carried = [spec.value_model for spec in CATALOGUE.event_topics if spec not in lane]

    assert sorted(m.__name__ for m in carried if m) == sorted(m.__name__ for m in EVENT_MODELS)
    # The lane carries the live records on topics of its own; lookups by model find the live one.
    assert [spec.value_model for spec in lane] == [SyncRequested, MessageDiscovered]
    assert CATALOGUE.topic_for(SyncRequested) is CATALOGUE.sync_requested
    assert CATALOGUE.topic_for(MessageDiscovered) is CATALOGUE.message_discovered
    assert set(lane) <= set(CATALOGUE.sync.sources) & set(CATALOGUE.sync.produces)


def test_event_topic_names_follow_the_convention() -> None:
    pattern = re.compile(rf"^inboxflow\.{_PART}\.{_PART}\.v[1-9][0-9]*$")

    assert [s.name for s in CATALOGUE.event_topics if not pattern.match(s.name)] == []
    assert CATALOGUE.message_discovered.name == "inboxflow.gmail.message-discovered.v1"


def test_no_topic_or_group_name_contains_an_underscore() -> None:
    names = [s.name for s in CATALOGUE.topics] + [g.group_id for g in CATALOGUE.groups]

    assert [n for n in names if "_" in n] == []
    assert len(set(names)) == len(names)


def test_groups_retry_tiers_and_dlqs_are_named_per_agent() -> None:
    normalize = CATALOGUE.normalize

    assert normalize.group_id == "inboxflow-normalize"
    assert [t.topic for t in normalize.retry_tiers] == [
        "inboxflow.normalize.retry.5s",
        "inboxflow.normalize.retry.30s",
        "inboxflow.normalize.retry.2m",
        "inboxflow.normalize.retry.10m",
    ]
    assert normalize.dlq.name == "inboxflow.normalize.dlq"
    assert [g.agent for g in CATALOGUE.groups] == [
        "sync",
        "normalize",
        "extract",
        "embed",
        "insight",
        "sink-jobs",
        "sink-contacts",
    ]


def test_every_group_reads_event_topics_and_has_its_own_failure_topics() -> None:
    owners: dict[str, str] = {}
    for group in CATALOGUE.groups:
        assert all(s.role is TopicRole.EVENT for s in group.sources)
        assert [t.delay_seconds for t in group.retry_tiers] == list(DEFAULT_RETRY_LADDER)
        assert group.dlq.role is TopicRole.DLQ
        for spec in group.failure_topics:
            assert spec.name not in owners, f"{spec.name} shared by {owners.get(spec.name)}"
            owners[spec.name] = group.agent


def test_transient_failures_walk_the_groups_ladder_then_the_dlq() -> None:
    group = CATALOGUE.extract
    failure = Failure(RetryClass.TRANSIENT, "boom")
    budget = RetryPolicy.default().max_attempts[RetryClass.TRANSIENT]

    destinations = [
        decide(
            failure, attempts=n, ladder=group.retry_tiers, dead_letter_topic=group.dlq.name, now=0
        ).topic
        for n in range(1, budget + 1)
    ]

    assert destinations[:5] == [
        "inboxflow.extract.retry.5s",
        "inboxflow.extract.retry.30s",
        "inboxflow.extract.retry.2m",
        "inboxflow.extract.retry.10m",
        "inboxflow.extract.retry.10m",
    ]
    assert destinations[-1] == "inboxflow.extract.dlq"


def test_namespace_partitions_replication_and_ladders_are_applied() -> None:
    catalogue = build_catalogue(
        "t-my-test-1a2b3c4d", partitions=3, replication=3, retry_ladders={"sync": (30, 3600)}
    )

    assert {s.partitions for s in catalogue.topics} == {3}
    assert {s.replication for s in catalogue.topics} == {3}
    assert {s.configs["min.insync.replicas"] for s in catalogue.topics} == {"2"}
    assert all(s.name.startswith("t-my-test-1a2b3c4d.") for s in catalogue.topics)
    assert [t.topic for t in catalogue.sync.retry_tiers] == [
        "t-my-test-1a2b3c4d.sync.retry.30s",
        "t-my-test-1a2b3c4d.sync.retry.1h",
    ]
    assert len(catalogue.normalize.retry_tiers) == len(DEFAULT_RETRY_LADDER)


def test_empty_ladder_sends_failures_straight_to_the_dlq() -> None:
    group = build_catalogue(retry_ladders={"sink-jobs": ()}).sink_jobs
    failure = Failure(RetryClass.TRANSIENT, "boom")

    decision = decide(
        failure, attempts=1, ladder=group.retry_tiers, dead_letter_topic=group.dlq.name, now=0
    )

    assert decision.dead
    assert decision.topic == group.dlq.name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespace": "has_underscore"}, "namespace"),
        ({"namespace": "has.dot"}, "namespace"),
        ({"namespace": "Upper"}, "namespace"),
        ({"partitions": 0}, "partitions"),
        ({"retry_ladders": {"nobody": (5,)}}, "unknown agents"),
        ({"retry_ladders": {"sync": (30, 5)}}, "increasing"),
        ({"retry_ladders": {"sync": (60, 60)}}, "distinct"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_catalogue(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "label"), [(5, "5s"), (30, "30s"), (90, "90s"), (120, "2m"), (3600, "1h")]
)
def test_delay_label(seconds: int, label: str) -> None:
    assert delay_label(seconds) == label


def test_retention_choices() -> None:
    day_ms = 86_400_000

    assert CATALOGUE.message_fetched.configs["retention.ms"] == "-1"  # the replay archive
    assert CATALOGUE.job_state_changed.configs["cleanup.policy"] == "delete"  # keyed by user
    assert int(CATALOGUE.email_normalized.configs["retention.ms"]) == 365 * day_ms
    assert int(CATALOGUE.sync.dlq.configs["retention.ms"]) == 90 * day_ms
    for group in CATALOGUE.groups:
        for spec, delay in zip(group.retry_topics, group.retry_delays, strict=True):
            assert int(spec.configs["retention.ms"]) > delay * 1000 + 6 * day_ms


def test_failure_topics_accept_the_largest_records_of_their_sources() -> None:
    fetched_limit = CATALOGUE.message_fetched.configs["max.message.bytes"]

    for spec in CATALOGUE.normalize.failure_topics:
        assert spec.configs["max.message.bytes"] == fetched_limit
    assert "max.message.bytes" not in CATALOGUE.sink_jobs.dlq.configs


def test_lookups() -> None:
    from schemas.models import JobStateChanged

    assert CATALOGUE.topic_for(JobStateChanged) is CATALOGUE.job_state_changed
    assert CATALOGUE.group("inboxflow-sink-jobs") is CATALOGUE.sink_jobs
    assert CATALOGUE.group("embed") is CATALOGUE.embed
    assert CATALOGUE.topic("inboxflow.embed.dlq") is CATALOGUE.embed.dlq
    with pytest.raises(KeyError):
        CATALOGUE.topic("inboxflow.nothing.v1")


def test_header_keys_are_unique_and_prefixed() -> None:
    assert len(set(headers.ALL_HEADERS)) == len(headers.ALL_HEADERS)
    assert all(key.startswith("x-") for key in headers.ALL_HEADERS)


def test_header_helpers_round_trip_and_cut_safely() -> None:
    pairs = [(headers.ATTEMPTS, headers.encode_text(3)), (headers.ATTEMPTS, b"4")]

    assert headers.header_int(pairs, headers.ATTEMPTS) == 4  # the last value wins
    assert headers.header_int(pairs, headers.DUE_TIMESTAMP) is None
    assert headers.encode_text("é" * 10, max_bytes=5).decode() == "éé"


# --- the CLI (no broker needed) ------------------------------------------------------------------


def test_describe_json_is_the_catalogue() -> None:
    result = CliRunner().invoke(cli, ["topics", "describe", "--json", "--namespace", "acme"])

    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described == build_catalogue("acme").to_dict()
    assert described["groups"][1]["retry_ladder"][0] == {
        "delay_seconds": 5,
        "topic": "acme.normalize.retry.5s",
    }


def test_describe_uses_the_namespace_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXFLOW_TOPIC_NAMESPACE", "acme")

    result = CliRunner().invoke(cli, ["topics", "describe", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["namespace"] == "acme"


def test_describe_text_names_topics_schemas_and_ladders() -> None:
    result = CliRunner().invoke(cli, ["topics", "describe"])

    assert result.exit_code == 0, result.output
    assert "inboxflow.gmail.message-fetched.v1" in result.output
    assert "inboxflow.events.GmailMessageFetched" in result.output
    assert "retention forever" in result.output
    assert "inboxflow.normalize.retry.5s -> inboxflow.normalize.retry.30s" in result.output
    assert "inboxflow.sink-jobs.dlq (permanent at once; else after transient 8," in result.output


# --- AsyncAPI ------------------------------------------------------------------------------------


def test_committed_asyncapi_document_is_current() -> None:
    committed = (resources.files("topics") / "asyncapi.json").read_text(encoding="utf-8")

    assert committed == render_asyncapi(CATALOGUE), (
        "topics/asyncapi.json is stale: run `inboxflow topics asyncapi --output "
        "topics/asyncapi.json` and commit it"
    )


def test_asyncapi_has_a_channel_per_topic_and_valid_references() -> None:
    document = build_asyncapi(CATALOGUE)

    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {spec.name for spec in CATALOGUE.topics}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", key) for key in document["channels"])
    for operation in document["operations"].values():
        channel_id = operation["channel"]["$ref"].removeprefix("#/channels/")
        channel = document["channels"][channel_id]
        for message in operation["messages"]:
            prefix = f"#/channels/{channel_id}/messages/"
            assert message["$ref"].startswith(prefix)
            assert message["$ref"].removeprefix(prefix) in channel["messages"]
    for channel in document["channels"].values():
        for ref in channel["messages"].values():
            assert (
                ref["$ref"].removeprefix("#/components/messages/")
                in (document["components"]["messages"])
            )


def test_asyncapi_embeds_each_avro_schema_and_the_consumer_groups() -> None:
    document = build_asyncapi(CATALOGUE)
    messages = document["components"]["messages"]

    for model in EVENT_MODELS:
        payload = messages[model.__name__]["payload"]
        assert payload["schemaFormat"].startswith("application/vnd.apache.avro+json")
        assert payload["schema"]["name"] == model.__name__
    receive_groups = {
        op["bindings"]["kafka"]["groupId"]["enum"][0]
        for op in document["operations"].values()
        if op["action"] == "receive"
    }
    assert receive_groups == {
        group_id
        for group in CATALOGUE.groups
        for group_id in (group.group_id, group.retry_group_id)
    }
