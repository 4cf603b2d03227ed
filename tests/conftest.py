"""Session-wide real services: one Kafka and one Postgres per test run, torn down in ``finally``.

``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` point the suite at existing services (nothing is
started); ``INBOXFLOW_STACK=testcontainers`` uses a Docker engine. Each test gets its own
database cloned from a migrated template and its own topic and group names.
"""

from __future__ import annotations

import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from db.migrate import apply_migrations
from devstack.postgres import PostgresServer
from devstack.schema_registry import start_schema_registry
from devstack.stack import Stack, start_stack

TEMPLATE_DATABASE = "inboxflow_template"
_ENV_PREFIXES = ("INBOXFLOW_",)
_ENV_NAMES = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM would end pytest without teardown; turn it into Ctrl-C so fixtures stop the stack.
    raise KeyboardInterrupt


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """Kafka and Postgres for the whole session, real and on free loopback ports."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    mode = os.environ.get("INBOXFLOW_STACK", "local")
    running = start_stack(
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
        mode="testcontainers" if mode == "testcontainers" else "local",
        cache_dir=Path(os.environ.get("INBOXFLOW_STATE_DIR", "~/.cache/inboxflow")).expanduser(),
        die_with_parent=True,
    )
    try:
        _create_template(running.database_url)
        yield running
    finally:
        running.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[Stack]:
    """A second stack, started on first use: Kafka on SASL_SSL only, Postgres on TLS only.

    Both take certificates from a throwaway CA; ``client_env()`` holds the client settings
    (user ``inboxflow`` with SCRAM-SHA-512, the CA file, a ``verify-full`` database URL).
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    running = start_stack(
        kafka_bootstrap=None,
        database_url=None,
        mode="local",
        cache_dir=Path(os.environ.get("INBOXFLOW_STATE_DIR", "~/.cache/inboxflow")).expanduser(),
        die_with_parent=True,
        secure=True,
    )
    try:
        _create_template(running.database_url)
        yield running
    finally:
        running.stop()
        signal.signal(signal.SIGTERM, previous)


def _create_template(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(TEMPLATE_DATABASE)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DATABASE)))
    apply_migrations(_with_database(database_url, TEMPLATE_DATABASE))


def _with_database(url: str, database: str) -> str:
    """Return ``url`` naming ``database``, keeping everything else (password, sslmode, ...)."""
    if "://" not in url:  # libpq's keyword/value form: host=... sslmode=...
        return make_conninfo(url, dbname=database)
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Confluent-API schema registry (Apicurio, in memory), started on first use."""
    registry = start_schema_registry(
        cache_dir=Path(os.environ.get("INBOXFLOW_STATE_DIR", "~/.cache/inboxflow")).expanduser(),
        work_dir=tmp_path_factory.mktemp("schema-registry"),
        die_with_parent=True,
    )
    try:
        yield registry.url
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    """Bootstrap servers of the session's Kafka broker."""
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def postgres_server(stack: Stack) -> PostgresServer:
    """The session's Postgres server, for tests that restart it; skipped on external services."""
    if stack.postgres is None:
        pytest.skip("Postgres is external (DATABASE_URL); it cannot be restarted by the tests")
    return stack.postgres


@pytest.fixture
def database_url(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database with every migration applied, dropped after the test."""
    name = f"t_{_slug(request.node.name)[:40]}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DATABASE)
            )
        )
    try:
        yield _with_database(stack.database_url, name)
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Return a factory of names unique to this test: ``<prefix>-<test-name>-<uuid8>``."""
    base = _slug(request.node.name)[:60]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{base}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's INBOXFLOW_* and service variables out of the code under test."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) or name in _ENV_NAMES:
            monkeypatch.delenv(name)
