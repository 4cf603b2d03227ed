"""Both cost tables, charged by the emulator and budgeted by the client."""

from __future__ import annotations

import pytest

from devstack.gmail_emulator import QuotaConfig
from streams.stages.gmail.client import FetchNeed, GmailClient, GmailClientConfig
from tests.integration.conftest import EmulatorFactory

USER = "costs@inboxflow.test"


@pytest.mark.parametrize(
    ("table", "get_cost", "thread_cost"), [("2026", 20, 40), ("legacy", 5, 10)]
)
async def test_units_follow_the_cost_table(
    gmail_emulator_factory: EmulatorFactory, table: str, get_cost: int, thread_cost: int
) -> None:
    emu = gmail_emulator_factory(quota=QuotaConfig(table=table))  # type: ignore[arg-type]
    emu.add_user(USER, messages=60, seed=8)
    client = GmailClient(GmailClientConfig(api_root=emu.url, cost_table=table))  # type: ignore[arg-type]
    try:
        await client.get_profile(USER)
        refs = await client.list_all_message_ids(USER, include_spam_trash=True)
        emu.reset_accounting()
        outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.MIME)
    finally:
        client.close()
    seen = emu.accounting
    calls = seen.calls_by_method
    expected = (
        calls.get("users.messages.get", 0) * get_cost
        + calls.get("users.threads.get", 0) * thread_cost
    )
    assert seen.units == expected
    assert len(outcomes) == 60
    assert seen.units < 60 * get_cost  # threads.get paid off
    assert client.limiter(USER).rate == pytest.approx(
        {"2026": 6000, "legacy": 15000}[table] / 60 * 0.98
    )
