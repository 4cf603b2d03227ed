"""Snapshot assembly from samples: lag trend, rates, tiers, DLQs, worker metrics, accounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import TopicPartition

from ops.status import (
    AccountRow,
    KafkaSample,
    MetricsSample,
    Samples,
    Scrape,
    StatusLimits,
    assemble_snapshot,
    parse_metrics,
)
from ops.status.scrape import counter_increase
from topics.catalogue import Catalogue, build_catalogue

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIMITS = StatusLimits(max_staleness=900, stale_after=930, quota_ceiling=6000, quota_window=60)


@pytest.fixture
def catalogue() -> Catalogue:
    return build_catalogue("t", partitions=1, retry_ladders={"normalize": [5, 30]})


def sample(
    catalogue: Catalogue,
    at: float,
    *,
    ends: dict[str, int] | None = None,
    committed: dict[str, dict[str, int]] | None = None,
    heads: dict[str, int | None] | None = None,
    dlq_pending: dict[str, int] | None = None,
) -> KafkaSample:
    """One-partition topics: ``ends`` and ``committed`` by topic name (partition 0)."""
    names = [t.name for t in catalogue.topics]
    return KafkaSample(
        at=at,
        partitions=dict.fromkeys(names, 1),
        starts={TopicPartition(n, 0): 0 for n in names},
        ends={TopicPartition(n, 0): (ends or {}).get(n, 0) for n in names},
        committed={
            group: {TopicPartition(t, 0): o for t, o in offsets.items()}
            for group, offsets in (committed or {}).items()
        },
        group_states={catalogue.normalize.group_id: ("Stable", 1)},
        tier_heads={TopicPartition(t, 0): due for t, due in (heads or {}).items()},
        dlq_pending=dlq_pending or {},
    )


def test_lag_trend_and_rates_compare_two_samples(catalogue: Catalogue) -> None:
    fetched = catalogue.message_fetched.name
    normalized = catalogue.email_normalized.name
    group = catalogue.normalize.group_id
    before = sample(
        catalogue, 10.0, ends={fetched: 100, normalized: 40}, committed={group: {fetched: 40}}
    )
    after = sample(
        catalogue, 12.0, ends={fetched: 150, normalized: 60}, committed={group: {fetched: 60}}
    )

    snapshot = assemble_snapshot(
        catalogue, Samples(after, before), accounts=[], jobs={}, limits=LIMITS, now=NOW
    )

    normalize = next(g for g in snapshot.groups if g.agent == "normalize")
    assert (normalize.lag, normalize.lag_change, normalize.trend) == (90, 30, "rising")
    assert normalize.in_per_second == 10.0  # 20 consumed in 2 s
    assert normalize.out_per_second == 10.0  # email-normalized grew by 20; only normalize writes it
    assert (normalize.state, normalize.members) == ("Stable", 1)
    topic = next(t for t in snapshot.topics if t.name == fetched)
    assert (topic.records, topic.per_second) == (150, 25.0)
    assert snapshot.interval_seconds == 2.0
    sync = next(g for g in snapshot.groups if g.agent == "sync")
    assert sync.trend == "flat"


def test_the_first_sample_has_no_rates_and_a_never_committed_group_lags_from_the_start(
    catalogue: Catalogue,
) -> None:
    fetched = catalogue.message_fetched.name
    only = sample(catalogue, 1.0, ends={fetched: 7})

    snapshot = assemble_snapshot(
        catalogue, Samples(only), accounts=None, jobs=None, limits=LIMITS, now=NOW
    )

    normalize = next(g for g in snapshot.groups if g.agent == "normalize")
    assert normalize.partitions[0].committed is None
    assert (normalize.lag, normalize.trend, normalize.in_per_second) == (7, None, None)
    assert snapshot.interval_seconds is None
    assert snapshot.accounts is None
    assert snapshot.jobs is None


def test_tiers_report_depth_and_the_oldest_due_head(catalogue: Catalogue) -> None:
    group = catalogue.normalize
    first, second = (t.name for t in group.retry_topics)
    due = int((NOW + timedelta(seconds=20)).timestamp() * 1000)
    later = int((NOW + timedelta(seconds=90)).timestamp() * 1000)
    now_sample = sample(
        catalogue,
        1.0,
        ends={first: 5, second: 2, group.dlq.name: 4},
        committed={group.retry_group_id: {first: 3}},
        heads={first: later, second: due},
        dlq_pending={group.dlq.name: 3},
    )

    snapshot = assemble_snapshot(
        catalogue, Samples(now_sample), accounts=[], jobs={}, limits=LIMITS, now=NOW
    )

    normalize = next(g for g in snapshot.groups if g.agent == "normalize")
    assert [(t.delay_seconds, t.depth, t.oldest_due_ms) for t in normalize.tiers] == [
        (5, 2, later),
        (30, 2, due),
    ]
    assert normalize.tiers[1].due_in_seconds == 20.0
    assert (normalize.dlq.records, normalize.dlq.pending) == (4, 3)


def scrape(url: str, text: str, *, up: bool = True) -> Scrape:
    return Scrape(url, up, None if up else "refused", parse_metrics(text) if up else {})


EXPOSITION = """
# TYPE inboxflow_agent_records_total counter
inboxflow_agent_records_total{{group="t-normalize",stage="normalize",outcome="done"}} {done}
inboxflow_agent_records_created{{group="t-normalize",stage="normalize",outcome="done"}} 1.7e9
# TYPE inboxflow_agent_failures_total counter
inboxflow_agent_failures_total{{group="t-normalize",retry_class="timeout"}} {failed}
# TYPE inboxflow_breaker_state gauge
inboxflow_breaker_state{{breaker="embedding:api"}} {breaker}
# TYPE inboxflow_gmail_user_units gauge
inboxflow_gmail_user_units{{user="a@x.test"}} {units}
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 5.0
"""


def test_worker_metrics_give_error_rates_breakers_and_quota(catalogue: Catalogue) -> None:
    url, dead = "http://127.0.0.1:1/metrics", "http://127.0.0.1:2/metrics"
    before = MetricsSample(
        0.0, (scrape(url, EXPOSITION.format(done=10, failed=2, breaker=0, units=50)),)
    )
    after = MetricsSample(
        4.0,
        (
            scrape(url, EXPOSITION.format(done=30, failed=6, breaker=2, units=80)),
            scrape(dead, "", up=False),
        ),
    )
    accounts = [
        AccountRow("a@x.test", "active", None, NOW - timedelta(seconds=5), "ok", None, None),
        AccountRow("b@x.test", "active", None, NOW - timedelta(hours=2), "failed", "boom", None),
    ]

    snapshot = assemble_snapshot(
        catalogue,
        Samples(sample(catalogue, 4.0), sample(catalogue, 0.0), after, before),
        accounts=accounts,
        jobs={},
        limits=LIMITS,
        now=NOW,
    )

    normalize = next(g for g in snapshot.groups if g.agent == "normalize")
    assert normalize.errors_per_second == {"timeout": 1.0}
    assert normalize.errors_total == {"timeout": 6.0}
    assert normalize.outcomes_per_second == {"done": 5.0}
    assert next(g for g in snapshot.groups if g.agent == "embed").errors_per_second is None
    assert [(b.name, b.state) for b in snapshot.breakers] == [("embedding:api", "open")]
    assert [(w.url, w.up, w.groups) for w in snapshot.workers] == [
        (url, True, ["t-normalize"]),
        (dead, False, []),
    ]
    a, b = snapshot.accounts or []
    assert (a.quota_units, a.stale, b.quota_units, b.stale) == (80.0, False, 0.0, True)
    assert snapshot.quota.known


def test_quota_is_unknown_without_metrics_and_says_why(catalogue: Catalogue) -> None:
    accounts = [AccountRow("a@x.test", "paused", None, None, None, None, None)]

    snapshot = assemble_snapshot(
        catalogue,
        Samples(sample(catalogue, 1.0)),
        accounts=accounts,
        jobs={},
        limits=LIMITS,
        now=NOW,
    )

    assert snapshot.quota.known is False
    assert "INBOXFLOW_METRICS_PORT" in (snapshot.quota.note or "")
    assert snapshot.accounts is not None
    assert (snapshot.accounts[0].quota_units, snapshot.accounts[0].stale) == (None, False)


def test_a_counter_that_went_down_counts_from_zero_after_a_worker_restart() -> None:
    text = (
        '# TYPE inboxflow_sink_rows_total counter\ninboxflow_sink_rows_total{{sink="jobs"}} {n}\n'
    )
    old = scrape("u", text.format(n=500))
    new = scrape("u", text.format(n=20))

    assert counter_increase(new, old, "inboxflow_sink_rows_total") == {(("sink", "jobs"),): 20.0}


def test_parse_metrics_keeps_inboxflow_samples_only() -> None:
    parsed = parse_metrics(EXPOSITION.format(done=1, failed=1, breaker=1, units=1))

    assert {name for name, _labels in parsed} == {
        "inboxflow_agent_records_total",
        "inboxflow_agent_failures_total",
        "inboxflow_breaker_state",
        "inboxflow_gmail_user_units",
    }
