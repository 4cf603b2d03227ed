"""One realistic example of every event: used by tests, benchmarks and the AsyncAPI document.

Pure data; every optional field is filled so that round trips exercise each Avro branch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.models import (
    Address,
    Attachment,
    ContactExtracted,
    ContactRole,
    CorrespondentCount,
    DailyVolume,
    DeletionReason,
    EmailEmbedded,
    EmailNormalized,
    EmbeddedChunk,
    ErrorClass,
    Event,
    GmailMessageFetched,
    InsightProduced,
    JobKind,
    JobStateChanged,
    JobStatus,
    MessageDeleted,
    MessageDiscovered,
    MessageLabelsChanged,
    ReplyLatency,
    SyncRequested,
    UnansweredThread,
)

USER_ID = "user-42"
SYNC_ID = "sync-2026-03-01T09:00:00Z"
MESSAGE_ID = "18e0c2f5a1b2c3d4"
THREAD_ID = "18e0c2f5a1b2c3d0"
_T0 = datetime(2026, 3, 1, 9, 0, 0, 123000, tzinfo=UTC)

RAW_MESSAGE = (
    b"From: Ada Lovelace <ada@example.org>\r\n"
    b"To: Charles Babbage <charles@example.org>\r\n"
    b"Subject: Notes on the engine\r\n"
    b"Date: Sun, 01 Mar 2026 08:59:00 +0000\r\n"
    b"Message-ID: <note-1@example.org>\r\n"
    b"\r\n"
    b"The engine weaves algebraic patterns.\r\n"
)


def _sync_events() -> list[Event]:
    return [
        SyncRequested(
            user_id=USER_ID, sync_id=SYNC_ID, full=True, reason="schedule", requested_at=_T0
        ),
        MessageDiscovered(
            user_id=USER_ID,
            message_id=MESSAGE_ID,
            thread_id=THREAD_ID,
            sync_id=SYNC_ID,
            history_id=987654321,
            discovered_at=_T0 + timedelta(seconds=1),
        ),
        GmailMessageFetched(
            user_id=USER_ID,
            message_id=MESSAGE_ID,
            thread_id=THREAD_ID,
            sync_id=SYNC_ID,
            label_ids=["INBOX", "UNREAD"],
            history_id=987654321,
            internal_date=_T0 - timedelta(minutes=1),
            size_estimate=len(RAW_MESSAGE),
            snippet="The engine weaves algebraic patterns.",
            raw=RAW_MESSAGE,
            fetched_at=_T0 + timedelta(seconds=2),
        ),
        MessageLabelsChanged(
            user_id=USER_ID,
            message_id=MESSAGE_ID,
            thread_id=THREAD_ID,
            sync_id=SYNC_ID,
            history_id=987654400,
            label_ids=["INBOX", "STARRED"],
            changed_at=_T0 + timedelta(hours=1),
        ),
        MessageDeleted(
            user_id=USER_ID,
            message_id=MESSAGE_ID,
            sync_id=SYNC_ID,
            history_id=987654500,
            reason=DeletionReason.DELETED,
            deleted_at=_T0 + timedelta(days=1),
        ),
    ]


def _mail_events() -> list[Event]:
    ada = Address(address="ada@example.org", name="Ada Lovelace")
    charles = Address(address="charles@example.org", name="Charles Babbage")
    return [
        EmailNormalized(
            user_id=USER_ID,
            message_id=MESSAGE_ID,
            thread_id=THREAD_ID,
            sync_id=SYNC_ID,
            subject="Notes on the engine",
            sender=ada,
            to=[charles],
            cc=[Address(address="mary@example.org")],
            bcc=[],
            reply_to=[ada],
            sent_at=_T0 - timedelta(minutes=1),
            labels=["INBOX", "UNREAD"],
            history_id=987654321,
            text="The engine weaves algebraic patterns.\n",
            snippet="The engine weaves algebraic patterns.",
            size=len(RAW_MESSAGE),
            attachments=[
                Attachment(filename="notes.pdf", mime_type="application/pdf", size=2048),
                Attachment(
                    filename="table.csv", mime_type="text/csv", size=512, attachment_id="ANGjdJ8"
                ),
            ],
            message_id_header="<note-1@example.org>",
            in_reply_to="<note-0@example.org>",
            references=["<note-0@example.org>"],
            normalized_at=_T0 + timedelta(seconds=3),
        ),
        ContactExtracted(
            user_id=USER_ID,
            address="ada@example.org",
            display_name="Ada Lovelace",
            role=ContactRole.FROM,
            message_id=MESSAGE_ID,
            thread_id=THREAD_ID,
            occurred_at=_T0 - timedelta(minutes=1),
        ),
        EmailEmbedded(
            user_id=USER_ID,
            message_id=MESSAGE_ID,
            thread_id=THREAD_ID,
            model="all-MiniLM-L6-v2",
            dimension=4,
            chunks=[
                EmbeddedChunk(
                    index=0,
                    text="The engine weaves algebraic patterns.",
                    vector=[0.125, -0.5, 0.3, 0.0],
                )
            ],
            embedded_at=_T0 + timedelta(seconds=4),
        ),
    ]


def _derived_events() -> list[Event]:
    return [
        InsightProduced(
            user_id=USER_ID,
            computed_at=_T0 + timedelta(seconds=5),
            window_start=_T0 - timedelta(days=30),
            window_end=_T0,
            top_correspondents=[CorrespondentCount(address="ada@example.org", messages=12)],
            volume_by_day=[DailyVolume(day="2026-02-28", messages=7)],
            reply_latency=[
                ReplyLatency(address="ada@example.org", median_seconds=5400.5, samples=9)
            ],
            unanswered_threads=[
                UnansweredThread(
                    thread_id=THREAD_ID,
                    subject="Notes on the engine",
                    last_message_at=_T0 - timedelta(minutes=1),
                )
            ],
        ),
        JobStateChanged(
            job_id=JobStateChanged.make_job_id(JobKind.NORMALIZE_GOOGLE_EMAIL, USER_ID, MESSAGE_ID),
            user_id=USER_ID,
            kind=JobKind.NORMALIZE_GOOGLE_EMAIL,
            status=JobStatus.RETRYING,
            attempts=2,
            batch_id=SYNC_ID,
            subject_id=MESSAGE_ID,
            last_error="Gmail answered 429 rateLimitExceeded",
            last_error_class=ErrorClass.RATE_LIMIT,
            version=3,
            occurred_at=_T0 + timedelta(seconds=6),
        ),
    ]


def example_events() -> dict[type[Event], Event]:
    """Return one filled-in example per event model, keyed by model, in pipeline order."""
    events = [*_sync_events(), *_mail_events(), *_derived_events()]
    return {type(event): event for event in events}
