"""An in-memory ``Publisher`` for unit tests of the stage runner and the stages: no broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from streams.runtime.stage import Outgoing


class MemoryPublisher:
    """Implements ``streams.runtime.publisher.Publisher`` with a list instead of Kafka.

    Every record sent or published is appended to ``records`` in order, and its future is
    resolved at once with its index in that list (its "offset"). ``fail_publish`` and
    ``fail_send`` make the next calls raise a given exception (``KafkaTimeoutError``,
    ``MessageSizeTooLargeError``...) before anything is recorded, as a produce refused before
    queueing would. ``refuse`` fails the futures of chosen records instead, recording nothing
    of them, as a broker refusing one record of a batch would. Tests drive the runner's retry
    and dead-letter paths with them.
    """

    def __init__(self) -> None:
        self.records: list[Outgoing] = []
        self.calls: list[tuple[str, int]] = []  # ("send" | "publish", number of records)
        self._failures: dict[str, list[Callable[[], BaseException]]] = {"send": [], "publish": []}
        self._refusals: list[_Refusal] = []

    def fail_publish(self, count: int, error: Callable[[], BaseException]) -> None:
        """Make the next ``count`` calls to ``publish`` raise ``error()``, recording nothing."""
        self._failures["publish"] += [error] * count

    def fail_send(self, count: int, error: Callable[[], BaseException]) -> None:
        """Make the next ``count`` calls to ``send`` raise ``error()``, recording nothing."""
        self._failures["send"] += [error] * count

    def refuse(
        self,
        match: Callable[[Outgoing], bool],
        error: Callable[[], BaseException],
        *,
        times: int | None = 1,
    ) -> None:
        """Fail the futures of the next ``times`` records ``match`` picks (None: every one)."""
        self._refusals.append(_Refusal(match, error, times))

    def on(self, topic: str) -> list[Outgoing]:
        """Return the records written to ``topic``, in order."""
        return [record for record in self.records if record.topic == topic]

    async def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[object]]:
        """Record ``records`` in order; return futures already resolved with their index."""
        self._maybe_fail("send", len(records))
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[object]] = []
        for record in records:
            future: asyncio.Future[object] = loop.create_future()
            refusal = self._refusal_for(record)
            if refusal is None:
                future.set_result(len(self.records))
                self.records.append(record)
            else:
                future.set_exception(refusal.error())
            futures.append(future)
        return futures

    async def send_groups(
        self, groups: Sequence[Sequence[Outgoing]]
    ) -> list[list[asyncio.Future[object]] | KafkaError]:
        """``send`` each group in turn; a group whose send raises gets the KafkaError."""
        sent: list[list[asyncio.Future[object]] | KafkaError] = []
        for group in groups:
            try:
                sent.append(await self.send(group))
            except KafkaError as exc:
                sent.append(exc)
        return sent

    async def publish(self, records: Sequence[Outgoing]) -> None:
        """Record ``records`` in order (acknowledged at once)."""
        self._maybe_fail("publish", len(records))
        self.records.extend(records)

    def _refusal_for(self, record: Outgoing) -> _Refusal | None:
        for refusal in self._refusals:
            if refusal.times != 0 and refusal.match(record):
                if refusal.times is not None:
                    refusal.times -= 1
                return refusal
        return None

    def _maybe_fail(self, call: str, size: int) -> None:
        self.calls.append((call, size))
        pending = self._failures[call]
        if pending:
            raise pending.pop(0)()


@dataclass
class _Refusal:
    match: Callable[[Outgoing], bool]
    error: Callable[[], BaseException]
    times: int | None
