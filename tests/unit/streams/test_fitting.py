"""Events larger than email-normalized's max.message.bytes: cut to fit and flagged, never refused.

``fit_event`` is pure; ``normalized_event`` runs it after the parse, inline or in a CPU worker,
and the normalize stage passes the topic's limit. Sizes are always read back from the serde.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.models import (
    Address,
    Attachment,
    EmailNormalized,
    GmailMessageFetched,
    JobStatus,
)
from schemas.serde import decode, encode_body
from streams.runtime.cpu_pool import CpuPool
from streams.runtime.worker import largest_record_bytes
from streams.stages.fitting import RECORD_FRAMING_BYTES, encoded_size, fit_event, value_limit
from streams.stages.mime import (
    DEFAULT_MAX_TEXT_CHARS,
    EMAIL_NORMALIZED_AVRO,
    RawMessage,
    normalize_message,
    normalized_body,
    normalized_event,
)
from streams.stages.normalize import NormalizeStage
from tests.memory_publisher import MemoryPublisher
from tests.unit.streams.test_stages import (
    CATALOGUE,
    FETCHED,
    NORMALIZED,
    SERDE,
    USER,
    event_records,
    fetched,
    run_with,
    states,
)

NOW = datetime(2026, 3, 3, 9, 15, tzinfo=UTC)
TOPIC_LIMIT = largest_record_bytes(CATALOGUE.email_normalized)  # 16 MiB
LIMIT = value_limit(TOPIC_LIMIT, USER.encode())
MIB = 1024 * 1024


def base_event(**changes: object) -> EmailNormalized:
    event = EmailNormalized(
        user_id=USER,
        message_id="m-1",
        thread_id="t-1",
        sync_id="s-1",
        subject="Quarterly files",
        sender=Address(address="ana@example.org", name="Ana Lima"),
        authors=[Address(address="ana@example.org", name="Ana Lima")],
        to=[Address(address="bo@example.org")],
        text="Hello Bo, the files are attached.",
        snippet="Hello Bo, the files are attached.",
        size=1_000,
        message_id_header="<m-1@example.org>",
        references=["<r-1@example.org>"],
        normalized_at=NOW,
    )
    return event.model_copy(update=changes)


def many_parts_raw(parts: int, name_chars: int) -> bytes:
    """A multipart/mixed message of ``parts`` tiny attachments with ``name_chars``-long names."""
    chunks = [
        b"From: Ana Lima <ana@example.org>\r\nTo: bo@example.org\r\nSubject: many parts\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nThe files, one part each.\r\n"
    ]
    for i in range(parts):
        name = (f"{i:05d}-" + "quarterly-report-" * (name_chars // 17 + 1))[:name_chars]
        chunks.append(
            b"--B\r\nContent-Type: application/octet-stream\r\n"
            + f'Content-Disposition: attachment; filename="{name}.bin"\r\n\r\nx\r\n'.encode()
        )
    chunks.append(b"--B--\r\n")
    return b"".join(chunks)


def fetched_raw(raw: bytes) -> GmailMessageFetched:
    return GmailMessageFetched(
        user_id=USER,
        message_id="m-big",
        thread_id="t-big",
        sync_id="s-1",
        label_ids=["INBOX"],
        internal_date=NOW,
        size_estimate=len(raw),
        snippet="",
        raw=raw,
        fetched_at=NOW,
    )


def assert_cut_from(fitted: EmailNormalized, original: EmailNormalized) -> None:
    """What a fitted event may hold: prefixes of the original's content, and the flags."""
    kept = len(fitted.attachments)
    assert fitted.attachments == original.attachments[:kept]
    assert fitted.attachments_dropped == len(original.attachments) - kept
    for name in ("authors", "to", "cc", "bcc", "reply_to"):
        entries = getattr(fitted, name)
        assert entries == getattr(original, name)[: len(entries)]
    assert (
        fitted.references
        == original.references[len(original.references) - len(fitted.references) :]
    )
    assert original.text.startswith(fitted.text)
    assert original.subject.startswith(fitted.subject)
    ids = ("user_id", "message_id", "thread_id", "sync_id", "normalized_at", "size")
    assert [getattr(fitted, f) for f in ids] == [getattr(original, f) for f in ids]


# --- the reported case ---------------------------------------------------------------------------


def test_an_event_of_4900_long_named_attachments_fits_the_topic_with_entries_dropped() -> None:
    # What the 18.9 MB message of 4,900 long-named parts normalizes to: an 18.8 MiB event that
    # Kafka refused (max.message.bytes 16 MiB) and the runner dead-lettered.
    attachments = [
        Attachment(filename=f"{i:05d}-" + "x" * 4_000 + ".bin", mime_type="application/pdf", size=1)
        for i in range(4_900)
    ]
    event = base_event(attachments=attachments)
    assert encoded_size(event) > 18 * MIB

    started = time.perf_counter()
    fitted = fit_event(event, LIMIT)
    elapsed = time.perf_counter() - started

    assert encoded_size(fitted) <= LIMIT
    assert len(decode(SERDE.encode(fitted), EmailNormalized).attachments) == len(fitted.attachments)
    assert fitted.truncated
    assert 0 < fitted.attachments_dropped < 4_900
    assert fitted.attachments_dropped == 4_900 - len(fitted.attachments)
    # Only attachment entries had to go: the body, addresses and References are whole.
    assert (fitted.text, fitted.to, fitted.references) == (event.text, event.to, event.references)
    # A cut frees only a little more than the excess: nearly all that fits is kept.
    assert encoded_size(fitted) > LIMIT - 8 * 1024
    assert elapsed < 5.0


def test_a_message_of_many_long_named_parts_is_published_cut_not_refused() -> None:
    raw = many_parts_raw(600, 1_000)  # 0.66 MB of raw mail, a 0.6 MB event
    whole = normalized_event(fetched_raw(raw), NOW)
    limit = 256 * 1024
    assert encoded_size(whole) > limit

    fitted = normalized_event(fetched_raw(raw), NOW, limit)

    assert encoded_size(fitted) <= limit
    assert fitted.truncated
    assert fitted.attachments_dropped > 0
    assert fitted.text == "The files, one part each."
    assert_cut_from(fitted, whole)


def test_the_worker_writes_the_schema_of_email_normalized() -> None:
    assert EmailNormalized.avro_file == EMAIL_NORMALIZED_AVRO


def test_the_body_a_worker_sends_is_the_fitted_event_encoded() -> None:
    # normalized_body skips the model for an event that fits; one that does not is cut as
    # normalized_event cuts it.
    big = fetched_raw(many_parts_raw(600, 1_000))
    for message in (big, fetched("03-mixed-attachments.eml", "m1")):
        for limit in (None, 256 * 1024):
            expected = encode_body(normalized_event(message, NOW, limit))
            assert normalized_body(RawMessage.of(message), NOW, limit) == expected


def test_a_small_message_is_unchanged_and_not_flagged() -> None:
    message = fetched("03-mixed-attachments.eml", "m1")
    whole = normalized_event(message, NOW)

    fitted = normalized_event(message, NOW, LIMIT)

    assert fitted == whole
    assert (fitted.truncated, fitted.attachments_dropped) == (False, 0)
    assert len(fitted.attachments) == 2


def test_the_200k_character_text_cut_sets_truncated() -> None:
    head = b"From: a@example.org\r\nSubject: long\r\nContent-Type: text/plain\r\n\r\n"
    long = normalize_message(head + b"word " * 60_000, message_id="m", thread_id="t", label_ids=[])
    short = normalize_message(head + b"word " * 1_000, message_id="m", thread_id="t", label_ids=[])

    assert long.truncated
    assert len(long.text) <= DEFAULT_MAX_TEXT_CHARS
    assert not short.truncated
    assert normalized_event(fetched_raw(head + b"word " * 60_000), NOW).truncated


# --- the order of the cuts -----------------------------------------------------------------------


def test_lists_are_capped_before_the_text_is_cut_and_references_keep_the_nearest() -> None:
    to = [Address(address=f"person-{i}@example.org", name=f"Person {i}") for i in range(5_000)]
    references = [f"<ref-{i}@example.org>" for i in range(5_000)]
    event = base_event(to=to, cc=to[:100], references=references, text="body " * 2_000)
    limit = encoded_size(event) - 100_000

    fitted = fit_event(event, limit)

    assert encoded_size(fitted) <= limit
    assert fitted.truncated
    assert fitted.text == event.text
    assert fitted.cc == event.cc  # shorter than the cap
    assert 0 < len(fitted.to) < 5_000
    assert len(fitted.references) == len(fitted.to)  # one cap for every list
    assert fitted.references[-1] == "<ref-4999@example.org>"
    assert_cut_from(fitted, event)


def test_text_is_cut_by_utf8_bytes_at_a_character_boundary() -> None:
    event = base_event(text="€uro " * 100_000, attachments=[], to=[], references=[])
    limit = 200_000

    fitted = fit_event(event, limit)

    assert encoded_size(fitted) <= limit
    assert fitted.truncated
    assert event.text.startswith(fitted.text)
    assert limit - 2_000 < encoded_size(fitted)


def test_identity_fields_over_the_limit_give_up_without_raising() -> None:
    event = base_event(message_id="m" * 5_000, text="t" * 10_000)

    fitted = fit_event(event, 1_000)

    assert fitted.truncated
    assert (fitted.text, fitted.subject, fitted.sender) == ("", "", None)
    assert fitted.message_id == event.message_id


def test_value_limit_leaves_room_for_framing_and_key() -> None:
    assert value_limit(16 * MIB, b"user-1") == 16 * MIB - RECORD_FRAMING_BYTES - 6


# --- property ------------------------------------------------------------------------------------

_CHARS = st.characters(blacklist_categories=("Cs",))  # lone surrogates are no Unicode text
_ADDRESSES = st.lists(
    st.builds(
        Address,
        address=st.text(_CHARS, min_size=1, max_size=40),
        name=st.none() | st.text(_CHARS, max_size=60),
    ),
    max_size=300,
)
_ATTACHMENTS = st.lists(
    st.builds(
        Attachment,
        filename=st.text(_CHARS, max_size=300),
        mime_type=st.sampled_from(["application/pdf", "image/png", "text/calendar"]),
        size=st.integers(0, 2**31 - 1),
        attachment_id=st.none() | st.text(_CHARS, max_size=80),
    ),
    max_size=400,
)


@st.composite
def _events_and_limits(draw: st.DrawFn) -> tuple[EmailNormalized, int]:
    """An event with every cuttable part, and a limit mostly below its size (at least 2,000)."""
    text = draw(st.text(_CHARS, max_size=40)) * draw(st.integers(0, 20_000))
    event = base_event(
        subject=draw(st.text(_CHARS, max_size=2_000)),
        authors=draw(_ADDRESSES),
        to=draw(_ADDRESSES),
        cc=draw(_ADDRESSES),
        bcc=draw(_ADDRESSES),
        reply_to=draw(_ADDRESSES),
        references=draw(st.lists(st.text(_CHARS, max_size=80), max_size=500)),
        labels=draw(st.lists(st.text(_CHARS, max_size=20), max_size=20)),
        attachments=draw(_ATTACHMENTS),
        text=text,
        snippet=text[:200],
    )
    size = encoded_size(event)
    return event, draw(st.integers(2_000, max(2_000, size + size // 5)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_events_and_limits())
def test_a_fitted_event_never_exceeds_the_limit(case: tuple[EmailNormalized, int]) -> None:
    event, limit = case

    fitted = fit_event(event, limit)

    assert encoded_size(fitted) <= limit
    if encoded_size(event) <= limit:
        assert fitted is event
    else:
        assert fitted.truncated
        assert_cut_from(fitted, event)
    assert decode(SERDE.encode(fitted), EmailNormalized) == fitted


# --- the stage -----------------------------------------------------------------------------------


async def test_the_stage_publishes_an_oversized_message_cut_to_the_topic_limit() -> None:
    max_record_bytes = 300 * 1024
    stage = NormalizeStage(
        serde=SERDE,
        normalized_topic=NORMALIZED,
        timeout=60.0,
        max_record_bytes=max_record_bytes,
        clock=lambda: 1_794_355_200.0,
    )
    publisher = MemoryPublisher()
    sources = event_records(FETCHED, [fetched_raw(many_parts_raw(600, 1_000))])

    await run_with(stage, CATALOGUE.normalize, publisher).run(sources)

    [out] = publisher.on(NORMALIZED)
    assert len(out.key) + len(out.value) <= max_record_bytes - RECORD_FRAMING_BYTES
    event = decode(out.value, EmailNormalized)
    assert event.truncated
    assert event.attachments_dropped > 0
    assert not publisher.on(CATALOGUE.normalize.dlq.name)
    statuses = {s.status for s in states(publisher)}
    assert JobStatus.DONE in statuses
    assert not statuses & {JobStatus.DEAD, JobStatus.ERROR, JobStatus.RETRYING}


@pytest.fixture(scope="module")
def pool() -> Iterator[CpuPool]:
    running = CpuPool(1, name="test-fitting", preload=["streams.stages.mime"])
    running.start()
    try:
        yield running
    finally:
        running.shutdown()


async def test_the_stage_fits_events_parsed_in_a_cpu_worker(pool: CpuPool) -> None:
    max_record_bytes = 300 * 1024
    stage = NormalizeStage(
        serde=SERDE,
        normalized_topic=NORMALIZED,
        timeout=60.0,
        pool=pool,
        inline_max_bytes=0,
        max_record_bytes=max_record_bytes,
        clock=lambda: 1_794_355_200.0,
    )
    publisher = MemoryPublisher()
    sources = event_records(FETCHED, [fetched_raw(many_parts_raw(600, 1_000))])

    await run_with(stage, CATALOGUE.normalize, publisher).run(sources)

    [out] = publisher.on(NORMALIZED)
    assert len(out.key) + len(out.value) <= max_record_bytes - RECORD_FRAMING_BYTES
    assert decode(out.value, EmailNormalized).truncated
