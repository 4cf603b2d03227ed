"""Throttling with a scaled-down per-user ceiling: the real limiter against the real emulator."""

from __future__ import annotations

from devstack.gmail_emulator import FaultConfig, QuotaConfig
from streams.stages.gmail.client import FetchNeed, GmailClient, GmailClientConfig
from tests.integration.conftest import EmulatorFactory

USER = "quota@inboxflow.test"
WINDOW = 1.0  # a "minute" of one second
UNITS = 1000  # per user per window: 50 messages.get per second in the 2026 table


async def test_sustained_sync_runs_near_the_ceiling_without_early_requests(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    quota = QuotaConfig(window_seconds=WINDOW, user_units_per_window=UNITS)
    emu = gmail_emulator_factory(quota=quota)
    emu.add_user(USER, messages=220, seed=3)
    config = GmailClientConfig(api_root=emu.url, window_seconds=WINDOW, user_units_per_window=UNITS)
    client = GmailClient(config)
    try:
        refs = await client.list_all_message_ids(USER, include_spam_trash=True)
        outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.RAW)
    finally:
        client.close()
    seen = emu.accounting
    assert len(outcomes) == 220
    assert seen.early_requests == 0
    steady = seen.steady_units_per_second(USER, skip_seconds=WINDOW)
    assert steady >= 0.95 * quota.user_units_per_second, steady
    assert steady <= 1.05 * quota.user_units_per_second, steady
    assert seen.throttled_total <= 2


async def test_retry_after_times_are_honoured(gmail_emulator_factory: EmulatorFactory) -> None:
    quota = QuotaConfig(window_seconds=WINDOW, user_units_per_window=4000, early_grace_seconds=0.1)
    emu = gmail_emulator_factory(quota=quota)
    emu.add_user(USER, messages=150, seed=4)
    config = GmailClientConfig(api_root=emu.url, window_seconds=WINDOW, user_units_per_window=4000)
    client = GmailClient(config)
    try:
        refs = await client.list_all_message_ids(USER, include_spam_trash=True)
        emu.set_faults(FaultConfig(rate_429=0.02, throttle_seconds=0.3, seed=5))
        outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.RAW)
    finally:
        client.close()
    seen = emu.accounting
    assert len(outcomes) == 150
    assert seen.throttled.get("injected", 0) >= 2
    assert seen.early_requests == 0


async def test_client_slower_than_believed_ceiling_obeys_google(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    # The client believes in twice the real ceiling: it is throttled and must wait as told.
    quota = QuotaConfig(window_seconds=WINDOW, user_units_per_window=UNITS, retry_after_header=True)
    emu = gmail_emulator_factory(quota=quota)
    emu.add_user(USER, messages=80, seed=6)
    config = GmailClientConfig(
        api_root=emu.url, window_seconds=WINDOW, user_units_per_window=2 * UNITS
    )
    client = GmailClient(config)
    try:
        refs = await client.list_all_message_ids(USER, include_spam_trash=True)
        outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.RAW)
    finally:
        client.close()
    seen = emu.accounting
    assert len(outcomes) == 80
    assert seen.throttled.get("user", 0) >= 1
    assert seen.early_requests == 0


async def test_concurrency_adapts_down_to_the_users_limit(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    quota = QuotaConfig(user_concurrency=10)
    emu = gmail_emulator_factory(quota=quota, faults=FaultConfig(latency_ms=5))
    emu.add_user(USER, messages=60, seed=7)
    client = GmailClient(GmailClientConfig(api_root=emu.url, max_concurrency=40))
    try:
        refs = await client.list_all_message_ids(USER, include_spam_trash=True)
        outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.RAW)
        limiter = client.limiter(USER)
    finally:
        client.close()
    assert len(outcomes) == 60
    assert emu.accounting.throttled["concurrency"] > 0
    assert limiter.concurrency <= 20  # halved from 40 at least once
