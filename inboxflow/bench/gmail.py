"""``inboxflow bench gmail``: quota efficiency and units per message, planner vs naive, one run.

Starts an in-process emulator with a time-scaled quota (``--scale 30`` turns a minute into 2 s),
syncs one mailbox with the planner, then fetches a sample of the same mailbox one
``messages.get`` per message, and reads both from the emulator's accounting.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from devstack.gmail_emulator import GmailEmulator, QuotaConfig
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.gmail.planner import FetchNeed, MessageRef

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
