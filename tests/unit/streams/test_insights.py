"""UserInsights: each insight's definition, idempotency, caps, JSON round trips, should_emit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.insights import (
    CorrespondentCount,
    DayVolume,
    InsightCaps,
    ReplyLatency,
    UserInsights,
    should_emit,
)
from streams.stages.mime import EmailAddress, NormalizedEmail

ME = "me@example.com"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def mail(
    message_id: str,
    *,
    thread: str = "t1",
    sender: str | None = "bob@example.com",
    to: tuple[str, ...] = (ME,),
    cc: tuple[str, ...] = (),
    at: datetime | None = T0,
    labels: tuple[str, ...] = ("INBOX",),
    name: str | None = None,
    subject: str = "s",
) -> NormalizedEmail:
    return NormalizedEmail(
        message_id=message_id,
        thread_id=thread,
        labels=labels,
        subject=subject,
        sender=EmailAddress(sender, name) if sender else None,
        authors=(EmailAddress(sender, name),) if sender else (),
        to=tuple(EmailAddress(a) for a in to),
        cc=tuple(EmailAddress(a) for a in cc),
        bcc=(),
        reply_to=(),
        sent_at=at,
        text="",
        snippet="",
        size=1,
        attachments=(),
        message_id_header=None,
        in_reply_to=None,
        references=(),
    )


def sent(message_id: str, *, to: tuple[str, ...], **kwargs: object) -> NormalizedEmail:
    return mail(message_id, sender=ME, to=to, labels=("SENT",), **kwargs)  # type: ignore[arg-type]


def test_top_correspondents_count_received_and_sent() -> None:
    state = UserInsights.for_user([ME])
    state.add_email(mail("1", sender="bob@example.com", name="Bob"))
    state.add_email(mail("2", sender="Bob@Example.com"))
    state.add_email(sent("3", to=("bob@example.com", "carol@example.com"), cc=("bob@example.com",)))
    state.add_email(mail("4", sender="carol@example.com"))
    state.add_email(mail("5", sender="dave@example.com"))
    state.add_email(mail("6", sender="not an address"))

    top = state.snapshot(NOW, top_n=2).top_correspondents

    assert top == (
        CorrespondentCount("bob@example.com", "Bob", received=2, sent=1),
        CorrespondentCount("carol@example.com", None, received=1, sent=1),
    )
    assert state.messages_seen == 6


def test_user_address_is_learned_from_sent_messages() -> None:
    state = UserInsights.for_user()
    state.add_email(mail("1", sender="alias@example.com", to=("bob@example.com",)))
    state.add_email(sent("2", to=("bob@example.com",)))
    state.add_email(
        mail("3", sender="alias@example.com", to=("bob@example.com",), labels=("SENT",))
    )

    snapshot = state.snapshot(NOW)

    assert snapshot.user_addresses == ("alias@example.com", ME)
    # The alias counted as a correspondent before it was known is no longer reported.
    assert [c.address for c in snapshot.top_correspondents] == ["bob@example.com"]
    assert snapshot.top_correspondents[0].sent == 2


def test_volume_by_day_uses_utc_days() -> None:
    eastern = timezone(timedelta(hours=-5))
    state = UserInsights.for_user([ME])
    state.add_email(mail("1", at=datetime(2026, 3, 1, 20, 0, tzinfo=eastern)))  # 3/2 01:00 UTC
    state.add_email(mail("2", at=datetime(2026, 3, 2, 23, 59, tzinfo=UTC)))
    state.add_email(sent("3", to=("bob@example.com",), at=datetime(2026, 3, 3, 0, 0, tzinfo=UTC)))
    state.add_email(mail("4", at=None))

    snapshot = state.snapshot(NOW)
    assert snapshot.volume_by_day == (
        DayVolume("2026-03-02", received=2, sent=0),
        DayVolume("2026-03-03", received=0, sent=1),
    )
    assert snapshot.window_start == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    assert snapshot.generated_at == NOW
    assert snapshot.to_dict()["volume_by_day"][0] == {
        "day": "2026-03-02",
        "messages": 2,
        "received": 2,
        "sent": 0,
    }
    assert UserInsights.for_user().snapshot(NOW).window_start is None


def conversation() -> list[NormalizedEmail]:
    h = timedelta(hours=1)
    return [
        mail("a1", thread="t1", sender="bob@example.com", at=T0),
        sent("a2", thread="t1", to=("bob@example.com",), at=T0 + 1 * h),  # user replies in 1h
        mail("a3", thread="t1", sender="bob@example.com", at=T0 + 3 * h),  # bob replies in 2h
        sent("a4", thread="t1", to=("bob@example.com",), at=T0 + 6 * h),  # user replies in 3h
        mail("a5", thread="t1", sender="bob@example.com", at=T0 + 7 * h),  # bob again: 1h
        mail("b1", thread="t2", sender="carol@example.com", at=T0),
        mail("b2", thread="t2", sender="dave@example.com", at=T0 + h),  # not with the user
        sent("b3", thread="t2", to=("dave@example.com",), at=T0 + 5 * h),  # user to dave: 4h
        mail("c1", thread="t3", sender="erin@example.com", at=T0),
        mail("c2", thread="t3", sender="erin@example.com", at=T0 + h),  # same sender: no reply
    ]


def test_reply_latency_medians_per_participant() -> None:
    state = UserInsights.for_user([ME])
    for email in conversation():
        state.add_email(email)

    assert state.snapshot(NOW).reply_latency == (
        ReplyLatency("bob@example.com", 7200.0, 2, 5400.0, 2),
        ReplyLatency("dave@example.com", 14400.0, 1, None, 0),
    )


def test_reply_latency_does_not_depend_on_arrival_order() -> None:
    forward = UserInsights.for_user([ME])
    backward = UserInsights.for_user([ME])
    for email in conversation():
        forward.add_email(email)
    for email in reversed(conversation()):
        backward.add_email(email)
    assert forward.snapshot(NOW) == backward.snapshot(NOW)


def test_unanswered_threads() -> None:
    state = UserInsights.for_user([ME])
    day = timedelta(days=1)
    state.add_email(mail("old", thread="waiting", at=NOW - 5 * day))
    state.add_email(mail("older", thread="waiting-longer", at=NOW - 6 * day, subject="Latest?"))
    state.add_email(mail("oldest", thread="waiting-longer", at=NOW - 8 * day, subject="First"))
    state.add_email(mail("q", thread="answered", at=NOW - 5 * day))
    state.add_email(sent("r", thread="answered", to=("bob@example.com",), at=NOW - 4 * day))
    state.add_email(mail("new", thread="recent", at=NOW - timedelta(hours=3)))
    state.add_email(
        mail("promo", thread="promo", at=NOW - 9 * day, labels=("CATEGORY_PROMOTIONS",))
    )
    state.add_email(mail("x", thread="nosender", sender=None, at=NOW - 9 * day))

    snapshot = state.snapshot(NOW, unanswered_after=timedelta(days=2), max_unanswered=1)

    assert snapshot.unanswered_total == 2
    assert [u.thread_id for u in snapshot.unanswered] == ["waiting-longer"]
    only = snapshot.unanswered[0]
    assert only.message_id == "older"
    assert only.subject == "Latest?"
    assert only.from_address == "bob@example.com"
    assert only.received_at == NOW - 6 * day
    assert only.waiting_seconds == 6 * 86400


def test_redelivered_message_is_not_counted_twice() -> None:
    state = UserInsights.for_user([ME])
    assert state.add_email(mail("1")) is True
    before = state.snapshot(NOW)
    assert state.add_email(mail("1")) is False
    assert state.snapshot(NOW) == before


def test_json_round_trip_preserves_state() -> None:
    state = UserInsights.for_user([ME])
    for email in conversation():
        state.add_email(email)
    restored = UserInsights.from_json(state.to_json())
    assert restored.to_dict() == state.to_dict()
    assert restored.snapshot(NOW) == state.snapshot(NOW)
    assert restored.add_email(conversation()[0]) is False
    json.dumps(state.snapshot(NOW).to_dict())  # the snapshot is JSON-ready too


@pytest.mark.parametrize(
    "data",
    [
        '{"version": 99}',
        "[]",
        '{"version": 1, "user_addresses": []}',
        '{"version": 1, "user_addresses": [], "messages_seen": 0, "seen_ids": [],'
        ' "correspondents": {"a@b.c": [null, "x", 0, 0]}, "volume": {}, "threads": {}}',
        "not json",
    ],
)
def test_malformed_state_raises_value_error(data: str) -> None:
    with pytest.raises(ValueError, match=r"insights state|Expecting value"):
        UserInsights.from_json(data)


def test_caps_bound_the_state() -> None:
    caps = InsightCaps(
        threads=10, messages_per_thread=3, correspondents=10, days=5, seen_ids=20, user_addresses=2
    )
    state = UserInsights.for_user([ME], caps=caps)
    for i in range(300):
        state.add_email(
            mail(
                f"m{i}",
                thread=f"t{i % 40}",
                sender=f"user{i % 50}@example.com",
                at=T0 + timedelta(hours=7 * i),
                labels=("SENT",) if i % 97 == 0 else ("INBOX",),
            )
        )
    data = state.to_dict()
    assert len(data["threads"]) <= 10
    assert all(len(messages) <= 3 for messages in data["threads"].values())
    assert len(data["correspondents"]) <= 10
    assert len(data["volume"]) <= 5
    assert len(data["seen_ids"]) <= 20
    assert len(data["user_addresses"]) <= 2
    assert state.messages_seen == 300
    # The newest days and threads are the ones kept.
    assert max(data["volume"]) == (T0 + timedelta(hours=7 * 299)).date().isoformat()
    assert "t19" in data["threads"]  # i=299 -> thread t19


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (None, NOW, True),
        (NOW - timedelta(minutes=59), NOW, False),
        (NOW - timedelta(hours=1), NOW, True),
        (NOW + timedelta(days=1), NOW, True),
    ],
)
def test_should_emit(last: datetime | None, now: datetime, expected: bool) -> None:
    assert should_emit(last, now, timedelta(hours=1)) is expected


_received = st.builds(
    mail,
    st.integers(0, 30).map(lambda i: f"m{i}"),
    thread=st.sampled_from(["t1", "t2", "t3"]),
    sender=st.sampled_from([ME, "bob@example.com", "carol@example.com", None, "bad"]),
    to=st.sampled_from([(ME,), ("bob@example.com",), ("carol@example.com", ME), ()]),
    at=st.none() | st.integers(0, 10_000).map(lambda s: T0 + timedelta(minutes=s)),
    labels=st.sampled_from([("INBOX",), ("CATEGORY_SOCIAL",), ()]),
)
_sent = st.builds(
    sent,
    st.integers(0, 30).map(lambda i: f"m{i}"),
    thread=st.sampled_from(["t1", "t2", "t3"]),
    to=st.sampled_from([("bob@example.com",), ("carol@example.com", "bob@example.com")]),
    at=st.none() | st.integers(0, 10_000).map(lambda s: T0 + timedelta(minutes=s)),
)
_emails = _received | _sent


@settings(max_examples=200, deadline=None)
@given(st.lists(_emails, max_size=40), st.randoms(use_true_random=False))
def test_state_is_order_independent_serializable_and_bounded(
    emails: list[NormalizedEmail], random: object
) -> None:
    # Distinct ids so that the order cannot decide which duplicate wins.
    unique = list({e.message_id: e for e in emails}.values())
    shuffled = unique[:]
    random.shuffle(shuffled)  # type: ignore[attr-defined]
    caps = InsightCaps(threads=5, messages_per_thread=4)
    a, b = UserInsights.for_user([ME], caps=caps), UserInsights.for_user([ME], caps=caps)
    for email in unique:
        a.add_email(email)
    for email in shuffled:
        b.add_email(email)

    snap = a.snapshot(NOW)
    assert snap.messages_seen == len(unique)
    assert sum(v.received + v.sent for v in snap.volume_by_day) == sum(
        1 for e in unique if e.sent_at is not None
    )
    assert all(len(m) <= 4 for m in a.to_dict()["threads"].values())
    assert UserInsights.from_json(a.to_json(), caps).snapshot(NOW) == snap
    assert a.to_json() == UserInsights.from_json(a.to_json(), caps).to_json()
    # With the user's address known up front, nothing depends on arrival order.
    assert b.snapshot(NOW) == snap


@settings(max_examples=100, deadline=None)
@given(st.lists(_emails, max_size=40))
def test_unknown_user_state_round_trips(emails: list[NormalizedEmail]) -> None:
    state = UserInsights.for_user()
    for email in emails:
        state.add_email(email)
    assert UserInsights.from_json(state.to_json()).snapshot(NOW) == state.snapshot(NOW)
