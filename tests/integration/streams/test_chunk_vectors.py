"""The chunk_vectors table on a real Postgres, alone and under the embed stage across restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from schemas.errors import TransientError
from schemas.models import EmailEmbedded
from schemas.serde import decode
from streams.stages.chunk_vectors import PostgresChunkVectors, pack_vector
from streams.stages.chunking import chunk_hash
from streams.stages.embed import EmbedStage
from tests.memory_publisher import MemoryPublisher
from tests.unit.streams.test_stages import (
    CATALOGUE,
    EMBEDDED,
    NORMALIZED,
    SERDE,
    FakeProvider,
    event_records,
    normalized_email,
    run_with,
)

HELLO, OTHER = chunk_hash("hello"), chunk_hash("other")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PostgresChunkVectors]:
    vectors = PostgresChunkVectors(database_url)
    try:
        yield vectors
    finally:
        await vectors.close()


async def test_saved_vectors_come_back_as_float32_and_the_first_write_wins(
    store: PostgresChunkVectors,
) -> None:
    await store.save("ana", "m", {HELLO: [0.1, -2.5, 3.0]})
    await store.save("ana", "m", {HELLO: [9.0, 9.0, 9.0], OTHER: [1.0, 2.0, 3.0]})  # a replay

    found = await store.lookup("ana", "m", [HELLO, OTHER, chunk_hash("never")])
    assert found == {
        HELLO: [pytest.approx(0.1, abs=1e-7), -2.5, 3.0],
        OTHER: [1.0, 2.0, 3.0],
    }
    assert pack_vector(found[HELLO]) == pack_vector([0.1, -2.5, 3.0])


async def test_vectors_are_kept_per_user_and_model(store: PostgresChunkVectors) -> None:
    await store.save("ana", "m", {HELLO: [1.0]})

    assert await store.lookup("bo", "m", [HELLO]) == {}
    assert await store.lookup("ana", "other-model", [HELLO]) == {}
    assert await store.lookup("ana", "m", []) == {}


async def test_an_unreachable_database_is_transient() -> None:
    closed = PostgresChunkVectors("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    try:
        with pytest.raises(TransientError, match="chunk vector store unavailable"):
            await closed.lookup("ana", "m", [HELLO])
    finally:
        await closed.close()


async def test_a_restarted_stage_reuses_what_it_stored(database_url: str) -> None:
    provider = FakeProvider()
    text = "The quarterly numbers are final; the board meets on the 14th."
    results = []
    for offset, message_id in enumerate(["m1", "m2"]):  # a new stage and pool: a restart
        store = PostgresChunkVectors(database_url)
        stage = EmbedStage(
            serde=SERDE,
            provider=provider,
            embedded_topic=EMBEDDED,
            timeout=5.0,
            vector_store=store,
        )
        publisher = MemoryPublisher()
        records = event_records(
            NORMALIZED, [normalized_email(message_id=message_id, text=text)], offset
        )
        try:
            await run_with(stage, CATALOGUE.embed, publisher).run(records)
        finally:
            await store.close()
        results += [decode(r.value, EmailEmbedded) for r in publisher.on(EMBEDDED)]

    assert provider.calls == [[text]]
    first, second = results
    assert second.chunks[0].vector == first.chunks[0].vector
