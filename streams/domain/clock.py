"""Event time of one partition, read from several input topics: merge the inputs by time.

All inputs of a partition (clicks, purchases, reviews, outcomes, heartbeats, re-keyed
records) are co-partitioned and read by one consumer, but each topic is fetched at its
own pace: with a backlog, a week of purchases may be read before the clicks of that week.
Folding a purchase from next week into a user's state before the clock has reached this
week's lapse check (or moving the clock past purchases not read yet) makes the decisions
depend on fetch timing. So, as Kafka Streams does for a task's partitions, records are
buffered per input and released in event-time order: the record with the smallest event
time goes first, and only when every other input either has a buffered record (so
nothing earlier can come from it, records of one partition being in time order) or is
known to be *caught up* (see :func:`caught_up`). An input without traffic never stalls
the merge, because an empty input is caught up.

>>> m = InputMerge(["clicks", "purchases"])
>>> m.push("clicks", 5, "c5", arrived_ms=1)
>>> m.pop(caught_up=lambda topic, since_ms: False)  # purchases may still hold an earlier record
>>> m.push("purchases", 3, "p3", arrived_ms=2)
>>> m.pop(caught_up=lambda topic, since_ms: False)
'p3'
>>> m.pop(caught_up=lambda topic, since_ms: topic == "purchases")  # nothing more to read there
'c5'

The partition's clock is the event time of the records released so far (it never goes
back: a late record, e.g. a re-keyed one, leaves it where it is).

>>> c = PartitionClock(); _ = c.advance(500); c.advance(100)
500
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

#: ``caught_up(topic, since_ms)``: True if ``topic`` has no record that was not received,
#: judged by a high watermark fetched *after* wall time ``since_ms``.
CaughtUp = Callable[[str, float], bool]


class PartitionClock:
    def __init__(self) -> None:
        self.now = 0

    def advance(self, ts: int | None) -> int:
        """Move to ``ts`` if it is later (records are released in event-time order)."""
        if ts is not None and ts > self.now:
            self.now = ts
        return self.now


class InputMerge(Generic[T]):
    """Per-input FIFO buffers of one partition, released smallest event time first.

    A record without an event time (undecodable: it goes to the dead letters and touches
    no state) is released as soon as it heads its buffer. Ties go to the input listed
    first, so heartbeats listed last come after the data of the same millisecond.
    """

    def __init__(self, inputs: Iterable[str]) -> None:
        self.inputs = list(inputs)
        self.buffers: dict[str, deque[tuple[int | None, float, T]]] = {topic: deque() for topic in self.inputs}
        self.size = 0

    def push(self, topic: str, ts: int | None, item: T, arrived_ms: float) -> None:
        """Buffer a record of ``topic`` with its event time and its wall-clock arrival."""
        self.buffers[topic].append((ts, arrived_ms, item))
        self.size += 1

    def pop(self, caught_up: CaughtUp) -> T | None:
        """The next record in event-time order, or None if an input might still hold an
        earlier one (it is neither buffered nor caught up)."""
        if not self.size:
            return None
        head_topic = None
        head_ts = 0
        for topic in self.inputs:
            buffer = self.buffers[topic]
            if buffer:
                ts = buffer[0][0]
                if ts is None:
                    head_topic = topic
                    break
                if head_topic is None or ts < head_ts:
                    head_topic, head_ts = topic, ts
        assert head_topic is not None
        head = self.buffers[head_topic]
        ts, arrived_ms, item = head[0]
        if ts is not None:
            for topic in self.inputs:
                if topic != head_topic and not self.buffers[topic] and not caught_up(topic, arrived_ms):
                    return None
        head.popleft()
        self.size -= 1
        return item

    def pace(self, max_records: int, paused: set[str], incoming: Mapping[str, int] | None = None) -> tuple[list[str], list[str]]:
        """Back-pressure for a merge of at most ``max_records``: the inputs to pause (their
        buffers hold their share) and to resume (back to half of it); ``paused`` is updated.
        ``incoming``: records per input received but not pushed yet, counted as buffered (a
        receive in chunks pauses an input as soon as its share is reached, not a batch later).

        Only an input with records buffered is ever paused, and the merge only waits for an
        input with none, which keeps fetching: pacing never stalls the merge.

        >>> merge, paused = InputMerge(["clicks", "purchases"]), set()
        >>> for n in range(5):
        ...     merge.push("clicks", n, n, 0)
        >>> merge.pace(10, paused), paused
        ((['clicks'], []), {'clicks'})
        >>> for _ in range(3):
        ...     _ = merge.pop(lambda topic, since: True)
        >>> merge.pace(10, paused), paused
        (([], ['clicks']), set())
        """
        share = max(max_records // len(self.inputs), 1)
        pause, resume = [], []
        for topic, buffer in self.buffers.items():
            held = len(buffer) + incoming.get(topic, 0) if incoming else len(buffer)
            if topic not in paused and held >= share:
                pause.append(topic)
                paused.add(topic)
            elif topic in paused and held <= share // 2:
                resume.append(topic)
                paused.discard(topic)
        return pause, resume

    def clear(self) -> None:
        for buffer in self.buffers.values():
            buffer.clear()
        self.size = 0


def caught_up(next_offset: int | None, highwater: int | None, fetched_ms: float | None, since_ms: float) -> bool:
    """True if nothing of an input is left to receive, judged safely.

    ``next_offset`` is the offset of the next record the worker would receive (after the
    last one received, or the committed offset); ``highwater`` and ``fetched_ms`` come
    from the last fetch response that carried the partition. A high watermark fetched
    before the record waiting to be released arrived (``since_ms``) may be stale: records
    written after that fetch, with earlier event times, would be missed. So it must come
    from a later fetch.

    >>> caught_up(next_offset=10, highwater=10, fetched_ms=1_001, since_ms=1_000)
    True
    >>> caught_up(next_offset=10, highwater=10, fetched_ms=999, since_ms=1_000)  # stale
    False
    >>> caught_up(next_offset=9, highwater=10, fetched_ms=1_001, since_ms=1_000)  # one to read
    False
    """
    if next_offset is None or highwater is None or fetched_ms is None:
        return False
    return fetched_ms > since_ms and next_offset >= highwater
