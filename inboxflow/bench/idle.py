"""``inboxflow bench idle``: the CPU a consumer group spends while no mail comes.

A worker runs for months and waits most of that time: a few users' mail is a message a minute
each, so what a consumer spends between messages (fetch requests that come back empty, its
fetcher's re-checks, heartbeats, timers) can outweigh what it spends on them. Here the normalize
agent and the peers of ``inboxflow bench pipeline`` (the same processes, each on topics of its
own) are started together and sent one message each; once every side has written its output
(started, joined its group, warm), all of them are measured over the same ``seconds``, side by
side, receiving nothing: CPU-seconds per minute of each side's process tree (the agent's parser
processes included) and inboxflow's ratio to each peer.

The peers take their Kafka clients from ``topics.kafka.KafkaClients`` like inboxflow (the same
client options, the 2 s idle re-check of the fetcher included), so the ratios compare the
frameworks, not aiokafka's defaults.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

from inboxflow.bench.pipeline import (
    PARTITIONS,
    default_quix_python,
    fetched_events,
    produce_events,
    require_quixstreams,
    runnable_peers,
    side_command,
    tree_cpu_seconds,
    watch_outputs,
)
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from, serde_from
from topics.admin import ensure_topics
from topics.catalogue import build_catalogue

PEERS = ("quix", "batched")  # the naive peer idles as the batched one does: a poll loop


@dataclass(frozen=True)
class IdleBenchResult:
    """CPU-seconds per minute of each side while idle, and inboxflow's ratio to each peer."""

    seconds: float
    cpu_seconds_per_minute: dict[str, float]
    ratios: dict[str, float]  # inboxflow's idle CPU over the peer's (<1 cheaper)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


async def run_idle_bench(
    settings: Settings, seconds: float = 60.0, peers: Sequence[str] | None = None
) -> IdleBenchResult:
    """Start inboxflow's normalize agent and each peer, warm each up, then measure them idle.

    ``peers`` None runs every peer this machine can (Quix Streams only where its venv is set up).
    """
    quix_python = default_quix_python()
    if peers is None:
        peers = [peer for peer in runnable_peers(quix_python) if peer in PEERS]
    elif "quix" in peers:
        require_quixstreams(quix_python)
    kafka = kafka_from(settings)
    serde = serde_from(settings)
    event = fetched_events(1)
    sides = ["inboxflow", *peers]
    async with AsyncExitStack() as stack:
        processes: dict[str, asyncio.subprocess.Process] = {}
        for name in sides:
            catalogue = build_catalogue(f"bench-idle-{name}-{uuid.uuid4().hex[:8]}", PARTITIONS)
            await ensure_topics(kafka, catalogue.topics)
            await produce_events(kafka, catalogue.message_fetched.name, event, serde)
            argv, env = side_command(name, settings, catalogue, quix_python)
            log = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack closes it
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
            stack.push_async_callback(_stop, process)
            processes[name] = process
            try:
                await watch_outputs(kafka, catalogue.email_normalized.name, 1, process)
            except (RuntimeError, TimeoutError) as exc:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{name}: {exc}\n{tail}") from exc
        before = {name: tree_cpu_seconds(p.pid) for name, p in processes.items()}
        await asyncio.sleep(seconds)  # the measured window: nothing is sent meanwhile
        spent = {name: tree_cpu_seconds(p.pid) - before[name] for name, p in processes.items()}
    per_minute = {name: round(cpu * 60 / seconds, 3) for name, cpu in spent.items()}
    ratios = {
        peer: round(per_minute["inboxflow"] / max(per_minute[peer], 1e-9), 2) for peer in peers
    }
    return IdleBenchResult(seconds, per_minute, ratios)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    await asyncio.wait_for(process.wait(), timeout=60)
