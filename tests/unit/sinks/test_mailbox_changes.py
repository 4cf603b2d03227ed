"""Pure parts of the mailbox-change writers: batch rows, lock keys, the contacts sink's topics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from aiokafka import ConsumerRecord

from inboxflow.cli.sink import contacts_writers
from schemas.errors import UndecodableRecordError
from schemas.models import DeletionReason, EmailNormalized, MessageDeleted, MessageLabelsChanged
from schemas.serde import serde_for
from sinks.base import Decoded
from sinks.contacts import ContactsWriter, EmailsWriter, latest_emails
from sinks.mailbox_changes import (
    DeletionsWriter,
    LabelsWriter,
    deletion_rows,
    label_rows,
    mailbox_lock_key,
    mailbox_lock_keys,
)
from topics.catalogue import build_catalogue

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def record(offset: int, value: bytes | None = b"v") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"u",
        value=value,  # type: ignore[arg-type]
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value or b""),
        headers=[],
    )


def deletion(message: str, reason: DeletionReason, minutes: int = 0) -> MessageDeleted:
    return MessageDeleted(
        user_id="u",
        message_id=message,
        sync_id="s",
        history_id=None if reason is DeletionReason.RECONCILED else 40,
        reason=reason,
        deleted_at=T0 + timedelta(minutes=minutes),
    )


def change(message: str, history_id: int, labels: list[str]) -> MessageLabelsChanged:
    return MessageLabelsChanged(
        user_id="u",
        message_id=message,
        thread_id="t",
        sync_id="s",
        history_id=history_id,
        label_ids=labels,
        changed_at=T0,
    )


def test_a_batch_keeps_the_first_report_of_each_deletion() -> None:
    items = [
        Decoded(record(0), deletion("m1", DeletionReason.DELETED, minutes=5)),
        Decoded(record(1), deletion("m2", DeletionReason.RECONCILED)),
        Decoded(record(2), deletion("m1", DeletionReason.RECONCILED, minutes=1)),
    ]
    assert deletion_rows(items) == [
        ("u", "m1", "deleted", 40, T0 + timedelta(minutes=5)),
        ("u", "m2", "reconciled", None, T0),
    ]


def test_a_batch_keeps_the_highest_history_id_of_each_message_and_the_earlier_on_ties() -> None:
    items = [
        Decoded(record(0), change("m1", 20, ["INBOX"])),
        Decoded(record(1), change("m1", 10, ["INBOX", "UNREAD"])),
        Decoded(record(2), change("m2", 7, ["A"])),
        Decoded(record(3), change("m2", 7, ["B"])),
        Decoded(record(4), change("m2", 8, ["C"])),
        Decoded(record(5), change("m3", 3, ["D"])),
        Decoded(record(6), change("m3", 3, ["E"])),
    ]
    assert label_rows(items) == [
        ("u", "m1", ["INBOX"], 20),
        ("u", "m2", ["C"], 8),
        ("u", "m3", ["D"], 3),
    ]


def test_an_email_row_records_the_history_id_its_labels_come_from() -> None:
    event = EmailNormalized(
        user_id="u",
        message_id="m",
        thread_id="t",
        sync_id="s",
        subject="s",
        labels=["INBOX"],
        history_id=123,
        text="",
        snippet="",
        size=0,
        normalized_at=T0,
    )
    [row] = latest_emails([Decoded(record(0), event)])
    assert (row["labels"], row["labels_history_id"]) == (["INBOX"], 123)
    [row] = latest_emails([Decoded(record(0), event.model_copy(update={"history_id": None}))])
    assert row["labels_history_id"] is None


def test_mailbox_lock_keys_are_stable_signed_32_bit_sorted_and_bounded() -> None:
    assert mailbox_lock_key("alice@example.com") == mailbox_lock_key("alice@example.com")
    keys = mailbox_lock_keys([f"user-{n}" for n in range(50)] * 2)
    assert keys is not None
    assert keys == sorted(set(keys))
    assert len(keys) == 50
    assert all(-(2**31) <= key < 2**31 for key in keys)
    assert mailbox_lock_keys([f"user-{n}" for n in range(65)], limit=64) is None
    assert mailbox_lock_keys([]) == []


@pytest.mark.parametrize("writer", [DeletionsWriter(), LabelsWriter()])
def test_a_record_without_a_value_is_undecodable(writer: DeletionsWriter | LabelsWriter) -> None:
    with pytest.raises(UndecodableRecordError):
        writer.decode(record(0, value=None))


def test_the_contacts_sink_always_applies_deletions_and_label_changes() -> None:
    catalogue = build_catalogue("t-sink-writers")
    serde = serde_for(None)

    without = contacts_writers(catalogue, serde, emails=False)
    assert {topic: type(writer) for topic, writer in without.items()} == {
        catalogue.contact_extracted.name: ContactsWriter,
        catalogue.message_deleted.name: DeletionsWriter,
        catalogue.message_labels_changed.name: LabelsWriter,
    }
    assert {s.name for s in catalogue.sink_contacts.sources} == set(without)

    with_emails = contacts_writers(catalogue, serde, emails=True, deleted_topic="d")
    assert {topic: type(writer) for topic, writer in with_emails.items()} == {
        catalogue.contact_extracted.name: ContactsWriter,
        catalogue.email_normalized.name: EmailsWriter,
        "d": DeletionsWriter,
        catalogue.message_labels_changed.name: LabelsWriter,
    }
    with pytest.raises(click.UsageError):
        contacts_writers(catalogue, serde, emails=False, labels_topic="x", deleted_topic="x")
