"""The byte gate: deliveries into faust's buffer wait while an agent holds its limit in bytes.

No broker: the gate is driven the way faust's delivery path and the agent's reader drive it, and
the gated topic is built on an App that is never started.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import faust
import pytest

from streams.runtime import byte_gate
from streams.runtime.byte_gate import EVENT_OVERHEAD_BYTES, ByteGate, GatedTopic, message_bytes


@dataclass
class Window:
    bytes: int = 0


@dataclass
class Queue:
    size: int = 0

    def qsize(self) -> int:
        return self.size


@dataclass
class FakeMessage:
    value: bytes | None
    key: bytes | None = b"user"


async def waiting(task: asyncio.Task[None]) -> bool:
    """Let the loop run a few rounds; True while ``task`` has not finished."""
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


def test_a_record_weighs_its_key_value_and_objects() -> None:
    assert message_bytes(FakeMessage(b"x" * 100)) == 104 + EVENT_OVERHEAD_BYTES  # type: ignore[arg-type]
    assert message_bytes(FakeMessage(None, None)) == EVENT_OVERHEAD_BYTES  # type: ignore[arg-type]


async def test_deliveries_go_in_while_the_agent_holds_less_than_its_limit() -> None:
    gate = ByteGate(1000, Window())
    for _ in range(3):
        await gate.admit(300)
    await gate.admit(300)  # 900 held: under the line, so this one crosses it

    assert (gate.held, gate.peak, gate.waits) == (1200, 1200, 0)


async def test_a_delivery_waits_at_the_limit_until_acked_records_leave_the_window() -> None:
    window = Window()
    gate = ByteGate(1000, window)
    for _ in range(4):  # the reader moves each record into the window
        await gate.admit(250)
        gate.reading(250)
        window.bytes += 250
        gate.read(250)
    assert gate.held == 1000

    delivery = asyncio.create_task(gate.admit(250))
    assert await waiting(delivery)
    window.bytes -= 250  # a batch was acked and released
    gate.changed()
    await asyncio.wait_for(delivery, 1)

    assert (gate.held, gate.waits, gate.peak) == (1000, 1, 1000)


async def test_records_in_faust_buffer_count_until_the_reader_takes_them() -> None:
    window = Window()
    gate = ByteGate(1000, window)
    await gate.admit(600)
    await gate.admit(600)  # both in faust's buffer: 1,200 held
    delivery = asyncio.create_task(gate.admit(100))
    assert await waiting(delivery)

    gate.reading(600)  # the reader moves one into the window: still 1,200 held
    window.bytes += 600
    gate.read(600)
    assert await waiting(delivery)
    window.bytes -= 600  # acked
    gate.changed()
    await asyncio.wait_for(delivery, 1)
    assert gate.held == 700


async def test_a_record_larger_than_the_limit_gets_in_alone() -> None:
    window = Window()
    gate = ByteGate(1000, window)
    await gate.admit(5000)
    delivery = asyncio.create_task(gate.admit(10))
    assert await waiting(delivery)

    gate.reading(5000)
    window.bytes += 5000
    gate.read(5000)
    window.bytes = 0
    gate.changed()
    await asyncio.wait_for(delivery, 1)
    assert gate.held == 10


async def test_bytes_faust_dropped_at_a_rebalance_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(byte_gate, "RESYNC_SECONDS", 0.01)
    queue = Queue(size=4)
    gate = ByteGate(1000)
    gate.attach(Window(), queue)
    for _ in range(4):
        await gate.admit(250)
    delivery = asyncio.create_task(gate.admit(250))
    assert await waiting(delivery)

    queue.size = 0  # faust cleared its buffer: nobody reads nor acks those four
    await asyncio.wait_for(delivery, 1)
    assert gate.held == 250


async def test_a_resync_keeps_the_record_the_reader_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(byte_gate, "RESYNC_SECONDS", 0.01)
    queue = Queue(size=0)
    window = Window(bytes=900)  # full of taken records the stage is working on
    gate = ByteGate(1000)
    gate.attach(window, queue)
    await gate.admit(200)  # the reader takes it from faust and waits for room in the window
    gate.reading(200)
    delivery = asyncio.create_task(gate.admit(50))

    assert await waiting(delivery)
    await asyncio.sleep(0.05)  # a few resyncs: faust's buffer is empty, the reader's record stays
    assert not delivery.done()
    assert gate.held == 1100
    delivery.cancel()


async def test_a_cancelled_delivery_counts_nothing() -> None:
    window = Window(bytes=1000)
    gate = ByteGate(1000, window)
    delivery = asyncio.create_task(gate.admit(300))
    assert await waiting(delivery)
    delivery.cancel()  # faust cancels a waiting delivery when a rebalance suspends the flow
    with pytest.raises(asyncio.CancelledError):
        await delivery

    assert gate.held == 1000


async def test_the_topic_and_the_clones_agents_iterate_deliver_through_the_gate() -> None:
    app = faust.App("byte-gate-unit", broker="kafka://127.0.0.1:9", store="memory://")
    window = Window(bytes=1000)
    gate = ByteGate(1000, window)
    topic = GatedTopic(app, topics=["t"], key_serializer="raw", value_serializer="raw", gate=gate)
    clone = topic.clone(is_iterator=True)
    message = faust.types.Message(
        topic="t",
        partition=0,
        offset=7,
        timestamp=0.0,
        timestamp_type=0,
        headers=[],
        key=b"k",
        value=b"v" * 10,
        checksum=None,
    )

    assert clone.gate is gate
    decoding = asyncio.create_task(clone.decode(message, propagate=True))
    assert await waiting(decoding)  # the agent holds its limit: delivery waits
    window.bytes = 0
    gate.changed()
    event = await asyncio.wait_for(decoding, 1)

    assert event.value == b"v" * 10
    assert gate.held == 11 + EVENT_OVERHEAD_BYTES


async def test_an_agent_started_again_counts_its_new_window_not_the_last_one() -> None:
    crashed = Window(bytes=1000)  # taken by a run that crashed: never released
    gate = ByteGate(1000, crashed)
    delivery = asyncio.create_task(gate.admit(100))
    assert await waiting(delivery)

    gate.attach(Window(), Queue())  # faust starts the agent again
    await asyncio.wait_for(delivery, 1)
    assert gate.held == 100
