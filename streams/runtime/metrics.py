"""Prometheus metrics of the agents: records by outcome, failures by class, batch time, breakers.

Exposed by each worker on ``INBOXFLOW_METRICS_PORT`` (``inboxflow worker`` gives agent i the
port + i). Useful queries: ``rate(inboxflow_agent_records_total{outcome="done"}[1m])`` for
throughput, ``inboxflow_agent_records_total{outcome="dead"}`` for dead letters,
``inboxflow_breaker_state`` (0 closed, 1 half-open, 2 open), ``inboxflow_gmail_user_units``
against the per-user ceiling (``INBOXFLOW_GMAIL_USER_UNITS_PER_MINUTE``).
"""

from __future__ import annotations

import math

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class AgentMetrics:
    """Metric families of the agents in one process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.records = Counter(
            "inboxflow_agent_records",
            "Records an agent finished, by outcome: done, retry (sent to a tier), dead (DLQ).",
            ["group", "stage", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "inboxflow_agent_failures",
            "Failed attempts by retry class.",
            ["group", "stage", "retry_class"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "inboxflow_agent_batch_seconds",
            "Time to process one batch of one partition, outputs acknowledged by Kafka.",
            ["group", "stage"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.process_seconds = Histogram(
            "inboxflow_agent_process_seconds",
            "Time the stage itself took on one partition's batch: no breaker wait, no publishing "
            "(compare with inboxflow_agent_batch_seconds to tell a slow stage from a slow Kafka).",
            ["group", "stage"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.blocked_partitions = Gauge(
            "inboxflow_agent_blocked_partitions",
            "Partition batches held because Kafka refuses even their dead letters; "
            "above 0 the agent is stuck until the cause (ACLs, topic config) is fixed.",
            ["group", "stage"],
            registry=registry,
        )
        self.held_bytes = Gauge(
            "inboxflow_agent_held_bytes",
            "Bytes of consumed records an agent holds: in faust's buffer and taken, not yet acked.",
            ["group", "stage"],
            registry=registry,
        )
        self.held_bytes_peak = Gauge(
            "inboxflow_agent_held_bytes_peak",
            "The most bytes of consumed records the agent has held since it started.",
            ["group", "stage"],
            registry=registry,
        )
        self.delivery_waits = Counter(
            "inboxflow_agent_delivery_waits",
            "Times delivery into the agent's buffer waited because the agent held its byte "
            "limit (its share of INBOXFLOW_WORKER_BUFFER_BYTES): the stage is the bottleneck.",
            ["group", "stage"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "inboxflow_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=registry,
        )


_DEFAULT: AgentMetrics | None = None


def agent_metrics() -> AgentMetrics:
    """Return the process-wide metrics (created once: Prometheus names are global)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = AgentMetrics()
    return _DEFAULT


_GMAIL_USER_UNITS: Gauge | None = None


def gmail_user_units() -> Gauge:
    """Return the gauge of Gmail quota units charged per user in the last quota window.

    The Gmail client sets one child per user to its limiter's ``units_in_window`` (read when
    scraped); created once per process, like ``agent_metrics``.
    """
    global _GMAIL_USER_UNITS
    if _GMAIL_USER_UNITS is None:
        _GMAIL_USER_UNITS = Gauge(
            "inboxflow_gmail_user_units",
            "Gmail quota units charged to the user in the last quota window (60 s by default).",
            ["user"],
        )
    return _GMAIL_USER_UNITS


_GMAIL_WATCH_EXPIRY: Gauge | None = None


def gmail_watch_expiry() -> Gauge:
    """Return the gauge of seconds until the first active account's Gmail watch expires.

    Set by the scheduler replica that holds the lock, with push configured; NaN elsewhere and
    when no account has a watch (NaN compares false, so no alert fires on it).
    """
    global _GMAIL_WATCH_EXPIRY
    if _GMAIL_WATCH_EXPIRY is None:
        _GMAIL_WATCH_EXPIRY = Gauge(
            "inboxflow_gmail_watch_expiry_seconds",
            "Seconds until the first active account's Gmail watch expires (NaN: none known).",
        )
        _GMAIL_WATCH_EXPIRY.set(math.nan)
    return _GMAIL_WATCH_EXPIRY
