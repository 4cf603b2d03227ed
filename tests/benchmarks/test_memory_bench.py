"""``inboxflow bench memory --json``: RSS of every process at each checkpoint, and its growth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_rss_of_every_process_at_each_checkpoint(kafka_bootstrap: str, database_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    completed = subprocess.run(  # noqa: S603
        [INBOXFLOW, "bench", "memory", "--checkpoints", "400,1200", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=900,
    )
    result = json.loads(completed.stdout)
    print(f"RSS MiB {result['rss_mib']}, growth {result['growth_percent']}")
    assert result["checkpoints"] == [400, 1200]
    for name in ("agent-normalize", "agent-extract", "sink-jobs", "sink-contacts"):
        assert len(result["rss_mib"][name]) == 2
        assert all(rss > 0 for rss in result["rss_mib"][name])
        assert name in result["growth_percent"]
    # The normalize agent's CPU pool workers are its children and are read too.
    assert any(name.startswith("agent-normalize+") for name in result["rss_mib"])
