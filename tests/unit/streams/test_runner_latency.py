"""The runner's latency histograms: the stage's own time apart from the whole batch's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streams.runtime.metrics import AgentMetrics
from tests.memory_publisher import MemoryPublisher
from tests.unit.streams.test_runner import GROUP, ScriptedStage, record, runner


async def test_stage_time_and_batch_time_are_observed_per_partition_batch() -> None:
    registry = CollectorRegistry()
    stage_runner = runner(ScriptedStage(), MemoryPublisher())
    stage_runner.metrics = AgentMetrics(registry)
    await stage_runner.run([record(1, b"a"), record(2, b"b", partition=1)])

    labels = {"group": GROUP.group_id, "stage": "normalize"}
    sums = {}
    for family in ("inboxflow_agent_process_seconds", "inboxflow_agent_batch_seconds"):
        assert registry.get_sample_value(f"{family}_count", labels) == 2  # two partitions
        sums[family] = registry.get_sample_value(f"{family}_sum", labels)
    # The batch's time holds the stage's and the publishing after it.
    assert sums["inboxflow_agent_process_seconds"] is not None
    assert sums["inboxflow_agent_batch_seconds"] is not None
    assert sums["inboxflow_agent_process_seconds"] <= sums["inboxflow_agent_batch_seconds"]
