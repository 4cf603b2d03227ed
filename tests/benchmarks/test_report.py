"""``inboxflow bench all``: the registry's outcomes and the markdown page (no Kafka needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inboxflow.bench.report import (
    REGISTRY,
    BenchEntry,
    BenchOutcome,
    BenchReport,
    Scale,
    render_markdown,
    run_all,
    write_report,
)
from inboxflow.settings import Settings

MACHINE = {"cores": "2", "ram": "23.4 GiB", "cpu": "Test CPU", "python": "3.11.7", "kafka": "4.1.1"}


def _figures(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    return {
        "emails": 2000 if scale == "small" else 20_000,
        "runs": [
            {"processes": 1, "overall_emails_per_second": 77.6, "stages": {"normalize": 91.9}},
            {"processes": 2, "overall_emails_per_second": 101.25, "stages": {"normalize": 120.0}},
        ],
        "rss_mib": {"agent-normalize": [113.5, 121.0]},
    }


def _broken(settings: Settings, scale: Scale) -> Mapping[str, Any]:
    raise RuntimeError("broker gone")


def _entry(name: str, runner: Any) -> BenchEntry:
    commands: dict[Scale, str] = {"small": f"inboxflow bench {name}", "large": f"{name} large"}
    return BenchEntry(name, "inboxflow.bench.report", commands, 30, runner)


def _report(scale: Scale = "small", names: tuple[str, ...] = ("stages", "broken")) -> BenchReport:
    runners = {"stages": _figures, "memory": _figures, "broken": _broken}
    return run_all(
        Settings(), scale, command=f"inboxflow bench all --scale {scale}", kafka_version="4.1.1",
        entries=[_entry(name, runners[name]) for name in names],
    )  # fmt: skip


def test_outcomes_ok_and_failed_in_registry_order() -> None:
    report = _report()

    assert [(o.name, o.status) for o in report.outcomes] == [("stages", "ok"), ("broken", "failed")]
    assert report.outcomes[0].figures["emails"] == 2000
    assert report.outcomes[1].error == "RuntimeError: broker gone"
    assert all(outcome.date.endswith(" UTC") for outcome in report.outcomes)
    # Each bench is described by the first paragraph of its module's docstring.
    assert report.outcomes[0].about.startswith("``inboxflow bench all``: run every registered")
    assert report.machine["kafka"] == "4.1.1"
    assert int(report.machine["cores"]) >= 1


def test_registry_has_every_bench_and_the_slots_others_fill() -> None:
    names = [entry.name for entry in REGISTRY]

    assert names[:6] == ["gmail", "sink", "pipeline", "stages", "memory", "latency"]
    assert {"normalize", "embed", "legacy"} <= set(names)
    assert all(entry.commands["small"].startswith("inboxflow bench ") for entry in REGISTRY)


def test_markdown_has_machine_command_and_a_table_per_bench() -> None:
    report = BenchReport(
        scale="small",
        command="inboxflow bench all --scale small --out docs",
        date="2026-12-01 07:30 UTC",
        machine=MACHINE,
        outcomes=(
            BenchOutcome(
                "stages", "ok", "inboxflow bench stages", about="Every stage as a process.",
                seconds=81.5, budget_seconds=120, figures=_figures(Settings(), "small"),
            ),
            BenchOutcome(
                "broken", "failed", "inboxflow bench broken", seconds=2, budget_seconds=30,
                error="E: why",
            ),
        ),
    )  # fmt: skip

    page = render_markdown(report)

    assert "`inboxflow bench all --scale small --out docs`" in page
    assert "2026-12-01 07:30 UTC" in page
    assert "| cpu | Test CPU |" in page
    assert "| cores | 2 |" in page
    assert "## stages\n\nEvery stage as a process.\n\nAlone: `inboxflow bench stages`." in page
    assert "Took 82 s (small-scale budget 120 s)." in page
    assert "| emails | 2,000 |" in page
    assert "| rss_mib.agent-normalize | 114, 121 |" in page
    # A list of records becomes one row each, nested figures flattened into columns.
    assert "| processes | overall_emails_per_second | stages.normalize |" in page
    assert "| 2 | 101 | 120 |" in page
    assert "| 1 | 77.6 | 91.9 |" in page
    assert "Failed: `E: why`" in page


def test_write_report_writes_json_and_the_page(tmp_path: Path) -> None:
    report = _report()
    markdown = tmp_path / "docs" / "benchmarks.md"

    path = write_report(report, tmp_path / "out", markdown)

    assert path == tmp_path / "out" / "benchmarks-small.json"
    figures = json.loads(path.read_text())
    assert [o["status"] for o in figures["outcomes"]] == ["ok", "failed"]
    assert markdown.read_text() == render_markdown(report)


def test_a_partial_run_keeps_the_other_figures_and_the_page_shows_both_scales(
    tmp_path: Path,
) -> None:
    markdown = tmp_path / "benchmarks.md"
    write_report(_report(), tmp_path, markdown)
    # A large memory run alone, then the small stages bench again alone.
    write_report(_report("large", ("memory",)), tmp_path, markdown)
    path = write_report(_report("small", ("stages",)), tmp_path, markdown)

    small = BenchReport.from_dict(json.loads(path.read_text()))
    large = BenchReport.from_dict(json.loads((tmp_path / "benchmarks-large.json").read_text()))
    assert [o.name for o in small.outcomes] == ["stages", "broken"]  # broken kept from run 1
    assert [o.name for o in large.outcomes] == ["memory"]
    page = markdown.read_text()
    assert page == render_markdown(small, large)
    assert page.index("# Scale `small`") < page.index("# Scale `large`") < page.index("## memory")
    assert "Alone: `memory large`. Measured " in page


def test_figures_kept_from_another_machine_say_which(tmp_path: Path) -> None:
    markdown = tmp_path / "benchmarks.md"
    path = write_report(_report(), tmp_path, markdown)
    data = json.loads(path.read_text())
    data["outcomes"][1]["cpu"] = "Old CPU"  # "broken" ran on another machine
    path.write_text(json.dumps(data))

    write_report(_report("small", ("stages",)), tmp_path, markdown)

    page = markdown.read_text()
    stages, broken = page.split("## broken")
    assert "on another machine" not in stages
    assert "on another machine (Old CPU)." in broken


def test_figures_kept_from_before_the_cpu_was_recorded_name_their_report_machine(
    tmp_path: Path,
) -> None:
    markdown = tmp_path / "benchmarks.md"
    path = write_report(_report(), tmp_path, markdown)
    data = json.loads(path.read_text())
    data["machine"]["cpu"] = "Old CPU"  # a run on another machine, before outcomes kept a CPU
    for outcome in data["outcomes"]:
        del outcome["cpu"]
    path.write_text(json.dumps(data))

    write_report(_report("small", ("stages",)), tmp_path, markdown)

    stages, broken = markdown.read_text().split("## broken")
    assert "on another machine" not in stages
    assert "on another machine (Old CPU)." in broken
