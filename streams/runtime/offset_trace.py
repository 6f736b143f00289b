"""Opt-in diagnostic: where each input record is in Faust's consumer bookkeeping.

With ``RETENTION_TRACE_OFFSETS_INTERVAL_S`` above 0 the worker's consumer records, per
input partition (topics with acknowledgements), the offsets handed on by ``getmany``,
passed to the stream (the consumer callback entered and returned) and acknowledged, and
logs the gap ranges, seeks and commits Faust applies; at that interval it logs one line
per changed partition with the holes between them. A record fetched but never
handed to the stream, or handed on but never acknowledged, shows up by name (offset
ranges) instead of as a committed offset that stops short of the end.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)


def ranges(offsets: Iterable[int]) -> str:
    """Compact text of a set of offsets: ``"3-5,9"``.

    >>> ranges([9, 3, 4, 5]), ranges([])
    ('3-5,9', '')
    """
    out: list[str] = []
    start = prev = None
    for o in sorted(set(offsets)):
        if prev is not None and o == prev + 1:
            prev = o
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = o
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(out)


class OffsetTrace:
    """Per input partition: the offsets seen at each step of the consumer."""

    def __init__(self) -> None:
        self.fetched: dict[TP, set[int]] = defaultdict(set)  # yielded by getmany
        self.entered: dict[TP, set[int]] = defaultdict(set)  # passed Faust's read-offset check
        self.delivered: dict[TP, set[int]] = defaultdict(set)  # the callback returned
        self.acked: dict[TP, set[int]] = defaultdict(set)
        self.events: list[str] = []  # seeks, gaps, commits since the last dump
        self.last: dict[TP, str] = {}

    def event(self, text: str) -> None:
        self.events.append(text)
        log.warning("offset trace: %s", text)

    def report(self, consumer: Any, position: Any) -> list[str]:
        """One line per input partition whose bookkeeping changed since the last report."""
        lines = []
        for tp in sorted(set(self.fetched) | set(self.acked), key=lambda t: (t.topic, t.partition)):
            committed = consumer._committed_offset.get(tp)
            fetched, entered, delivered, acked = self.fetched[tp], self.entered[tp], self.delivered[tp], self.acked[tp]
            top = max(fetched | acked, default=-1)
            low = min(committed if committed is not None else top + 1, min(fetched | acked, default=top + 1))
            window = set(range(low, top + 1))
            gap = consumer._gap.get(tp)
            acked_list = consumer._acked.get(tp) or []
            line = (
                f"{tp.topic}[{tp.partition}] committed={committed} read_offset={consumer._read_offset.get(tp)} "
                f"position={position(tp)} max_fetched={top} acked_pending={len(acked_list)}"
                f"({min(acked_list, default=None)}..{max(acked_list, default=None)}) "
                f"gap={ranges(o for i in (gap or ()) for o in range(i.begin, i.end))!r} "
                f"never_fetched={ranges(window - fetched)!r} dropped_before_stream={ranges(fetched - entered)!r} "
                f"callback_not_returned={ranges(entered - delivered)!r} "
                f"not_acked={ranges(o for o in delivered - acked if committed is None or o >= committed)!r}"
            )
            if self.last.get(tp) != line:
                self.last[tp] = line
                lines.append(line)
        return lines

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            for book in (self.fetched, self.entered, self.delivered, self.acked):
                book.pop(tp, None)
            self.last.pop(tp, None)
