"""``inboxflow bench pipeline --json``: the normalize agent against Quix Streams, batched and naive.

Quix Streams needs its own venv (``pyproject.toml``'s ``bench-quix`` extra); without one the
Quix peer is left out and the test says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inboxflow.bench.pipeline import default_quix_python, require_quixstreams

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")
MESSAGES = 1500


def _peers() -> list[str]:
    try:
        require_quixstreams(default_quix_python())
    except RuntimeError as exc:
        print(f"Quix Streams peer left out: {exc}")
        return ["batched", "naive"]
    return ["quix", "batched", "naive"]


def test_normalize_agent_against_its_peers(kafka_bootstrap: str, database_url: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url}
    peers = _peers()
    argv = [INBOXFLOW, "bench", "pipeline", "--messages", str(MESSAGES), "--json"]
    argv += [option for peer in peers for option in ("--peer", peer)]
    completed = subprocess.run(argv, env=env, capture_output=True, check=True, timeout=1800)  # noqa: S603
    result = json.loads(completed.stdout)

    sides = [result["inboxflow"], *result["peers"].values()]
    for side in sides:
        print(
            f"{side['name']:<10} {side['messages_per_second']:>7.0f} msg/s  "
            f"{side['cpu_seconds_per_1000']:.3f} CPU-s/1k  {side['peak_rss_mib']:.0f} MiB "
            f"(main {side['main_peak_rss_mib']:.0f}, PSS {side['peak_pss_mib']:.0f})  "
            f"first output {side['first_output_seconds']}s"
        )
    for name, ratio in result["ratios"].items():
        print(
            f"inboxflow/{name}: rate {ratio['rate']}x CPU {ratio['cpu_per_message']}x "
            f"RSS {ratio['peak_rss']}x PSS {ratio['peak_pss']}x"
        )
    print(f"ceiling: {result['ceiling']['messages_per_second']:.0f} msg/s")

    assert result["messages"] == MESSAGES
    assert list(result["peers"]) == peers
    assert sorted(result["ratios"]) == sorted(peers)
    for side in sides:
        assert side["messages_per_second"] > 0
        assert side["cpu_seconds_per_1000"] > 0
        assert side["peak_rss_mib"] >= side["main_peak_rss_mib"] > 0
        # Sampled while the side ran; a shared page counts once, so never above summed RSS.
        assert 0 < side["peak_pss_mib"] <= side["peak_rss_mib"]
        assert side["first_output_seconds"] > 0
    # The flat fields older readers use still describe the naive peer.
    assert result["naive_messages_per_second"] == result["peers"]["naive"]["messages_per_second"]
    assert result["ceiling"]["messages_per_second"] > 0
