"""A full listing holds one page, not the mailbox: memory flat in the mailbox's size.

The listing runs through the sync stage as the agent would (each continuation record processed
in turn) against the emulator over HTTP, with tracemalloc measuring the peak of what the listing
allocates beyond the mailbox itself. Holding every id would cost about 200 bytes an id.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from db import accounts
from db.agent_state import AgentState
from devstack.gmail_emulator import GmailEmulator
from devstack.gmail_emulator.mailbox import ListQuery
from schemas.models import SyncRequested
from schemas.serde import encode, serde_for
from streams.runtime.stage import Record
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.sync import SyncStage

RAW = b"From: a@example.com\r\nSubject: x\r\n\r\nx\r\n"


@pytest.fixture
def gmail(gmail_emulator: GmailEmulator) -> Iterator[GmailClient]:
    # A quota ceiling that does not pace a listing of thousands of pages.
    client = GmailClient(
        GmailClientConfig(api_root=gmail_emulator.url, user_units_per_window=10**9)
    )
    yield client
    client.close()


async def listing_peak(
    emulator: GmailEmulator, gmail: GmailClient, database_url: str, user: str, size: int
) -> tuple[int, int]:
    """Return (ids emitted, peak bytes allocated while listing a mailbox of ``size`` ids)."""
    emulator.add_user(user)
    with emulator.state.lock:
        box = emulator.mailbox(user)
        for _ in range(size):
            box.add(RAW)
        # The emulator sorts its listing and counts threads once, outside the measurement.
        box.list(ListQuery())
        box.threads_total()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await accounts.add_account(conn, user)
    state = AgentState(database_url)
    stage = SyncStage(
        serde=serde_for(None),
        gmail=gmail,
        state=state,
        requests_topic="requests",
        discovered_topic="discovered",
        deleted_topic="deleted",
        labels_topic="labels",
        deadline_for=lambda _messages: 120.0,
    )
    request = SyncRequested(user_id=user, sync_id="s", full=True, requested_at=datetime.now(UTC))
    pending = [encode(request)]
    emitted = 0
    gc.collect()
    tracemalloc.start()
    try:
        while pending:
            value = pending.pop()
            [outcome] = await stage.process([Record("requests", 0, 0, 0, user.encode(), value)])
            assert outcome.error is None, outcome.error
            emitted += sum(1 for out in outcome.outputs if out.topic == "discovered")
            pending += [out.value for out in outcome.outputs if out.topic == "requests"]
            await outcome.after_publish()
            del outcome
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await state.close()
    return emitted, peak


async def test_a_listing_of_25_times_the_ids_peaks_at_about_the_same_memory(
    gmail_emulator: GmailEmulator, gmail: GmailClient, database_url: str
) -> None:
    small_ids, small = await listing_peak(gmail_emulator, gmail, database_url, "s@x.test", 2_000)
    large_ids, large = await listing_peak(gmail_emulator, gmail, database_url, "l@x.test", 50_000)
    assert (small_ids, large_ids) == (2_000, 50_000)
    # 48,000 more ids held at once would add about 10 MB; one page at a time adds nothing.
    print(f"listing peaks: 2,000 ids {small:,} B; 50,000 ids {large:,} B")
    assert large - small < 512 * 1024, (small, large)


@pytest.mark.benchmark
async def test_listing_memory_from_ten_thousand_to_a_million_ids(
    gmail_emulator: GmailEmulator, gmail: GmailClient, database_url: str
) -> None:
    figures: dict[int, Any] = {}
    for size in (10_000, 1_000_000):
        figures[size] = await listing_peak(
            gmail_emulator, gmail, database_url, f"m{size}@x.test", size
        )
    for ids, peak in figures.values():
        print(f"full listing of {ids:>9,} ids: peak {peak / 2**20:6.1f} MiB allocated")
