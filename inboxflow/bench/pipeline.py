"""``inboxflow bench pipeline``: the normalize agent against the peers a user would pick.

Every side turns the same GmailMessageFetched records (generated mail, realistic MIME) into
EmailNormalized with the same pure ``normalized_body`` and the same serde; only the plumbing
differs. Each runs as its own process, one after the other, on its own throw-away topics:

- **inboxflow**: ``inboxflow worker --agent normalize``: faust, batches with manual acks, job-state
  events, failure routing, outputs acknowledged before the ack.
- **quix**: a Quix Streams application, at-least-once (``inboxflow.bench.peers``).
- **batched**: a well-written aiokafka loop: ``getmany`` up to 500, produce all, await, commit.
- **naive**: one record at a time, ``send_and_wait``, commit per record.
- **ceiling**: the pure function alone in one process, no Kafka at all.

A run of several rounds (``--rounds``) measures every side once per round, on fresh topics, in
an order that flips each round (inboxflow first, then last), and reports each figure's median
over the rounds; each ratio is the median of the rounds' own ratios (both sides measured minutes
apart on the same machine state), and ``per_round`` keeps every round's ratios, their spread the
noise of the machine. On a shared 2-core machine one run of the same commit moves 15-20 %, so a
single round's ratio says little. The naive peer runs in the first round only: it is a labelled
baseline thirty times slower, and one round of it takes longer than all other sides together.

Rates count from each side's first output to its last, so process start-up and the group join
are left out of them (time to first output is a figure of its own). CPU is the process tree's
user and system time between the first and the last output; peak memory is VmHWM summed over
the process tree (the agent's CPU pool, if it started one), and the tree's peak PSS, sampled:
summed RSS counts the pages the agent and its pool share (the interpreter, C extensions) once
per process, PSS splits them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.gmail_emulator.generator import GeneratedMessage, generate_messages
from inboxflow.bench.peers import CeilingResult
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from, serde_from
from schemas.models import GmailMessageFetched
from schemas.serde import Serde
from topics.admin import ensure_topics
from topics.catalogue import Catalogue, build_catalogue
from topics.kafka import KafkaClients

log = logging.getLogger(__name__)

PARTITIONS = 3
PEERS = ("quix", "batched", "naive")


@dataclass(frozen=True)
class SideFigures:
    """One side's figures: a process turning the same records into EmailNormalized."""

    name: str
    messages_per_second: float  # first output to last
    cpu_seconds_per_1000: float  # CPU of the process tree, first output to last
    main_cpu_seconds_per_1000: float  # of the process itself (without its CPU pool)
    cpu_seconds_total: float  # from start to the last output, start-up included
    peak_rss_mib: float  # VmHWM, summed over the process tree
    main_peak_rss_mib: float  # VmHWM of the process itself (without its CPU pool)
    # Proportional set size summed over the tree, sampled every 0.1 s: a page shared by the
    # processes (the interpreter, C extensions) counts once, not once per process.
    peak_pss_mib: float
    first_output_seconds: float  # from spawning the process


@dataclass(frozen=True)
class PeerRatios:
    """inboxflow over one peer: above 1 is faster (rate), below 1 is cheaper (CPU, RSS)."""

    rate: float
    cpu_per_message: float
    peak_rss: float
    peak_pss: float
    first_output: float


@dataclass(frozen=True)
class RoundRatios:
    """inboxflow over one peer in one round, with both sides' rates."""

    round: int
    peer: str
    inboxflow_messages_per_second: float
    peer_messages_per_second: float
    rate: float
    cpu_per_message: float
    peak_pss: float


@dataclass(frozen=True)
class PipelineBenchResult:
    """Figures of one run; the flat ``naive_*`` and ``ratio`` fields compare with the naive peer.

    With several rounds, each side's figures and each ratio are medians over the rounds.
    """

    messages: int
    inboxflow_messages_per_second: float
    naive_messages_per_second: float
    ratio: float
    inboxflow_startup_seconds: float
    inboxflow_peak_rss_mib: float
    naive_peak_rss_mib: float
    inboxflow: SideFigures
    peers: dict[str, SideFigures]
    ratios: dict[str, PeerRatios]  # inboxflow / peer, by peer name
    ceiling: CeilingResult
    rounds: int = 1
    per_round: list[RoundRatios] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)

    def table(self) -> list[str]:
        """Return the figures as text lines: a row per side, then inboxflow / peer ratios."""
        lines = [
            f"{'side':<10} {'msg/s':>8} {'CPU-s/1k':>9} {'main CPU':>9} {'CPU-s all':>9} "
            f"{'peak MiB':>9} {'main MiB':>9} {'peak PSS':>9} {'1st out s':>9}"
        ]
        for side in (self.inboxflow, *self.peers.values()):
            lines.append(
                f"{side.name:<10} {side.messages_per_second:>8,.0f} "
                f"{side.cpu_seconds_per_1000:>9.3f} {side.main_cpu_seconds_per_1000:>9.3f} "
                f"{side.cpu_seconds_total:>9.2f} "
                f"{side.peak_rss_mib:>9.1f} {side.main_peak_rss_mib:>9.1f} "
                f"{side.peak_pss_mib:>9.1f} {side.first_output_seconds:>9.2f}"
            )
        ceiling = self.ceiling
        lines.append(
            f"{'ceiling':<10} {ceiling.messages_per_second:>8,.0f} "
            f"{ceiling.cpu_seconds_per_1000:>9.3f}   (the function alone; with decode and "
            f"encode {ceiling.with_serde_messages_per_second:,.0f} msg/s, "
            f"{ceiling.with_serde_cpu_seconds_per_1000:.3f} CPU-s/1k)"
        )
        lines.append(
            "inboxflow / peer: rate (>1 faster), CPU per message, peak RSS and PSS (<1 cheaper)"
        )
        if self.rounds > 1:
            lines.append(f"  (medians of {self.rounds} rounds; each round's ratios below)")
        for name, ratio in self.ratios.items():
            lines.append(
                f"  {name:<8} rate {ratio.rate:.2f}x  CPU {ratio.cpu_per_message:.2f}x  "
                f"RSS {ratio.peak_rss:.2f}x  PSS {ratio.peak_pss:.2f}x  "
                f"first output {ratio.first_output:.2f}x"
            )
        if self.rounds > 1:
            for one in self.per_round:
                lines.append(
                    f"  round {one.round} {one.peer:<8} rate {one.rate:.2f}x "
                    f"({one.inboxflow_messages_per_second:,.0f} / "
                    f"{one.peer_messages_per_second:,.0f} msg/s)  CPU {one.cpu_per_message:.2f}x"
                    f"  PSS {one.peak_pss:.2f}x"
                )
        return lines


def fetched_events(
    count: int, user: str = "bench@inboxflow.test", *, seed: int = 7
) -> list[GmailMessageFetched]:
    """Return ``count`` generated messages as GmailMessageFetched events."""
    now = datetime.now(UTC)
    return [
        as_fetched(generated, index, user, now)
        for index, generated in enumerate(generate_messages(seed, count, user))
    ]


def as_fetched(
    generated: GeneratedMessage, index: int, user: str, now: datetime
) -> GmailMessageFetched:
    """Return a generated message as the sync agent would have fetched it (message ``index``)."""
    return GmailMessageFetched(
        user_id=user,
        message_id=f"m{index:08d}",
        thread_id=f"t{index // 3:08d}",
        sync_id="bench",
        label_ids=list(generated.label_ids),
        internal_date=datetime.fromtimestamp(generated.internal_date / 1000, UTC),
        size_estimate=len(generated.raw),
        snippet="",
        raw=generated.raw,
        fetched_at=now,
    )


async def produce_events(
    kafka: KafkaClients, topic: str, events: list[GmailMessageFetched], serde: Serde
) -> None:
    async with kafka.started(kafka.producer()) as producer:
        for index, event in enumerate(events):
            # Spread over partitions (one user id would put everything on one).
            await producer.send(topic, serde.encode(event), key=f"u{index % 12}".encode())
        await producer.flush()


@dataclass
class _Watch:
    """What the watcher saw of one side: output arrival times and process samples."""

    arrivals: list[float]
    cpu_at_first: float = 0.0
    cpu_at_last: float = 0.0
    main_cpu_at_first: float = 0.0
    main_cpu_at_last: float = 0.0
    peak_rss_mib: float = 0.0
    main_peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0


async def watch_outputs(
    kafka: KafkaClients, topic: str, count: int, process: asyncio.subprocess.Process
) -> _Watch:
    """Read the side's outputs as they come; sample its CPU at the first and the last."""
    watch = _Watch(arrivals=[])
    deadline = time.monotonic() + 600
    async with kafka.started(kafka.consumer(topic)) as consumer:
        while len(watch.arrivals) < count and time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the process exited ({process.returncode}) before its outputs")
            watch.peak_pss_mib = max(watch.peak_pss_mib, _tree_pss_mib(process.pid))
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            got = sum(len(records) for records in batch.values())
            if got and not watch.arrivals:
                watch.cpu_at_first = tree_cpu_seconds(process.pid)
                watch.main_cpu_at_first = _cpu_seconds(process.pid)
            watch.arrivals += [now] * got
    if len(watch.arrivals) < count:
        raise TimeoutError(f"only {len(watch.arrivals)} of {count} outputs on {topic}")
    watch.cpu_at_last = tree_cpu_seconds(process.pid)
    watch.main_cpu_at_last = _cpu_seconds(process.pid)
    watch.peak_rss_mib = _tree_peak_rss_mib(process.pid)
    watch.main_peak_rss_mib = _peak_rss_mib(process.pid)
    return watch


def _rate(count: int, arrivals: list[float]) -> float:
    span = max(arrivals[-1] - arrivals[0], 1e-6)
    return (count - 1) / span


def _tree(pid: int) -> list[int]:
    """Return ``pid`` and its descendants (a worker's CPU pool processes)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree = [pid]
    for member in tree:
        tree += [child for child, parent in parents.items() if parent == member]
    return tree


def tree_cpu_seconds(pid: int) -> float:
    return sum(_cpu_seconds(member) for member in _tree(pid))


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # the process ended while we looked
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _tree_peak_rss_mib(pid: int) -> float:
    return sum(_peak_rss_mib(member) for member in _tree(pid))


def _tree_pss_mib(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        try:
            lines = Path(f"/proc/{member}/smaps_rollup").read_text().splitlines()
        except OSError:  # gone, or a kernel without smaps_rollup (4.14 and later have it)
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return total / 1024


def _peak_rss_mib(pid: int) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _run_side(
    name: str, argv: list[str], env: dict[str, str], kafka: KafkaClients, topic: str, count: int
) -> SideFigures:
    """Start one side as a process, measure it until its last output, then stop it."""
    with tempfile.TemporaryFile() as stderr:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            watch = await watch_outputs(kafka, topic, count, process)
        except (RuntimeError, TimeoutError) as exc:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{name}: {exc}\n{tail}") from exc
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), timeout=60)
    return SideFigures(
        name=name,
        messages_per_second=round(_rate(count, watch.arrivals), 1),
        cpu_seconds_per_1000=round(
            (watch.cpu_at_last - watch.cpu_at_first) * 1000 / max(count - 1, 1), 3
        ),
        main_cpu_seconds_per_1000=round(
            (watch.main_cpu_at_last - watch.main_cpu_at_first) * 1000 / max(count - 1, 1), 3
        ),
        cpu_seconds_total=round(watch.cpu_at_last, 2),
        peak_rss_mib=round(watch.peak_rss_mib, 1),
        main_peak_rss_mib=round(watch.main_peak_rss_mib, 1),
        peak_pss_mib=round(watch.peak_pss_mib, 1),
        first_output_seconds=round(watch.arrivals[0] - started, 2),
    )


def _worker_env(settings: Settings, catalogue: Catalogue) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "INBOXFLOW_TOPIC_NAMESPACE": catalogue.namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": str(PARTITIONS),
    }
    env.pop("INBOXFLOW_SCHEMA_REGISTRY_URL", None)
    if settings.schema_registry_url:
        env["INBOXFLOW_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    return env


def default_quix_python() -> str:
    """The interpreter of the Quix Streams peer: its own venv if made, else this one."""
    venv = Path.home() / ".cache" / "inboxflow" / "bench-quix-venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def require_quixstreams(python: str) -> None:
    """Raise ``RuntimeError`` naming the fix when ``python`` cannot import quixstreams."""
    found = subprocess.run(  # noqa: S603 - our own interpreter path and a fixed snippet
        [python, "-c", "import quixstreams, inboxflow.bench.peers"],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        raise RuntimeError(
            f"{python} cannot run the Quix Streams peer. Quix Streams caps pydantic below "
            "inboxflow's pins, so give it its own venv: python3.11 -m venv "
            "~/.cache/inboxflow/bench-quix-venv && ~/.cache/inboxflow/bench-quix-venv/bin/pip "
            "install -c <(grep -iv '^pydantic' constraints.txt) -e '.[bench-quix]' "
            "(or leave the Quix peer out: --peer batched --peer naive)"
        )


def runnable_peers(quix_python: str) -> tuple[str, ...]:
    try:
        require_quixstreams(quix_python)
    except RuntimeError as exc:
        log.warning("Quix Streams peer left out: %s", exc)
        return tuple(peer for peer in PEERS if peer != "quix")
    return PEERS


async def _ceiling(count: int, registry_url: str) -> CeilingResult:
    """Run the pure-function ceiling in a fresh process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inboxflow.bench.peers", "ceiling", str(count), registry_url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the ceiling run failed ({process.returncode})")
    return CeilingResult(**json.loads(stdout))


async def _create_offsets_topic(kafka: KafkaClients, topic: str) -> None:
    """Join and commit once with a throwaway group, before any side is timed.

    On a fresh cluster the first group makes Kafka create ``__consumer_offsets`` (50 partitions),
    which took about a second: the side that ran first paid it in its time to first output.
    """
    group = f"bench-warm-{uuid.uuid4().hex[:8]}"
    async with kafka.started(kafka.consumer(topic, group_id=group)) as consumer:
        await consumer.getmany(timeout_ms=100)
        await consumer.commit(dict.fromkeys(consumer.assignment(), 0))


def _ratios(ours: SideFigures, peer: SideFigures) -> PeerRatios:
    return PeerRatios(
        rate=round(ours.messages_per_second / peer.messages_per_second, 2),
        cpu_per_message=round(ours.cpu_seconds_per_1000 / max(peer.cpu_seconds_per_1000, 1e-9), 2),
        peak_rss=round(ours.peak_rss_mib / max(peer.peak_rss_mib, 1e-9), 2),
        peak_pss=round(ours.peak_pss_mib / max(peer.peak_pss_mib, 1e-9), 2),
        first_output=round(ours.first_output_seconds / max(peer.first_output_seconds, 1e-9), 2),
    )


def median_side(rounds: Sequence[SideFigures]) -> SideFigures:
    """Return a side's figures over rounds: each figure's median (one round: its figures)."""
    medians: dict[str, Any] = {"name": rounds[0].name}
    for figure in fields(SideFigures):
        if figure.name != "name":
            values = [getattr(one, figure.name) for one in rounds]
            medians[figure.name] = round(statistics.median(values), 3)
    return SideFigures(**medians)


def median_ratios(rounds: Sequence[PeerRatios]) -> PeerRatios:
    """Return the median of each ratio over rounds."""
    return PeerRatios(
        **{
            figure.name: round(statistics.median(getattr(one, figure.name) for one in rounds), 2)
            for figure in fields(PeerRatios)
        }
    )


def round_order(sides: Sequence[str], index: int) -> list[str]:
    """Return the order sides run in round ``index`` (from 0): as given, then reversed."""
    return list(sides) if index % 2 == 0 else list(reversed(sides))


async def run_pipeline_bench(
    settings: Settings,
    messages: int = 2000,
    peers: Sequence[str] | None = None,
    quix_python: str | None = None,
    rounds: int = 1,
) -> PipelineBenchResult:
    """Run the agent and each peer, one after the other, on the same messages; return figures.

    ``peers`` None runs every peer this machine can: Quix Streams only where its venv is set
    up (logged when it is not). A peer named explicitly must run, or this raises RuntimeError.
    ``rounds`` measures every side that many times (the naive peer once); see the module.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    quix_python = quix_python or default_quix_python()
    if peers is None:
        peers = runnable_peers(quix_python)
    elif "quix" in peers:
        require_quixstreams(quix_python)
    events = fetched_events(messages)
    # Every side speaks the deployment's wire format (a registry URL in the settings: Confluent).
    serde = serde_from(settings)
    kafka = kafka_from(settings)
    runs: dict[str, list[SideFigures]] = {name: [] for name in ("inboxflow", *peers)}
    per_round: list[RoundRatios] = []
    for index in range(rounds):
        sides = ["inboxflow", *(p for p in peers if index == 0 or p != "naive")]
        measured = await _run_round(
            settings, kafka, serde, events, round_order(sides, index), quix_python
        )
        for name, figures in measured.items():
            runs[name].append(figures)
        per_round += [
            _round_ratios(index + 1, name, measured["inboxflow"], figures)
            for name, figures in measured.items()
            if name != "inboxflow"
        ]
    inboxflow = median_side(runs["inboxflow"])
    medians = {name: median_side(runs[name]) for name in peers}
    ratios = {
        name: median_ratios(
            # The naive peer ran in the first round only: paired with that round's inboxflow.
            [
                _ratios(ours, theirs)
                for ours, theirs in zip(
                    runs["inboxflow"][: len(runs[name])], runs[name], strict=True
                )
            ]
        )
        for name in peers
    }
    ceiling = await _ceiling(messages, settings.schema_registry_url or "")
    naive = medians.get("naive")
    return PipelineBenchResult(
        messages=messages,
        inboxflow_messages_per_second=inboxflow.messages_per_second,
        naive_messages_per_second=naive.messages_per_second if naive else 0.0,
        ratio=ratios["naive"].rate if naive else 0.0,
        inboxflow_startup_seconds=inboxflow.first_output_seconds,
        inboxflow_peak_rss_mib=inboxflow.peak_rss_mib,
        naive_peak_rss_mib=naive.peak_rss_mib if naive else 0.0,
        inboxflow=inboxflow,
        peers=medians,
        ratios=ratios,
        ceiling=ceiling,
        rounds=rounds,
        per_round=per_round if rounds > 1 else [],
    )


async def _run_round(
    settings: Settings,
    kafka: KafkaClients,
    serde: Serde,
    events: list[GmailMessageFetched],
    sides: Sequence[str],
    quix_python: str,
) -> dict[str, SideFigures]:
    """Run each side once, in ``sides``' order, each on topics of its own; figures by name."""
    messages = len(events)
    catalogues = {
        name: build_catalogue(f"bench-{name}-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
        for name in sides
    }
    for catalogue in catalogues.values():
        await ensure_topics(kafka, catalogue.topics)
        await produce_events(kafka, catalogue.message_fetched.name, events, serde)
    await _create_offsets_topic(kafka, catalogues[sides[0]].message_fetched.name)
    measured: dict[str, SideFigures] = {}
    for name in sides:
        catalogue = catalogues[name]
        argv, env = side_command(name, settings, catalogue, quix_python)
        topic = catalogue.email_normalized.name
        measured[name] = await _run_side(name, argv, env, kafka, topic, messages)
    return {name: measured[name] for name in ("inboxflow", *PEERS) if name in measured}


def side_command(
    name: str, settings: Settings, catalogue: Catalogue, quix_python: str
) -> tuple[list[str], dict[str, str]]:
    """Return the argv and environment of side ``name`` on ``catalogue``'s normalize topics."""
    if name == "inboxflow":
        argv = [sys.executable, "-m", "inboxflow", "worker", "--agent", "normalize"]
        return argv, _worker_env(settings, catalogue)
    python = quix_python if name == "quix" else sys.executable
    # A peer inherits this environment, so it takes the same INBOXFLOW_KAFKA_* security.
    argv = [python, "-m", "inboxflow.bench.peers", name, settings.kafka_bootstrap_servers]
    argv += [catalogue.message_fetched.name, catalogue.email_normalized.name]
    argv += [catalogue.normalize.group_id, settings.schema_registry_url or ""]
    return argv, dict(os.environ)


def _round_ratios(index: int, peer: str, ours: SideFigures, theirs: SideFigures) -> RoundRatios:
    ratios = _ratios(ours, theirs)
    return RoundRatios(
        round=index,
        peer=peer,
        inboxflow_messages_per_second=ours.messages_per_second,
        peer_messages_per_second=theirs.messages_per_second,
        rate=ratios.rate,
        cpu_per_message=ratios.cpu_per_message,
        peak_pss=ratios.peak_pss,
    )
