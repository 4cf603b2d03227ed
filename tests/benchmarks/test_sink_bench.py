"""``inboxflow bench sink --json``: the batched sink against one row per transaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_batched_sink_outruns_one_row_per_transaction(
    kafka_bootstrap: str, database_url: str
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    completed = subprocess.run(  # noqa: S603
        [INBOXFLOW, "bench", "sink", "--events", "20000", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=600,
    )
    result = json.loads(completed.stdout)
    print(
        f"batched {result['batched_rows_per_second']:.0f} rows/s, "
        f"naive {result['naive_rows_per_second']:.0f} rows/s, ratio {result['ratio']:.1f}x"
    )
    assert result["events"] == 20000
    assert result["ratio"] > 1


def test_copy_against_pipelined_executemany(kafka_bootstrap: str, database_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    rates = {}
    for method in ("copy", "executemany"):
        argv = [INBOXFLOW, "bench", "sink", "--events", "40000", "--no-naive", "--json"]
        completed = subprocess.run(  # noqa: S603
            [*argv, "--method", method],
            env=env,
            capture_output=True,
            check=True,
            timeout=600,
        )
        rates[method] = json.loads(completed.stdout)["batched_rows_per_second"]
    print(f"copy {rates['copy']:.0f} rows/s, executemany {rates['executemany']:.0f} rows/s")
    assert all(rate > 0 for rate in rates.values())
