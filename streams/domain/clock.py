"""The event-time clock of one partition, read from several input topics.

Inputs are consumed at different paces: with a backlog, Faust may read a week of
heartbeats before the purchases of that week. If the clock followed the newest event
seen, loyal customers would look lapsed because their purchases were not read yet.
So the clock is a watermark: it may not pass an input that still has unread records
(a *lagging* input); inputs without a backlog do not hold it back, so an idle topic
never stalls it. This is what Kafka Streams does with its task's partition heads.

>>> c = PartitionClock()
>>> c.observe("heartbeats", 500); c.observe("purchases", 100)
>>> c.advance(lagging=["purchases"])   # purchases still has unread records
100
>>> c.advance(lagging=[])              # caught up: the newest event time counts
500
>>> c.advance(lagging=["purchases"])   # a clock never goes back
500
"""

from __future__ import annotations

from collections.abc import Iterable


class PartitionClock:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.now = 0

    def observe(self, topic: str, ts: int) -> None:
        """Record an event time read from ``topic`` (the newest one per input counts)."""
        if ts > self.seen.get(topic, 0):
            self.seen[topic] = ts

    def advance(self, lagging: Iterable[str]) -> int:
        """Move to the watermark given the inputs that still have unread records."""
        newest = max(self.seen.values(), default=0)
        watermark = min((self.seen.get(topic, 0) for topic in lagging), default=newest)
        self.now = max(self.now, min(newest, watermark))
        return self.now
