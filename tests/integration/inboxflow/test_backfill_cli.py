"""``inboxflow backfill --dry-run`` against a real Postgres and the Gmail emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from devstack.gmail_emulator.server import GmailEmulator
from inboxflow.cli import cli


@pytest.fixture(scope="module")
def emulator() -> Iterator[GmailEmulator]:
    gmail = GmailEmulator().start_in_thread()
    try:
        yield gmail
    finally:
        gmail.stop_thread()


def run(database_url: str, emulator: GmailEmulator, *args: str) -> Result:
    env = {"DATABASE_URL": database_url, "INBOXFLOW_GMAIL_API_ROOT": emulator.url}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_dry_run_prices_each_mailbox_from_its_profile(
    database_url: str, emulator: GmailEmulator
) -> None:
    emulator.add_user("big@x.test", messages=1_001, seed=1)
    emulator.add_user("small@x.test", messages=3, seed=2)
    added = run(database_url, emulator, "accounts", "add", "big@x.test", "small@x.test")
    assert added.exit_code == 0, added.output
    before = emulator.accounting.calls_by_method

    result = run(database_url, emulator, "backfill", "--all", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["quota_share"] == 0.5
    by_user = {u["user_id"]: u for u in document["users"]}
    big = by_user["big@x.test"]
    messages = big["messages"]  # the profile's messagesTotal: spam and trash included
    assert messages == 1_001
    assert big["list_calls"] == 3
    assert big["units"] == 1 + 3 * 5 + messages * 20
    assert big["seconds"] == pytest.approx(big["units"] / 3_000 * 60)
    assert document["total"]["messages"] == messages + by_user["small@x.test"]["messages"]
    # A dry run asks for the profiles and nothing else.
    after = emulator.accounting.calls_by_method
    assert after.get("users.getProfile", 0) - before.get("users.getProfile", 0) == 2
    assert after.get("users.messages.get", 0) == before.get("users.messages.get", 0)

    text = run(database_url, emulator, "backfill", "big@x.test", "--dry-run")
    assert text.exit_code == 0, text.output
    assert "big@x.test: 1001 messages, 20036 units" in text.output
    assert "total: 1001 messages" in text.output


def test_backfill_needs_users_or_all_and_refuses_unknown_accounts(
    database_url: str, emulator: GmailEmulator
) -> None:
    assert run(database_url, emulator, "backfill").exit_code == 2
    assert run(database_url, emulator, "backfill", "a@x.test", "--all").exit_code == 2
    unknown = run(database_url, emulator, "backfill", "nobody@x.test", "--dry-run")
    assert unknown.exit_code == 1
    assert "not a registered account" in unknown.output
