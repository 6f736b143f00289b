"""Which input offsets may be committed: those of batches whose every record is acknowledged.

At-least-once with our own commits: a batch's input offsets are committed only after its
WriteBatch is written and every changelog and output record it produced, **and those of
every earlier batch**, is acknowledged by the broker. A delivery error stops commits past
the batch that had it (its records are read again after a restart; nothing is lost).
Counting acknowledgements replaces a ``flush()`` per batch, which would stall the loop.

>>> book = Deliveries()
>>> first = book.open({("clicks", 0): 10}); second = book.open({("clicks", 0): 25})
>>> book.sent(first, 2); book.sent(second, 1)
>>> book.acked(second); book.committable()   # the first batch is not acknowledged yet
{}
>>> book.acked(first); book.acked(first); book.committable()
{('clicks', 0): 25}
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class _Batch:
    offsets: dict[TopicPartition, int]
    pending: int = 0
    closed: bool = False


@dataclass
class Deliveries:
    """Batches in the order they were folded, each with its unacknowledged records."""

    batches: OrderedDict[int, _Batch] = field(default_factory=OrderedDict)
    next_id: int = 0
    #: The first delivery error (commits stop before its batch), or None.
    error: str | None = None
    failed_batch: int | None = None

    def open(self, offsets: dict[TopicPartition, int]) -> int:
        """A new batch that, once acknowledged, lets each input partition commit up to
        ``offsets`` (the next offset to read)."""
        batch_id = self.next_id
        self.next_id += 1
        self.batches[batch_id] = _Batch(dict(offsets))
        return batch_id

    def sent(self, batch_id: int, count: int = 1) -> None:
        self.batches[batch_id].pending += count

    def acked(self, batch_id: int, error: str | None = None) -> None:
        """One record of the batch acknowledged (or failed, with ``error``)."""
        if error is not None and self.error is None:
            self.error, self.failed_batch = error, batch_id
        batch = self.batches.get(batch_id)
        if batch is not None:
            batch.pending -= 1

    def committable(self) -> dict[TopicPartition, int]:
        """The offsets to commit now (and forget): those of the longest run of fully
        acknowledged batches from the oldest, stopping before a failed one."""
        out: dict[TopicPartition, int] = {}
        while self.batches:
            batch_id, batch = next(iter(self.batches.items()))
            if batch.pending > 0 or batch_id == self.failed_batch:
                break
            out.update(batch.offsets)
            del self.batches[batch_id]
        return out

    @property
    def outstanding(self) -> int:
        """Records sent and not yet acknowledged."""
        return sum(batch.pending for batch in self.batches.values())

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Partitions taken away: their offsets are no longer this worker's to commit."""
        for batch in self.batches.values():
            for tp in partitions & batch.offsets.keys():
                del batch.offsets[tp]
