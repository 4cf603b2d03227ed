"""The embed stage sends only new text: replies stripped, chunks a user already had reused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from schemas.errors import RateLimitedError, TransientError
from schemas.models import EmailEmbedded, JobStatus
from schemas.serde import decode
from streams.stages.chunk_vectors import MemoryChunkVectors
from streams.stages.embed import THROTTLE_RETRIES, THROTTLE_WAIT_SECONDS, EmbedStage
from tests.memory_publisher import MemoryPublisher
from tests.unit.streams.test_stages import (
    CATALOGUE,
    EMBEDDED,
    NORMALIZED,
    NOW,
    SERDE,
    USER,
    FakeProvider,
    event_records,
    normalized_email,
    paragraphs,
    run_with,
    states,
)

REPLY = (
    "Friday at 3 works for me.\n\nBest regards,\nBob\n\n"
    "On Mon, Jan 5, 2026 at 8:00 AM Ana <ana@example.com> wrote:\n"
    "> Can we meet this week? The budget review cannot wait.\n"
)
FOOTER = "This message is confidential and meant for its addressees only; delete it otherwise."


def stage_with(
    provider: FakeProvider, store: MemoryChunkVectors | None, **kw: object
) -> EmbedStage:
    return EmbedStage(
        serde=SERDE,
        provider=provider,
        embedded_topic=EMBEDDED,
        timeout=5.0,
        clock=lambda: NOW,
        vector_store=store,
        **kw,  # type: ignore[arg-type]
    )


async def embed(stage: EmbedStage, *emails: object, first_offset: int = 0) -> list[EmailEmbedded]:
    publisher = MemoryPublisher()
    records = event_records(NORMALIZED, list(emails), first_offset)  # type: ignore[arg-type]
    await run_with(stage, CATALOGUE.embed, publisher).run(records)
    assert {s.status for s in states(publisher)} <= {JobStatus.PROCESSING, JobStatus.DONE}
    return [decode(r.value, EmailEmbedded) for r in publisher.on(EMBEDDED)]


async def test_a_reply_is_embedded_without_its_quote_or_signature() -> None:
    provider = FakeProvider()
    (embedded,) = await embed(stage_with(provider, None), normalized_email(text=REPLY))

    assert provider.calls == [["Friday at 3 works for me."]]
    assert [c.text for c in embedded.chunks] == ["Friday at 3 works for me."]


async def test_without_stripping_the_quote_is_embedded_too() -> None:
    provider = FakeProvider()
    await embed(stage_with(provider, None, strip_replies=False), normalized_email(text=REPLY))

    assert provider.calls == [[REPLY.strip()]]


async def test_a_chunk_the_user_had_embedded_is_not_sent_again_and_keeps_its_vector() -> None:
    provider, store = FakeProvider(), MemoryChunkVectors()
    stage = stage_with(provider, store)
    first = await embed(stage, normalized_email(message_id="m1", text=FOOTER))
    # The same text with other spacing, in a later batch, after a new stage (a restart).
    again = stage_with(provider, store)
    spaced = FOOTER.replace(" ", "  \n", 2)
    second = await embed(again, normalized_email(message_id="m2", text=spaced), first_offset=1)

    assert provider.calls == [[FOOTER]]
    assert [c.vector for c in second[0].chunks] == [c.vector for c in first[0].chunks]
    assert [c.text for c in second[0].chunks] == [spaced]  # its own text, the stored vector
    assert (again.chunks_embedded, again.chunks_reused) == (0, 1)


async def test_another_user_or_model_does_not_share_vectors() -> None:
    provider, store = FakeProvider(), MemoryChunkVectors()
    await embed(stage_with(provider, store), normalized_email(message_id="m1", text=FOOTER))
    await embed(
        stage_with(provider, store),
        normalized_email(message_id="m2", user_id="bo@inboxflow.test", text=FOOTER),
    )
    other_model = FakeProvider()
    other_model.name = "fake:other"  # type: ignore[misc]
    await embed(stage_with(other_model, store), normalized_email(message_id="m3", text=FOOTER))

    assert provider.calls == [[FOOTER], [FOOTER]]
    assert other_model.calls == [[FOOTER]]
    assert len(store) == 3


async def test_copies_within_a_batch_are_sent_once_and_every_message_gets_its_vector() -> None:
    provider, store = FakeProvider(), MemoryChunkVectors()
    emails = [
        normalized_email(message_id="m1", text=FOOTER),
        normalized_email(message_id="m2", text="Other news."),
        normalized_email(message_id="m3", text=FOOTER),
    ]
    first, other, copy = await embed(stage_with(provider, store), *emails)

    assert provider.calls == [[FOOTER, "Other news."]]
    assert first.chunks[0].vector == copy.chunks[0].vector == [float(len(FOOTER)), 0.0, 0.5]
    assert other.chunks[0].vector == [11.0, 1.0, 0.5]


async def test_mail_with_nothing_new_makes_no_provider_call() -> None:
    provider, store = FakeProvider(), MemoryChunkVectors()
    await embed(stage_with(provider, store), normalized_email(message_id="m1", text=FOOTER))
    repeat = stage_with(provider, store)
    (embedded,) = await embed(repeat, normalized_email(message_id="m2", text=FOOTER))

    assert len(provider.calls) == 1
    assert len(embedded.chunks) == 1


class FailingStore(MemoryChunkVectors):
    async def lookup(
        self, user_id: str, model: str, hashes: Sequence[bytes]
    ) -> dict[bytes, list[float]]:
        raise TransientError("database restarting")

    async def save(self, user_id: str, model: str, vectors: Mapping[bytes, list[float]]) -> None:
        raise TransientError("database restarting")


async def test_an_unreachable_store_costs_model_time_not_messages() -> None:
    provider = FakeProvider()
    (embedded,) = await embed(stage_with(provider, FailingStore()), normalized_email(text=FOOTER))

    assert provider.calls == [[FOOTER]]
    assert embedded.user_id == USER
    assert [c.vector for c in embedded.chunks] == [[float(len(FOOTER)), 0.0, 0.5]]


async def test_known_mail_shares_a_call_with_its_new_neighbours() -> None:
    provider, store = FakeProvider(), MemoryChunkVectors()
    known = paragraphs(3)  # three chunks
    await embed(stage_with(provider, store, sub_batch=3), normalized_email(text=known))
    provider.calls.clear()
    emails = [
        normalized_email(message_id="again", text=known),
        normalized_email(message_id="n1", text="New note 1."),
        normalized_email(message_id="n2", text="New note 2."),
    ]
    again, *_ = await embed(stage_with(provider, store, sub_batch=3), *emails, first_offset=1)

    assert provider.calls == [["New note 1.", "New note 2."]]
    assert len(again.chunks) == 3


async def test_a_copy_in_another_unit_of_the_batch_is_embedded_once() -> None:
    provider, store = FakeProvider(), MemoryChunkVectors()
    emails = [
        normalized_email(message_id="m1", text=FOOTER),
        normalized_email(message_id="m2", text="Other news."),
        normalized_email(message_id="m3", text="More news."),
        normalized_email(message_id="m4", text=FOOTER),
    ]
    stage = stage_with(provider, store, sub_batch=1, concurrency=2)
    first, _, _, copy = await embed(stage, *emails)

    assert sorted(text for call in provider.calls for text in call) == sorted(
        [FOOTER, "Other news.", "More news."]
    )
    assert copy.chunks[0].vector == first.chunks[0].vector
    assert (stage.chunks_embedded, stage.chunks_reused) == (3, 1)


class FailingOn(FakeProvider):
    """Fails any call with a text containing ``FAIL``."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if any("FAIL" in text for text in texts):
            raise TransientError("model worker lost")
        return await super().embed(texts)


async def test_a_copy_whose_embedding_failed_elsewhere_is_retried_not_lost() -> None:
    provider, store = FailingOn(), MemoryChunkVectors()
    emails = [
        normalized_email(message_id="owner", text="FAIL shared paragraph."),
        normalized_email(message_id="other", text="Other news."),
        normalized_email(message_id="copy", text="FAIL shared paragraph."),
    ]
    publisher = MemoryPublisher()
    stage = stage_with(provider, store, sub_batch=1)
    await run_with(stage, CATALOGUE.embed, publisher).run(event_records(NORMALIZED, emails))

    assert [decode(r.value, EmailEmbedded).message_id for r in publisher.on(EMBEDDED)] == ["other"]
    finals = {
        s.subject_id: s.status for s in states(publisher) if s.status is not JobStatus.PROCESSING
    }
    assert finals == {
        "owner": JobStatus.RETRYING,
        "other": JobStatus.DONE,
        "copy": JobStatus.RETRYING,
    }


class ThrottledFirst(FakeProvider):
    """Answers its first ``refusals`` calls with a 429 asking for ``wait`` seconds."""

    def __init__(self, refusals: int, wait: float | None) -> None:
        super().__init__()
        self.refusals, self.wait, self.refused = refusals, wait, 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.refused < self.refusals:
            self.refused += 1
            raise RateLimitedError("Rate limit reached for requests.", retry_after=self.wait)
        return await super().embed(texts)


async def test_a_call_throttled_with_a_short_wait_is_sent_again_in_the_stage() -> None:
    provider = ThrottledFirst(refusals=2, wait=0.01)
    (embedded,) = await embed(stage_with(provider, None), normalized_email(text="Short note."))

    assert provider.refused == 2
    assert provider.calls == [["Short note."]]  # FakeProvider records the call that went through
    assert [c.text for c in embedded.chunks] == ["Short note."]


async def test_a_long_unstated_or_repeated_throttle_goes_to_the_retry_ladder() -> None:
    for provider in (
        ThrottledFirst(refusals=1, wait=THROTTLE_WAIT_SECONDS + 1),
        ThrottledFirst(refusals=1, wait=None),
        ThrottledFirst(refusals=THROTTLE_RETRIES + 1, wait=0.01),
    ):
        publisher = MemoryPublisher()
        records = event_records(NORMALIZED, [normalized_email(text="Short note.")])
        await run_with(stage_with(provider, None), CATALOGUE.embed, publisher).run(records)

        assert publisher.on(EMBEDDED) == []
        (final,) = [s for s in states(publisher) if s.status is not JobStatus.PROCESSING]
        assert final.status is JobStatus.RETRYING
        assert provider.calls == []
