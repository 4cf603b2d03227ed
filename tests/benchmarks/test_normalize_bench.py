"""``inboxflow bench normalize``: the pure normalize function on one core and in CPU pools."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inboxflow.bench.normalize import run_normalize_bench

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_normalize_rates_on_one_core_and_in_pools() -> None:
    result = run_normalize_bench(messages=120, seed=5, processes=(1, 2))
    print(
        f"one core {result.single_core_messages_per_second:.0f} msg/s, "
        + ", ".join(f"pool of {r.processes} {r.messages_per_second:.0f} msg/s" for r in result.pool)
        + f", scaling {result.scaling:.2f}x"
    )
    assert result.messages == 120
    assert result.average_message_bytes > 500  # generated mail, not empty messages
    assert result.single_core_messages_per_second > 0
    assert [rate.processes for rate in result.pool] == [1, 2]
    assert all(rate.messages_per_second > 0 for rate in result.pool)
    one, two = (rate.messages_per_second for rate in result.pool)
    assert result.scaling == pytest.approx(two / one)
    assert result.machine_scaling is not None
    assert result.machine_scaling > 0
    assert result.pool_efficiency == pytest.approx(result.scaling / result.machine_scaling)


def test_the_cli_prints_the_figures_as_json() -> None:
    completed = subprocess.run(  # noqa: S603
        [INBOXFLOW, "bench", "normalize", "--messages", "40", "--processes", "1", "--json"],
        capture_output=True,
        check=True,
        timeout=600,
    )
    figures = json.loads(completed.stdout)
    assert figures["messages"] == 40
    assert figures["single_core_messages_per_second"] > 0
    assert [rate["processes"] for rate in figures["pool"]] == [1]
    assert figures["scaling"] is None  # no second pool size to compare
    assert figures["machine_scaling"] is None
