"""When each silent customer next needs a look, in event time.

Customers who stop sending events must still age: their labels mature and the lapse
rule must see them. A :class:`DueQueue` per partition holds each user's next due time;
whenever the partition's event-time clock advances, the users now due are popped.

>>> q = DueQueue()
>>> q.schedule("a", 10); q.schedule("b", 5); q.schedule("a", 20)
>>> q.pop_due(12)
['b']
>>> q.pop_due(25)
['a']
"""

from __future__ import annotations

import heapq


class DueQueue:
    """A min-heap of (due, user) with lazy deletion: rescheduling is O(log n)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def schedule(self, user_id: str, due_ms: int | None) -> None:
        """Set (or clear, with None) the user's next due time."""
        if due_ms is None:
            self._due.pop(user_id, None)
        elif self._due.get(user_id) != due_ms:
            self._due[user_id] = due_ms
            heapq.heappush(self._heap, (due_ms, user_id))

    def pop_due(self, now_ms: int) -> list[str]:
        """Users due at or before ``now_ms``, each once, in due order."""
        due: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            when, user_id = heapq.heappop(heap)
            if self._due.get(user_id) == when:
                del self._due[user_id]
                due.append(user_id)
        return due

    def due(self, user_id: str) -> int | None:
        """The user's due time as last scheduled (None: not due at all)."""
        return self._due.get(user_id)

    def next_due(self) -> int | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._due)
