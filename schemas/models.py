"""Pydantic models of the events in ``schemas/avro/*.avsc``: one model per Avro record, same names.

The ``.avsc`` files are the contract; these models mirror them field for field and a unit test
checks both directions (``tests/unit/test_schemas_models.py``). Rules the models enforce so that a
value survives an Avro round trip unchanged:

- timestamps are timezone-aware, converted to UTC and truncated to milliseconds
  (``timestamp-millis``); a naive ``datetime`` is refused rather than guessed;
- ``int`` fields are 32-bit, ``long`` fields 64-bit;
- embedding vectors are rounded to 32-bit floats (Avro ``float``).

Enums carry an ``UNKNOWN`` member that producers never write: it is the Avro enum ``default``, so
a reader on an older schema maps a symbol added later to it instead of failing (FULL
compatibility needs that). Consumers treat ``UNKNOWN`` as "upgrade me", not as data.

This module does no I/O and knows nothing about Kafka or the wire format (see ``serde``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from schemas.enums import ContactRole as ContactRole
from schemas.enums import DeletionReason as DeletionReason
from schemas.enums import ErrorClass as ErrorClass
from schemas.enums import JobKind as JobKind
from schemas.enums import JobStatus as JobStatus

AVRO_NAMESPACE = "inboxflow.events"


@dataclass(frozen=True)
class AvroPrimitive:
    """Marks which Avro primitive an ``Annotated`` Python type stands for (``int`` or ``long``)."""

    name: str


def _utc_millis(value: datetime) -> datetime:
    """Return ``value`` in UTC, truncated to whole milliseconds; refuse naive datetimes."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (use datetime.now(UTC))")
    utc = value.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def _float32(values: list[float]) -> list[float]:
    """Round each value to the nearest 32-bit float, as Avro ``float`` stores it."""
    try:
        packed = struct.pack(f"<{len(values)}f", *values)
    except (OverflowError, struct.error) as exc:
        raise ValueError(f"vector value out of 32-bit float range: {exc}") from exc
    return list(struct.unpack(f"<{len(values)}f", packed))


Timestamp = Annotated[datetime, AfterValidator(_utc_millis)]
"""Avro ``long`` with ``logicalType: timestamp-millis``, always UTC."""
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1), AvroPrimitive("int")]
"""Avro ``int``."""
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1), AvroPrimitive("long")]
"""Avro ``long``."""
Float32Vector = Annotated[list[Annotated[float, AvroPrimitive("float")]], AfterValidator(_float32)]
"""Avro ``array<float>``."""


class AvroRecord(BaseModel):
    """Base of every model that mirrors an Avro record: immutable, no extra fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(AvroRecord):
    """Base of the top-level events: one ``.avsc`` file each, keyed by ``user_id`` on Kafka."""

    avro_file: ClassVar[str]
    """File name of the schema in ``schemas/avro/``."""

    user_id: str

    @classmethod
    def avro_full_name(cls) -> str:
        """Return the Avro full name, ``inboxflow.events.<ClassName>``."""
        return f"{AVRO_NAMESPACE}.{cls.__name__}"

    def kafka_key(self) -> bytes:
        """Return the Kafka key: the user id as UTF-8 bytes."""
        return self.user_id.encode()


# Enums live in schemas.enums (models-free); re-exported here.


# --- gmail ------------------------------------------------------------------------------------


class SyncRequested(Event):
    """A request to synchronise one user's mailbox."""

    avro_file: ClassVar[str] = "sync_requested.avsc"

    sync_id: str
    full: bool
    reason: str = "requested"
    label_ids: list[str] = Field(default_factory=list)
    reemit: bool = False
    page_token: str | None = None
    listing_history_id: Int64 | None = None
    listing_phase: str = "discover"
    reconcile_after: bool = False
    requested_at: Timestamp

    @property
    def continues_listing(self) -> bool:
        """True for a record the sync agent wrote to itself to go on with a listing."""
        return self.page_token is not None or self.listing_phase != "discover"


class MessageDiscovered(Event):
    """A Gmail message id found by a sync run, still to be fetched."""

    avro_file: ClassVar[str] = "message_discovered.avsc"

    message_id: str
    thread_id: str
    sync_id: str
    history_id: Int64 | None = None
    discovered_at: Timestamp


class MessageDeleted(Event):
    """A Gmail message gone from the mailbox; consumers drop what they derived from it."""

    avro_file: ClassVar[str] = "message_deleted.avsc"

    message_id: str
    sync_id: str
    history_id: Int64 | None = None
    reason: DeletionReason
    deleted_at: Timestamp


class MessageLabelsChanged(Event):
    """The whole label set of a message after a change; the highest ``history_id`` is current."""

    avro_file: ClassVar[str] = "message_labels_changed.avsc"

    message_id: str
    thread_id: str
    sync_id: str
    history_id: Int64
    label_ids: list[str]
    changed_at: Timestamp


class GmailMessageFetched(Event):
    """One Gmail message in raw RFC 822 form, enough for replays without Gmail."""

    avro_file: ClassVar[str] = "gmail_message_fetched.avsc"

    message_id: str
    thread_id: str
    sync_id: str
    label_ids: list[str] = Field(default_factory=list)
    history_id: Int64 | None = None
    internal_date: Timestamp
    size_estimate: Int32
    snippet: str
    raw: bytes
    fetched_at: Timestamp


# --- mail -------------------------------------------------------------------------------------


class Address(AvroRecord):
    """One mailbox from an address header."""

    address: str
    name: str | None = None


class Attachment(AvroRecord):
    """One attachment part; the content stays in Gmail."""

    filename: str
    mime_type: str
    size: Int32
    attachment_id: str | None = None


class EmailNormalized(Event):
    """A fetched message parsed into typed fields and a plain-text body."""

    avro_file: ClassVar[str] = "email_normalized.avsc"

    message_id: str
    thread_id: str
    sync_id: str
    subject: str
    sender: Address | None = None
    authors: list[Address] = Field(default_factory=list)
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list)
    reply_to: list[Address] = Field(default_factory=list)
    sent_at: Timestamp | None = None
    labels: list[str] = Field(default_factory=list)
    history_id: Int64 | None = None
    text: str
    snippet: str
    size: Int32
    attachments: list[Attachment] = Field(default_factory=list)
    message_id_header: str | None = None
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    normalized_at: Timestamp
    truncated: bool = False
    attachments_dropped: Int32 = 0


class ContactExtracted(Event):
    """One correspondent seen on one message in one role."""

    avro_file: ClassVar[str] = "contact_extracted.avsc"

    address: str
    display_name: str | None = None
    role: ContactRole
    message_id: str
    thread_id: str
    occurred_at: Timestamp


class EmbeddedChunk(AvroRecord):
    """One chunk of message text and its vector."""

    index: Int32
    text: str
    vector: Float32Vector = Field(default_factory=list)


class EmailEmbedded(Event):
    """Vector embeddings of one message, one per chunk."""

    avro_file: ClassVar[str] = "email_embedded.avsc"

    message_id: str
    thread_id: str
    model: str
    dimension: Int32
    chunks: list[EmbeddedChunk] = Field(default_factory=list)
    embedded_at: Timestamp
    truncated: bool = False


# --- insights ---------------------------------------------------------------------------------


class CorrespondentCount(AvroRecord):
    """Messages exchanged with one address in the window."""

    address: str
    messages: Int32


class DailyVolume(AvroRecord):
    """Message count of one UTC day (``day`` is ``YYYY-MM-DD``)."""

    day: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    messages: Int32


class ReplyLatency(AvroRecord):
    """Median reply time of the user to one correspondent."""

    address: str
    median_seconds: float
    samples: Int32


class UnansweredThread(AvroRecord):
    """A thread waiting for the user's reply."""

    thread_id: str
    subject: str
    last_message_at: Timestamp


class InsightProduced(Event):
    """Mailbox insights of one user over a window."""

    avro_file: ClassVar[str] = "insight_produced.avsc"

    computed_at: Timestamp
    window_start: Timestamp
    window_end: Timestamp
    top_correspondents: list[CorrespondentCount] = Field(default_factory=list)
    volume_by_day: list[DailyVolume] = Field(default_factory=list)
    reply_latency: list[ReplyLatency] = Field(default_factory=list)
    unanswered_threads: list[UnansweredThread] = Field(default_factory=list)


# --- jobs -------------------------------------------------------------------------------------


class JobStateChanged(Event):
    """A unit of pipeline work moved to a new state; ``version`` orders changes per job."""

    avro_file: ClassVar[str] = "job_state_changed.avsc"

    job_id: str
    kind: JobKind
    status: JobStatus
    attempts: Int32
    batch_id: str | None = None
    subject_id: str
    last_error: str | None = None
    last_error_class: ErrorClass | None = None
    version: Int64
    occurred_at: Timestamp

    @staticmethod
    def make_job_id(kind: JobKind, user_id: str, subject_id: str) -> str:
        """Return the stable job id ``<kind>:<user_id>:<subject_id>``."""
        return f"{kind.value}:{user_id}:{subject_id}"


EVENT_MODELS: tuple[type[Event], ...] = (
    SyncRequested,
    MessageDiscovered,
    MessageDeleted,
    MessageLabelsChanged,
    GmailMessageFetched,
    EmailNormalized,
    ContactExtracted,
    EmailEmbedded,
    InsightProduced,
    JobStateChanged,
)
"""Every top-level event, in pipeline order."""
