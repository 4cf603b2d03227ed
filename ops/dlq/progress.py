"""What a redrive or purge of a dead-letter topic already handled, stored in Kafka.

Progress is kept by one consumer group per DLQ, ``<group_id>-dlq-redrive`` (``redrive_group_id``).
``RedriveProgress`` is one partition's progress: everything below the committed offset is
handled, and since an error-class filter leaves holes (records of other classes not sent yet) the
committed offset stops at the first hole while the offsets handled beyond it are kept in the
commit metadata (``inboxflow-redrive/1 12-40,45``), capped below the broker's 4 KiB limit; so
nothing is resent and nothing skipped is lost. ``load_progress`` reads it back. This module must
not commit offsets or produce records: ``ops.dlq.redrive`` and ``ops.dlq.purge`` commit progress
once their work is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.offsets import committed_offsets
from topics.catalogue import ConsumerGroup

PROGRESS_PREFIX = "inboxflow-redrive/1"
_MAX_PROGRESS_CHARS = 3000  # brokers cap commit metadata at offset.metadata.max.bytes (4096)


def redrive_group_id(group: ConsumerGroup) -> str:
    """Return the consumer group that remembers redrive and purge progress of ``group``'s DLQ."""
    return f"{group.group_id}-dlq-redrive"


@dataclass
class RedriveProgress:
    """Handled offsets of one DLQ partition: everything below ``base``, plus ``done``."""

    base: int
    done: set[int] = field(default_factory=set)

    @classmethod
    def parse(cls, base: int, metadata: str) -> RedriveProgress:
        """Return the progress stored as a committed offset and its metadata. Pure."""
        progress = cls(base)
        if not metadata.startswith(PROGRESS_PREFIX):
            return progress
        for part in metadata[len(PROGRESS_PREFIX) :].split(","):
            first, _, last = part.strip().partition("-")
            if first:
                progress.done.update(range(int(first), int(last or first) + 1))
        progress.done = {offset for offset in progress.done if offset >= base}
        progress.compact()
        return progress

    def handled(self, offset: int) -> bool:
        """Return True when the record at ``offset`` was already redriven or purged."""
        return offset < self.base or offset in self.done

    def mark(self, offset: int) -> None:
        """Mark ``offset`` handled."""
        self.done.add(offset)
        self.compact()

    def compact(self) -> None:
        """Move ``base`` over handled offsets, so ``done`` keeps only offsets past a hole."""
        while self.base in self.done:
            self.done.discard(self.base)
            self.base += 1

    def metadata(self) -> str:
        """Return the commit metadata that stores ``done`` as inclusive ranges."""
        ranges: list[str] = []
        for first, last in _ranges(sorted(self.done)):
            ranges.append(str(first) if first == last else f"{first}-{last}")
        return f"{PROGRESS_PREFIX} {','.join(ranges)}" if ranges else ""

    def fits_with(self, offset: int) -> bool:
        """Return True when marking ``offset`` keeps the metadata within the broker's limit."""
        if offset - 1 in self.done or offset == self.base or offset + 1 in self.done:
            return True  # extends a range, or advances base
        return len(self.metadata()) + len(str(offset)) + 1 <= _MAX_PROGRESS_CHARS


def _ranges(offsets: Sequence[int]) -> Iterable[tuple[int, int]]:
    start = previous = None
    for offset in offsets:
        if start is None:
            start = previous = offset
        elif previous is not None and offset == previous + 1:
            previous = offset
        else:
            yield start, previous if previous is not None else start
            start = previous = offset
    if start is not None:
        yield start, previous if previous is not None else start


async def load_progress(
    admin: AIOKafkaAdminClient,
    group_id: str,
    partitions: Sequence[TopicPartition],
    starts: dict[TopicPartition, int],
) -> dict[TopicPartition, RedriveProgress]:
    """Return the redrive group's progress per partition, from its committed offsets.

    A partition never committed starts at ``starts``; one whose committed offset retention or a
    delete left behind is moved up to the log start, keeping the offsets sent past it.
    """
    committed = await committed_offsets(admin, group_id, partitions)
    progress: dict[TopicPartition, RedriveProgress] = {}
    for tp in partitions:
        offset, metadata = committed.get(tp, (starts[tp], ""))
        found = RedriveProgress.parse(offset, metadata)
        if found.base < starts[tp]:  # retention or a delete removed the records below the start
            found = RedriveProgress.parse(starts[tp], found.metadata())
        progress[tp] = found
    return progress
