"""The published loyalty figures: the predicted purchase days, their percentile among current
customers (``loyalty_score``) and a tier.

- **loyalty**: the loyalty learner's prediction at the snapshot's event time: purchase days
  in ``(t, t + H]`` (:class:`models.churn.LoyaltyModel`; a count, not a probability).
- **loyalty_score**: where that prediction stands among the **current customers** of the
  worker, those whose last purchase is at most ``current_days`` before the event-time clock:
  the share of them predicted below it, ties counting half, the customer counted among them
  (``(below + (equal + 1) / 2) / (n + 1)`` over the ``n`` others). So it is 0.5 for the only
  customer, never exactly 0 or 1, and equal predictions always get equal scores.
- **tier**: the name of the highest cut-point at or below the loyalty_score (cut-points are
  a setting, ``RETENTION_LOYALTY_TIERS``; the first must be 0, so every score has a tier).

The distribution is :class:`LoyaltyRanks`: each current customer's **latest** prediction
(one value per customer, replaced when they are published again), at most ``capacity``
customers (the least recently published are dropped first), and customers leave it when
their last purchase falls out of the window. Why not a library quantile sketch (t-digest,
DDSketch, KLL): those count every value ever inserted and cannot replace or delete one, so a
customer published thirty times would weigh thirty times and a lapsed customer would never
leave; River's ``stats.Quantile``/``RollingQuantile`` track a single quantile, not a CDF.
A sorted list of at most ``capacity`` floats (bisect) ranks in O(log n) and updates in O(n)
memmove, a few microseconds at 10,000.

>>> ranks = LoyaltyRanks(capacity=100, current_days=365)
>>> for user, days in (("a", 0.5), ("b", 1.0), ("c", 2.0), ("d", 4.0)):
...     ranks.update(user, days, last_purchase=0, now=0)
>>> ranks.percentile("c", 2.0)   # 2 of 4 below, itself half
0.625
>>> tier_of(0.625, parse_tiers("bronze:0,silver:0.5,gold:0.8"))
'silver'
"""

from __future__ import annotations

import bisect
import heapq
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from models.score import Score
from streams.domain.timestamps import MS_PER_DAY

#: Tier names: lower-case ASCII, digits, ``_`` and ``-``, starting with a letter, at most 32
#: characters. The user-scores schema's ``loyalty_tier`` pattern is the same.
TIER_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
DEFAULT_TIERS = "bronze:0,silver:0.5,gold:0.8,platinum:0.95"

Tiers = tuple[tuple[str, float], ...]


def parse_tiers(text: str) -> Tiers:
    """``name:cut,name:cut,...`` -> ((name, cut), ...); cut-points are loyalty_scores in
    [0, 1], strictly increasing, the first 0; names match :data:`TIER_PATTERN`, unique.

    >>> parse_tiers(" low:0, high:0.9 ")
    (('low', 0.0), ('high', 0.9))
    >>> parse_tiers("low:0.1,high:0.9")
    Traceback (most recent call last):
    ...
    ValueError: the first loyalty tier must start at 0 (every score needs a tier), not 0.1
    """
    tiers: list[tuple[str, float]] = []
    for item in text.split(","):
        name, sep, cut_text = item.strip().partition(":")
        name = name.strip()
        if not sep:
            raise ValueError(f"loyalty tier {item.strip()!r} is not name:cut-point (e.g. gold:0.8)")
        if not re.fullmatch(TIER_PATTERN, name):
            raise ValueError(f"loyalty tier name {name!r} must match {TIER_PATTERN}")
        try:
            cut = float(cut_text)
        except ValueError:
            raise ValueError(f"loyalty tier {name!r}: cut-point {cut_text.strip()!r} is not a number") from None
        if not (math.isfinite(cut) and 0.0 <= cut <= 1.0):
            raise ValueError(f"loyalty tier {name!r}: cut-point {cut} is not a loyalty_score in [0, 1]")
        if any(name == seen for seen, _ in tiers):
            raise ValueError(f"loyalty tier {name!r} is named twice")
        if tiers and cut <= tiers[-1][1]:
            raise ValueError(f"loyalty tier cut-points must increase: {name!r} at {cut} after {tiers[-1][0]!r} at {tiers[-1][1]}")
        if not tiers and cut != 0.0:
            raise ValueError(f"the first loyalty tier must start at 0 (every score needs a tier), not {cut}")
        tiers.append((name, cut))
    return tuple(tiers)


def tier_of(score: float, tiers: Tiers) -> str:
    """The name of the highest cut-point at or below ``score``.

    >>> tiers = parse_tiers(DEFAULT_TIERS)
    >>> [tier_of(s, tiers) for s in (0.0, 0.49, 0.5, 0.95, 1.0)]
    ['bronze', 'bronze', 'silver', 'platinum', 'platinum']
    """
    i = bisect.bisect_right([cut for _, cut in tiers], score) - 1
    return tiers[max(i, 0)][0]


@dataclass(frozen=True)
class LoyaltyConfig:
    """``RETENTION_LOYALTY_*`` settings."""

    tiers: Tiers = parse_tiers(DEFAULT_TIERS)
    #: A current customer's last purchase is at most this many days before the clock.
    current_days: float = 365.0
    #: Customers the distribution holds at most (their latest predictions).
    capacity: int = 10_000


class Loyalty(NamedTuple):
    """What a snapshot publishes about loyalty."""

    score: Score  # the learner's answer: predicted purchase days in the horizon
    percentile: float  # loyalty_score, 0 to 1
    tier: str


class _Entry(NamedTuple):
    value: float
    last_purchase: int
    updated: int


class LoyaltyRanks:
    """The latest loyalty prediction of each current customer, at most ``capacity`` of them."""

    def __init__(self, capacity: int = LoyaltyConfig.capacity, current_days: float = LoyaltyConfig.current_days) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.window_ms = int(current_days * MS_PER_DAY)
        self.clock = -(2**63)  # the latest event time seen (partitions' clocks differ a little)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently updated first
        self._sorted: list[float] = []
        self._by_purchase: list[tuple[int, str]] = []  # heap of (last purchase, user), lazily cleaned

    def __len__(self) -> int:
        return len(self._entries)

    def is_current(self, last_purchase: int | None, now: int) -> bool:
        """Bought at most ``current_days`` before ``now`` (or the latest clock seen)."""
        return last_purchase is not None and last_purchase >= max(now, self.clock) - self.window_ms

    def update(self, user_id: str, value: float, last_purchase: int | None, now: int) -> None:
        """The customer's prediction at ``now``: kept if they are a current customer,
        dropped (with any older value of theirs) if not."""
        self.expire(now)
        old = self._remove(user_id)
        if not self.is_current(last_purchase, now):
            return
        assert last_purchase is not None
        value = round(value, 6)
        self._entries[user_id] = _Entry(value, last_purchase, now)
        bisect.insort(self._sorted, value)
        if old is None or old.last_purchase != last_purchase:  # else the heap has it already
            heapq.heappush(self._by_purchase, (last_purchase, user_id))
        while len(self._entries) > self.capacity:
            self._remove(next(iter(self._entries)))
        if len(self._by_purchase) > 4 * self.capacity + 64:  # stale heap items of replaced entries
            self._by_purchase = [(e.last_purchase, u) for u, e in self._entries.items()]
            heapq.heapify(self._by_purchase)

    def expire(self, now: int) -> None:
        """Drop the customers whose last purchase left the window at ``now``."""
        self.clock = max(self.clock, now)
        cutoff = self.clock - self.window_ms
        while self._by_purchase and self._by_purchase[0][0] < cutoff:
            last_purchase, user_id = heapq.heappop(self._by_purchase)
            entry = self._entries.get(user_id)
            if entry is not None and entry.last_purchase == last_purchase:
                self._remove(user_id)

    def forget(self, user_id: str) -> bool:
        """Drop the customer (erased); True if they were ranked."""
        return self._remove(user_id) is not None

    def _remove(self, user_id: str) -> _Entry | None:
        entry = self._entries.pop(user_id, None)
        if entry is not None:
            del self._sorted[bisect.bisect_left(self._sorted, entry.value)]
        return entry

    def percentile(self, user_id: str, value: float) -> float:
        """The share of current customers predicted below ``value``, ties half, with the
        customer (``user_id``, whatever value of theirs is kept) counted at ``value``."""
        value = round(value, 6)
        below = bisect.bisect_left(self._sorted, value)
        equal = bisect.bisect_right(self._sorted, value) - below
        others = len(self._sorted)
        own = self._entries.get(user_id)
        if own is not None:
            others -= 1
            if own.value < value:
                below -= 1
            elif own.value == value:
                equal -= 1
        return (below + (equal + 1) / 2) / (others + 1)

    def merge(self, other: LoyaltyRanks) -> LoyaltyRanks:
        """Both workers' customers in one distribution (the later update of a customer
        known to both wins; the most recently updated ``capacity`` are kept)."""
        merged = LoyaltyRanks(max(self.capacity, other.capacity))
        merged.window_ms = max(self.window_ms, other.window_ms)
        latest: dict[str, _Entry] = {}
        for ranks in (self, other):
            for user_id, entry in ranks._entries.items():
                if user_id not in latest or entry.updated > latest[user_id].updated:
                    latest[user_id] = entry
        for user_id, entry in sorted(latest.items(), key=lambda item: item[1].updated):
            merged.update(user_id, entry.value, entry.last_purchase, entry.updated)
        merged.expire(max(self.clock, other.clock))
        return merged


def rank_loyalty(
    ranks: LoyaltyRanks, user_id: str, last_purchase: int | None, now: int, score: Score,
    tiers: Tiers, learn: bool = True,
) -> Loyalty:
    """The customer's published loyalty at ``now``; with ``learn`` their prediction also
    replaces their previous one in ``ranks`` (a published row), without it the ranks are
    only read (a lookup), which gives the same percentile.

    >>> ranks = LoyaltyRanks()
    >>> rank_loyalty(ranks, "a", 0, 0, Score(1.0, "v"), parse_tiers(DEFAULT_TIERS))
    Loyalty(score=Score(value=1.0, version='v', prior=False), percentile=0.5, tier='silver')
    """
    if learn:
        ranks.update(user_id, score.value, last_purchase, now)
    else:
        ranks.expire(now)
    percentile = round(ranks.percentile(user_id, score.value), 6)
    return Loyalty(score, percentile, tier_of(percentile, tiers))
