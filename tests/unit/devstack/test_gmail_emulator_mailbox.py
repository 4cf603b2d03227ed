"""Emulator internals without sockets: generator, mailbox, history, quota buckets, batch wire."""

from __future__ import annotations

import pytest

from devstack.gmail_emulator.batch import build_batch_response, parse_batch
from devstack.gmail_emulator.generator import generate_messages
from devstack.gmail_emulator.mailbox import HistoryExpiredError, ListQuery, Mailbox
from devstack.gmail_emulator.quota import QuotaConfig, QuotaModel


def test_generator_is_deterministic_and_varied() -> None:
    first = generate_messages(9, 200, "me@example.com")
    assert first == generate_messages(9, 200, "me@example.com")
    assert first != generate_messages(10, 200, "me@example.com")
    blob = b"\n".join(m.raw for m in first)
    for needle in (b"multipart/alternative", b"multipart/mixed", b"=?utf-8?", b"koi8-r",
                   b"text/html", b"In-Reply-To", b"Content-Disposition: attachment"):  # fmt: skip
        assert needle in blob, needle


def test_threads_follow_references_and_history_moves() -> None:
    box = Mailbox("me@example.com")
    start = box.history_id
    parent = box.add(b"Message-ID: <p@x>\r\nSubject: a\r\n\r\nx")
    child = box.add(b"Message-ID: <c@x>\r\nIn-Reply-To: <p@x>\r\nSubject: Re: a\r\n\r\ny")
    assert child.thread_id == parent.thread_id
    assert [r.type for r in box.history_since(start)] == ["messageAdded", "messageAdded"]
    box.modify(child.id, add=["STARRED"])
    box.delete(parent.id)
    assert [r.type for r in box.history_since(child.history_id - 1)][-1] == "messageDeleted"
    box.expire_history()
    with pytest.raises(HistoryExpiredError):
        box.history_since(start)


def test_list_excludes_spam_and_trash_unless_asked() -> None:
    box = Mailbox("me@example.com")
    box.add(b"Subject: a\r\n\r\n", ["INBOX"], 1000)
    box.add(b"Subject: b\r\n\r\n", ["SPAM"], 2000)
    assert len(box.list(ListQuery())) == 1
    assert len(box.list(ListQuery(include_spam_trash=True))) == 2
    assert len(box.list(ListQuery(q="label:spam"))) == 1


def test_user_bucket_refuses_with_a_retry_time() -> None:
    model = QuotaModel(QuotaConfig(user_units_per_window=100, window_seconds=1.0))
    for _ in range(5):
        assert model.admit("u", "users.messages.get", 0.0, 1000.0) is None
        model.release("u")
    throttle = model.admit("u", "users.messages.get", 0.0, 1000.0)
    assert throttle is not None
    assert throttle.kind == "user"
    assert throttle.retry_at == pytest.approx(1000.2)
    assert model.admit("u", "users.messages.get", 0.3, 1000.3) is None


def test_batch_wire_round_trip() -> None:
    body = (
        b"--XX\r\nContent-Type: application/http\r\nContent-ID: <abc + 1>\r\n\r\n"
        b"GET /gmail/v1/users/me/profile?alt=json HTTP/1.1\nHost: h\n\n\r\n--XX--\r\n"
    )
    [inner] = parse_batch('multipart/mixed; boundary="XX"', body)
    assert (inner.method, inner.path, inner.query, inner.content_id) == (
        "GET", "/gmail/v1/users/me/profile", "alt=json", "<abc + 1>",
    )  # fmt: skip
    content_type, payload = build_batch_response([(inner.content_id, 200, {"ok": 1}, {})])
    assert content_type.startswith("multipart/mixed; boundary=")
    assert b"Content-ID: <response-abc + 1>" in payload
    assert b"HTTP/1.1 200 OK\r\n" in payload
