"""``inboxflow bench all``: run every registered bench at one scale, write their figures to one
JSON file and regenerate ``docs/benchmarks.md`` from it.

The registry names each bench, the module that holds it, the command that runs it alone at each
scale and a time budget for the small scale (the whole small run should take about ten minutes
on 2 cores). A bench that raises is listed as failed with its error and the others still run.
Benches print figures; none fails on a speed.

``--only NAME`` runs some benches and keeps the other figures of the same scale's JSON file, and
the page shows both scales' files when both exist (the large scale is run a bench at a time:
a million events through the memory bench take an hour). Each outcome carries its own date.
Rendering the markdown is pure (``render_markdown``) so it is tested without Kafka.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from, serde_from
from streams.stages.gmail.planner import FetchNeed

Scale = Literal["small", "large"]
Runner = Callable[[Settings, Scale], Mapping[str, Any]]


@dataclass(frozen=True)
class BenchEntry:
    """One bench of the registry."""

    name: str
    module: str  # holds the bench; its docstring's first paragraph describes it
    commands: Mapping[Scale, str]  # the command that runs it alone, per scale
    budget_seconds: float  # at the small scale
    runner: Runner  # runs the bench at a scale and returns its figures

    def about(self) -> str:
        """The first paragraph of the bench module's docstring, on one line."""
        doc = importlib.import_module(self.module).__doc__ or ""
        return " ".join(doc.strip().split("\n\n", 1)[0].split())

    def run(self, settings: Settings, scale: Scale) -> Mapping[str, Any]:
        """Run the bench and return its figures."""
        return self.runner(settings, scale)


@dataclass(frozen=True)
class BenchOutcome:
    """What one bench gave: figures, or why there are none."""

    name: str
    status: Literal["ok", "failed"]
    command: str
    about: str = ""  # the first paragraph of the bench module's docstring
    seconds: float = 0.0
    budget_seconds: float = 0.0
    figures: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    date: str = ""  # when it ran
    cpu: str = ""  # the CPU model it ran on: kept figures may come from another machine


@dataclass(frozen=True)
class BenchReport:
    """Every outcome of one ``bench all`` run with the machine and the command."""

    scale: Scale
    command: str
    date: str
    machine: Mapping[str, str]
    outcomes: tuple[BenchOutcome, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchReport:
        """Return the report a ``to_dict`` gave (a JSON file of an earlier run)."""
        outcomes = tuple(BenchOutcome(**outcome) for outcome in data["outcomes"])
        fields = {key: value for key, value in data.items() if key != "outcomes"}
        return cls(**fields, outcomes=outcomes)

    def merged_over(self, earlier: BenchReport) -> BenchReport:
        """This report, plus the benches of ``earlier`` (same scale) it did not run again."""
        ran = {outcome.name for outcome in self.outcomes}
        # A kept outcome ran on the earlier report's machine; this report names its own.
        kept = [
            replace(outcome, cpu=outcome.cpu or earlier.machine.get("cpu", ""))
            for outcome in earlier.outcomes
            if outcome.name not in ran
        ]
        order = {entry.name: index for index, entry in enumerate(REGISTRY)}
        outcomes = sorted([*kept, *self.outcomes], key=lambda o: order.get(o.name, len(order)))
        return BenchReport(self.scale, self.command, self.date, self.machine, tuple(outcomes))


# --- the registry ------------------------------------------------------------------------------


def _gmail(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.gmail import run_bench

    messages = 3000 if scale == "small" else 30_000
    return asyncio.run(run_bench(messages, 7, "2026", 30.0, FetchNeed.MIME, 100))


def _sink(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.sink import run_sink_bench

    result = asyncio.run(
        run_sink_bench(
            kafka=kafka_from(settings, client_id="inboxflow-bench"),
            conninfo=settings.database_url.get_secret_value(),
            events=10_000 if scale == "small" else 200_000,
            serde=serde_from(settings),
        )
    )
    return result.to_dict()


# The pipeline bench compares sides measured one after the other: medians of three rounds.
PIPELINE_ROUNDS = 3


def _pipeline(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.pipeline import run_pipeline_bench

    messages = 5000 if scale == "small" else 20_000
    return asyncio.run(run_pipeline_bench(settings, messages, rounds=PIPELINE_ROUNDS)).to_dict()


def _stages(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.stages import run_stages_bench

    emails = 2000 if scale == "small" else 20_000
    return run_stages_bench(settings, emails, (1, 2)).to_dict()


def _memory(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.memory import run_memory_bench

    marks = (5000, 15_000) if scale == "small" else (100_000, 1_000_000)
    return run_memory_bench(settings, marks).to_dict()


def _latency(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.latency import run_latency_bench

    burst, steady = (1000, 30.0) if scale == "small" else (10_000, 300.0)
    return run_latency_bench(settings, burst, steady).to_dict()


def _idle(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.idle import run_idle_bench

    return asyncio.run(run_idle_bench(settings, 30.0 if scale == "small" else 300.0)).to_dict()


def _normalize(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.normalize import run_normalize_bench

    return run_normalize_bench(2000 if scale == "small" else 20_000, 7, (1, 2)).to_dict()


def _embed(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.embed import run_embed_bench

    return asyncio.run(run_embed_bench(60 if scale == "small" else 1000)).to_dict()


def _legacy(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    from inboxflow.bench.legacy import run_legacy_bench

    users, messages = (2, 25) if scale == "small" else (4, 250)
    return run_legacy_bench(settings, users, messages, timeout=300.0).to_dict()


def _commands(small: str, large: str) -> dict[Scale, str]:
    return {"small": f"inboxflow bench {small}", "large": f"inboxflow bench {large}"}


REGISTRY: tuple[BenchEntry, ...] = (
    BenchEntry(
        "gmail",
        "inboxflow.bench.gmail",
        _commands("gmail --messages 3000", "gmail --messages 30000"),
        60,
        _gmail,
    ),
    BenchEntry(
        "sink",
        "inboxflow.bench.sink",
        _commands("sink --events 10000", "sink --events 200000"),
        75,
        _sink,
    ),
    BenchEntry(
        "pipeline",
        "inboxflow.bench.pipeline",
        _commands(
            f"pipeline --messages 5000 --rounds {PIPELINE_ROUNDS}",
            f"pipeline --messages 20000 --rounds {PIPELINE_ROUNDS}",
        ),
        240,
        _pipeline,
    ),
    BenchEntry(
        "stages",
        "inboxflow.bench.stages",
        _commands("stages --emails 2000 --processes 1,2", "stages --emails 20000 --processes 1,2"),
        120,
        _stages,
    ),
    BenchEntry(
        "memory",
        "inboxflow.bench.memory",
        _commands("memory --checkpoints 5000,15000", "memory --checkpoints 100000,1000000"),
        180,
        _memory,
    ),
    BenchEntry(
        "latency",
        "inboxflow.bench.latency",
        _commands(
            "latency --burst 1000 --steady-seconds 30", "latency --burst 10000 --steady-seconds 300"
        ),
        120,
        _latency,
    ),
    BenchEntry(
        "idle",
        "inboxflow.bench.idle",
        _commands("idle --seconds 30", "idle --seconds 300"),
        90,
        _idle,
    ),
    BenchEntry(
        "normalize",
        "inboxflow.bench.normalize",
        _commands("normalize --messages 2000", "normalize --messages 20000"),
        60,
        _normalize,
    ),
    BenchEntry(
        "embed",
        "inboxflow.bench.embed",
        _commands("embed --emails 60", "embed --emails 1000"),
        120,
        _embed,
    ),
    BenchEntry(
        "legacy",
        "inboxflow.bench.legacy",
        _commands("legacy --users 2 --messages 25", "legacy --users 4 --messages 250"),
        240,
        _legacy,
    ),
)


# --- running ------------------------------------------------------------------------------------


def run_entry(entry: BenchEntry, settings: Settings, scale: Scale) -> BenchOutcome:
    """Run one bench; an absent module or a raised error becomes its outcome, not a crash."""
    command = entry.commands[scale]
    about, budget, started = entry.about(), entry.budget_seconds, time.monotonic()
    date = _now()
    try:
        figures = dict(entry.run(settings, scale))
    except Exception as exc:  # noqa: BLE001 - one bench failing must not lose the others
        seconds = round(time.monotonic() - started, 1)
        error = f"{type(exc).__name__}: {exc}"[:500]
        return BenchOutcome(
            entry.name, "failed", command, about, seconds, budget, {}, error, date, _cpu_model()
        )
    seconds = round(time.monotonic() - started, 1)
    return BenchOutcome(
        entry.name, "ok", command, about, seconds, budget, figures, date=date, cpu=_cpu_model()
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_all(
    settings: Settings,
    scale: Scale,
    *,
    command: str,
    kafka_version: str,
    entries: Sequence[BenchEntry] = REGISTRY,
    announce: Callable[[str], None] = lambda line: None,
) -> BenchReport:
    """Run every entry in order and return the report; ``announce`` hears one line per bench."""
    outcomes = []
    for entry in entries:
        announce(f"{entry.name}: running")
        outcome = run_entry(entry, settings, scale)
        announce(f"{entry.name}: {outcome.status} in {outcome.seconds:.0f}s {outcome.error}")
        outcomes.append(outcome)
    return BenchReport(
        scale=scale,
        command=command,
        date=_now(),
        machine=describe_machine(kafka_version),
        outcomes=tuple(outcomes),
    )


def describe_machine(kafka_version: str) -> dict[str, str]:
    """Cores, RAM, CPU model, OS, Python and Kafka of this machine."""
    return {
        "cores": str(os.cpu_count() or 0),
        "ram": f"{_ram_gib():.1f} GiB",
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "kafka": kafka_version,
    }


def _ram_gib() -> float:
    for line in _read_lines(Path("/proc/meminfo")):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _cpu_model() -> str:
    for line in _read_lines(Path("/proc/cpuinfo")):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def write_report(report: BenchReport, out_dir: Path, markdown: Path) -> Path:
    """Write the report's JSON into ``out_dir`` and regenerate ``markdown``; return the JSON.

    Figures of benches this run left out stay from the scale's earlier JSON file, and the page
    shows the other scale's file too when there is one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"benchmarks-{report.scale}.json"
    earlier = _read_report(path)
    if earlier is not None:
        report = report.merged_over(earlier)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    small = report if report.scale == "small" else _read_report(out_dir / "benchmarks-small.json")
    large = report if report.scale == "large" else _read_report(out_dir / "benchmarks-large.json")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render_markdown(*[r for r in (small, large) if r is not None]))
    return path


def _read_report(path: Path) -> BenchReport | None:
    try:
        return BenchReport.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):  # absent, or from an older layout
        return None


# --- markdown (pure) -----------------------------------------------------------------------------


def render_markdown(*reports: BenchReport) -> str:
    """Return ``docs/benchmarks.md``: machine, date, command and a table per bench, per report.

    The first report's machine heads the page; a report of another scale follows as a part of
    its own.
    """
    first = reports[0]
    lines = [
        "# Benchmarks",
        "",
        f"Generated on {first.date} by `{first.command}`; run it again to regenerate this page "
        "(`--only NAME` reruns some benches and keeps the others' figures, each with its date). "
        "Benchmarks print figures and never fail on a speed.",
        "",
        "## Machine",
        "",
        *_table(["what", "value"], [[key, value] for key, value in first.machine.items()]),
    ]
    for report in reports:
        lines += ["", f"# Scale `{report.scale}`"]
        for outcome in report.outcomes:
            # Outcomes from before the CPU was kept per bench ran on their report's machine.
            known = replace(outcome, cpu=outcome.cpu or report.machine.get("cpu", ""))
            lines += ["", f"## {outcome.name}", ""]
            lines += _outcome_lines(known, report.scale, first.machine.get("cpu", ""))
    return "\n".join(lines) + "\n"


def _outcome_lines(outcome: BenchOutcome, scale: Scale, page_cpu: str = "") -> list[str]:
    elsewhere = f" on another machine ({outcome.cpu})" if outcome.cpu not in ("", page_cpu) else ""
    when = f"Measured {outcome.date}{elsewhere}. " if outcome.date else ""
    timing = f"{when}Took {outcome.seconds:.0f} s"
    if scale == "small":
        timing += f" (small-scale budget {outcome.budget_seconds:.0f} s)"
    head = [outcome.about, ""] if outcome.about else []
    head += [f"Alone: `{outcome.command}`. {timing}.", ""]
    if outcome.status == "failed":
        return [*head, f"Failed: `{outcome.error}`"]
    scalars, rows = _split(outcome.figures)
    lines = [*head, *_table(["figure", "value"], [[k, _cell(v)] for k, v in scalars.items()])]
    for key, items in rows.items():
        columns = list(dict.fromkeys(col for item in items for col in _flatten(item)))
        body = [[_cell(_flatten(item).get(col, "")) for col in columns] for item in items]
        lines += ["", f"`{key}`:", "", *_table(columns, body)]
    return lines


def _split(
    figures: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, list[Mapping[str, Any]]]]:
    """Scalar figures (nested dicts flattened) apart from lists of records (one row each)."""
    rows = {
        key: list(value)
        for key, value in figures.items()
        if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value)
    }
    scalars = _flatten({k: v for k, v in figures.items() if k not in rows})
    return scalars, rows


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            flat.update(_flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat


def _cell(value: Any) -> str:
    if isinstance(value, float):
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0  # ~3 significant
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(item) for item in value)
    return str(value).replace("|", "\\|")


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in body),
    ]
