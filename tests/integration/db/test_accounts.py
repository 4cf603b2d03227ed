"""The accounts table on a real Postgres: registration, states, removal, what is due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from db import accounts
from db.accounts import AccountNotFoundError, AccountState, SyncOutcome

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def conn(database_url: str) -> Any:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as connection:
        yield connection


async def test_adding_twice_registers_once_under_the_lower_cased_address(conn: Any) -> None:
    first, new = await accounts.add_account(conn, " Alice@Example.org ")
    again, new_again = await accounts.add_account(conn, "alice@example.org")
    assert (first.user_id, new, new_again) == ("alice@example.org", True, False)
    assert again == first
    assert first.state is AccountState.ACTIVE
    assert first.label_filter == ("SPAM", "TRASH")
    assert [a.user_id for a in await accounts.list_accounts(conn)] == ["alice@example.org"]


async def test_not_an_address_is_refused(conn: Any) -> None:
    with pytest.raises(ValueError, match="not an email address"):
        await accounts.add_account(conn, "alice")


async def test_pause_and_resume_move_the_state_and_unknown_accounts_are_named(conn: Any) -> None:
    await accounts.add_account(conn, "bob@example.org")
    paused = await accounts.set_state(conn, "bob@example.org", AccountState.PAUSED)
    assert paused.state is AccountState.PAUSED
    resumed = await accounts.set_state(conn, "BOB@example.org", AccountState.ACTIVE)
    assert resumed.state is AccountState.ACTIVE
    with pytest.raises(AccountNotFoundError, match="accounts add carol@"):
        await accounts.set_state(conn, "carol@example.org", AccountState.PAUSED)


async def test_only_active_accounts_not_asked_for_lately_are_due(conn: Any) -> None:
    for user in ("new@x.test", "fresh@x.test", "stale@x.test", "paused@x.test"):
        await accounts.add_account(conn, user)
    await accounts.mark_sync_requested(conn, ["fresh@x.test"], NOW - timedelta(minutes=1))
    await accounts.mark_sync_requested(conn, ["stale@x.test"], NOW - timedelta(hours=1))
    await accounts.set_state(conn, "paused@x.test", AccountState.PAUSED)

    due = await accounts.due_accounts(conn, stale_before=NOW - timedelta(minutes=15), limit=10)
    assert due == ["new@x.test", "stale@x.test"]  # never asked for first
    assert await accounts.due_accounts(conn, stale_before=NOW, limit=1) == ["new@x.test"]


async def test_marking_never_moves_the_request_time_back(conn: Any) -> None:
    await accounts.add_account(conn, "u@x.test")
    await accounts.mark_sync_requested(conn, ["u@x.test"], NOW)
    await accounts.mark_sync_requested(conn, ["u@x.test"], NOW - timedelta(hours=1))
    assert (await accounts.get_account(conn, "u@x.test")).last_sync_requested_at == NOW


async def test_sync_outcome_and_checkpoint_show_on_the_account(conn: Any) -> None:
    await accounts.add_account(conn, "u@x.test")
    await accounts.record_sync_outcome(conn, "u@x.test", SyncOutcome.FAILED, NOW, "429 quota")
    await conn.execute(
        "INSERT INTO sync_state (user_id, history_id, last_sync_id) VALUES ('u@x.test', 42, 's')"
    )
    account = await accounts.get_account(conn, "u@x.test")
    assert (account.last_sync_outcome, account.last_sync_error) == (SyncOutcome.FAILED, "429 quota")
    assert (account.history_id, account.last_synced_at) == ("42", NOW)
    assert account.to_json()["last_synced_at"] == NOW.isoformat()


async def test_remove_keeps_data_and_purge_deletes_the_users_rows_everywhere(conn: Any) -> None:
    for user in ("gone@x.test", "kept@x.test", "purged@x.test"):
        await accounts.add_account(conn, user)
        await conn.execute(
            "INSERT INTO sync_state (user_id, history_id, last_sync_id) VALUES (%s, 1, 's')",
            (user,),
        )
        await conn.execute(
            "INSERT INTO emails (user_id, message_id, thread_id, normalized_at)"
            " VALUES (%s, 'm1', 't1', now())",
            (user,),
        )

    removed = await accounts.remove_account(conn, "gone@x.test", purge=False)
    purged = await accounts.remove_account(conn, "purged@x.test", purge=True)

    assert removed == {"accounts": 1}
    assert set(purged) == set(accounts.USER_TABLES)
    assert {t: purged[t] for t in ("accounts", "emails", "sync_state")} == dict.fromkeys(
        ("accounts", "emails", "sync_state"), 1
    )
    cursor = await conn.execute("SELECT user_id FROM emails ORDER BY user_id")
    assert [row[0] for row in await cursor.fetchall()] == ["gone@x.test", "kept@x.test"]
    assert [a.user_id for a in await accounts.list_accounts(conn)] == ["kept@x.test"]
    with pytest.raises(AccountNotFoundError):
        await accounts.remove_account(conn, "gone@x.test", purge=True)


async def test_purge_knows_every_table_that_holds_a_users_rows(conn: Any) -> None:
    """A new table with a user_id column (say, stored vectors) must be purged too."""
    cursor = await conn.execute(
        "SELECT table_name FROM information_schema.columns"
        " WHERE column_name = 'user_id' AND table_schema = 'public'"
    )
    with_users = {row[0] for row in await cursor.fetchall()}
    assert with_users == set(accounts.USER_TABLES)
