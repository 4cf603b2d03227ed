"""Prometheus metrics of the agents: records by outcome, failures by class, batch time, breakers.

Exposed by each worker on ``INBOXFLOW_METRICS_PORT`` (``inboxflow worker`` gives agent i the
port + i). Useful queries: ``rate(inboxflow_agent_records_total{outcome="done"}[1m])`` for
throughput, ``inboxflow_agent_records_total{outcome="dead"}`` for dead letters,
``inboxflow_breaker_state`` (0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

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
        self.blocked_partitions = Gauge(
            "inboxflow_agent_blocked_partitions",
            "Partition batches held because Kafka refuses even their dead letters; "
            "above 0 the agent is stuck until the cause (ACLs, topic config) is fixed.",
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
