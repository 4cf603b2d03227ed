"""Measuring both sides of ``inboxflow bench legacy`` alike: CPU, transactions, latencies.

Reads ``/proc`` and ``pg_stat_database``; changes nothing but the databases it creates and drops.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; what follows its ')' is space-separated.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system) per process and its descendants, live or reaped.

    Keyed by every process of the trees, so two readings can be subtracted process by process
    (a worker process that started in between counts from zero).
    """
    seen: dict[int, float] = {}
    pending = list(pids)
    while pending:
        pid = pending.pop()
        fields = _stat_fields(pid)
        if fields is None or pid in seen:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
        seen[pid] = sum(int(value) for value in fields[11:15]) / _TICKS
        pending += _children(pid)
    return seen


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two ``tree_cpu_seconds`` readings."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def with_database(conninfo: str, name: str) -> str:
    """``conninfo`` pointed at database ``name``."""
    return make_conninfo(conninfo, dbname=name)


def database_name(conninfo: str) -> str:
    """The database ``conninfo`` names."""
    return str(conninfo_to_dict(conninfo).get("dbname") or "postgres")


def create_database(conninfo: str, prefix: str) -> str:
    """Create an empty database next to ``conninfo``'s; return a conninfo for it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(conninfo, name)


def drop_database(conninfo: str, target: str) -> None:
    """Drop the database ``target`` names, disconnecting whoever is left."""
    name = database_name(target)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def transactions(conninfo: str, target: str, *, settle_seconds: float = 30.0) -> int:
    """Committed plus rolled-back transactions of database ``target`` so far.

    Waits (up to ``settle_seconds``) until no session is connected to it: a backend flushes its
    counts when it exits, so only then are they complete.
    """
    name = database_name(target)
    deadline = time.monotonic() + settle_seconds
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.1)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
