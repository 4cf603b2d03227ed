"""``inboxflow bench ...``: figures against a peer measured in the same run.

Benches that need Kafka and Postgres use the configured ones (``KAFKA_BOOTSTRAP_SERVERS`` and
``DATABASE_URL``) or, when those are not set, start a local stack for the run and stop it after
(``_on_a_stack``), as ``inboxflow run`` does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import click
from pydantic import SecretStr

from inboxflow.bench.gmail import run_bench
from inboxflow.bench.pipeline import run_pipeline_bench
from inboxflow.bench.report import REGISTRY
from inboxflow.bench.sink import run_sink_bench
from inboxflow.settings import Settings
from inboxflow.wiring import kafka_from, serde_from
from sinks.job_state import WriteMethod
from streams.stages.gmail.planner import FetchNeed

BENCH_NAMES = tuple(entry.name for entry in REGISTRY)


@click.group()
def bench() -> None:
    """Benchmarks that print figures against a peer measured in the same run."""


@contextmanager
def _on_a_stack(settings: Settings) -> Iterator[Settings]:
    """Yield ``settings`` pointed at the configured services, or at a local stack started now."""
    from inboxflow.main_job import running_stack  # the stack tooling: only for these commands

    with running_stack(settings) as stack:
        update = {
            "kafka_bootstrap_servers": stack.kafka_bootstrap,
            "database_url": SecretStr(stack.database_url),
        }
        yield settings.model_copy(update=update)


@bench.command("pipeline")
@click.option("--messages", default=2000, show_default=True, help="Generated messages.")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=click.Choice(["quix", "batched", "naive"]),
    help="Peers to run (repeatable; default: all three, Quix only where its venv is set up).",
)
@click.option(
    "--quix-python",
    default=None,
    help="Interpreter with quixstreams installed [default: ~/.cache/inboxflow/bench-quix-venv].",
)
@click.option(
    "--stages",
    type=click.Choice(["normalize", "all"]),
    default="normalize",
    show_default=True,
    help="normalize: the agent against its peers; all: every stage and sink as processes "
    "(the same as `bench stages`, 1 and 2 processes per group).",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Measure every side this many times, in alternating order, and report medians "
    "(the naive peer runs once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def pipeline_bench(
    ctx: click.Context,
    messages: int,
    peers: tuple[str, ...],
    quix_python: str | None,
    stages: str,
    rounds: int,
    as_json: bool,
) -> None:
    """The normalize agent against Quix Streams, batched and naive aiokafka, same messages."""
    if stages == "all":
        ctx.invoke(stages_bench, emails=messages, processes="1,2", as_json=as_json)
        return
    settings: Settings = ctx.obj
    try:
        with _on_a_stack(settings) as ready:
            result = asyncio.run(
                run_pipeline_bench(ready, messages, peers or None, quix_python, rounds)
            )
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.messages} messages through normalize")
    for line in result.table():
        click.echo(line)


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
    with _on_a_stack(settings) as ready:
        result = asyncio.run(
            run_sink_bench(
                kafka=kafka_from(ready, client_id="inboxflow-bench"),
                conninfo=ready.database_url.get_secret_value(),
                events=events,
                batch_records=batch_records,
                method=method,
                naive=naive,
                serde=serde_from(ready),
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


@bench.command("legacy")
@click.option("--users", default=2, show_default=True, help="Generated mailboxes.")
@click.option("--messages", default=100, show_default=True, help="Messages per mailbox.")
@click.option("--seed", default=7, show_default=True, help="Mailboxes and fault draws.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds each side may take.")
@click.option("--gmail-429", default=0.3, show_default=True, help="Share of Gmail calls 429.")
@click.option("--gmail-5xx", default=0.1, show_default=True, help="Share of Gmail calls 5xx.")
@click.option(
    "--embedding-throttle", default=0.5, show_default=True, help="Share of embedding calls 429."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def legacy(
    settings: Settings,
    users: int,
    messages: int,
    seed: int,
    timeout: float,
    gmail_429: float,
    gmail_5xx: float,
    embedding_throttle: float,
    as_json: bool,
) -> None:
    """The old polling job system against inboxflow: same mailboxes, same injected faults."""
    from inboxflow.bench.legacy import Faults, run_legacy_bench

    faults = Faults(gmail_429=gmail_429, gmail_5xx=gmail_5xx, embedding_throttle=embedding_throttle)
    with _on_a_stack(settings) as ready:
        result = run_legacy_bench(ready, users, messages, faults, seed=seed, timeout=timeout)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    f = result.faults
    click.echo(
        f"{users} mailboxes x {messages} messages; faults: Gmail {f.gmail_429:.0%} 429, "
        f"{f.gmail_5xx:.0%} 5xx; embedding API {f.embedding_throttle:.0%} of requests 429"
    )
    rows = [
        ("messages done / listed", "{messages_done} / {messages}"),
        ("messages/s", "{messages_per_second:.2f}"),
        ("jobs failed or dead", "{jobs_failed_or_dead} of {jobs} ({jobs_failed_percent:.1f} %)"),
        ("discovery to done p50 / p99 (s)", "{p50_seconds:.1f} / {p99_seconds:.1f}"),
        ("db transactions / message", "{db_transactions_per_message:.1f}"),
        ("Gmail units / message", "{gmail_units_per_message:.1f}"),
        ("CPU-s / 1,000 messages", "{cpu_seconds_per_1000_messages:.0f}"),
        ("settled", "{settled}"),
    ]
    click.echo(f"{'':34}{'legacy':>24}{'inboxflow':>24}")
    for label, template in rows:
        old = template.format(**result.legacy.__dict__)
        new = template.format(**result.inboxflow.__dict__)
        click.echo(f"{label:34}{old:>24}{new:>24}")
    statements = result.legacy.db_statements_per_message
    click.echo(f"legacy SQL statements / message (counted by its workers): {statements}")
    for side, figures in (("legacy", result.legacy), ("inboxflow", result.inboxflow)):
        for note in figures.notes:
            click.echo(f"{side}: {note}")


@bench.command("embed")
@click.option("--emails", default=200, show_default=True, help="Generated thread messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def embed_bench(emails: int, as_json: bool) -> None:
    """Chunks/email, emails/s and recall@5 of the embed stage: plain vs stripped and deduped."""
    from inboxflow.bench.embed import run_embed_bench  # numpy and the model: only when asked

    result = asyncio.run(run_embed_bench(emails))
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.emails} thread emails, {result.queries} queries, {result.workers} workers")
    for side in ("before", "after"):
        figures = result.to_dict()
        click.echo(
            f"{side:6}: {figures[f'chunks_per_email_{side}']:.2f} chunks/email, "
            f"{figures[f'emails_per_second_{side}']:.1f} emails/s, "
            f"recall@5 {figures[f'recall_at_5_{side}']:.3f}, MRR {figures[f'mrr_{side}']:.3f}"
        )
    click.echo(f"speed-up: {result.speedup:.2f}x, chunks reused: {result.chunks_reused_after}")


def _counts(text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of counts (``1,2`` or ``100000,1000000``)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from exc


@bench.command("stages")
@click.option("--emails", default=2000, show_default=True, help="Generated messages.")
@click.option("--processes", default="1,2", show_default=True, help="Processes per group, runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def stages_bench(settings: Settings, emails: int, processes: str, as_json: bool) -> None:
    """Every stage and both sinks as processes: emails/s per stage, CPU s per 1,000 emails."""
    from inboxflow.bench.stages import run_stages_bench

    with _on_a_stack(settings) as ready:
        result = run_stages_bench(ready, emails, _counts(processes))
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.emails} emails through normalize, extract, embed (API), insight, sinks")
    for run in result.runs:
        stages = ", ".join(f"{k} {v:,.0f}" for k, v in run.stage_emails_per_second.items())
        click.echo(
            f"{run.processes} process(es)/group: overall {run.overall_emails_per_second:,.1f} "
            f"emails/s ({stages}); CPU {run.worker_cpu_seconds_per_1000:.1f} s/1,000 emails "
            f"(+{run.emulator_cpu_seconds_per_1000:.1f} s embedding emulator)"
        )


@bench.command("memory")
@click.option(
    "--checkpoints", default="5000,15000", show_default=True, help="Cumulative event counts."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def memory_bench(settings: Settings, checkpoints: str, as_json: bool) -> None:
    """Worker RSS at each checkpoint through normalize, extract and the sinks; growth %."""
    from inboxflow.bench.memory import run_memory_bench

    with _on_a_stack(settings) as ready:
        result = run_memory_bench(ready, _counts(checkpoints))
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    marks = " -> ".join(f"{mark:,}" for mark in result.checkpoints)
    click.echo(f"RSS MiB at {marks} events ({result.events_per_second:,.0f} events/s)")
    for name, rss in result.rss_mib.items():
        values = " -> ".join(f"{value:.1f}" for value in rss)
        click.echo(f"  {name:24} {values}  ({result.growth_percent.get(name, 0.0):+.1f} %)")
    click.echo(
        f"largest growth {result.max_growth_percent:+.1f} %, "
        f"all processes {result.total_growth_percent:+.1f} %"
    )


@bench.command("latency")
@click.option("--burst", default=1000, show_default=True, help="Messages to measure capacity.")
@click.option("--steady-seconds", default=30.0, show_default=True, help="Half-capacity phase.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def latency_bench(settings: Settings, burst: int, steady_seconds: float, as_json: bool) -> None:
    """p50/p99 from MessageDiscovered to job rows done, at half of measured capacity."""
    from inboxflow.bench.latency import run_latency_bench

    with _on_a_stack(settings) as ready:
        result = run_latency_bench(ready, burst, steady_seconds)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(
        f"capacity {result.capacity_emails_per_second:,.1f} emails/s; offered "
        f"{result.offered_emails_per_second:,.1f}/s, {result.steady_emails} emails"
    )
    click.echo(
        f"fetched+normalized: p50 {result.normalized_p50_ms:,.0f} ms, "
        f"p99 {result.normalized_p99_ms:,.0f} ms"
    )
    click.echo(
        f"every stage:        p50 {result.all_stages_p50_ms:,.0f} ms, "
        f"p99 {result.all_stages_p99_ms:,.0f} ms"
    )


@bench.command("idle")
@click.option("--seconds", default=60.0, show_default=True, help="The idle window measured.")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=click.Choice(["quix", "batched"]),
    help="Peers to run (repeatable); default: each this machine can run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def idle_bench(settings: Settings, seconds: float, peers: tuple[str, ...], as_json: bool) -> None:
    """CPU the normalize agent and its peers spend while no mail comes, side by side."""
    from inboxflow.bench.idle import run_idle_bench

    with _on_a_stack(settings) as ready:
        result = asyncio.run(run_idle_bench(ready, seconds, list(peers) or None))
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"idle for {result.seconds:.0f} s after one message each")
    for name, cpu in result.cpu_seconds_per_minute.items():
        ratio = result.ratios.get(name)
        versus = f"  (inboxflow / {name}: {ratio:.2f}x)" if ratio is not None else ""
        click.echo(f"{name:10} {cpu:6.3f} CPU-s a minute{versus}")


@bench.command("all")
@click.option("--scale", type=click.Choice(["small", "large"]), default="small", show_default=True)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("docs"), show_default=True,
    help="Folder of the JSON figures.",
)  # fmt: skip
@click.option(
    "--markdown", type=click.Path(path_type=Path), default=Path("docs/benchmarks.md"),
    show_default=True, help="Page regenerated from the figures.",
)  # fmt: skip
@click.option(
    "--only", multiple=True, type=click.Choice(BENCH_NAMES),
    help="Run only these benches (repeatable); the others keep their figures in the JSON file.",
)  # fmt: skip
@click.pass_obj
def all_benches(
    settings: Settings,
    scale: Literal["small", "large"],
    out_dir: Path,
    markdown: Path,
    only: tuple[str, ...],
) -> None:
    """Run every bench, write DIR/benchmarks-<scale>.json and regenerate docs/benchmarks.md."""
    from devstack.kafka import KAFKA_VERSION
    from inboxflow.bench.report import run_all, write_report

    entries = [entry for entry in REGISTRY if not only or entry.name in only]
    command = f"inboxflow bench all --scale {scale} --out {out_dir}"
    command += "".join(f" --only {entry.name}" for entry in entries if only)
    kafka = f"{KAFKA_VERSION} (local, KRaft, one node)"
    if "kafka_bootstrap_servers" in settings.model_fields_set and not _is_dev_stack(settings):
        kafka = f"external ({settings.kafka_bootstrap_servers})"
    with _on_a_stack(settings) as ready:
        report = run_all(
            ready, scale, command=command, kafka_version=kafka, entries=entries,
            announce=click.echo,
        )  # fmt: skip
    path = write_report(report, out_dir, markdown)
    click.echo(f"figures: {path}; page: {markdown}")


def _is_dev_stack(settings: Settings) -> bool:
    """Whether the configured Kafka is the one ``inboxflow dev up`` started (same version)."""
    from devstack.stack import status_from_state
    from inboxflow.cli.dev import state_file

    state = status_from_state(state_file(settings))
    return bool(state.get("kafka_running")) and (
        state.get("kafka_bootstrap") == settings.kafka_bootstrap_servers
    )


@bench.command("normalize")
@click.option("--messages", default=2000, show_default=True, help="Generated messages timed.")
@click.option("--seed", default=11, show_default=True, help="Seed of the generated messages.")
@click.option(
    "--processes",
    default="1,2",
    show_default=True,
    help="Pool sizes to time, comma-separated ('' for the single core only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def normalize(messages: int, seed: int, processes: str, as_json: bool) -> None:
    """Messages/s of the pure normalize function on one core and through CPU pools."""
    from inboxflow.bench.normalize import run_normalize_bench

    sizes = tuple(int(size) for size in processes.split(",") if size.strip())
    result = run_normalize_bench(messages, seed, sizes)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(f"{result.messages} messages, {result.average_message_bytes:,.0f} bytes on average")
    click.echo(f"one core, in process: {result.single_core_messages_per_second:,.0f} msg/s")
    for rate in result.pool:
        workers = rate.workers_cpu_ms_per_message
        click.echo(
            f"pool of {rate.processes}: {rate.messages_per_second:,.0f} msg/s; CPU ms/message: "
            f"parent {rate.parent_cpu_ms_per_message:.3f}, "
            f"workers {'n/a' if workers is None else f'{workers:.3f}'}"
        )
    if result.scaling is not None:
        click.echo(f"scaling, largest pool over 1 process: {result.scaling:.2f}x")
    if result.machine_scaling is not None:
        click.echo(
            f"machine scaling, as many independent processes: {result.machine_scaling:.2f}x "
            f"(pool efficiency {result.pool_efficiency or 0:.2f})"
        )
