"""The enums of inboxflow's Avro schemas, apart from the models so that code without pydantic
(a CPU pool worker parsing mail) can use them. ``schemas.models`` re-exports every one.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ContactRole", "DeletionReason", "ErrorClass", "JobKind", "JobStatus"]


class ContactRole(StrEnum):
    """Header an address appeared in (Avro ``ContactRole``)."""

    FROM = "from"
    TO = "to"
    CC = "cc"
    BCC = "bcc"
    REPLY_TO = "reply_to"
    UNKNOWN = "unknown"  # reader-side default for symbols added later; never written


class DeletionReason(StrEnum):
    """Why a message is gone (Avro ``DeletionReason``)."""

    DELETED = "deleted"  # Gmail's history reported the deletion
    RECONCILED = "reconciled"  # a full resync no longer listed a message seen before
    UNKNOWN = "unknown"  # reader-side default for symbols added later; never written


class JobKind(StrEnum):
    """What a job does (Avro ``JobKind``)."""

    GOOGLE_GMAIL_SYNC = "google_gmail_sync"
    NORMALIZE_GOOGLE_EMAIL = "normalize_google_email"
    EXTRACT_CONTACTS = "extract_contacts"
    EMBED = "embed"
    INSIGHT = "insight"
    UNKNOWN = "unknown"  # reader-side default for symbols added later; never written


class JobStatus(StrEnum):
    """Where a job is (Avro ``JobStatus``)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"
    DONE = "done"
    ERROR = "error"
    DEAD = "dead"
    UNKNOWN = "unknown"  # reader-side default for symbols added later; never written


class ErrorClass(StrEnum):
    """Retry class of a failure (Avro ``ErrorClass``); values equal ``errors.RetryClass``."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"  # reader-side default for symbols added later; never written
