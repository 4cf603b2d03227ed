"""The pipeline end to end in schema-registry mode: Confluent framing from every producer.

Every worker and sink runs as a real process with ``INBOXFLOW_SCHEMA_REGISTRY_URL`` pointing at
the session's real registry (Apicurio's Confluent-compatible API). What a user sees must be the
same as in single-object mode: every job done, contacts and emails in Postgres, no dead letter;
and the bytes on the topics really are Confluent frames (``00`` + schema id + Avro body).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.embedding_emulator import EmbeddingEmulator
from devstack.gmail_emulator.server import GmailEmulator
from devstack.stack import Stack
from schemas.models import ContactExtracted, EmailNormalized, JobStateChanged
from schemas.serde import CONFLUENT_HEADER_SIZE
from tests.e2e.test_pipeline import listed_ids, new_user
from tests.helpers import wait_until
from tests.pipeline_support import Pipeline, emulated_embeddings_env, running_pipeline


@pytest.fixture(scope="module")
def emulator() -> Iterator[GmailEmulator]:
    running = GmailEmulator().start_in_thread()
    try:
        yield running
    finally:
        running.stop_thread()


@pytest.fixture(scope="module")
def embedding_api() -> Iterator[EmbeddingEmulator]:
    with EmbeddingEmulator(dimension=64).run_in_thread() as api:
        yield api


@pytest.fixture(scope="module")
def pipeline(
    stack: Stack,
    emulator: GmailEmulator,
    embedding_api: EmbeddingEmulator,
    schema_registry_url: str,
) -> Iterator[Pipeline]:
    # The emulated embedding API keeps the CPU for the rest; the local model has its own test.
    env = {**emulated_embeddings_env(embedding_api), "INBOXFLOW_SINK_EMAILS": "true"}
    with running_pipeline(
        stack, emulator, env=env, schema_registry_url=schema_registry_url
    ) as running:
        yield running


def test_registry_mode_pipeline_writes_every_row_from_confluent_frames_with_no_dead_letter(
    pipeline: Pipeline, emulator: GmailEmulator
) -> None:
    users = [new_user(emulator, 20, seed=61), new_user(emulator, 12, seed=62)]
    total = sum(len(listed_ids(emulator, user)) for user in users)

    pipeline.sync(users, full=True)
    pipeline.wait_settled(users, messages=total)

    jobs = pipeline.jobs(users)
    assert jobs["google_gmail_sync"] == {"done": 2}
    for kind in ("normalize_google_email", "extract_contacts", "embed", "insight"):
        assert jobs[kind] == {"done": total}, kind

    catalogue = pipeline.catalogue
    sightings = pipeline.events(catalogue.contact_extracted.name, ContactExtracted)
    contacts = {(c.user_id, c.address) for c in sightings}
    assert contacts, "the mailboxes have senders and recipients"

    def sinks_caught_up() -> bool:
        [(emails,)] = pipeline.query(
            "SELECT count(*) FROM emails WHERE user_id = ANY(%(u)s)", u=users
        )
        [(stored,)] = pipeline.query(
            "SELECT count(*) FROM contacts WHERE user_id = ANY(%(u)s)", u=users
        )
        return emails == total and stored == len(contacts)

    wait_until(sinks_caught_up, timeout=60, interval=0.5, message="contacts and emails written")

    dead = {group.dlq.name: len(pipeline.read(group.dlq.name)) for group in catalogue.groups}
    assert dead == dict.fromkeys(dead, 0)

    for topic in (
        catalogue.sync_requested,
        catalogue.email_normalized,
        catalogue.contact_extracted,
        catalogue.job_state_changed,
    ):
        values = [record.value or b"" for record in pipeline.read(topic.name)]
        assert values, topic.name
        assert {value[:1] for value in values} == {b"\x00"}, topic.name
        assert all(len(value) > CONFLUENT_HEADER_SIZE for value in values)
    states = pipeline.events(catalogue.job_state_changed.name, JobStateChanged)
    assert {state.user_id for state in states} == set(users)
    normalized = pipeline.events(catalogue.email_normalized.name, EmailNormalized)
    assert len({event.message_id for event in normalized}) == total
