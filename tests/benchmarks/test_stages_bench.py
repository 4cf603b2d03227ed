"""``inboxflow bench stages --json``: every stage and both sinks as processes, 1 and 2 per group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_every_stage_with_one_and_two_processes(kafka_bootstrap: str, database_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    completed = subprocess.run(  # noqa: S603
        [INBOXFLOW, "bench", "stages", "--emails", "200", "--processes", "1,2", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=900,
    )
    result = json.loads(completed.stdout)
    for run in result["runs"]:
        print(
            f"{run['processes']} process(es): {run['overall_emails_per_second']:.0f} emails/s "
            f"overall, per stage {run['stage_emails_per_second']}, "
            f"{run['worker_cpu_seconds_per_1000']:.1f} CPU s per 1,000"
        )
    assert [run["processes"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["emails"] == 200
        assert set(run["stage_emails_per_second"]) == {"normalize", "extract", "embed", "insight"}
        assert all(rate > 0 for rate in run["stage_emails_per_second"].values())
        assert run["overall_emails_per_second"] > 0
        assert run["worker_cpu_seconds_per_1000"] > 0
