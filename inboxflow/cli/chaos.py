"""``inboxflow chaos``: a seeded fault campaign on a throwaway stack, then the invariant check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from inboxflow.chaos.campaign import CampaignConfig, CampaignReport, run_campaign
from inboxflow.chaos.plan import FaultKind
from inboxflow.settings import Settings


@click.command()
@click.option("--seed", default=1, show_default=True, help="Seed of the faults and workload.")
@click.option("--users", default=3, show_default=True, help="Mailboxes.")
@click.option("--messages", default=40, show_default=True, help="Messages per mailbox.")
@click.option("--new-mail", default=30, show_default=True, help="Messages delivered mid-run.")
@click.option("--faults", default=24, show_default=True, help="Faults to inject.")
@click.option("--window", default=90.0, show_default=True, help="Seconds faults start within.")
@click.option("--settle-timeout", default=600.0, show_default=True, help="Seconds to drain.")
@click.option(
    "--only",
    "kinds",
    multiple=True,
    type=click.Choice([kind.value for kind in FaultKind]),
    help="Inject only these kinds (repeatable); default: every kind.",
)
@click.option("--keep-logs", is_flag=True, help="Keep the workers' logs even on success.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def chaos(
    settings: Settings,
    seed: int,
    users: int,
    messages: int,
    new_mail: int,
    faults: int,
    window: float,
    settle_timeout: float,
    kinds: tuple[str, ...],
    keep_logs: bool,
    as_json: bool,
) -> None:
    """Run a mailbox workload through every worker while injecting seeded faults; check it.

    Starts its own Kafka, Postgres and API emulators (it kills and pauses them); never touches
    the configured services. Exits 1 when an invariant did not hold.
    """
    config = CampaignConfig(
        seed=seed,
        users=users,
        messages=messages,
        new_mail=new_mail,
        faults=faults,
        window=window,
        settle_timeout=settle_timeout,
        kinds=frozenset(FaultKind(kind) for kind in kinds) or frozenset(FaultKind),
        keep_logs=keep_logs,
    )
    echo = None if as_json else (lambda line: click.echo(f"chaos: {line}", err=True))
    report = run_campaign(config, Path(settings.state_dir).expanduser(), echo=echo)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report)
    if report.violations:
        sys.exit(1)


def _print(report: CampaignReport) -> None:
    findings = report.findings
    injected = ", ".join(f"{kind} {n}" for kind, n in sorted(report.faults_injected.items()))
    click.echo(f"seed {report.seed}: {injected}")
    click.echo(
        f"messages {report.messages} ({report.new_mail} delivered mid-run), "
        f"bombs {report.bombs}, poison records {report.poison}"
    )
    exits = ", ".join(f"{name} {n}" for name, n in report.worker_exits.items()) or "none"
    click.echo(f"workers that exited on their own (restarted): {exits}")
    click.echo(f"duplicates delivered on topics: {findings['duplicates']}")
    click.echo(f"dead letters: {findings['dead_letters']}")
    click.echo(
        f"settled in {report.settle_seconds:.0f}s after the faults; "
        f"{report.elapsed_seconds:.0f}s in all"
    )
    violations = report.violations
    click.echo(f"violations: {len(violations)}")
    for line in violations:
        click.echo(f"  {line}")
    if report.logs:
        click.echo(f"worker logs: {report.logs}")
