"""A throwaway PostgreSQL 15 server from the machine's binaries, on a free loopback port.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system
account on a data directory that account owns. Its socket lives in the data directory so it
never clashes with a system cluster.

With ``PostgresTls`` the server takes TCP connections only over TLS (``hostssl``, SCRAM
password) and its URLs ask for ``sslmode=verify-full`` against the throwaway CA, as a managed
Postgres would; the Unix socket stays open without a password for local administration.
Nothing here is for production keys or passwords.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from devstack.processes import (
    RunAs,
    StackError,
    free_port,
    run_checked,
    spawn,
    stop_group,
    wait_for,
)
from devstack.tls import CertificateAuthority, IssuedCert, issue

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
DEFAULT_DATABASE = "inboxflow"

# Durability is traded for speed: a Postgres restart keeps the data, a machine crash may not.
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


# Only the Unix socket (in the data directory) skips the password; TCP must be TLS + SCRAM.
# No ``host`` line, so a client with ``sslmode=disable`` is refused by pg_hba.
_TLS_HBA = """\
# TYPE   DATABASE USER ADDRESS       METHOD
local    all      all                trust
hostssl  all      all  127.0.0.1/32  scram-sha-256
"""


@dataclass(frozen=True)
class PostgresTls:
    """Run the server with TLS only: a server certificate signed by ``ca``, and a password.

    Attributes:
        ca: the CA that signs the server certificate; clients verify against its ``cert_path``.
        password: the superuser's password (stored as a SCRAM-SHA-256 verifier).
    """

    ca: CertificateAuthority
    password: str

    def __post_init__(self) -> None:
        if not self.password or "\n" in self.password or "\r" in self.password:
            raise ValueError("the Postgres password must be one non-empty line")


def _write_owned(path: Path, text: str, run_as: RunAs | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def find_bindir() -> Path:
    """Return the folder holding ``initdb`` and ``postgres``, or raise StackError."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(  # noqa: S603 - fixed argv
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        candidates.append(out.stdout.strip())
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    raise StackError(
        "PostgreSQL server binaries not found (initdb, postgres): "
        "apt-get install postgresql-15, or set DATABASE_URL to an existing server"
    )


def _run_as() -> RunAs | None:
    return RunAs.lookup(SUPERUSER) if os.geteuid() == 0 else None


@dataclass
class PostgresServer:
    """A running server; ``restart()`` keeps data, ``stop()`` stops it and removes the data."""

    port: int
    data_dir: Path
    bindir: Path
    die_with_parent: bool
    pid: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tls: PostgresTls | None = field(default=None, repr=False)
    server_cert: IssuedCert | None = None

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        """Return the libpq URL of ``database`` on this server.

        With TLS the URL carries the password and ``sslmode=verify-full`` with
        ``sslrootcert`` naming the CA file, so any libpq client verifies the server's name.
        """
        if self.tls is None:
            return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"
        user = f"{SUPERUSER}:{quote(self.tls.password, safe='')}"
        query = urlencode(
            {"sslmode": "verify-full", "sslrootcert": str(self.tls.ca.cert_path)},
            safe="/",
            quote_via=quote,
        )
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}?{query}"

    @property
    def log_path(self) -> Path:
        """Server log, inside the data directory's parent."""
        return self.data_dir.parent / "postgres.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the postmaster on the existing data directory and wait until it accepts."""
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        argv += ["-k", str(self.data_dir)]
        settings = dict(_SERVER_SETTINGS)
        if self.server_cert is not None:
            settings["ssl"] = "on"
            settings["ssl_cert_file"] = str(self.server_cert.cert_path)
            settings["ssl_key_file"] = str(self.server_cert.key_path)
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self.process = spawn(
            argv, log_path=self.log_path, run_as=_run_as(), die_with_parent=self.die_with_parent
        )
        self.pid = self.process.pid
        wait_for(
            self._accepts,
            timeout=timeout,
            what="PostgreSQL",
            process=self.process,
            log_path=self.log_path,
        )

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def halt(self) -> None:
        """Stop the postmaster (fast shutdown), keeping the data directory."""
        if self.pid:
            stop_group(self.pid, sig=signal.SIGINT, grace=20.0)
            if self.process is not None:
                self.process.wait(timeout=5)
            self.pid = 0

    def restart(self) -> None:
        """Stop and start again on the same port and data (for database-down tests)."""
        self.halt()
        self.start()

    def stop(self) -> None:
        """Stop the server and delete its files."""
        self.halt()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create a database (optionally from a template) and return its URL."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(query)
        return self.url(name)


def start_postgres(
    *, root: Path | None = None, die_with_parent: bool, tls: PostgresTls | None = None
) -> PostgresServer:
    """Create a fresh cluster and start it on a free 127.0.0.1 port.

    Args:
        root: parent folder for the cluster's own folder; a temp folder when None. As root it
            must be traversable by the ``postgres`` account.
        die_with_parent: have the kernel stop the server when this process dies (test sessions).
        tls: accept TCP only over TLS with the superuser's password (``hostssl``,
            scram-sha-256); ``url()`` then asks for ``sslmode=verify-full``. None: plain TCP
            without a password, as before.
    """
    bindir = find_bindir()
    run_as = _run_as()
    base = Path(tempfile.mkdtemp(prefix="inboxflow-pg-", dir=root))
    base.chmod(0o755)
    data_dir = base / "data"
    data_dir.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(base, run_as.uid, run_as.gid)
        os.chown(data_dir, run_as.uid, run_as.gid)
    initdb = [
        str(bindir / "initdb"),
        "-D",
        str(data_dir),
        "-U",
        SUPERUSER,
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
        "--no-sync",
    ]
    server_cert: IssuedCert | None = None
    password_file = base / "superuser-password"
    if tls is not None:
        # The server reads its key and certificate as the account it runs as, and insists on
        # owning a key nobody else can read.
        server_cert = issue(tls.ca, base, "server")
        _write_owned(password_file, tls.password + "\n", run_as)
        for path in (server_cert.cert_path, server_cert.key_path):
            if run_as is not None:
                os.chown(path, run_as.uid, run_as.gid)
        # initdb stores the password as a SCRAM-SHA-256 verifier (password_encryption's default).
        initdb.append(f"--pwfile={password_file}")
    try:
        run_checked(initdb, what="initdb", run_as=run_as)
    finally:
        password_file.unlink(missing_ok=True)
    if tls is not None:
        (data_dir / "pg_hba.conf").write_text(_TLS_HBA)
    server = PostgresServer(
        free_port(), data_dir, bindir, die_with_parent, tls=tls, server_cert=server_cert
    )
    try:
        server.start()
        server.create_database(DEFAULT_DATABASE)
    except BaseException:
        server.stop()
        raise
    log.info("postgres started port=%s data=%s tls=%s", server.port, data_dir, tls is not None)
    return server
