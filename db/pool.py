"""A small async connection pool opened on first use, inside the loop that uses it.

Workers open their pools lazily: faust (and aiohttp) own the event loop's start, and a pool must
be opened on the loop it serves. Postgres being unreachable or the pool being exhausted becomes a
``TransientError`` naming what was unavailable, so the caller's failure routing retries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from schemas.errors import TransientError, safe_error_text


class LazyPool:
    """An ``AsyncConnectionPool`` of at most ``max_size`` connections, opened on first use."""

    def __init__(
        self,
        conninfo: str,
        *,
        what: str,
        max_size: int,
        timeout: float,
        autocommit: bool = False,
    ) -> None:
        """Configure the pool; nothing connects yet.

        Arguments:
            conninfo: libpq URL.
            what: names the store in the ``TransientError`` ("agent state database").
            max_size: connections at most.
            timeout: seconds to wait for a connection before giving up.
            autocommit: open the connections in autocommit mode.
        """
        self._conninfo = conninfo
        self._what = what
        self._max_size = max_size
        self._timeout = timeout
        self._kwargs = {"autocommit": True} if autocommit else {}
        self._pool: AsyncConnectionPool | None = None
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Yield a connection of the pool (opening it first if needed).

        Raises:
            TransientError: Postgres unreachable, or no connection free within ``timeout``.
        """
        pool = await self._opened()
        try:
            async with pool.connection(timeout=self._timeout) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise TransientError(f"{self._what} unavailable: {safe_error_text(exc)}") from exc

    async def close(self) -> None:
        """Close the pool (a later ``connection`` opens a new one)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _opened(self) -> AsyncConnectionPool:
        async with self._lock:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._max_size,
                    open=False,
                    kwargs=self._kwargs,
                )
                await pool.open(wait=False)
                self._pool = pool
            return self._pool
