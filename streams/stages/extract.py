"""The extract stage: EmailNormalized in, one ContactExtracted per address and role out."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.models import ContactExtracted, EmailNormalized, JobKind
from schemas.serde import Serde
from streams.runtime.stage import Outcome, Outgoing, Record
from streams.stages.base import Decoder, NormalizedEmailStage, event_record
from streams.stages.contacts import Contact, extract_contacts


class ExtractStage(NormalizedEmailStage):
    """Extracts correspondents from normalized messages (deduplicated within a message)."""

    name = "extract"
    kind = JobKind.EXTRACT_CONTACTS
    phase = 0

    def __init__(self, *, serde: Serde, contacts_topic: str, timeout: float) -> None:
        self.normalized = Decoder(serde, EmailNormalized)
        self.serde = serde
        self.contacts_topic = contacts_topic
        self.timeout = timeout

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Extract each message's contacts."""
        outcomes = []
        for email in self.normalized.decode_each(records):
            if isinstance(email, Exception):
                outcomes.append(Outcome(error=email))
                continue
            outcomes.append(
                Outcome(outputs=[self._record(email, c) for c in extract_contacts(email)])
            )
        return outcomes

    def _record(self, email: EmailNormalized, contact: Contact) -> Outgoing:
        event = ContactExtracted(
            user_id=email.user_id,
            address=contact.address,
            display_name=contact.display_name,
            role=contact.role,
            message_id=email.message_id,
            thread_id=email.thread_id,
            occurred_at=email.sent_at or email.normalized_at,
        )
        return event_record(self.serde, self.contacts_topic, event)
