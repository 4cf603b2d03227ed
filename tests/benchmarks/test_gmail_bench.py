"""``inboxflow bench gmail`` figures (marker ``benchmark``, off by default)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from inboxflow.cli import cli


@pytest.mark.benchmark
def test_gmail_bench_prints_figures() -> None:
    result = CliRunner().invoke(cli, ["bench", "gmail", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    print(json.dumps(figures, indent=2))
    assert figures["quota_bound"]
    assert figures["quota_efficiency"] >= 0.95
    assert figures["early_requests"] == 0
    assert figures["messages_per_unit"] > figures["naive_messages_per_unit"]
