"""Staging tables: where a writer COPYs a batch before its set-based statements.

A temporary table is private to its connection and lives as long as the connection does, so a
writer creates it once (``RowWriter.prepare``) and empties it before each batch. COPY into it,
then one ``INSERT ... SELECT ... ON CONFLICT`` (or a few statements) is what makes the sinks fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncCursor, sql


@dataclass(frozen=True)
class StagingTable:
    """One temporary table: its name, the columns a batch is copied into, its definition."""

    name: str
    columns: tuple[str, ...]
    definition: sql.Composable  # the column definitions, or LIKE another table

    @classmethod
    def like(cls, name: str, table: str, columns: tuple[str, ...]) -> StagingTable:
        """A staging table shaped like ``table`` (its defaults, none of its constraints)."""
        definition = sql.SQL(
            "LIKE {} INCLUDING DEFAULTS EXCLUDING CONSTRAINTS EXCLUDING INDEXES"
        ).format(sql.Identifier(table))
        return cls(name, columns, definition)

    @property
    def create(self) -> sql.Composed:
        """Create the table for this connection if it is not there yet."""
        return sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({})").format(
            sql.Identifier(self.name), self.definition
        )

    @property
    def truncate(self) -> sql.Composed:
        """Empty the table."""
        return sql.SQL("TRUNCATE {}").format(sql.Identifier(self.name))

    @property
    def copy(self) -> sql.Composed:
        """COPY rows of ``columns`` into the table."""
        return sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(self.name), sql.SQL(", ").join(map(sql.Identifier, self.columns))
        )

    async def load(self, cur: AsyncCursor[Any], rows: Iterable[Sequence[Any]]) -> None:
        """Replace the table's rows with ``rows`` (values in ``columns`` order)."""
        await cur.execute(self.truncate)
        async with cur.copy(self.copy) as copy:
            for row in rows:
                await copy.write_row(row)
