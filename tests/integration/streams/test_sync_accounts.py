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
from devstack.gmail_emulator.mailbox import ListQuery
from schemas.models import (
    DeletionReason,
    MessageDeleted,
    MessageDiscovered,
    MessageLabelsChanged,
    SyncRequested,
)
from schemas.serde import decode, encode, serde_for
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
        requests_topic="requests",
        discovered_topic="discovered",
        deleted_topic="deleted",
        labels_topic="labels",
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


# --- what a sync reports besides new mail ---------------------------------------------------


def mail(subject: str) -> bytes:
    return f"From: a@example.com\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()


async def sync_once(stage: SyncStage, offset: int, *, full: bool = False) -> list[Any]:
    """Run one sync through the stage as the agent would: publish, checkpoint, and consume the
    continuation records it writes to its own topic until the listing ends; return the events."""
    event = SyncRequested(
        user_id=USER, sync_id=f"s-{offset}", full=full, requested_at=datetime.now(UTC)
    )
    pending = [Record("requests", 0, offset, 0, USER.encode(), encode(event))]
    models = {
        "discovered": MessageDiscovered,
        "deleted": MessageDeleted,
        "labels": MessageLabelsChanged,
    }
    events: list[Any] = []
    while pending:
        [outcome] = await stage.process([pending.pop(0)])
        assert outcome.error is None, outcome.error
        if outcome.after_publish is not None:
            await outcome.after_publish()
        for out in outcome.outputs:
            if out.topic == "requests":
                pending.append(Record("requests", 0, offset, 0, out.key, out.value))
            else:
                events.append(decode(out.value, models[out.topic]))
    return events


def of(events: list[Any], model: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, model)]


async def test_incremental_sync_reports_deletions_and_label_changes_and_skips_spam(
    stage: SyncStage, gmail_emulator: GmailEmulator, database_url: str
) -> None:
    gmail_emulator.add_user(USER, messages=4, seed=3)
    await set_up(database_url, AccountState.ACTIVE)
    first = await sync_once(stage, 0)
    known = [e.message_id for e in of(first, MessageDiscovered)]
    assert len(known) == len(gmail_emulator.mailbox(USER).list(ListQuery()))

    gmail_emulator.delete_message(USER, known[0])
    gmail_emulator.modify_labels(USER, known[1], add=["STARRED"], remove=["UNREAD"])
    spam = gmail_emulator.add_message(USER, mail("win"), label_ids=["SPAM"])
    new = gmail_emulator.add_message(USER, mail("hello"))
    events = await sync_once(stage, 1)

    assert [e.message_id for e in of(events, MessageDiscovered)] == [new]  # not the spam
    [deleted] = of(events, MessageDeleted)
    assert (deleted.message_id, deleted.reason) == (known[0], DeletionReason.DELETED)
    [relabelled] = of(events, MessageLabelsChanged)
    assert relabelled.message_id == known[1]
    expected = set(gmail_emulator.mailbox(USER).messages[known[1]].label_ids)
    assert set(relabelled.label_ids) == expected
    assert "STARRED" in expected

    # The spam is moved to the inbox: now it passes the filter and is discovered.
    gmail_emulator.modify_labels(USER, spam, add=["INBOX"], remove=["SPAM"])
    later = await sync_once(stage, 2)
    assert [e.message_id for e in of(later, MessageDiscovered)] == [spam]


async def test_a_full_sync_leaves_out_the_accounts_skipped_labels(
    stage: SyncStage, gmail_emulator: GmailEmulator, database_url: str
) -> None:
    gmail_emulator.add_user(USER, messages=0, seed=4)
    promo = gmail_emulator.add_message(
        USER, mail("sale"), label_ids=["INBOX", "CATEGORY_PROMOTIONS"]
    )
    kept = gmail_emulator.add_message(USER, mail("note"))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await accounts.add_account(
            conn, USER, label_filter=["SPAM", "TRASH", "CATEGORY_PROMOTIONS"]
        )
    events = await sync_once(stage, 0, full=True)
    assert [e.message_id for e in of(events, MessageDiscovered)] == [kept]
    assert promo not in {e.message_id for e in events}


async def test_a_stale_history_reconciles_deletions_once(
    stage: SyncStage, gmail_emulator: GmailEmulator, database_url: str
) -> None:
    gmail_emulator.add_user(USER, messages=6, seed=5)
    await set_up(database_url, AccountState.ACTIVE)
    known = [e.message_id for e in of(await sync_once(stage, 0), MessageDiscovered)]
    trashed, gone = known[0], known[1:3]
    gmail_emulator.modify_labels(USER, trashed, add=["TRASH"], remove=["INBOX"])
    for message_id in gone:
        gmail_emulator.delete_message(USER, message_id)
    gmail_emulator.expire_history(USER)  # the next incremental sync gets 404

    events = await sync_once(stage, 1)

    deleted = of(events, MessageDeleted)
    assert sorted(e.message_id for e in deleted) == sorted(gone)  # trashed is not deleted
    assert {e.reason for e in deleted} == {DeletionReason.RECONCILED}
    assert of(events, MessageDiscovered) == []
    gmail_emulator.expire_history(USER)
    again = await sync_once(stage, 2)
    assert of(again, MessageDeleted) == []  # reported once, then forgotten


async def run(stage: SyncStage, request: SyncRequested) -> Any:
    [outcome] = await stage.process([Record("requests", 0, 0, 0, USER.encode(), encode(request))])
    assert outcome.error is None, outcome.error
    return outcome


def continuation(outcome: Any) -> SyncRequested | None:
    found = [decode(o.value, SyncRequested) for o in outcome.outputs if o.topic == "requests"]
    return found[0] if found else None


async def test_a_full_sync_goes_one_page_per_record_and_resumes_without_re_emitting(
    stage: SyncStage, gmail_emulator: GmailEmulator, database_url: str
) -> None:
    gmail_emulator.add_user(USER, messages=1100, seed=6)
    await set_up(database_url, AccountState.ACTIVE)
    listed = {m.id for m in gmail_emulator.mailbox(USER).list(ListQuery())}
    request = SyncRequested(user_id=USER, sync_id="big", full=True, requested_at=datetime.now(UTC))

    first = await run(stage, request)
    page = [o for o in first.outputs if o.topic == "discovered"]
    follow = continuation(first)
    assert len(page) == 500  # one messages.list page, not the mailbox
    assert follow is not None
    assert follow.page_token is not None
    assert not first.finishes_job  # the sync job is done only when the listing is
    await first.after_publish()

    # The worker dies after the page was acknowledged; the request is delivered again.
    again = await run(stage, request)
    assert [o for o in again.outputs if o.topic == "discovered"] == []
    emitted = {decode(o.value, MessageDiscovered).message_id for o in page}
    while follow is not None:
        outcome = await run(stage, follow)
        emitted |= {
            decode(o.value, MessageDiscovered).message_id
            for o in outcome.outputs
            if o.topic == "discovered"
        }
        await outcome.after_publish()
        follow = continuation(outcome)
    assert emitted == listed
    assert outcome.finishes_job
    checkpoint = await stage.state.sync_checkpoint(USER)
    assert checkpoint is not None


async def test_reemit_sends_known_ids_again_and_a_label_backfill_keeps_the_cursor(
    stage: SyncStage, gmail_emulator: GmailEmulator, database_url: str
) -> None:
    gmail_emulator.add_user(USER, messages=0, seed=7)
    plain = gmail_emulator.add_message(USER, mail("plain"))
    starred = gmail_emulator.add_message(USER, mail("starred"), label_ids=["INBOX", "STARRED"])
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await accounts.add_account(conn, USER, label_filter=["SPAM", "TRASH", "STARRED"])
    first = await sync_once(stage, 0)
    assert [e.message_id for e in of(first, MessageDiscovered)] == [plain]
    cursor = (await stage.state.sync_checkpoint(USER)).history_id

    backfill = SyncRequested(
        user_id=USER,
        sync_id="label",
        full=True,
        label_ids=["STARRED"],
        requested_at=datetime.now(UTC),
    )
    outcome = await run(stage, backfill)
    await outcome.after_publish()
    assert [decode(o.value, MessageDiscovered).message_id for o in outcome.outputs] == [starred]
    assert (await stage.state.sync_checkpoint(USER)).history_id == cursor

    reemit = SyncRequested(
        user_id=USER, sync_id="again", full=True, reemit=True, requested_at=datetime.now(UTC)
    )
    outcome = await run(stage, reemit)
    assert [decode(o.value, MessageDiscovered).message_id for o in outcome.outputs] == [plain]
