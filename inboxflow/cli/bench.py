"""``inboxflow bench pipeline | gmail | sink``: figures against a peer measured in the same run."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import click

from inboxflow.bench.gmail import run_bench
from inboxflow.bench.pipeline import run_pipeline_bench
from inboxflow.bench.sink import run_sink_bench
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from, serde_from
from sinks.job_state import WriteMethod
from streams.stages.gmail.planner import FetchNeed


@click.group()
def bench() -> None:
    """Benchmarks that print figures against a peer measured in the same run."""


@bench.command("pipeline")
@click.option("--messages", default=2000, show_default=True, help="Generated messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def pipeline_bench(settings: Settings, messages: int, as_json: bool) -> None:
    """The normalize agent against a naive consume-produce-commit loop, same messages."""
    result = asyncio.run(run_pipeline_bench(settings, messages))
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.messages} messages through normalize")
    click.echo(
        f"inboxflow agent: {result.inboxflow_messages_per_second:,.0f} msg/s "
        f"(start-up {result.inboxflow_startup_seconds:.1f}s, "
        f"peak RSS {result.inboxflow_peak_rss_mib:.0f} MiB)"
    )
    click.echo(
        f"naive peer:      {result.naive_messages_per_second:,.0f} msg/s "
        f"(peak RSS {result.naive_peak_rss_mib:.0f} MiB)"
    )
    click.echo(f"ratio: {result.ratio:.2f}x")


@bench.command("gmail")
@click.option("--messages", default=3000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--quota", "table", type=click.Choice(["2026", "legacy"]), default="2026")
@click.option("--scale", default=30.0, show_default=True, help="Quota time compression.")
@click.option("--need", type=click.Choice([n.value for n in FetchNeed]), default="mime")
@click.option("--naive-sample", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def gmail(
    messages: int,
    seed: int,
    table: Literal["2026", "legacy"],
    scale: float,
    need: str,
    naive_sample: int,
    as_json: bool,
) -> None:
    """Quota efficiency, throttled rate and messages per unit against a naive fetcher."""
    figures = asyncio.run(run_bench(messages, seed, table, scale, FetchNeed(need), naive_sample))
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    click.echo(f"mailbox {figures['messages']} messages, need={need}, quota={table}, scale={scale}")
    note = "" if figures["quota_bound"] else " (run fits in the burst: raise --messages)"
    click.echo(
        f"quota efficiency      {figures['quota_efficiency']:.1%}{note} of "
        f"{figures['ceiling_units_per_second']:.0f} units/s (steady state)"
    )
    click.echo(f"throttled responses   {figures['throttled_rate']:.2%}")
    click.echo(
        f"messages per unit     {figures['messages_per_unit']:.4f} "
        f"(naive {figures['naive_messages_per_unit']:.4f}, "
        f"x{figures['messages_per_unit'] / figures['naive_messages_per_unit']:.2f})"
    )


@bench.command("sink")
@click.option("--events", default=20_000, show_default=True, help="JobStateChanged events.")
@click.option("--batch-records", default=5000, show_default=True, type=int)
@click.option(
    "--method", type=click.Choice(["copy", "executemany"]), default="copy", show_default=True
)
@click.option("--naive/--no-naive", default=True, help="Also time the naive peer (slow).")
@click.option("--json", "as_json", is_flag=True, help="Print both rates and their ratio as JSON.")
@click.pass_obj
def sink(
    settings: Settings,
    events: int,
    batch_records: int,
    method: WriteMethod,
    naive: bool,
    as_json: bool,
) -> None:
    """Rows/s of the batched job-state sink against one row per transaction, same events."""
    result = asyncio.run(
        run_sink_bench(
            kafka=kafka_from(settings, client_id="inboxflow-bench"),
            conninfo=settings.database_url.get_secret_value(),
            events=events,
            batch_records=batch_records,
            method=method,
            naive=naive,
            serde=serde_from(settings),
        )
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.events} JobStateChanged events, write method {result.method}")
    click.echo(f"batched sink: {result.batched_rows_per_second:,.0f} rows/s")
    if not result.naive:
        return
    click.echo(
        f"naive writer (one row per transaction): {result.naive_rows_per_second:,.0f} rows/s\n"
        f"ratio: {result.ratio:.1f}x"
    )
