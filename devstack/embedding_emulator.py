"""A local OpenAI-compatible embeddings server with fault knobs, for tests and the dev stack.

``POST /v1/embeddings`` takes ``{"input": str | [str, ...], "model": str}`` (plus optional
``encoding_format`` ``"float"``/``"base64"`` and ``dimensions``) and answers exactly like
OpenAI's API::

    {"object": "list",
     "data": [{"object": "embedding", "index": 0, "embedding": [...]}],
     "model": "...", "usage": {"prompt_tokens": n, "total_tokens": n}}

Vectors are deterministic: hashed word and character-trigram features folded into a fixed
dimension and L2-normalized, so texts sharing words are closer than unrelated ones and the same
text always gets the same vector, across processes.

Faults (:class:`EmulatorFaults`, mutable while running): ``down`` answers every request 503;
``rate_limit_ratio`` answers that share of requests 429 with ``Retry-After``, spread evenly and
deterministically (0.5 = every second request); ``latency`` delays every answer.

Start it in the current event loop (``async with EmbeddingEmulator() as emulator``) or on a
background thread (``with EmbeddingEmulator().run_in_thread() as emulator``); either way
``emulator.url`` is the base URL (``http://127.0.0.1:<free port>/v1``) and
``emulator.counters()`` the request counts. ``python -m devstack.embedding_emulator`` serves one
until interrupted. Binds to 127.0.0.1 only. Must not import ``streams``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
import math
import re
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["EmbeddingEmulator", "EmulatorCounters", "EmulatorFaults", "hashed_embedding"]

logger = logging.getLogger(__name__)

DEFAULT_DIMENSION = 256
_WORDS = re.compile(r"\w+", re.UNICODE)
_MAX_INPUTS = 2048  # OpenAI's documented limit per request


@dataclass
class EmulatorFaults:
    """Failure knobs; tests may change them while the server runs."""

    down: bool = False  # every request gets 503
    rate_limit_ratio: float = 0.0  # share of requests answered 429, in [0, 1]
    retry_after: float = 1.0  # seconds, sent in Retry-After with each 429
    latency: float = 0.0  # seconds added before every answer


@dataclass(frozen=True)
class EmulatorCounters:
    """What the server has seen so far."""

    requests: int
    inputs_embedded: int
    statuses: dict[int, int] = field(default_factory=dict)
    models: tuple[str, ...] = ()


def hashed_embedding(text: str, dimension: int) -> list[float]:
    """Return the deterministic unit vector the emulator gives ``text``.

    Features: lower-cased words (weight 1) and their character trigrams (weight 0.5), each
    hashed with BLAKE2b to an index and a sign. Empty or featureless text maps to the unit
    vector on axis 0 so that every answer is a valid, normalized vector.
    """
    vector = [0.0] * dimension
    for word in _WORDS.findall(text.lower()):
        _add_feature(vector, "w:" + word, 1.0)
        padded = f"^{word}$"
        for i in range(len(padded) - 2):
            _add_feature(vector, "c:" + padded[i : i + 3], 0.5)
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]


def _add_feature(vector: list[float], feature: str, weight: float) -> None:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    sign = 1.0 if value & 1 else -1.0
    vector[(value >> 1) % len(vector)] += sign * weight


class EmbeddingEmulator:
    """An OpenAI-compatible embeddings server on a free loopback port."""

    def __init__(
        self,
        *,
        dimension: int = DEFAULT_DIMENSION,
        faults: EmulatorFaults | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure the server; nothing listens until it is started.

        Arguments:
            dimension: Vector size when the request names no ``dimensions``.
            faults: Initial fault knobs (default: none).
            api_key: When set, requests without ``Authorization: Bearer <api_key>`` get 401.
            host: Address to bind; keep the loopback default.
            port: Port to bind; 0 picks a free one.
        """
        self.dimension = dimension
        self.faults = faults or EmulatorFaults()
        self._api_key = api_key
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._lock = threading.Lock()
        self._requests = 0
        self._inputs = 0
        self._statuses: Counter[int] = Counter()
        self._models: list[str] = []
        self._rate_limit_credit = 0.0

    @property
    def url(self) -> str:
        """Base URL to give an OpenAI client, e.g. ``http://127.0.0.1:41234/v1``."""
        if self._bound_port is None:
            raise RuntimeError("the embedding emulator is not running; start it first")
        return f"http://{self._host}:{self._bound_port}/v1"

    def counters(self) -> EmulatorCounters:
        """Return a consistent copy of the counters (safe from any thread)."""
        with self._lock:
            return EmulatorCounters(
                requests=self._requests,
                inputs_embedded=self._inputs,
                statuses=dict(self._statuses),
                models=tuple(self._models),
            )

    def reset_counters(self) -> None:
        """Zero the counters and the 429 spreading, e.g. between test phases."""
        with self._lock:
            self._requests = 0
            self._inputs = 0
            self._statuses.clear()
            self._models.clear()
            self._rate_limit_credit = 0.0

    # --- lifecycle in the current loop -------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve in the running event loop."""
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._handle_embeddings)
        app.router.add_get("/v1/models", self._handle_models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        logger.info("embedding emulator listening url=%s", self.url)

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._bound_port = None

    async def __aenter__(self) -> EmbeddingEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- lifecycle on a background thread ------------------------------------------------------

    @contextmanager
    def run_in_thread(self, start_timeout: float = 10.0) -> Iterator[EmbeddingEmulator]:
        """Serve from a daemon thread with its own event loop for the ``with`` block."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name="embedding-emulator", daemon=True)
        thread.start()
        if not started.wait(start_timeout):
            raise RuntimeError(f"embedding emulator did not start within {start_timeout}s")
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(start_timeout)

    # --- handlers ------------------------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _handle_embeddings(self, request: web.Request) -> web.Response:
        if self.faults.latency > 0:
            await asyncio.sleep(self.faults.latency)
        response = await self._answer(request)
        with self._lock:
            self._statuses[response.status] += 1
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        with self._lock:
            self._requests += 1
            rate_limited = self._take_rate_limit_slot()
        if self.faults.down:
            return _error(503, "The server is temporarily unavailable.", "server_error")
        if rate_limited:
            response = _error(429, "Rate limit reached for requests.", "rate_limit_exceeded")
            response.headers["Retry-After"] = f"{self.faults.retry_after:g}"
            return response
        if self._api_key is not None and (
            request.headers.get("Authorization") != f"Bearer {self._api_key}"
        ):
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        return self._embed(body)

    def _take_rate_limit_slot(self) -> bool:
        """Spread 429s evenly: accumulate the ratio, answer 429 each time it reaches 1."""
        ratio = min(max(self.faults.rate_limit_ratio, 0.0), 1.0)
        self._rate_limit_credit += ratio
        if self._rate_limit_credit >= 1.0 - 1e-9:
            self._rate_limit_credit -= 1.0
            return True
        return False

    def _embed(self, body: Any) -> web.Response:
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or len(inputs) > _MAX_INPUTS
            or not all(isinstance(text, str) and text for text in inputs)
        ):
            return _error(400, "'input' must be a non-empty string or array of such strings.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter")
        dimension = body.get("dimensions", self.dimension)
        if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 1:
            return _error(400, "'dimensions' must be a positive integer.")
        as_base64 = body.get("encoding_format", "float") == "base64"
        data = []
        tokens = 0
        for index, text in enumerate(inputs):
            vector = hashed_embedding(text, dimension)
            tokens += max(1, len(_WORDS.findall(text)))
            data.append(
                {"object": "embedding", "index": index, "embedding": _encode(vector, as_base64)}
            )
        with self._lock:
            self._inputs += len(inputs)
            self._models.append(model)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _encode(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    kind = {
        401: "invalid_request_error",
        429: "requests",
        503: "server_error",
    }.get(status, "invalid_request_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status=status,
    )


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--dimension", type=int, default=DEFAULT_DIMENSION)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        async with EmbeddingEmulator(dimension=args.dimension, port=args.port):
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        logger.info("embedding emulator stopped")


if __name__ == "__main__":
    main()
