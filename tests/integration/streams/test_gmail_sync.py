"""Full and incremental sync over real HTTP against the emulator."""

from __future__ import annotations

import pytest

from devstack.gmail_emulator import GmailEmulator
from schemas.errors import StaleHistoryError
from streams.stages.gmail.client import FetchNeed, GmailClient, GmailClientConfig, MessageGone

USER = "sync@inboxflow.test"
NEW_MAIL = b"From: a@example.com\r\nTo: sync@inboxflow.test\r\nSubject: new\r\n\r\nhello\r\n"


@pytest.fixture
def client(gmail_emulator: GmailEmulator) -> GmailClient:
    gmail = GmailClient(GmailClientConfig(api_root=gmail_emulator.url))
    yield gmail
    gmail.close()


async def test_full_sync_pages_through_every_message(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=230, seed=1)
    pages = [
        page async for page in client.list_message_ids(USER, page_size=100, include_spam_trash=True)
    ]
    assert [len(p) for p in pages] == [100, 100, 30]
    ids = [ref.id for page in pages for ref in page]
    assert sorted(ids) == sorted(gmail_emulator.message_ids(USER))
    assert gmail_emulator.accounting.calls_by_method["users.messages.list"] == 3


async def test_list_filters_by_label_and_date(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=120, seed=2)
    box = gmail_emulator.mailbox(USER)
    inbox = await client.list_all_message_ids(USER, label_ids=["INBOX"])
    assert {r.id for r in inbox} == {m.id for m in box.messages.values() if "INBOX" in m.label_ids}
    spam_trash = sum(1 for m in box.messages.values() if {"SPAM", "TRASH"} & set(m.label_ids))
    default = await client.list_all_message_ids(USER)
    assert len(default) == 120 - spam_trash
    cutoff = sorted(m.internal_date for m in box.messages.values())[60] // 1000
    after = await client.list_all_message_ids(
        USER, query=f"after:{cutoff}", include_spam_trash=True
    )
    assert {r.id for r in after} == {
        m.id for m in box.messages.values() if m.internal_date >= cutoff * 1000
    }


async def test_incremental_sync_sees_added_and_deleted(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=20, seed=3)
    start = await client.get_history_id(USER)
    victim = gmail_emulator.message_ids(USER)[0]
    new_id = gmail_emulator.add_message(USER, NEW_MAIL)
    gmail_emulator.delete_message(USER, victim)
    changes = await client.list_changes(USER, start)
    assert [r.id for r in changes.added] == [new_id]
    assert changes.deleted == [victim]
    assert int(changes.history_id) > int(start)
    again = await client.list_changes(USER, changes.history_id)
    assert again.added == []
    assert again.deleted == []


async def test_stale_history_id_asks_for_full_resync(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=5, seed=4)
    start = await client.get_history_id(USER)
    gmail_emulator.add_message(USER, NEW_MAIL)
    gmail_emulator.expire_history(USER)
    with pytest.raises(StaleHistoryError, match="full resync"):
        await client.list_changes(USER, start)


async def test_deleted_message_is_a_clean_outcome(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=10, seed=5)
    refs = await client.list_all_message_ids(USER, include_spam_trash=True)
    gmail_emulator.delete_message(USER, refs[0].id)
    outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.RAW)
    assert outcomes[refs[0].id] == MessageGone(refs[0].id)
    fetched = [o for o in outcomes.values() if not isinstance(o, MessageGone)]
    assert len(fetched) == 9
    box = gmail_emulator.mailbox(USER)
    assert all(o.raw == box.messages[o.id].raw and o.raw_exact for o in fetched)


async def test_long_query_goes_as_post_with_method_override(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=30, seed=6)
    query = " ".join(["after:2000/01/01"] * 200)  # > 2048-character URI
    refs = await client.list_all_message_ids(USER, query=query, include_spam_trash=True)
    assert len(refs) == 30


async def test_headers_need_uses_metadata(
    gmail_emulator: GmailEmulator, client: GmailClient
) -> None:
    gmail_emulator.add_user(USER, messages=40, seed=7)
    refs = await client.list_all_message_ids(USER, include_spam_trash=True)
    outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.HEADERS)
    assert len(outcomes) == 40
    for outcome in outcomes.values():
        assert not isinstance(outcome, MessageGone)
        assert outcome.raw is None
        names = {name for name, _ in outcome.headers}
        assert {"From", "Date", "Message-ID"} <= names
        assert names <= {"From", "To", "Cc", "Bcc", "Reply-To", "Date", "Subject", "Message-ID"}
