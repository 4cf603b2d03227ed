"""``inboxflow bench pipeline --json``: the normalize agent against a naive consume-produce loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_normalize_agent_against_a_naive_loop(kafka_bootstrap: str, database_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    completed = subprocess.run(  # noqa: S603
        [INBOXFLOW, "bench", "pipeline", "--messages", "1500", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=900,
    )
    result = json.loads(completed.stdout)
    print(
        f"inboxflow {result['inboxflow_messages_per_second']:.0f} msg/s "
        f"({result['inboxflow_peak_rss_mib']:.0f} MiB), naive "
        f"{result['naive_messages_per_second']:.0f} msg/s "
        f"({result['naive_peak_rss_mib']:.0f} MiB), "
        f"ratio {result['ratio']:.2f}x"
    )
    assert result["messages"] == 1500
    assert result["inboxflow_messages_per_second"] > 0
    assert result["naive_messages_per_second"] > 0
