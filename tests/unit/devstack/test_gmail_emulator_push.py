"""Emulator push without sockets: watch/stop handlers, label filters, tokens, envelopes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime

import pytest
from google.auth import jwt

from devstack.gmail_emulator.api import ApiRequest, EmulatorState
from devstack.gmail_emulator.batch import build_batch_response
from devstack.gmail_emulator.mailbox import HistoryRecord
from devstack.gmail_emulator.push import OidcSigner, Watch, push_envelope

USER = "push@inboxflow.test"
TOPIC = "projects/inboxflow-test/topics/gmail"
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000


def _call(state: EmulatorState, path: str, body: object = None) -> tuple[int, dict[str, object]]:
    raw = b"" if body is None else json.dumps(body).encode()
    request = ApiRequest("POST", f"/gmail/v1/users/{USER}/{path}", {}, raw)
    response = asyncio.run(state.handle(request))
    return response.status, response.body


def test_watch_answers_history_id_and_a_seven_day_expiration() -> None:
    state = EmulatorState()
    box = state.add_user(USER)
    before = int(time.time() * 1000)
    status, body = _call(state, "watch", {"topicName": TOPIC, "labelIds": ["INBOX"]})
    assert status == 200
    assert body["historyId"] == str(box.history_id)
    assert isinstance(body["expiration"], str)
    assert before + SEVEN_DAYS_MS <= int(body["expiration"]) <= before + SEVEN_DAYS_MS + 5_000
    assert state.watches[USER] == Watch(TOPIC, ("INBOX",), "include", int(body["expiration"]))
    assert state.accounting.snapshot().units == 100


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"topicName": "gmail"}, "Invalid topicName"),
        ({"topicName": "projects/p/subscriptions/s"}, "Invalid topicName"),
        ({}, "Invalid topicName"),
        ({"topicName": TOPIC, "labelFilterBehavior": "sometimes"}, "label_filter_behavior"),
        ({"topicName": TOPIC, "labelIds": "INBOX"}, "label_ids"),
    ],
)
def test_watch_refuses_bad_arguments_like_google(body: dict[str, object], message: str) -> None:
    state = EmulatorState()
    state.add_user(USER)
    status, answer = _call(state, "watch", body)
    assert status == 400
    error = answer["error"]
    assert isinstance(error, dict)
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["errors"][0]["reason"] == "invalidArgument"
    assert message in error["message"]
    assert USER not in state.watches


def test_stop_answers_204_and_ends_the_watch() -> None:
    state = EmulatorState()
    state.add_user(USER)
    _call(state, "watch", {"topicName": TOPIC})
    status, _ = _call(state, "stop")
    assert status == 204
    assert USER not in state.watches
    assert _call(state, "stop")[0] == 204  # stopping twice is fine
    assert state.accounting.snapshot().calls_by_method["users.stop"] == 2
    assert state.accounting.snapshot().units == 100 + 2 * 50


def _record(labels: tuple[str, ...] = (), message_labels: tuple[str, ...] = ()) -> HistoryRecord:
    return HistoryRecord(10, "labelAdded", "m1", "t1", labels, message_labels)


@pytest.mark.parametrize(
    ("watch", "record", "covered"),
    [
        (Watch(TOPIC, (), "include", 2_000), _record(message_labels=("SPAM",)), True),
        (Watch(TOPIC, ("INBOX",), "include", 2_000), _record(message_labels=("INBOX",)), True),
        (Watch(TOPIC, ("INBOX",), "include", 2_000), _record(message_labels=("SPAM",)), False),
        (Watch(TOPIC, ("INBOX",), "include", 2_000), _record(labels=("INBOX",)), True),
        (Watch(TOPIC, ("SPAM",), "exclude", 2_000), _record(message_labels=("SPAM",)), False),
        (Watch(TOPIC, ("SPAM",), "exclude", 2_000), _record(message_labels=("INBOX",)), True),
        (Watch(TOPIC, (), "include", 1_000), _record(message_labels=("INBOX",)), False),
    ],
)
def test_watch_covers_changes_by_label_filter_and_expiry(
    watch: Watch, record: HistoryRecord, covered: bool
) -> None:
    assert watch.covers(record, now_ms=1_000) is covered


def test_mailbox_changes_reach_the_notifier_only_when_watched() -> None:
    state = EmulatorState()
    box = state.add_user(USER)
    seen: list[tuple[str, int]] = []
    state.push.changed = lambda user, history_id: seen.append((user, history_id))  # type: ignore[method-assign]
    box.add(b"Subject: before\r\n\r\n")
    _call(state, "watch", {"topicName": TOPIC, "labelIds": ["INBOX"]})
    inbox = box.add(b"Subject: in\r\n\r\n", ["INBOX"])
    box.add(b"Subject: spam\r\n\r\n", ["SPAM"])
    box.modify(inbox.id, add=["STARRED"])
    box.delete(inbox.id)
    # The INBOX message's add, label change and deletion; not the change before the watch, not
    # the SPAM message.
    assert [user for user, _ in seen] == [USER] * 3
    ids = [history_id for _, history_id in seen]
    assert ids == sorted(set(ids))
    assert ids[-1] == box.history_id


def test_tokens_verify_against_the_published_certificate() -> None:
    signer = OidcSigner()
    token = signer.token(audience="https://push.example/gmail/push", email="sa@p.iam.test")
    claims = jwt.decode(token, certs=signer.certs(), audience="https://push.example/gmail/push")
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["email"] == "sa@p.iam.test"
    assert claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 3600
    other = OidcSigner(key_id=signer.key_id)
    with pytest.raises(ValueError, match="signature"):
        jwt.decode(token, certs=other.certs(), audience="https://push.example/gmail/push")


def test_envelope_carries_the_notification_as_base64_json() -> None:
    published = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    envelope = push_envelope(
        USER, 12345, message_id="42", subscription="projects/p/subscriptions/s", published=published
    )
    message = envelope["message"]
    assert json.loads(base64.b64decode(message["data"])) == {
        "emailAddress": USER,
        "historyId": 12345,
    }
    assert message["messageId"] == "42"
    assert message["publishTime"] == "2026-01-02T03:04:05.678000Z"
    assert envelope["subscription"] == "projects/p/subscriptions/s"


def test_batch_answers_204_without_a_body() -> None:
    _, payload = build_batch_response([("<item0>", 204, {}, {})])
    assert b"HTTP/1.1 204 No Content\r\n\r\n\r\n--batch_" in payload
    assert b"application/json" not in payload
