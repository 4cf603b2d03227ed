"""``inboxflow bench latency --json``: capacity first, then p50/p99 at half of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inboxflow.bench.latency import percentile

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose

    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


@pytest.mark.benchmark
def test_latency_at_half_capacity(kafka_bootstrap: str, database_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    completed = subprocess.run(  # noqa: S603
        [INBOXFLOW, "bench", "latency", "--burst", "200", "--steady-seconds", "5", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=900,
    )
    result = json.loads(completed.stdout)
    print(json.dumps(result))
    assert result["offered_emails_per_second"] == pytest.approx(
        result["capacity_emails_per_second"] / 2, abs=0.1
    )
    assert result["steady_emails"] >= 12
    assert 0 < result["normalized_p50_ms"] <= result["normalized_p99_ms"]
    assert result["normalized_p50_ms"] <= result["all_stages_p50_ms"] <= result["all_stages_p99_ms"]
