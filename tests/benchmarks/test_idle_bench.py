"""``inboxflow bench idle --json``: the normalize agent and a peer, both warm, measured idle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_idle_cpu_of_the_agent_and_the_batched_loop(
    kafka_bootstrap: str, database_url: str
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    argv = [INBOXFLOW, "bench", "idle", "--seconds", "5", "--peer", "batched", "--json"]
    completed = subprocess.run(argv, env=env, capture_output=True, check=True, timeout=600)  # noqa: S603
    result = json.loads(completed.stdout)
    print(json.dumps(result))

    assert result["seconds"] == 5
    cpu = result["cpu_seconds_per_minute"]
    assert set(cpu) == {"inboxflow", "batched"}
    # Idle is far from a core; five seconds of a poll loop may be under one clock tick (0).
    assert all(0 <= figure < 30 for figure in cpu.values())
    if cpu["batched"] > 0:
        assert result["ratios"]["batched"] == pytest.approx(
            cpu["inboxflow"] / cpu["batched"], rel=0.01, abs=0.01
        )
