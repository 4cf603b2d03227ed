"""``inboxflow run``: the main job end to end, with progress bars and a summary."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from inboxflow.main_job import RunSummary, run_main_job
from inboxflow.settings import Settings


@click.command()
@click.option("--users", "user_count", default=3, show_default=True, help="Generated mailboxes.")
@click.option("--messages", default=300, show_default=True, help="Generated messages per user.")
@click.option("--seed", default=7, show_default=True, help="Mailbox generator seed.")
@click.option(
    "--mbox",
    type=click.Path(exists=True, path_type=Path),
    help="Real mail (mbox file or folder of .eml) for the first user instead of generated mail.",
)
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for the job.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def run(
    settings: Settings,
    user_count: int,
    messages: int,
    seed: int,
    mbox: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Run the main job end to end on the local stack and print a summary."""
    summary = run_main_job(
        settings,
        user_count=user_count,
        messages=messages,
        seed=seed,
        mbox=mbox,
        timeout=timeout,
        # Progress bars redraw with cursor codes: only on a terminal, never into a log file.
        console=Console(stderr=True) if not as_json and sys.stderr.isatty() else None,
    )
    if as_json:
        click.echo(json.dumps(asdict(summary)))
    else:
        print_summary(summary)
    if not summary.complete:
        raise SystemExit(1)


def print_summary(summary: RunSummary) -> None:
    """Print the summary in plain words."""
    state = "complete" if summary.complete else "INCOMPLETE (timed out)"
    click.echo(f"\ninboxflow run {state} in {summary.elapsed_seconds:.1f}s")
    click.echo(f"  users: {len(summary.users)}, messages in mailboxes: {summary.mailbox_messages}")
    click.echo("  records per stage: " + _pairs(summary.records_per_stage))
    click.echo("  job rows by status: " + _pairs(summary.jobs_by_status))
    click.echo(
        f"  Gmail quota units: {summary.gmail_units} "
        f"({_pairs(summary.gmail_calls)}), throttled responses: {summary.gmail_throttled}"
    )
    click.echo("  dead-letter records: " + _pairs(summary.dlq_records))
    click.echo(f"  topics: {summary.namespace}.*  logs: {summary.logs}")


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "none"
