"""The job system inboxflow replaced, modelled for ``inboxflow bench legacy``.

A Postgres ``legacy_jobs`` table polled by workers: each claims the oldest ready job of its kind
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (one statement that also marks it running), runs it,
and marks it done, or ready again after an exponential backoff (1, 2, 4, 8 s, capped at 10 s),
or ``failed`` after ``max_attempts``. Every kind has the same 3-minute timeout. A dependency
manager polls too: a ``blocked`` job whose parents are all done becomes ``ready`` (normalize
needs fetch, extract and embed need normalize, insight needs extract and embed); one whose
parent failed fails with it, the cascade of blocked jobs the old system was known for.

A sync job per user lists the mailbox and inserts the five jobs of every message. Each job
reads its parent's result from ``legacy_payloads`` and writes its own there (or into
``legacy_contacts`` and ``legacy_insights``) in the transaction that marks it done. The work
itself is inboxflow's: the same ``GmailClient``, ``normalized_event``, ``extract_contacts``,
``chunk_text`` with the embedding provider, ``UserInsights``. The client gets
``max_attempts=1``: in the old design retries belonged to the job table, not to the client.

Every SQL statement a worker sends goes through ``Counted.execute``; a process prints its count
as JSON when it stops (SIGTERM). Must not import ``inboxflow.bench.legacy`` (the harness).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
from psycopg.rows import TupleRow

from schemas.models import EmailEmbedded, EmailNormalized, EmbeddedChunk, GmailMessageFetched
from schemas.serde import Serde, serde_for
from streams.stages.chunking import chunk_text
from streams.stages.contacts import extract_contacts
from streams.stages.embedding import OpenAIEmbeddingProvider
from streams.stages.gmail.client import (
    FetchedMessage,
    FetchNeed,
    GmailClient,
    GmailClientConfig,
    MessageRef,
)
from streams.stages.insights import UserInsights
from streams.stages.mime import normalized_event

SYNC, FETCH, NORMALIZE, EXTRACT, EMBED, INSIGHT = (
    "sync", "fetch", "normalize", "extract", "embed", "insight",
)  # fmt: skip
MESSAGE_KINDS = (FETCH, NORMALIZE, EXTRACT, EMBED, INSIGHT)
WORKER_KINDS = (SYNC, *MESSAGE_KINDS)
DEPENDENCY_MANAGER = "deps"
PARENTS = {
    NORMALIZE: (FETCH,),
    EXTRACT: (NORMALIZE,),
    EMBED: (NORMALIZE,),
    INSIGHT: (EXTRACT, EMBED),
}

SCHEMA: tuple[LiteralString, ...] = (
    """CREATE TABLE legacy_jobs (
        id          bigserial   PRIMARY KEY,
        kind        text        NOT NULL,
        user_id     text        NOT NULL,
        message_id  text        NOT NULL DEFAULT '',
        thread_id   text,
        status      text        NOT NULL CHECK (status IN
                        ('blocked', 'ready', 'running', 'done', 'failed')),
        attempts    integer     NOT NULL DEFAULT 0,
        run_after   timestamptz NOT NULL DEFAULT now(),
        last_error  text,
        created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at timestamptz,
        UNIQUE (user_id, message_id, kind)
    )""",
    # What the workers' poll reads: ready jobs of one kind, oldest due first.
    "CREATE INDEX legacy_jobs_ready_idx ON legacy_jobs (kind, run_after, id) "
    "WHERE status = 'ready'",
    # What the dependency manager scans.
    "CREATE INDEX legacy_jobs_blocked_idx ON legacy_jobs (kind) WHERE status = 'blocked'",
    """CREATE TABLE legacy_job_parents (
        kind   text NOT NULL,
        parent text NOT NULL,
        PRIMARY KEY (kind, parent)
    )""",
    """CREATE TABLE legacy_payloads (
        user_id    text  NOT NULL,
        message_id text  NOT NULL,
        kind       text  NOT NULL,
        body       bytea NOT NULL,
        PRIMARY KEY (user_id, message_id, kind)
    )""",
    """CREATE TABLE legacy_contacts (
        user_id      text NOT NULL,
        message_id   text NOT NULL,
        address      text NOT NULL,
        role         text NOT NULL,
        display_name text,
        PRIMARY KEY (user_id, message_id, address, role)
    )""",
    "CREATE TABLE legacy_insights (user_id text PRIMARY KEY, state jsonb NOT NULL)",
)

CLAIM: LiteralString = """
WITH next AS (
    SELECT id FROM legacy_jobs
    WHERE kind = %(kind)s AND status = 'ready' AND run_after <= now()
    ORDER BY run_after, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE legacy_jobs AS j SET status = 'running', attempts = j.attempts + 1
FROM next WHERE j.id = next.id
RETURNING j.id, j.user_id, j.message_id, j.thread_id, j.attempts
"""
MARK_DONE: LiteralString = (
    "UPDATE legacy_jobs SET status = 'done', finished_at = clock_timestamp() WHERE id = %(id)s"
)
MARK_RETRY: LiteralString = """
UPDATE legacy_jobs SET status = 'ready', last_error = %(error)s,
    run_after = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s
"""
MARK_FAILED: LiteralString = """
UPDATE legacy_jobs SET status = 'failed', last_error = %(error)s, finished_at = clock_timestamp()
WHERE id = %(id)s
"""
INSERT_JOB: LiteralString = """
INSERT INTO legacy_jobs (kind, user_id, message_id, thread_id, status)
VALUES (%(kind)s, %(user_id)s, %(message_id)s, %(thread_id)s, %(status)s)
ON CONFLICT (user_id, message_id, kind) DO NOTHING
"""
READ_PAYLOAD: LiteralString = """
SELECT body FROM legacy_payloads
WHERE user_id = %(user_id)s AND message_id = %(message_id)s AND kind = %(kind)s
"""
WRITE_PAYLOAD: LiteralString = """
INSERT INTO legacy_payloads (user_id, message_id, kind, body)
VALUES (%(user_id)s, %(message_id)s, %(kind)s, %(body)s)
ON CONFLICT (user_id, message_id, kind) DO UPDATE SET body = EXCLUDED.body
"""
WRITE_CONTACT: LiteralString = """
INSERT INTO legacy_contacts (user_id, message_id, address, role, display_name)
VALUES (%(user_id)s, %(message_id)s, %(address)s, %(role)s, %(display_name)s)
ON CONFLICT DO NOTHING
"""
LOCK_INSIGHTS: LiteralString = (
    "SELECT state FROM legacy_insights WHERE user_id = %(user_id)s FOR UPDATE"
)
WRITE_INSIGHTS: LiteralString = """
INSERT INTO legacy_insights (user_id, state) VALUES (%(user_id)s, %(state)s::jsonb)
ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state
"""
# The dependency manager: release blocked jobs whose parents are all done, then fail those
# with a failed parent. Set-based, as a competent old deployment would write it.
RELEASE_BLOCKED: LiteralString = """
UPDATE legacy_jobs AS c SET status = 'ready', run_after = now()
WHERE c.status = 'blocked' AND NOT EXISTS (
    SELECT 1 FROM legacy_job_parents AS jp
    LEFT JOIN legacy_jobs AS p
        ON p.user_id = c.user_id AND p.message_id = c.message_id AND p.kind = jp.parent
    WHERE jp.kind = c.kind AND (p.status IS NULL OR p.status <> 'done')
)
"""
FAIL_BLOCKED: LiteralString = """
UPDATE legacy_jobs AS c SET status = 'failed', last_error = 'a parent job failed',
    finished_at = clock_timestamp()
WHERE c.status = 'blocked' AND EXISTS (
    SELECT 1 FROM legacy_job_parents AS jp
    JOIN legacy_jobs AS p
        ON p.user_id = c.user_id AND p.message_id = c.message_id AND p.kind = jp.parent
    WHERE jp.kind = c.kind AND p.status = 'failed'
)
"""


def create_schema(conninfo: str) -> None:
    """Create the old design's tables in the (empty) database ``conninfo`` names."""
    with psycopg.connect(conninfo) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        for kind, parents in PARENTS.items():
            for parent in parents:
                conn.execute(
                    "INSERT INTO legacy_job_parents (kind, parent) VALUES (%s, %s)", (kind, parent)
                )


def backoff_seconds(attempts: int, cap: float = 10.0) -> float:
    """Delay before attempt ``attempts + 1``: 1, 2, 4, 8 s, then the cap."""
    return float(min(cap, 2.0 ** (attempts - 1)))


@dataclass(frozen=True)
class LegacyConfig:
    """What every legacy process is told (a JSON argument on its command line)."""

    conninfo: str
    gmail_url: str
    gmail_user_units_per_minute: int
    embedding_url: str
    embedding_model: str
    embedding_dimension: int
    workers: int = 4
    poll_seconds: float = 1.0
    job_timeout: float = 180.0
    max_attempts: int = 5

    def to_json(self) -> str:
        """Return the config as the command-line argument."""
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Job:
    """A claimed job."""

    id: int
    user_id: str
    message_id: str
    thread_id: str | None
    attempts: int


class Counted:
    """One autocommit connection whose every statement is counted (idle polls included)."""

    statements = 0  # over the whole process

    def __init__(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        self.conn = conn

    async def execute(
        self, query: LiteralString, params: dict[str, Any] | None = None
    ) -> psycopg.AsyncCursor[TupleRow]:
        """Run one statement and count it."""
        Counted.statements += 1
        return await self.conn.execute(query, params)

    async def fetchone(
        self, query: LiteralString, params: dict[str, Any] | None = None
    ) -> TupleRow | None:
        """Run one statement and return its first row."""
        return await (await self.execute(query, params)).fetchone()


class Handlers:
    """What each kind of job does: inboxflow's pure stages and clients, the old plumbing."""

    def __init__(self, config: LegacyConfig) -> None:
        self.config = config
        self.serde: Serde = serde_for(None)
        self._gmail: GmailClient | None = None
        self._embedder: OpenAIEmbeddingProvider | None = None

    @property
    def gmail(self) -> GmailClient:
        """One client per process: its quota limiter is shared by the process's workers."""
        if self._gmail is None:
            self._gmail = GmailClient(
                GmailClientConfig(
                    api_root=self.config.gmail_url,
                    user_units_per_window=self.config.gmail_user_units_per_minute,
                    max_attempts=1,
                )
            )
        return self._gmail

    @property
    def embedder(self) -> OpenAIEmbeddingProvider:
        """The provider inboxflow's embed stage uses, with its default pacing."""
        if self._embedder is None:
            self._embedder = OpenAIEmbeddingProvider(
                base_url=self.config.embedding_url,
                model=self.config.embedding_model,
                dimension=self.config.embedding_dimension,
                batch_size=64,
            )
        return self._embedder

    async def close(self) -> None:
        """Release the clients."""
        if self._gmail is not None:
            self._gmail.close()
        if self._embedder is not None:
            await self._embedder.aclose()

    def for_kind(self, kind: str) -> Callable[[Counted, Job], Awaitable[None]]:
        """Return the handler of ``kind``; it finishes the job in its own transaction."""
        return {
            SYNC: self.sync,
            FETCH: self.fetch,
            NORMALIZE: self.normalize,
            EXTRACT: self.extract,
            EMBED: self.embed,
            INSIGHT: self.insight,
        }[kind]

    async def sync(self, db: Counted, job: Job) -> None:
        """List the mailbox; insert every message's five jobs, fetch ready, the rest blocked."""
        refs = await self.gmail.list_all_message_ids(job.user_id)
        async with db.conn.transaction():
            for ref in refs:
                for kind in MESSAGE_KINDS:
                    status = "ready" if kind == FETCH else "blocked"
                    await db.execute(
                        INSERT_JOB,
                        {
                            "kind": kind,
                            "user_id": job.user_id,
                            "message_id": ref.id,
                            "thread_id": ref.thread_id,
                            "status": status,
                        },
                    )
            await db.execute(MARK_DONE, {"id": job.id})

    async def fetch(self, db: Counted, job: Job) -> None:
        """Fetch one message's raw RFC 822 bytes."""
        ref = MessageRef(job.message_id, job.thread_id)
        results = await self.gmail.fetch_messages(job.user_id, [ref], need=FetchNeed.RAW)
        result = results.get(job.message_id)
        if not isinstance(result, FetchedMessage) or result.raw is None:
            raise RuntimeError(f"message {job.message_id} is gone or has no raw payload")
        fetched = GmailMessageFetched(
            user_id=job.user_id,
            message_id=result.id,
            thread_id=result.thread_id or job.thread_id or "",
            sync_id="legacy",
            label_ids=list(result.label_ids),
            history_id=int(result.history_id) if result.history_id else None,
            internal_date=datetime.fromtimestamp(result.internal_date / 1000, UTC),
            size_estimate=result.size_estimate,
            snippet=result.snippet,
            raw=result.raw,
            fetched_at=datetime.now(UTC),
        )
        await self._finish_with_payload(db, job, FETCH, self.serde.encode(fetched))

    async def normalize(self, db: Counted, job: Job) -> None:
        """Parse the fetched message into clean text."""
        fetched = self.serde.decode(await self._payload(db, job, FETCH), GmailMessageFetched)
        normalized = normalized_event(fetched, datetime.now(UTC))
        await self._finish_with_payload(db, job, NORMALIZE, self.serde.encode(normalized))

    async def extract(self, db: Counted, job: Job) -> None:
        """Write the message's contacts."""
        email = await self._normalized(db, job)
        async with db.conn.transaction():
            for contact in extract_contacts(email):
                await db.execute(
                    WRITE_CONTACT,
                    {
                        "user_id": job.user_id,
                        "message_id": job.message_id,
                        "address": contact.address,
                        "role": contact.role,
                        "display_name": contact.display_name,
                    },
                )
            await db.execute(MARK_DONE, {"id": job.id})

    async def embed(self, db: Counted, job: Job) -> None:
        """Chunk the text (at most 32 chunks, as inboxflow) and embed it in one request."""
        email = await self._normalized(db, job)
        chunks = chunk_text(email.text, max_chars=1000, limit=33)[:32]
        vectors = await self.embedder.embed([c.text for c in chunks]) if chunks else []
        embedded = EmailEmbedded(
            user_id=email.user_id,
            message_id=email.message_id,
            thread_id=email.thread_id,
            model=self.embedder.name,
            dimension=self.embedder.dimension,
            chunks=[
                EmbeddedChunk(index=c.index, text=c.text, vector=v)
                for c, v in zip(chunks, vectors, strict=True)
            ],
            truncated=False,
            embedded_at=datetime.now(UTC),
        )
        await self._finish_with_payload(db, job, EMBED, self.serde.encode(embedded))

    async def insight(self, db: Counted, job: Job) -> None:
        """Fold the message into its user's aggregate under a row lock."""
        email = await self._normalized(db, job)
        async with db.conn.transaction():
            row = await db.fetchone(LOCK_INSIGHTS, {"user_id": job.user_id})
            aggregate = (
                UserInsights.from_dict(row[0]) if row else UserInsights.for_user([job.user_id])
            )
            aggregate.add_email(email)
            await db.execute(WRITE_INSIGHTS, {"user_id": job.user_id, "state": aggregate.to_json()})
            await db.execute(MARK_DONE, {"id": job.id})

    async def _payload(self, db: Counted, job: Job, kind: str) -> bytes:
        row = await db.fetchone(
            READ_PAYLOAD, {"user_id": job.user_id, "message_id": job.message_id, "kind": kind}
        )
        if row is None:
            raise RuntimeError(f"no {kind} result for {job.message_id}")
        return bytes(row[0])

    async def _normalized(self, db: Counted, job: Job) -> EmailNormalized:
        return self.serde.decode(await self._payload(db, job, NORMALIZE), EmailNormalized)

    async def _finish_with_payload(self, db: Counted, job: Job, kind: str, body: bytes) -> None:
        params = {"user_id": job.user_id, "message_id": job.message_id, "kind": kind}
        async with db.conn.transaction():
            await db.execute(WRITE_PAYLOAD, {**params, "body": body})
            await db.execute(MARK_DONE, {"id": job.id})


async def _claim(db: Counted, kind: str) -> Job | None:
    row = await db.fetchone(CLAIM, {"kind": kind})
    return None if row is None else Job(*row)


async def _record_failure(db: Counted, job: Job, exc: BaseException, max_attempts: int) -> None:
    error = f"{type(exc).__name__}: {exc}"[:500]
    if job.attempts >= max_attempts:
        await db.execute(MARK_FAILED, {"id": job.id, "error": error})
    else:
        delay = backoff_seconds(job.attempts)
        await db.execute(MARK_RETRY, {"id": job.id, "error": error, "delay": delay})


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """The poll interval, cut short by a stop."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


async def run_worker(
    config: LegacyConfig, kind: str, handlers: Handlers, stop: asyncio.Event
) -> None:
    """Poll for jobs of ``kind`` until ``stop``; sleep ``poll_seconds`` whenever none is due."""
    handle = handlers.for_kind(kind)
    async with await psycopg.AsyncConnection.connect(config.conninfo, autocommit=True) as conn:
        db = Counted(conn)
        while not stop.is_set():
            job = await _claim(db, kind)
            if job is None:
                await _pause(stop, config.poll_seconds)
                continue
            try:
                async with asyncio.timeout(config.job_timeout):
                    await handle(db, job)
            except Exception as exc:  # noqa: BLE001 - the old design retried every failure
                await _record_failure(db, job, exc, config.max_attempts)


async def run_dependency_manager(config: LegacyConfig, stop: asyncio.Event) -> None:
    """Release or fail blocked jobs every ``poll_seconds`` until ``stop``."""
    async with await psycopg.AsyncConnection.connect(config.conninfo, autocommit=True) as conn:
        db = Counted(conn)
        while not stop.is_set():
            await db.execute(FAIL_BLOCKED)
            await db.execute(RELEASE_BLOCKED)
            await _pause(stop, config.poll_seconds)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """Stop when the harness is gone (killed before it could stop this process)."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
        await _pause(stop, 1.0)


async def serve(config: LegacyConfig, kind: str) -> None:
    """Run one process: ``workers`` pollers of ``kind`` (or the dependency manager)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    handlers = Handlers(config)
    if kind == DEPENDENCY_MANAGER:
        tasks = [run_dependency_manager(config, stop)]
    else:
        tasks = [run_worker(config, kind, handlers, stop) for _ in range(config.workers)]
    runners = [asyncio.create_task(task) for task in tasks]
    watchdog = asyncio.create_task(_stop_when_orphaned(stop))
    print("ready", flush=True)  # noqa: T201 - the harness waits for this line
    try:
        await asyncio.gather(*runners)
    finally:
        watchdog.cancel()
        await handlers.close()


def main(argv: list[str]) -> None:
    """``python -m inboxflow.bench.legacy_design KIND CONFIG_JSON``; prints its statement count."""
    kind, raw = argv
    config = LegacyConfig(**json.loads(raw))
    started = time.monotonic()
    asyncio.run(serve(config, kind))
    report = {"kind": kind, "statements": Counted.statements, "seconds": time.monotonic() - started}
    print(json.dumps(report), flush=True)  # noqa: T201 - read by the harness


if __name__ == "__main__":
    main(sys.argv[1:])
