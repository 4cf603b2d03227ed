"""``inboxflow bench gmail``: quota efficiency and units per message, planner vs naive, one run.

Starts an in-process emulator with a time-scaled quota (``--scale 30`` turns a minute into 2 s),
syncs one mailbox with the planner, then fetches a sample of the same mailbox one
``messages.get`` per message, and reads both from the emulator's accounting.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

import click

from devstack.gmail_emulator import GmailEmulator, QuotaConfig
from streams.gmail.client import GmailClient, GmailClientConfig
from streams.gmail.planner import FetchNeed, MessageRef

USER = "bench@inboxflow.test"


async def run_bench(
    messages: int,
    seed: int,
    table: Literal["2026", "legacy"],
    scale: float,
    need: FetchNeed,
    naive_sample: int,
) -> dict[str, Any]:
    """Run both fetchers against one emulator and return the figures."""
    window = 60.0 / scale
    quota = QuotaConfig(table=table, window_seconds=window)
    async with GmailEmulator(quota=quota) as emu:
        emu.add_user(USER, messages=messages, seed=seed)
        config = GmailClientConfig(api_root=emu.url, cost_table=table, window_seconds=window)
        client = GmailClient(config)
        try:
            refs = await client.list_all_message_ids(USER, include_spam_trash=True)
            emu.reset_accounting()
            started = time.monotonic()
            outcomes = await client.fetch_messages(USER, refs, need=need)
            elapsed = time.monotonic() - started
            ours = emu.accounting
            emu.set_quota(quota)  # fresh buckets for the naive phase
            emu.reset_accounting()
            sample = refs[:naive_sample]
            for ref in sample:  # naive: one messages.get per message, one at a time
                await client.fetch_messages(USER, [MessageRef(ref.id)], need=FetchNeed.RAW)
            naive = emu.accounting
        finally:
            client.close()
    ceiling = quota.user_units_per_second
    steady = ours.steady_units_per_second(USER, skip_seconds=window)
    return {
        "messages": len(outcomes),
        "need": str(need),
        "quota_table": table,
        "ceiling_units_per_second": ceiling,
        "elapsed_seconds": round(elapsed, 3),
        "units": ours.units,
        "quota_efficiency": round(steady / ceiling, 4),
        # Efficiency means something only when the run outlasts the free initial burst.
        "quota_bound": ours.units >= 3 * quota.user_budget,
        "throttled_rate": round(ours.throttled_total / max(1, ours.requests), 4),
        "early_requests": ours.early_requests,
        "messages_per_unit": round(len(outcomes) / max(1, ours.units), 5),
        "naive_messages": len(sample),
        "naive_messages_per_unit": round(len(sample) / max(1, naive.units), 5),
        "calls_by_method": ours.calls_by_method,
    }


@click.command("gmail")
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
