"""``inboxflow accounts`` and ``inboxflow sync`` against a real Postgres."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from inboxflow.cli import cli


def run(database_url: str, *args: str) -> Any:
    runner = CliRunner()
    result = runner.invoke(
        cli, list(args), env={"DATABASE_URL": database_url}, catch_exceptions=False
    )
    return result


def test_accounts_lifecycle_in_json(database_url: str) -> None:
    added = run(
        database_url, "accounts", "add", "A@x.test", "b@x.test", "--skip-label", "SPAM", "--json"
    )
    assert added.exit_code == 0, added.output
    assert [(a["user_id"], a["new"], a["label_filter"]) for a in json.loads(added.output)] == [
        ("a@x.test", True, ["SPAM"]),
        ("b@x.test", True, ["SPAM"]),
    ]
    assert "already registered a@x.test" in run(database_url, "accounts", "add", "a@x.test").output

    paused = json.loads(run(database_url, "accounts", "pause", "a@x.test", "--json").output)
    assert [a["state"] for a in paused] == ["paused"]
    listed = json.loads(run(database_url, "accounts", "list", "--json").output)
    assert [(a["user_id"], a["state"]) for a in listed] == [
        ("a@x.test", "paused"),
        ("b@x.test", "active"),
    ]
    assert "a@x.test is active" in run(database_url, "accounts", "resume", "a@x.test").output

    removed = json.loads(
        run(database_url, "accounts", "remove", "a@x.test", "--purge", "--json").output
    )
    assert removed["a@x.test"]["accounts"] == 1
    listed = json.loads(run(database_url, "accounts", "list", "--json").output)
    assert [a["user_id"] for a in listed] == ["b@x.test"]


def test_unknown_accounts_and_bad_addresses_get_a_clear_error(database_url: str) -> None:
    missing = run(database_url, "accounts", "pause", "nobody@x.test")
    assert missing.exit_code == 1
    assert "no account 'nobody@x.test'" in missing.output
    bad = run(database_url, "accounts", "add", "not-an-address")
    assert bad.exit_code == 2
    assert "not an email address" in bad.output


def test_sync_refuses_an_account_that_is_not_registered_or_not_active(database_url: str) -> None:
    unknown = run(database_url, "sync", "nobody@x.test")
    assert unknown.exit_code == 1
    assert "not a registered account" in unknown.output
    run(database_url, "accounts", "add", "p@x.test")
    run(database_url, "accounts", "pause", "p@x.test")
    paused = run(database_url, "sync", "p@x.test")
    assert paused.exit_code == 1
    assert "p@x.test is paused" in paused.output


def test_reemit_needs_a_full_sync(database_url: str) -> None:
    run(database_url, "accounts", "add", "r@x.test")
    refused = run(database_url, "sync", "r@x.test", "--reemit")
    assert refused.exit_code == 2
    assert "--reemit needs --full" in refused.output
