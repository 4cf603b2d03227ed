"""The sync agent obeys the accounts table: only active accounts are listed, outcomes are noted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from db import accounts
from db.accounts import AccountState, SyncOutcome
from db.agent_state import AgentState
from devstack.gmail_emulator import GmailEmulator
from schemas.models import SyncRequested
from schemas.serde import encode, serde_for
from streams.runtime.stage import Record
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.sync import SyncStage

USER = "accounts@inboxflow.test"


@pytest.fixture
def gmail(gmail_emulator: GmailEmulator) -> Iterator[GmailClient]:
    client = GmailClient(GmailClientConfig(api_root=gmail_emulator.url))
    yield client
    client.close()


@pytest.fixture
async def stage(database_url: str, gmail: GmailClient) -> Any:
    state = AgentState(database_url)
    yield SyncStage(
        serde=serde_for(None),
        gmail=gmail,
        state=state,
        discovered_topic="discovered",
        deadline_for=lambda _messages: 60.0,
    )
    await state.close()


def request(user: str, offset: int = 0) -> Record:
    event = SyncRequested(
        user_id=user, sync_id=f"s-{offset}", full=False, requested_at=datetime.now(UTC)
    )
    return Record("requests", 0, offset, 0, user.encode(), encode(event))


async def account(database_url: str) -> accounts.Account:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await accounts.get_account(conn, USER)


async def set_up(database_url: str, state: AccountState | None) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        if state is not None:
            await accounts.add_account(conn, USER)
            await accounts.set_state(conn, USER, state)


@pytest.mark.parametrize("state", [None, AccountState.PAUSED, AccountState.REVOKED])
async def test_a_request_for_an_account_that_is_not_active_is_skipped_without_calling_gmail(
    stage: SyncStage, gmail_emulator: GmailEmulator, database_url: str, state: AccountState | None
) -> None:
    gmail_emulator.add_user(USER, messages=5, seed=1)
    await set_up(database_url, state)

    [outcome] = await stage.process([request(USER)])

    assert outcome.error is None
    assert outcome.outputs == []
    assert "skipped" in (outcome.note or "")
    assert gmail_emulator.accounting.calls_by_method == {}
    if state is not None:
        assert (await account(database_url)).last_sync_outcome is SyncOutcome.SKIPPED


async def test_an_active_account_is_listed_and_its_outcome_noted_once_published(
    stage: SyncStage, gmail_emulator: GmailEmulator, database_url: str
) -> None:
    gmail_emulator.add_user(USER, messages=5, seed=2)
    await set_up(database_url, AccountState.ACTIVE)

    [outcome] = await stage.process([request(USER)])

    assert len(outcome.outputs) == 5
    assert (await account(database_url)).last_sync_outcome is None  # not before Kafka acked
    assert outcome.after_publish is not None
    await outcome.after_publish()
    noted = await account(database_url)
    assert noted.last_sync_outcome is SyncOutcome.OK
    assert noted.history_id is not None
