"""Forward-only SQL migrations: ``db/migrations/NNNN_verb_object.sql`` applied in order.

Each file runs in its own transaction and is recorded in ``schema_migrations`` with a checksum,
so applying twice changes nothing and an edited, already-applied file is refused. An advisory
lock lets several workers start at once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

_LOCK_KEY = 0x1B0F_F10E  # any constant; unique to inboxflow migrations

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT name, checksum FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (name, checksum) VALUES (%(name)s, %(checksum)s)"


class MigrationError(RuntimeError):
    """A migration failed or an applied migration file was changed afterwards."""


@dataclass(frozen=True)
class Migration:
    """One SQL file of the migrations folder."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, recorded when applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """Return the shipped migrations sorted by their number."""
    folder = resources.files("db") / "migrations"
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [Migration(entry.name.removesuffix(".sql"), entry.read_text()) for entry in files]


def apply_migrations(conninfo: str) -> list[str]:
    """Apply every migration not applied yet; return the names applied now.

    Idempotent. Raises MigrationError when a recorded migration's file changed.
    """
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(CREATE_LEDGER)
            recorded: dict[str, str] = dict(conn.execute(SELECT_APPLIED).fetchall())
            for migration in load_migrations():
                if migration.name in recorded:
                    _check_unchanged(migration, recorded[migration.name])
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        INSERT_APPLIED, {"name": migration.name, "checksum": migration.checksum}
                    )
                log.info("migration applied name=%s", migration.name)
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _check_unchanged(migration: Migration, recorded_checksum: str) -> None:
    if migration.checksum != recorded_checksum:
        raise MigrationError(
            f"migration {migration.name} was changed after it was applied; "
            "migrations are forward-only: revert the edit and add a new migration"
        )
