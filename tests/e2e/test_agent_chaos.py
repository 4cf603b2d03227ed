"""Agents killed with SIGKILL mid-stream, again and again: nothing lost, nothing doubled.

faust-streaming acks on exceptions and can commit past in-flight work (see the reference); the
agents ack a batch only after Kafka acknowledged its outputs, and every write downstream is
idempotent. This kills the workers while they work and checks the end state.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from devstack.embedding_emulator import EmbeddingEmulator
from devstack.gmail_emulator.server import GmailEmulator
from devstack.stack import Stack
from schemas.models import EmailNormalized
from tests.e2e.test_pipeline import expected_contacts, listed_ids, new_user, raw_of
from tests.helpers import wait_until
from tests.pipeline_support import emulated_embeddings_env, running_pipeline

pytestmark = pytest.mark.chaos

ROLES = ("from", "to", "cc", "bcc", "reply_to")
VICTIMS = ("agent-sync", "agent-normalize", "agent-extract", "agent-embed", "sink-jobs")


@pytest.fixture(scope="module")
def embedding_api() -> Iterator[EmbeddingEmulator]:
    with EmbeddingEmulator(dimension=32).run_in_thread() as emulator:
        yield emulator


def test_kill_9_of_agents_mid_stream_loses_and_doubles_nothing(
    stack: Stack, embedding_api: EmbeddingEmulator
) -> None:
    emulator = GmailEmulator().start_in_thread()
    env = {
        "INBOXFLOW_SESSION_TIMEOUT_SECONDS": "6",
        "INBOXFLOW_BATCH_SIZE": "10",
        **emulated_embeddings_env(embedding_api, "chaos-embed"),
    }
    try:
        users = [new_user(emulator, 60, seed=101), new_user(emulator, 60, seed=102)]
        expected = {user: listed_ids(emulator, user) for user in users}
        total = sum(len(ids) for ids in expected.values())
        with running_pipeline(stack, emulator, env=env) as pipeline:
            pipeline.sync(users, full=True)
            done_before = 0
            killed_at: list[int] = []
            for victim in VICTIMS:
                # Kill each worker once it has made progress, so it dies holding work.
                def progressed(floor: int = done_before) -> int:
                    jobs = pipeline.jobs(users)
                    done = sum(s.get("done", 0) for s in jobs.values())
                    return done if done > floor else 0

                done_before = wait_until(progressed, timeout=120, message="progress")
                pipeline.workers.kill(victim)
                pipeline.workers.restart(victim)
                killed_at.append(done_before)

            pipeline.wait_settled(users, messages=total, timeout=300)
            all_jobs = 4 * total + len(users)
            assert all(done < all_jobs for done in killed_at), "every kill hit unfinished work"

            jobs = pipeline.jobs(users)
            for kind in ("normalize_google_email", "extract_contacts", "embed", "insight"):
                assert jobs[kind] == {"done": total}, kind
            normalized = [
                e
                for e in pipeline.events(pipeline.catalogue.email_normalized.name, EmailNormalized)
                if e.user_id in users
            ]
            for user in users:
                assert {e.message_id for e in normalized if e.user_id == user} == expected[user]
            counted: collections.Counter[tuple[str, str, str]] = collections.Counter()
            for user, address, *counts in pipeline.query(
                "SELECT user_id, address, from_count, to_count, cc_count, bcc_count, "
                "reply_to_count FROM contacts WHERE user_id = ANY(%(u)s)",
                u=users,
            ):
                for role, count in zip(ROLES, counts, strict=True):
                    if count:
                        counted[(user, address, role)] = count
            wanted: collections.Counter[tuple[str, str, str]] = collections.Counter()
            for user in users:
                for message_id in expected[user]:
                    for address, role in expected_contacts(raw_of(emulator, user, message_id)):
                        wanted[(user, address, role)] += 1
            assert counted == wanted, "each sighting counted exactly once"
    finally:
        emulator.stop_thread()
