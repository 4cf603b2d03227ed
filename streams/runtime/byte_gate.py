"""Flow control in bytes for one agent: delivery into faust's buffer waits while the agent holds
its share of the worker's budget.

faust bounds a stream's buffer in events (``stream_buffer_maxsize``), so with raw mail of up to
64 MiB a record, a worker could only keep its memory bounded by buffering two events and polling
one record at a time: a poll, a delivery round and a task switch for every 3 KB message. The gate
counts bytes instead. faust's consumer decodes each record on its way into the agent's buffer
(``Topic.decode``, called by the conductor's delivery callback); ``GatedTopic`` waits there while
the agent's records held (in faust's buffer and in its window of taken records) reach the limit.
A waiting delivery holds up faust's fetch loop exactly as a full buffer does, and is cancelled
the same way at a rebalance, so polls can be faust's default 500 records and the count-based
buffer is only a backstop.

Records leave the count when the agent acks them. faust empties its buffers at a rebalance
without telling anyone, so a waiting delivery looks at the buffer now and then and forgets
bytes that are no longer there (``RESYNC_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import faust
from faust.types import Message
from prometheus_client import Counter, Gauge

RESYNC_SECONDS = 1.0
EVENT_OVERHEAD_BYTES = 1024  # a consumed record's Python objects, beside its key and value


class HeldWindow(Protocol):
    """The agent's window of taken, unacked records; only its byte count is read here."""

    bytes: int


class _NoWindow:
    bytes = 0  # before the agent runs


class Buffer(Protocol):
    """faust's buffer of an agent's events (an asyncio queue)."""

    def qsize(self) -> int: ...


def message_bytes(message: Message) -> int:
    """Return what a consumed record weighs: its key, its value and its objects."""
    return len(message.value or b"") + len(message.key or b"") + EVENT_OVERHEAD_BYTES


class ByteGate:
    """Bytes of an agent's records from delivery until acked; deliveries wait at ``limit``.

    ``held`` is what faust's buffer holds for the agent (counted at delivery, discounted when the
    agent's reader moves a record into its window) plus the window's own bytes. A delivery is let
    in while ``held`` is under ``limit``, so the agent never holds more than ``limit`` plus the
    record that crosses it (and one record faust's stream may hold between its buffer and the
    reader); a record larger than ``limit`` gets in alone.
    """

    def __init__(
        self,
        limit: int,
        window: HeldWindow | None = None,
        *,
        held_gauge: Gauge | None = None,
        peak_gauge: Gauge | None = None,
        waits: Counter | None = None,
    ) -> None:
        self.limit = limit
        self.window: HeldWindow = window if window is not None else _NoWindow()
        self.buffered = 0  # delivered into faust's buffer, not yet in the window
        self.peak = 0
        self.waits = 0
        self._in_hand = 0  # a record the reader took from faust and is putting in the window
        self._room = asyncio.Event()
        self._room.set()
        self._buffer: Buffer | None = None
        self._peak_gauge = peak_gauge
        self._waits_counter = waits
        if held_gauge is not None:
            held_gauge.set_function(lambda: self.held)

    @property
    def held(self) -> int:
        """Bytes of the agent's records between delivery and ack."""
        return self.buffered + self.window.bytes

    def attach(self, window: HeldWindow, buffer: Buffer) -> None:
        """Count ``window`` and check ``buffer`` (faust's, for the agent) from now on.

        Called each time faust starts the agent (again, after a crash): a new run has a window
        of its own, and what the last one held is no longer the agent's.
        """
        self.window = window
        self._buffer = buffer
        self._in_hand = 0  # the last run's reader is gone, and the record it held with it
        self.changed()

    async def admit(self, size: int) -> None:
        """Return once a record of ``size`` bytes may go into faust's buffer, and count it."""
        if self.held >= self.limit:
            await self._wait_for_room()
        self.buffered += size
        held = self.held
        if held > self.peak:
            self.peak = held
            if self._peak_gauge is not None:
                self._peak_gauge.set(held)

    async def _wait_for_room(self) -> None:
        self.waits += 1
        if self._waits_counter is not None:
            self._waits_counter.inc()
        while self.held >= self.limit:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), RESYNC_SECONDS)
            self._resync()

    def _resync(self) -> None:
        # faust clears its buffers at a rebalance; what it dropped was never read nor acked.
        if self._buffer is not None and self._buffer.qsize() == 0:
            self.buffered = self._in_hand

    def reading(self, size: int) -> None:
        """The reader took a record of ``size`` bytes from faust's buffer."""
        self._in_hand = size

    def read(self, size: int) -> None:
        """The reader's record is in the window now (which counts it from here)."""
        self._in_hand = 0
        self.buffered = max(0, self.buffered - size)
        self.changed()

    def changed(self) -> None:
        """Wake a waiting delivery if there is room now (after the window let records go)."""
        if self.held < self.limit:
            self._room.set()


DecodeFunction = Callable[..., Awaitable[Any]]


class GatedTopic(faust.Topic):
    """A faust topic whose deliveries pass its agent's ``ByteGate`` before entering the buffer.

    faust compiles ``decode`` per topic instance, and agents iterate over clones of the topic
    they were given; both keep the gate.
    """

    def __init__(self, *args: Any, gate: ByteGate, **kwargs: Any) -> None:
        self.gate = gate  # before faust's __init__, which compiles decode
        super().__init__(*args, **kwargs)

    def _compile_decode(self) -> None:
        super()._compile_decode()
        decode: DecodeFunction = self.decode
        admit = self.gate.admit

        async def gated_decode(message: Message, *, propagate: bool = False) -> Any:
            await admit(message_bytes(message))
            return await decode(message, propagate=propagate)

        self.decode = gated_decode  # type: ignore[method-assign]  # as faust itself does

    def _clone_args(self) -> dict[str, Any]:
        return {**super()._clone_args(), "gate": self.gate}
