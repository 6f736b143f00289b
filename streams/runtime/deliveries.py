"""The order in which a folded batch becomes durable, and when its input offsets may be committed.

A batch goes through two acknowledged phases before its offsets are committed:

1. **outputs**: the actions, score rows, model labels, dead letters and re-keyed records it
   produced are sent while it is folded;
2. **state**: once they (and every earlier batch's) are acknowledged, the touched users'
   states are written to RocksDB in one WriteBatch and sent to the changelog;
3. once those changelog records are acknowledged (and every earlier batch is committable),
   the batch's input offsets are committed.

So neither the local store nor the changelog ever holds a state whose outputs may be lost:
a crash before (2) leaves the records uncommitted and unapplied, and they are folded again
(their outputs sent again: at least once, with the same action ids); a crash after it finds
them applied (they are skipped). Counting acknowledgements replaces a ``flush()`` per batch,
which would stall the loop. A delivery error stops the line at its batch: nothing from it
on is stored or committed (it is read again after a restart; nothing is lost).

>>> ledger = Ledger()
>>> a = ledger.open(); ledger.sent(a, 2); ledger.seal(a, {("clicks", 0): 10}, {0: ["state"]})
>>> ledger.to_store(), ledger.waiting, ledger.in_flight   # outputs in flight
([], 1, 2)
>>> ledger.acked(a.id); ledger.acked(a.id); [b.id for b in ledger.to_store()]
[0]
>>> ledger.stored(a, changelog_records=1); ledger.committable()
{}
>>> ledger.acked(a.id); ledger.committable()
{('clicks', 0): 10}
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

TopicPartition = tuple[str, int]


def seal_now(age_s: float, folded: int, changed: int, interval_s: float, max_records: int) -> bool:
    """Whether the batch being folded is complete: ``interval_s`` old (the commit interval),
    or ``max_records`` records folded into it, or as many users' states changed (due checks
    change states without a record, and a changed state stays in memory until written).

    >>> seal_now(0.05, 10, 10, 0.1, 5000), seal_now(0.1, 10, 10, 0.1, 5000)
    (False, True)
    >>> seal_now(0.01, 5000, 10, 60.0, 5000), seal_now(0.01, 10, 5000, 60.0, 5000)
    (True, True)
    """
    return age_s >= interval_s or folded >= max_records or changed >= max_records


class Phase(enum.Enum):
    FOLDING = "folding"  #: records are being folded; outputs go out as they are made
    OUTPUTS = "outputs"  #: sealed: waiting for the outputs' acknowledgements
    STATE = "state"  #: stored locally, changelog records in flight
    DONE = "done"  #: everything acknowledged: its offsets may be committed


@dataclass
class Batch:
    id: int
    phase: Phase = Phase.FOLDING
    pending: int = 0  #: records of the current phase sent and not acknowledged
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  #: next offset to read, per input
    changes: dict[int, Any] = field(default_factory=dict)  #: per partition: the state records to persist


@dataclass
class Ledger:
    """Batches in the order they were folded."""

    batches: OrderedDict[int, Batch] = field(default_factory=OrderedDict)
    next_id: int = 0
    #: The first delivery error, and the batch it hit (nothing from it on is stored or committed).
    error: str | None = None
    failed: int | None = None

    def open(self) -> Batch:
        batch = Batch(self.next_id)
        self.next_id += 1
        self.batches[batch.id] = batch
        return batch

    def sent(self, batch: Batch, count: int = 1) -> None:
        batch.pending += count

    def acked(self, batch_id: int, error: str | None = None) -> None:
        """One record of the batch's current phase acknowledged (or failed, with ``error``)."""
        if error is not None and self.error is None:
            self.error, self.failed = error, batch_id
        batch = self.batches.get(batch_id)
        if batch is not None:
            batch.pending -= 1
            if batch.phase is Phase.STATE and batch.pending <= 0:
                batch.phase = Phase.DONE

    def seal(self, batch: Batch, offsets: dict[TopicPartition, int], changes: dict[int, Any]) -> None:
        """The batch is folded: what it read up to, and the state records it changed."""
        batch.offsets, batch.changes, batch.phase = dict(offsets), changes, Phase.OUTPUTS

    def to_store(self) -> list[Batch]:
        """Sealed batches whose outputs are all acknowledged, with every earlier batch past
        that point too, oldest first: their states may be written now."""
        out = []
        for batch in self.batches.values():
            if batch.id == self.failed or batch.phase is Phase.FOLDING:
                break
            if batch.phase is Phase.OUTPUTS:
                if batch.pending > 0:
                    break
                out.append(batch)
        return out

    def stored(self, batch: Batch, changelog_records: int) -> None:
        """The batch's states are written locally and ``changelog_records`` were sent."""
        batch.pending, batch.phase = changelog_records, Phase.STATE if changelog_records else Phase.DONE

    def committable(self) -> dict[TopicPartition, int]:
        """The offsets to commit now (and forget): those of the leading run of done batches."""
        out: dict[TopicPartition, int] = {}
        while self.batches:
            batch = next(iter(self.batches.values()))
            if batch.phase is not Phase.DONE or batch.id == self.failed:
                break
            out.update(batch.offsets)
            del self.batches[batch.id]
        return out

    @property
    def waiting(self) -> int:
        """Sealed batches waiting for acknowledgements (outputs, or changelog records)."""
        return sum(1 for batch in self.batches.values() if batch.phase in (Phase.OUTPUTS, Phase.STATE))

    @property
    def in_flight(self) -> int:
        """Records sent and not yet acknowledged, over every batch."""
        return sum(batch.pending for batch in self.batches.values())

    def drop(self, partitions: set[int]) -> None:
        """Partitions taken away: their offsets and state records are no longer this worker's."""
        for batch in self.batches.values():
            for tp in [tp for tp in batch.offsets if tp[1] in partitions]:
                del batch.offsets[tp]
            for partition in partitions & batch.changes.keys():
                del batch.changes[partition]
