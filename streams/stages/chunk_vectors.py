"""Vectors of chunks a user's mail already had embedded, so the embed stage sends each once.

Keyed by user, model and :func:`streams.stages.chunking.chunk_hash` of the chunk's text. A
vector is a deterministic function of model and text, so the first one stored stands for every
later copy (a mailing-list footer, a disclaimer, a pasted paragraph) and a replay finds what it
wrote the first time.

Why Postgres (table ``chunk_vectors``, migration 0014) and not state derived from the topic: the
store must survive restarts and rebalances. Rebuilding it from ``email-embedded`` would mean
reading up to 365 days of vectors at every start, and a faust table's changelog recovery is the
least reliable part of faust (bug #176; agents keep no faust tables). A Postgres row survives
everything, ``INSERT ... ON CONFLICT DO NOTHING`` makes replays and concurrent writers
idempotent, and the lookup is one indexed query per user per batch.

The stage treats the store as a cache: when it fails (``TransientError``), the chunks are
embedded again rather than the messages failed. This module never reads settings.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Protocol

from db.pool import LazyPool

__all__ = [
    "ChunkVectorStore",
    "MemoryChunkVectors",
    "PostgresChunkVectors",
    "pack_vector",
    "unpack_vector",
]

SELECT_VECTORS = """
SELECT text_hash, vector FROM chunk_vectors
WHERE user_id = %(user_id)s AND model = %(model)s AND text_hash = ANY(%(hashes)s)
"""
INSERT_VECTORS = """
INSERT INTO chunk_vectors (user_id, model, text_hash, vector)
SELECT %(user_id)s, %(model)s, h, v
FROM unnest(%(hashes)s::bytea[], %(vectors)s::bytea[]) AS t(h, v)
ON CONFLICT DO NOTHING
"""


class ChunkVectorStore(Protocol):
    """Where the embed stage remembers the vectors of chunks it embedded."""

    async def lookup(
        self, user_id: str, model: str, hashes: Sequence[bytes]
    ) -> dict[bytes, list[float]]:
        """Return the stored vector of each of ``hashes`` that has one.

        Raises:
            TransientError: The store cannot be reached.
        """
        ...

    async def save(self, user_id: str, model: str, vectors: Mapping[bytes, list[float]]) -> None:
        """Remember ``vectors`` by hash; a hash already stored keeps its vector.

        Raises:
            TransientError: The store cannot be reached.
        """
        ...


def pack_vector(vector: Sequence[float]) -> bytes:
    """Return ``vector`` as little-endian float32, the precision the event carries anyway."""
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(data: bytes) -> list[float]:
    """Inverse of :func:`pack_vector`."""
    return list(struct.unpack(f"<{len(data) // 4}f", data))


class MemoryChunkVectors:
    """A process's own store: for tests and benchmarks (it forgets everything on exit)."""

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, str, bytes], bytes] = {}

    def __len__(self) -> int:
        return len(self._vectors)

    async def lookup(
        self, user_id: str, model: str, hashes: Sequence[bytes]
    ) -> dict[bytes, list[float]]:
        found = ((h, self._vectors.get((user_id, model, h))) for h in hashes)
        return {h: unpack_vector(data) for h, data in found if data is not None}

    async def save(self, user_id: str, model: str, vectors: Mapping[bytes, list[float]]) -> None:
        for text_hash, vector in vectors.items():
            self._vectors.setdefault((user_id, model, text_hash), pack_vector(vector))


class PostgresChunkVectors:
    """The ``chunk_vectors`` table, over a small connection pool opened on first use."""

    def __init__(self, conninfo: str, *, max_size: int = 2) -> None:
        self._pool = LazyPool(conninfo, what="chunk vector store", max_size=max_size, timeout=10)

    async def lookup(
        self, user_id: str, model: str, hashes: Sequence[bytes]
    ) -> dict[bytes, list[float]]:
        if not hashes:
            return {}
        params = {"user_id": user_id, "model": model, "hashes": list(hashes)}
        async with self._pool.connection() as conn, conn.cursor() as cursor:
            await cursor.execute(SELECT_VECTORS, params)
            rows = await cursor.fetchall()
        return {bytes(text_hash): unpack_vector(bytes(vector)) for text_hash, vector in rows}

    async def save(self, user_id: str, model: str, vectors: Mapping[bytes, list[float]]) -> None:
        if not vectors:
            return
        params = {
            "user_id": user_id,
            "model": model,
            "hashes": list(vectors),
            "vectors": [pack_vector(vector) for vector in vectors.values()],
        }
        async with self._pool.connection() as conn:
            await conn.execute(INSERT_VECTORS, params)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()
