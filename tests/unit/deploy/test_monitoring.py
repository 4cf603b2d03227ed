"""The alert rules and the dashboard: valid, and naming only metrics that something exports.

Every ``inboxflow_*`` family a rule or panel names must be registered by the code (imported
here, not scraped); the few external families are listed in ``EXTERNAL`` with their exporter.
``promtool check rules`` runs too where promtool is installed (Debian's ``prometheus``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from sinks.metrics import SinkMetrics
from streams.runtime.liveness import StallTracker, export_stalls
from streams.runtime.metrics import AgentMetrics, gmail_user_units, gmail_watch_expiry

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "inboxflow-dashboard.json"

EXTERNAL = {
    "kafka_consumergroup_lag": "kafka-exporter (consumer-group lag)",
    "up": "Prometheus, per scrape target",
}
REQUIRED_ALERTS = {
    "InboxflowConsumerLagGrowing",
    "InboxflowDeadLettersGrowing",
    "InboxflowBreakerOpen",
    "InboxflowPartitionStalled",
    "InboxflowGmailQuotaNearCeiling",
    "InboxflowGmailWatchExpiring",
}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> set[str]:
    """Return every series name the processes' metric code registers."""
    registry = CollectorRegistry()
    AgentMetrics(registry)
    SinkMetrics("rules-test", registry)
    tracker = StallTracker("rules-test", 60)
    export_stalls(tracker, registry)
    gmail_user_units()  # process-wide, in the default registry
    gmail_watch_expiry()
    names = set()
    for source in (registry, REGISTRY):
        for family in source.collect():
            suffixes = _SUFFIXES.get(family.type, ("",))
            names |= {family.name + suffix for suffix in suffixes}
    return names


def metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (ours by prefix, others by braces)."""
    selected = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))
    ours = set(re.findall(r"\b(inboxflow_[a-z0-9_]+)", expr))
    return selected | ours


def rules() -> Iterator[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in document["groups"]:
        yield from group["rules"]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_metric_names_are_read_from_expressions() -> None:
    expr = 'sum by (group) (rate(inboxflow_agent_records_total{outcome="done"}[1m])) and up{a="b"}'
    assert metric_names(expr) == {"inboxflow_agent_records_total", "up"}


def test_the_rules_name_only_metrics_that_exist() -> None:
    exported = exported_series()
    assert "inboxflow_agent_commit_age_seconds" in exported
    unknown = {
        (rule["alert"], name)
        for rule in rules()
        for name in metric_names(rule["expr"])
        if name not in exported and name not in EXTERNAL
    }
    assert unknown == set()


def test_the_dashboard_names_only_metrics_that_exist() -> None:
    exported = exported_series()
    exprs = dashboard_exprs()
    assert exprs
    unknown = {
        name
        for expr in exprs
        for name in metric_names(expr)
        if name not in exported | set(EXTERNAL)
    }
    assert unknown == set()


def test_every_alert_the_runbook_needs_is_there_and_described() -> None:
    found = list(rules())
    assert {rule["alert"] for rule in found} >= REQUIRED_ALERTS
    for rule in found:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_the_watch_expiry_is_unknown_until_the_scheduler_sets_it() -> None:
    gmail_watch_expiry()
    value = REGISTRY.get_sample_value("inboxflow_gmail_watch_expiry_seconds")
    assert value is not None
    # NaN compares false in PromQL: a replica without the lock or without push never alerts.
    assert math.isnan(value) or value > 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    checked = subprocess.run(  # noqa: S603 - a fixed command line
        [promtool, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(list(rules()))} rules found" in checked.stdout


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_alerts_fire_on_sample_series() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    tested = subprocess.run(  # noqa: S603 - a fixed command line
        [promtool, "test", "rules", str(Path(__file__).with_name("alerts_test.yml"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
