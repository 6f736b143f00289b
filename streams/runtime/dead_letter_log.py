"""What the worker's log says about dead letters: a summary per topic and interval, not a line per record.

A producer that breaks the contract can send thousands of bad records a minute, and a shop
always has a few (the demo injects some on purpose): a WARNING per record buries every other
line and tells an operator nothing the dead-letter topic does not. So each dead letter is
logged at DEBUG with its position and reason (``RETENTION_LOG_LEVEL=DEBUG`` to see them), and
once per interval (``RETENTION_DEAD_LETTER_LOG_INTERVAL_S``) one line per source topic says how many records were
dead-lettered, for which reasons (their values masked, so that alike reasons add up), and the
first position, at INFO; at WARNING when they are at least ``WARN_MIN`` and more than
``WARN_SHARE`` of the topic's records in that interval (the threshold of the
``RetentionDeadLetterRate`` alert): a producer is broken, not a stray record (one bad record
among the 59 a slow minute brought was 1.7 %; the alert, over 10 minutes, still judges a
producer that sends few records, all bad). The counts are in ``retention_dead_letters_total{topic}`` too.

>>> lines = []
>>> summary = DeadLetterSummary(interval_s=60, emit=lambda level, msg, extra: lines.append((level, msg)))
>>> summary.flush(now=0, records=lambda: {"clicks": 0})  # the first interval starts
>>> summary.add("clicks", "clicks[3]@9", "Invalid enum value 'PAGE_VIEW' - at `$.kind`", now=0)
>>> summary.add("clicks", "clicks[1]@4", "Invalid enum value 'click' - at `$.kind`", now=1)
>>> summary.flush(now=30, records=lambda: {"clicks": 1000})  # not yet: once per interval
>>> summary.flush(now=61, records=lambda: {"clicks": 1000})
>>> lines  # doctest: +NORMALIZE_WHITESPACE
[(20, "dead-lettered 2 of 1000 clicks records in the last 61 s (0.20 %), first clicks[3]@9:
  2 Invalid enum value '…' - at `$.kind`; reasons and positions on the dead-letter topic")]
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Callable

#: Seconds between two summaries by default (a summary is written only for an interval with dead letters).
INTERVAL_S = 60.0
#: A share of a topic's records above which the summary is a WARNING (as the alert's threshold) ...
WARN_SHARE = 0.01
#: ... when there were at least this many dead letters in the interval.
WARN_MIN = 10
#: Reasons kept apart per topic and interval, ``OTHER`` included (a summary line stays short).
MAX_REASONS = 10
OTHER = "other reasons"
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_GOT = re.compile(r"\bgot [^,;)\s]+")
_LONG_NUMBER = re.compile(r"(?<![\w.-])-?\d{6,}(?:\.\d+)?(?![\w])")  # a value (epoch time, id), not a limit
_LONGEST_REASON = 160

Emit = Callable[[int, str, dict], None]


def reason_class(error: str) -> str:
    """A reason with the record's own values masked, so that alike reasons are counted together.

    >>> reason_class("ts 'yesterday' is not RFC 3339 with an offset (e.g. 2026-01-05T13:04:05Z) - at `$.ts`")
    "ts '…' is not RFC 3339 with an offset (e.g. 2026-01-05T13:04:05Z) - at `$.ts`"
    >>> reason_class("Expected `int` >= 1, got 0 - at `$.quantity`")
    'Expected `int` >= 1, got … - at `$.quantity`'
    >>> reason_class("ts 1767618245 is before 2000-01-01 as epoch milliseconds (epoch seconds are not accepted) - at `$.ts`")
    'ts … is before 2000-01-01 as epoch milliseconds (epoch seconds are not accepted) - at `$.ts`'
    """
    masked = _LONG_NUMBER.sub("…", _GOT.sub("got …", _QUOTED.sub("'…'", error.splitlines()[0] if error else "")))
    return masked if len(masked) <= _LONGEST_REASON else masked[: _LONGEST_REASON - 1] + "…"


class DeadLetterSummary:
    """Dead letters counted per source topic and reason between two summaries."""

    def __init__(self, interval_s: float = INTERVAL_S, emit: Emit | None = None, warn_share: float = WARN_SHARE) -> None:
        self.interval_s = interval_s
        self.warn_share = warn_share
        self._emit = emit or _log
        self._since: float | None = None
        self._reasons: dict[str, Counter[str]] = {}
        self._first: dict[str, str] = {}
        self._records_at_start: dict[str, float] = {}  # (the counts are cumulative)

    def add(self, topic: str, position: str, error: str, now: float) -> None:
        """One dead letter of ``topic`` (logical name) at ``position`` (``topic[partition]@offset``)."""
        if self._since is None:
            self._since = now
        reasons = self._reasons.setdefault(topic, Counter())
        reason = reason_class(error)
        if reason not in reasons and len(reasons) - (OTHER in reasons) >= MAX_REASONS - 1:
            reason = OTHER
        reasons[reason] += 1
        self._first.setdefault(topic, position)

    def flush(self, now: float, records: Callable[[], dict[str, float]] | None = None, force: bool = False) -> None:
        """Called often (every fetch cycle): when the interval is over (or ``force``: at shutdown),
        write the summary of its dead letters, if any, and start the next interval.

        ``records``: every inbound record counted so far per logical topic, whatever its result
        (``retention_records_total``), to tell a broken producer from a stray record; asked only
        when an interval ends."""
        if self._since is None:  # the first interval starts now
            self._since, self._records_at_start = now, records() if records else {}
            if not force:
                return
        if not force and now - self._since < self.interval_s:
            return
        counts = records() if records else None
        elapsed = max(now - self._since, 0.0)
        for topic, reasons in self._reasons.items():
            dead = sum(reasons.values())
            seen = None if counts is None else counts.get(topic, 0.0) - self._records_at_start.get(topic, 0.0)
            share = dead / seen if seen else None
            level = logging.WARNING if share is not None and share > self.warn_share and dead >= WARN_MIN else logging.INFO
            of = f" of {seen:.0f}" if seen else ""
            pct = f" ({share:.2%})".replace("%", " %") if share is not None else ""
            detail = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common())
            self._emit(level, f"dead-lettered {dead}{of} {topic} records in the last {elapsed:.0f} s{pct}, first "
                              f"{self._first[topic]}: {detail}; reasons and positions on the dead-letter topic",
                       {"topic": topic, "dead_letters": dead, "records": seen, "reasons": dict(reasons)})
        self._since, self._records_at_start = now, counts or {}
        self._reasons.clear()
        self._first.clear()


def _log(level: int, message: str, extra: dict) -> None:
    logging.getLogger("streams.runtime.dead_letters").log(level, message, extra=extra)
