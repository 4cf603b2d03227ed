"""Postgres over TLS only (``hostssl``, SCRAM), reached with ``sslmode=verify-full``.

One throwaway server for the module, its certificate signed by a CA made in the test's temp
folder. Every client the project builds from ``DATABASE_URL`` (psycopg, the pools, migrations,
the CLI) must keep the URL's ``sslmode``/``sslrootcert``; plain TCP, another CA's trust and a
wrong password must all be refused.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from db import accounts
from db.agent_state import AgentState, SyncCheckpoint
from db.migrate import apply_migrations, load_migrations
from devstack.postgres import PostgresServer, PostgresTls, start_postgres
from devstack.tls import CertificateAuthority, make_ca
from tests.conftest import _with_database

# Characters that must be percent-encoded in a URL's user info, to prove url() quotes them.
PASSWORD = f"s3cret:@/%?#&{secrets.token_hex(4)}"
IN_SSL = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """The CA that signs the server's certificate."""
    return make_ca(tmp_path_factory.mktemp("pg-ca"))


@pytest.fixture(scope="module")
def tls_server(tls_ca: CertificateAuthority) -> Iterator[PostgresServer]:
    """One Postgres accepting TCP only over TLS, for the whole module."""
    server = start_postgres(die_with_parent=True, tls=PostgresTls(ca=tls_ca, password=PASSWORD))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_url(tls_server: PostgresServer) -> str:
    """The verify-full URL of a new, empty database (created over TLS)."""
    return tls_server.create_database(f"tls_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def migrated_url(fresh_url: str) -> str:
    """The verify-full URL of a new database with every migration applied."""
    apply_migrations(fresh_url)
    return fresh_url


def with_params(url: str, **params: str) -> str:
    """Return ``url`` with these query parameters set (others kept)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | params
    return urlunsplit(parts._replace(query=urlencode(query, safe="/", quote_via=quote)))


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def inboxflow(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, with only DATABASE_URL pointing at the server."""
    return subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "inboxflow", *args],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_url_asks_for_verify_full_against_the_ca(
    tls_server: PostgresServer, tls_ca: CertificateAuthority
) -> None:
    parts = urlsplit(tls_server.url("jobs"))
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == (
        "postgresql",
        "127.0.0.1",
        tls_server.port,
        "/jobs",
    )
    assert (parts.username, parts.password) == ("postgres", quote(PASSWORD, safe=""))
    assert dict(parse_qsl(parts.query)) == {
        "sslmode": "verify-full",
        "sslrootcert": str(tls_ca.cert_path),
    }


def test_server_allows_tcp_only_over_tls_with_scram(tls_server: PostgresServer) -> None:
    hba = [
        line.split()
        for line in (tls_server.data_dir / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [entry[0] for entry in hba] == ["local", "hostssl"]
    assert hba[1][-1] == "scram-sha-256"
    assert tls_server.server_cert is not None
    assert tls_server.server_cert.key_path.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(tls_server.url("postgres")) as conn:
        verifier = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"
        ).fetchone()
        assert verifier is not None
        assert verifier[0].startswith("SCRAM-SHA-256$")
        assert conn.execute("SHOW ssl").fetchone() == ("on",)


def test_sync_connection_verifies_the_server(fresh_url: str) -> None:
    with psycopg.connect(fresh_url) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute(IN_SSL).fetchone()
    assert row is not None
    assert row[0] is True
    assert row[1] in ("TLSv1.2", "TLSv1.3")


def test_the_certificate_names_localhost_too(fresh_url: str) -> None:
    parts = urlsplit(fresh_url)
    url = urlunsplit(parts._replace(netloc=parts.netloc.replace("127.0.0.1", "localhost")))
    with psycopg.connect(url) as conn:
        assert conn.pgconn.ssl_in_use


def test_database_swap_keeps_tls_parameters(tls_server: PostgresServer) -> None:
    assert _with_database(tls_server.url(), "other") == tls_server.url("other")
    keyword_form = make_conninfo(tls_server.url())
    swapped = conninfo_to_dict(_with_database(keyword_form, "other"))
    assert swapped["dbname"] == "other"
    assert swapped["sslmode"] == "verify-full"
    assert swapped["password"] == PASSWORD


async def test_async_connection_and_pool_verify_the_server(fresh_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(fresh_url) as conn:
        cursor = await conn.execute(IN_SSL)
        assert (await cursor.fetchone() or (None,))[0] is True
    async with (
        AsyncConnectionPool(fresh_url, min_size=1, max_size=2, open=False) as pool,
        pool.connection(timeout=10) as pooled,
    ):
        cursor = await pooled.execute(IN_SSL)
        assert (await cursor.fetchone() or (None,))[0] is True


def test_migrations_apply_over_tls(fresh_url: str) -> None:
    assert apply_migrations(fresh_url) == [m.name for m in load_migrations()]
    assert apply_migrations(fresh_url) == []


async def test_agent_state_pool_reads_and_writes_over_tls(migrated_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(migrated_url, autocommit=True) as conn:
        await accounts.add_account(conn, "tls@inboxflow.test")
    state = AgentState(migrated_url)
    try:
        account = await state.account("tls@inboxflow.test")
        assert account is not None
        assert account.user_id == "tls@inboxflow.test"
        await state.save_sync_checkpoint("tls@inboxflow.test", "42", "sync-1", full=True)
        assert await state.sync_checkpoint("tls@inboxflow.test") == SyncCheckpoint("42", True)
        await state.record_sync_outcome(
            "tls@inboxflow.test", accounts.SyncOutcome.SKIPPED, datetime.now(UTC)
        )
    finally:
        await state.close()


def test_cli_migrates_and_lists_accounts_over_tls(fresh_url: str) -> None:
    migrated = inboxflow(fresh_url, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"Applied {len(load_migrations())} migration(s)" in migrated.stdout

    added = inboxflow(fresh_url, "accounts", "add", "cli@inboxflow.test")
    assert added.returncode == 0, added.stderr
    listed = inboxflow(fresh_url, "accounts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [a["user_id"] for a in json.loads(listed.stdout)] == ["cli@inboxflow.test"]


def test_cli_reports_a_refused_plain_connection(fresh_url: str) -> None:
    listed = inboxflow(with_params(fresh_url, sslmode="disable"), "accounts", "list")
    assert listed.returncode == 1
    assert "cannot reach Postgres" in listed.stderr
    assert "no pg_hba.conf entry" in listed.stderr


def test_plain_tcp_is_refused_by_pg_hba(fresh_url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry.*no encryption"):
        psycopg.connect(with_params(fresh_url, sslmode="disable"), connect_timeout=5)


def test_another_ca_fails_certificate_verification(fresh_url: str, tmp_path: Path) -> None:
    stranger = make_ca(tmp_path / "other-ca", name="some other CA")
    url = with_params(fresh_url, sslrootcert=str(stranger.cert_path))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(url, connect_timeout=5)


def test_a_name_not_in_the_certificate_is_refused(fresh_url: str) -> None:
    # hostaddr dials the server while host is the name verify-full checks against the SAN.
    parts = urlsplit(fresh_url)
    url = with_params(
        urlunsplit(parts._replace(netloc=parts.netloc.replace("127.0.0.1", "db.example.test"))),
        hostaddr="127.0.0.1",
    )
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(url, connect_timeout=5)


def test_wrong_password_fails_authentication(fresh_url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(with_password(fresh_url, "not-" + PASSWORD), connect_timeout=5)


def test_restart_keeps_tls_and_data(tls_server: PostgresServer, migrated_url: str) -> None:
    tls_server.restart()
    with psycopg.connect(migrated_url) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (
            len(load_migrations()),
        )
