"""The stages that need no network, run by the real StageRunner into a MemoryPublisher.

Inputs are real events encoded by ``schemas.serde`` (the sample mail of ``tests/data/eml`` and
``schemas.examples``); assertions read the outputs back as a subscriber would. Not here: sync
and fetch (they call Gmail) and insight (its ``process`` folds into Postgres through
``db.agent_state.AgentState``, and its events come from ``tick`` reading that table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas import headers as h
from schemas.errors import RateLimitedError
from schemas.examples import example_events
from schemas.models import (
    Address,
    Attachment,
    ContactExtracted,
    ContactRole,
    EmailEmbedded,
    EmailNormalized,
    ErrorClass,
    Event,
    GmailMessageFetched,
    JobKind,
    JobStateChanged,
    JobStatus,
)
from schemas.serde import SingleObjectSerde, decode, encode
from streams.runtime.metrics import AgentMetrics
from streams.runtime.runner import StageRunner
from streams.runtime.stage import Record, Stage
from streams.stages.embed import EmbedStage
from streams.stages.extract import ExtractStage
from streams.stages.normalize import NormalizeStage
from tests.memory_publisher import MemoryPublisher
from topics.catalogue import ConsumerGroup, build_catalogue

CATALOGUE = build_catalogue("unit")
JOBS = CATALOGUE.job_state_changed.name
FETCHED = CATALOGUE.message_fetched.name
NORMALIZED = CATALOGUE.email_normalized.name
CONTACTS = CATALOGUE.contact_extracted.name
EMBEDDED = CATALOGUE.email_embedded.name
EML = Path(__file__).resolve().parents[2] / "data" / "eml"
USER = "ana@inboxflow.test"
SYNC = "sync-1"
NOW = 1_794_355_200.0  # 2026-11-10T00:00:00Z
SERDE = SingleObjectSerde()


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def as_record(topic: str, offset: int, value: bytes, *, partition: int = 0) -> Record:
    return Record(topic, partition, offset, 1_794_000_000_000 + offset, USER.encode(), value)


def fetched(name: str, message_id: str) -> GmailMessageFetched:
    raw = (EML / name).read_bytes()
    return GmailMessageFetched(
        user_id=USER,
        message_id=message_id,
        thread_id=f"t-{message_id}",
        sync_id=SYNC,
        label_ids=["INBOX", "UNREAD"],
        internal_date=at(2026, 11, 6),
        size_estimate=len(raw),
        snippet="",
        raw=raw,
        fetched_at=at(2026, 11, 9),
    )


def event_records(topic: str, events: Sequence[Event], first_offset: int = 0) -> list[Record]:
    return [as_record(topic, first_offset + i, encode(e)) for i, e in enumerate(events)]


def run_with(stage: Stage, group: ConsumerGroup, publisher: MemoryPublisher) -> StageRunner:
    return StageRunner(
        stage,
        group,
        job_topic=JOBS,
        publisher=publisher,
        clock=lambda: NOW,
        metrics=AgentMetrics(CollectorRegistry()),
        processing_state_after=0,  # every job says `processing` first
    )


def normalize_stage() -> NormalizeStage:
    return NormalizeStage(serde=SERDE, normalized_topic=NORMALIZED, timeout=5.0, clock=lambda: NOW)


def extract_stage() -> ExtractStage:
    return ExtractStage(serde=SERDE, contacts_topic=CONTACTS, timeout=5.0)


class FakeProvider:
    """Embeds text ``i`` of a call as ``[len(text), i, 0.5]``; remembers each call."""

    name = "fake:length"
    dimension = 3

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.error = error

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.error is not None:
            raise self.error
        return [[float(len(text)), float(i), 0.5] for i, text in enumerate(texts)]


def embed_stage(provider: FakeProvider) -> EmbedStage:
    return EmbedStage(
        serde=SERDE, provider=provider, embedded_topic=EMBEDDED, timeout=5.0, clock=lambda: NOW
    )


def states(publisher: MemoryPublisher) -> list[JobStateChanged]:
    return [decode(r.value, JobStateChanged) for r in publisher.on(JOBS)]


def normalized_email(**changes: object) -> EmailNormalized:
    example = example_events()[EmailNormalized]
    assert isinstance(example, EmailNormalized)
    return example.model_copy(update={"user_id": USER, **changes})


# --- normalize -----------------------------------------------------------------------------------


async def test_normalize_turns_sample_mail_into_email_normalized_events() -> None:
    names = sorted(p.name for p in EML.glob("*.eml"))
    assert len(names) == 4
    sources = event_records(FETCHED, [fetched(n, f"m{i}") for i, n in enumerate(names)])
    publisher = MemoryPublisher()
    await run_with(normalize_stage(), CATALOGUE.normalize, publisher).run(sources)

    out = publisher.on(NORMALIZED)
    assert {r.key for r in out} == {USER.encode()}
    latin1, invoice, contract, japanese = (decode(r.value, EmailNormalized) for r in out)
    for i, email in enumerate((latin1, invoice, contract, japanese)):
        assert (email.user_id, email.message_id, email.thread_id) == (USER, f"m{i}", f"t-m{i}")
        assert email.sync_id == SYNC
        assert email.labels == ["INBOX", "UNREAD"]
        assert email.normalized_at == datetime.fromtimestamp(NOW, UTC)

    assert latin1.subject == "Relatório de outubro"
    assert latin1.sender == Address(address="jose@exemplo.com.br", name="José Conceição")
    assert latin1.to == [Address(address="ana@inboxflow.test", name="Ana Lima")]
    assert [a.address for a in latin1.cc] == ["equipe@exemplo.com.br", "financeiro@exemplo.com.br"]
    assert latin1.sent_at == at(2026, 11, 3, 12, 14, 20)  # 09:14:20 -0300
    assert "Segue o relatório de outubro" in latin1.text
    assert latin1.message_id_header == "<20261103091420.4411@exemplo.com.br>"

    assert invoice.reply_to == [Address(address="support@vendor.example")]
    assert invoice.text.startswith("Hello Ana, your invoice INV-2026-1187")
    assert "<" not in invoice.text  # the plain part, not the HTML one

    assert "contract draft \u2013 please review" in contract.text  # windows-1252 0x96
    assert [(a.filename, a.mime_type) for a in contract.attachments] == [
        ("contract-draft.pdf", "application/pdf"),
        ("nda-signed.txt", "text/plain"),
    ]
    assert all(isinstance(a, Attachment) and a.size > 0 for a in contract.attachments)
    assert contract.in_reply_to == "<contract-request-12@inboxflow.test>"
    assert [a.address for a in contract.to] == ["ana@inboxflow.test", "li.wei@partner.example"]

    assert japanese.subject == "会議の日程"
    assert japanese.sender == Address(address="taro.yamada@example.jp", name="山田太郎")
    assert "Next meeting is on Monday at 10:00." in japanese.text
    assert "track()" not in japanese.text  # script content is not text


async def test_normalize_finishes_the_message_job_and_queues_the_downstream_jobs() -> None:
    publisher = MemoryPublisher()
    await run_with(normalize_stage(), CATALOGUE.normalize, publisher).run(
        event_records(FETCHED, [fetched("02-alternative-reply-to.eml", "m1")])
    )

    by_kind = {(s.kind, s.status): s for s in states(publisher)}
    assert set(by_kind) == {
        (JobKind.NORMALIZE_GOOGLE_EMAIL, JobStatus.PROCESSING),
        (JobKind.NORMALIZE_GOOGLE_EMAIL, JobStatus.DONE),
        (JobKind.EXTRACT_CONTACTS, JobStatus.QUEUED),
        (JobKind.EMBED, JobStatus.QUEUED),
        (JobKind.INSIGHT, JobStatus.QUEUED),
    }
    for state in by_kind.values():
        assert (state.user_id, state.subject_id, state.batch_id) == (USER, "m1", SYNC)
        assert state.job_id == f"{state.kind.value}:{USER}:m1"
    done = by_kind[JobKind.NORMALIZE_GOOGLE_EMAIL, JobStatus.DONE]
    processing = by_kind[JobKind.NORMALIZE_GOOGLE_EMAIL, JobStatus.PROCESSING]
    # normalize is phase 1 of the message job: its states outrank any of fetch's (phase 0).
    assert done.version > processing.version > 1_000_000
    queued = by_kind[JobKind.EMBED, JobStatus.QUEUED]
    assert queued.attempts == 0
    # A queued job must lose to the same job's own processing state (version 11 at attempt 1).
    assert queued.version < 10


# --- extract -------------------------------------------------------------------------------------


async def test_extract_emits_one_contact_per_address_and_role() -> None:
    email = normalized_email()
    publisher = MemoryPublisher()
    await run_with(extract_stage(), CATALOGUE.extract, publisher).run(
        event_records(NORMALIZED, [email])
    )

    contacts = [decode(r.value, ContactExtracted) for r in publisher.on(CONTACTS)]
    assert [(c.address, c.role, c.display_name) for c in contacts] == [
        ("ada@example.org", ContactRole.FROM, "Ada Lovelace"),
        ("charles@example.org", ContactRole.TO, "Charles Babbage"),
        ("mary@example.org", ContactRole.CC, None),
        ("ada@example.org", ContactRole.REPLY_TO, "Ada Lovelace"),
    ]
    for contact in contacts:
        assert (contact.user_id, contact.message_id) == (USER, email.message_id)
        assert contact.thread_id == email.thread_id
        assert contact.occurred_at == email.sent_at
    assert {r.key for r in publisher.on(CONTACTS)} == {USER.encode()}
    assert [(s.kind, s.status) for s in states(publisher)] == [
        (JobKind.EXTRACT_CONTACTS, JobStatus.PROCESSING),
        (JobKind.EXTRACT_CONTACTS, JobStatus.DONE),
    ]


async def test_normalize_output_read_by_extract_gives_the_mail_correspondents() -> None:
    normalizing = MemoryPublisher()
    await run_with(normalize_stage(), CATALOGUE.normalize, normalizing).run(
        event_records(FETCHED, [fetched("01-latin1-quoted-printable.eml", "m1")])
    )
    handed_over = [
        Record(r.topic, 0, i, 0, r.key, r.value, r.headers)
        for i, r in enumerate(normalizing.on(NORMALIZED))
    ]
    extracting = MemoryPublisher()
    await run_with(extract_stage(), CATALOGUE.extract, extracting).run(handed_over)

    contacts = [decode(r.value, ContactExtracted) for r in extracting.on(CONTACTS)]
    assert [(c.address, c.role, c.display_name) for c in contacts] == [
        ("jose@exemplo.com.br", ContactRole.FROM, "José Conceição"),
        ("ana@inboxflow.test", ContactRole.TO, "Ana Lima"),
        ("equipe@exemplo.com.br", ContactRole.CC, "Equipe"),
        ("financeiro@exemplo.com.br", ContactRole.CC, None),
    ]
    assert {c.occurred_at for c in contacts} == {at(2026, 11, 3, 12, 14, 20)}  # the Date header


# --- embed ---------------------------------------------------------------------------------------


async def test_embed_sends_every_chunk_of_a_batch_in_one_call_and_keeps_each_vector() -> None:
    long_text = "".join(
        f"Paragraph {i:02d}: the engine weaves algebraic patterns as the loom weaves flowers.\n\n"
        for i in range(15)
    )  # 1200 characters: two chunks of at most 1000
    emails = [
        normalized_email(message_id="m1", thread_id="t1", text=long_text),
        normalized_email(message_id="m2", thread_id="t2", text="Short note."),
    ]
    provider = FakeProvider()
    publisher = MemoryPublisher()
    await run_with(embed_stage(provider), CATALOGUE.embed, publisher).run(
        event_records(NORMALIZED, emails)
    )

    assert len(provider.calls) == 1
    embedded = [decode(r.value, EmailEmbedded) for r in publisher.on(EMBEDDED)]
    assert [(e.message_id, e.thread_id) for e in embedded] == [("m1", "t1"), ("m2", "t2")]
    first, second = embedded
    assert len(first.chunks) == 2
    assert all(c.text in long_text and len(c.text) <= 1000 for c in first.chunks)
    assert first.chunks[0].text.startswith("Paragraph 00:")
    assert first.chunks[1].text.endswith(
        "Paragraph 14: the engine weaves algebraic patterns as the loom weaves flowers."
    )
    assert [c.text for c in second.chunks] == ["Short note."]
    assert provider.calls[0] == [c.text for e in embedded for c in e.chunks]
    position = 0
    for email in embedded:
        assert (email.user_id, email.model, email.dimension) == (USER, "fake:length", 3)
        assert email.embedded_at == datetime.fromtimestamp(NOW, UTC)
        assert [c.index for c in email.chunks] == list(range(len(email.chunks)))
        for chunk in email.chunks:
            # Each chunk carries the vector the provider returned for that very text.
            assert chunk.vector == [float(len(chunk.text)), float(position), 0.5]
            position += 1
    assert [s.status for s in states(publisher)][-2:] == [JobStatus.DONE] * 2


async def test_embed_provider_rate_limit_retries_the_messages_no_sooner_than_asked() -> None:
    provider = FakeProvider(RateLimitedError("429 from the API", retry_after=42.0))
    publisher = MemoryPublisher()
    sources = [
        as_record(NORMALIZED, 0, encode(normalized_email(message_id="m1"))),
        as_record(NORMALIZED, 1, b"not avro"),
        as_record(NORMALIZED, 2, encode(normalized_email(message_id="m2"))),
    ]
    await run_with(embed_stage(provider), CATALOGUE.embed, publisher).run(sources)

    long_enough = next(t for t in CATALOGUE.embed.retry_tiers if t.delay_seconds >= 42)
    retried = publisher.on(long_enough.topic)
    assert [r.value for r in retried] == [sources[0].value, sources[2].value]
    for forwarded in retried:
        headers = list(forwarded.headers)
        assert h.header_value(headers, h.ERROR_CLASS) == "rate_limit"
        assert h.header_value(headers, h.RETRY_AFTER) == "42.000"
        assert (h.header_int(headers, h.DUE_TIMESTAMP) or 0) >= (NOW + 42) * 1000
    # The unreadable neighbour was never sent to the provider: it is dead, not rate limited.
    assert [r.value for r in publisher.on(CATALOGUE.embed.dlq.name)] == [b"not avro"]
    finals = [s for s in states(publisher) if s.status is not JobStatus.PROCESSING]
    assert [(s.subject_id, s.status, s.last_error_class) for s in finals] == [
        ("m1", JobStatus.RETRYING, ErrorClass.RATE_LIMIT),
        ("m2", JobStatus.RETRYING, ErrorClass.RATE_LIMIT),
    ]
    assert publisher.on(EMBEDDED) == []


def paragraphs(count: int, tag: str = "") -> str:
    """Text of ``count`` paragraphs of about 900 characters: one chunk each."""
    sentence = f"The analytical engine{tag} weaves algebraic patterns as the loom weaves flowers. "
    return "".join(f"{i:03d} " + sentence * 11 + "\n\n" for i in range(count))


class SlowProvider:
    """Takes ``per_text`` seconds a text; a text containing ``STUCK`` never finishes.

    Deterministic stand-in for a model that is slow on one message: it notes when a call is
    abandoned, as a killed worker process would stop.
    """

    name = "fake:slow"
    dimension = 2

    def __init__(self, per_text: float = 0.002) -> None:
        self.per_text = per_text
        self.calls: list[int] = []
        self.abandoned = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(len(texts))
        try:
            if any("STUCK" in text for text in texts):
                await asyncio.Event().wait()
            await asyncio.sleep(self.per_text * len(texts))
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        return [[float(len(text)), 1.0] for text in texts]


def test_embed_refuses_chunks_no_longer_than_their_overlap_when_built() -> None:
    with pytest.raises(ValueError, match="overlap=100 with max_chars=100"):
        EmbedStage(
            serde=SERDE,
            provider=FakeProvider(),
            embedded_topic=EMBEDDED,
            timeout=5.0,
            max_chars=100,
        )


async def test_embed_keeps_the_first_chunks_of_long_mail_and_says_it_left_some_out() -> None:
    emails = [
        normalized_email(message_id="long", text=paragraphs(50)),
        normalized_email(message_id="exact", text=paragraphs(4)),
        normalized_email(message_id="empty", text=""),
    ]
    provider = FakeProvider()
    stage = EmbedStage(
        serde=SERDE, provider=provider, embedded_topic=EMBEDDED, timeout=5.0, max_chunks=4
    )
    publisher = MemoryPublisher()
    await run_with(stage, CATALOGUE.embed, publisher).run(event_records(NORMALIZED, emails))

    long, exact, empty = (decode(r.value, EmailEmbedded) for r in publisher.on(EMBEDDED))
    assert [c.index for c in long.chunks] == [0, 1, 2, 3]
    assert all(f"{i:03d} The analytical" in c.text for i, c in enumerate(long.chunks))
    assert (long.truncated, exact.truncated, empty.truncated) == (True, False, False)
    assert len(exact.chunks) == 4
    assert empty.chunks == []
    assert all(len(call) <= 8 for call in provider.calls)  # sub-batches of at most 8 chunks


async def test_embed_one_stuck_message_times_out_alone_while_long_mail_finishes() -> None:
    emails = [normalized_email(message_id=f"long-{i}", text=paragraphs(60)) for i in range(6)]
    emails.insert(2, normalized_email(message_id="stuck", text=paragraphs(40, " STUCK")))
    emails += [normalized_email(message_id=f"short-{i}", text="See you Monday.") for i in range(5)]
    provider = SlowProvider()
    stage = EmbedStage(
        serde=SERDE,
        provider=provider,
        embedded_topic=EMBEDDED,
        timeout=60.0,
        record_timeout=1.0,
        max_chunks=32,
        sub_batch=8,
        concurrency=2,
        clock=lambda: NOW,
    )
    sources = event_records(NORMALIZED, emails)
    publisher = MemoryPublisher()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_with(stage, CATALOGUE.embed, publisher).run(sources)
    elapsed = loop.time() - started

    embedded = [decode(r.value, EmailEmbedded) for r in publisher.on(EMBEDDED)]
    assert [e.message_id for e in embedded] == [
        *(f"long-{i}" for i in range(6)),
        *(f"short-{i}" for i in range(5)),
    ]
    assert all(len(e.chunks) == 32 and e.truncated for e in embedded[:6])
    # The stuck message alone takes the retry ladder, as a timeout; its call was abandoned.
    retried = [r for tier in CATALOGUE.embed.retry_tiers for r in publisher.on(tier.topic)]
    assert [r.value for r in retried] == [sources[2].value]
    assert h.header_value(list(retried[0].headers), h.ERROR_CLASS) == "timeout"
    assert provider.abandoned == 1
    finals = {s.subject_id: s for s in states(publisher) if s.status is not JobStatus.PROCESSING}
    assert finals.pop("stuck").last_error_class is ErrorClass.TIMEOUT
    assert {s.status for s in finals.values()} == {JobStatus.DONE}
    # The others ran beside it: the batch took about one deadline, not one per message.
    assert elapsed < 10 * stage.record_timeout


async def test_embed_batch_starts_no_message_after_its_own_deadline() -> None:
    emails = [normalized_email(message_id=f"m{i}", text="One chunk.") for i in range(4)]
    provider = SlowProvider(per_text=0.5)
    stage = EmbedStage(
        serde=SERDE,
        provider=provider,
        embedded_topic=EMBEDDED,
        timeout=0.7,
        record_timeout=5.0,
        sub_batch=1,  # one message per call
        concurrency=1,
    )
    publisher = MemoryPublisher()
    await run_with(stage, CATALOGUE.embed, publisher).run(event_records(NORMALIZED, emails))

    # m0 starts at 0 s and m1 at 0.5 s; m2's turn comes at 1 s, past the batch's 0.7 s.
    assert [decode(r.value, EmailEmbedded).message_id for r in publisher.on(EMBEDDED)] == [
        "m0",
        "m1",
    ]
    finals = [s for s in states(publisher) if s.status is not JobStatus.PROCESSING]
    # Not their fault: they wait their turn as a rate limit, not spending timeout attempts.
    assert [(s.subject_id, s.last_error_class) for s in finals[2:]] == [
        ("m2", ErrorClass.RATE_LIMIT),
        ("m3", ErrorClass.RATE_LIMIT),
    ]
    assert provider.calls == [1, 1]
    assert stage.timeout > stage.batch_timeout + stage.record_timeout  # the runner never cuts in


# --- undecodable input, every stage ---------------------------------------------------------------


STAGE_CASES = [
    # stage, its group, source topic, output topic, a good input, outputs per good input
    pytest.param(
        normalize_stage,
        CATALOGUE.normalize,
        FETCHED,
        NORMALIZED,
        fetched("02-alternative-reply-to.eml", "m-good"),
        1,
        id="normalize",
    ),
    pytest.param(
        extract_stage,
        CATALOGUE.extract,
        NORMALIZED,
        CONTACTS,
        normalized_email(message_id="m-good"),
        4,  # from, to, cc, reply-to
        id="extract",
    ),
    pytest.param(
        lambda: embed_stage(FakeProvider()),
        CATALOGUE.embed,
        NORMALIZED,
        EMBEDDED,
        normalized_email(message_id="m-good"),
        1,
        id="embed",
    ),
]


@pytest.mark.parametrize(("stage", "group", "source", "output", "good", "per_good"), STAGE_CASES)
async def test_undecodable_bytes_go_to_the_dead_letter_topic_and_the_stream_goes_on(
    stage: Callable[[], Stage],
    group: ConsumerGroup,
    source: str,
    output: str,
    good: Event,
    per_good: int,
) -> None:
    wrong_type = example_events()[JobStateChanged]  # valid Avro, but not what this topic carries
    batch = [
        as_record(source, 0, encode(good)),
        as_record(source, 1, b"\x00garbage, perhaps Confluent-framed"),
        as_record(source, 2, encode(wrong_type)),
        as_record(source, 3, encode(good)),
    ]
    publisher = MemoryPublisher()
    runner = run_with(stage(), group, publisher)
    await runner.run(batch)
    await runner.run([as_record(source, 4, encode(good))])  # the next batch is served as usual

    dead = publisher.on(group.dlq.name)
    assert [r.value for r in dead] == [batch[1].value, batch[2].value]
    for forwarded in dead:
        headers = list(forwarded.headers)
        assert h.header_value(headers, h.ERROR_CLASS) == "permanent"
        message = h.header_value(headers, h.EXCEPTION_MESSAGE) or ""
        assert message.startswith("UndecodableRecordError")
        assert h.header_value(headers, h.ORIGINAL_TOPIC) == source
    assert [h.header_value(list(r.headers), h.ORIGINAL_OFFSET) for r in dead] == ["1", "2"]
    assert all(not publisher.on(t.topic) for t in group.retry_tiers)
    assert len(publisher.on(output)) == 3 * per_good  # both batches' good records
    # Bytes nobody can read name no job: only the good message's job has states.
    finals = [s for s in states(publisher) if s.status is not JobStatus.PROCESSING]
    assert {s.subject_id for s in states(publisher)} == {"m-good"}
    assert [s.status for s in finals if s.kind is group_kind(group)] == [JobStatus.DONE] * 3


def group_kind(group: ConsumerGroup) -> JobKind:
    return {
        "normalize": JobKind.NORMALIZE_GOOGLE_EMAIL,
        "extract": JobKind.EXTRACT_CONTACTS,
        "embed": JobKind.EMBED,
    }[group.agent]
