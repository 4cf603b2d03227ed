"""The push receiver's pure parts: envelope decoding and the trailing-edge coalescer."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from streams.sources.push import (
    MalformedPushError,
    PushNotification,
    TrailingCoalescer,
    decode_push_envelope,
)


def _envelope(data: object, *, encode: str = "standard", **message: object) -> bytes:
    raw = json.dumps(data).encode()
    text = (
        base64.b64encode(raw).decode()
        if encode == "standard"
        else base64.urlsafe_b64encode(raw).decode().rstrip("=")
    )
    body = {
        "message": {"data": text, "messageId": "17", "attributes": {}, **message},
        "subscription": "projects/p/subscriptions/s",
    }
    return json.dumps(body).encode()


def test_decodes_a_gmail_notification() -> None:
    body = _envelope({"emailAddress": "a@b.test", "historyId": 9876543210})
    assert decode_push_envelope(body) == PushNotification(
        "a@b.test", 9876543210, "17", "projects/p/subscriptions/s"
    )


def test_accepts_url_safe_unpadded_data_and_string_history_ids() -> None:
    body = _envelope({"emailAddress": "a@b.test", "historyId": "123"}, encode="urlsafe")
    assert decode_push_envelope(body).history_id == 123


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "no 'message'"),
        (b'{"message": {}}', "no 'data'"),
        (b'{"message": {"data": "%%%"}}', "not base64-encoded JSON"),
        (_envelope([1, 2]), "not a JSON object"),
        (_envelope({"historyId": 1}), "emailAddress"),
        (_envelope({"emailAddress": "a@b.test"}), "historyId"),
        (_envelope({"emailAddress": "a@b.test", "historyId": "x1"}), "historyId"),
        (_envelope({"emailAddress": "a@b.test", "historyId": True}), "historyId"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPushError, match=message):
        decode_push_envelope(body)


class Action:
    """Records each run; a run blocks until released when ``gate`` is set."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None
        self.started = asyncio.Event()

    async def __call__(self, key: str) -> None:
        self.runs.append(key)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail


async def test_an_idle_key_runs_at_once() -> None:
    action = Action()
    coalescer = TrailingCoalescer(action, window=10.0)
    assert await coalescer.request("u") is True
    assert await coalescer.request("v") is True  # keys are independent
    assert action.runs == ["u", "v"]


async def test_calls_during_a_run_share_one_follow_up() -> None:
    action = Action()
    action.gate = asyncio.Event()
    coalescer = TrailingCoalescer(action, window=0.01)
    first = asyncio.create_task(coalescer.request("u"))
    await action.started.wait()
    burst = [asyncio.create_task(coalescer.request("u")) for _ in range(5)]
    await asyncio.sleep(0)  # let the burst register
    assert action.runs == ["u"]
    action.gate.set()
    assert await first is True
    assert await asyncio.gather(*burst) == [False] * 5
    assert action.runs == ["u", "u"]  # one follow-up for the whole burst


async def test_a_call_soon_after_a_run_waits_for_the_window() -> None:
    action = Action()
    clock = [0.0]
    coalescer = TrailingCoalescer(action, window=0.05, clock=lambda: clock[0])
    await coalescer.request("u")
    clock[0] = 0.01
    follow_up = asyncio.create_task(coalescer.request("u"))
    await asyncio.sleep(0)
    assert action.runs == ["u"]  # within the window: nothing yet
    clock[0] = 1.0
    assert await follow_up is False
    assert action.runs == ["u", "u"]


async def test_a_failed_run_fails_its_callers_and_the_next_call_runs_again() -> None:
    action = Action()
    action.fail = ConnectionError("kafka down")
    coalescer = TrailingCoalescer(action, window=0.0)
    with pytest.raises(ConnectionError, match="kafka down"):
        await coalescer.request("u")
    action.fail = None
    assert await coalescer.request("u") is True
    assert action.runs == ["u", "u"]


async def test_a_failed_follow_up_fails_every_caller_waiting_on_it() -> None:
    action = Action()
    action.gate = asyncio.Event()
    coalescer = TrailingCoalescer(action, window=0.0)
    first = asyncio.create_task(coalescer.request("u"))
    await action.started.wait()
    waiting = [asyncio.create_task(coalescer.request("u")) for _ in range(3)]
    await asyncio.sleep(0)
    action.fail = ConnectionError("kafka down")
    action.gate.set()
    outcomes = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert len(action.runs) == 2
