"""RFM quintiles: where a customer stands against the current population of customers.

Recency, frequency and monetary value are scored 1-5 against the buyers a worker holds
(its partitions are a uniform hash sample of all customers, so its quintiles estimate
the population's). Each measure is kept as a histogram over fixed bins, updated when a
customer's values change (the old bin loses one, the new one gains one), so ranking a
customer costs one pass over at most a few hundred bins, not over the customers.

- **R**: the day of the last purchase; a later day is more recent and scores higher.
- **F**: lifetime purchases.
- **M**: lifetime spend (bins that grow by about 10 %).

A score is ``1 + floor(5 * share of buyers strictly below)``, with ties sharing the
lower score, so equal customers always score alike.

>>> p = Population()
>>> for spend in (10, 20, 30, 40, 50):
...     p.update(None, Rfm(last_day=1, purchases=1, spend_cents=spend * 100))
>>> p.scores(Rfm(last_day=1, purchases=1, spend_cents=5000))
(1, 1, 5)
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from itertools import accumulate
from typing import NamedTuple

from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_DAY


class Rfm(NamedTuple):
    last_day: int
    purchases: int
    spend_cents: int


def rfm_of(state: UserState) -> Rfm | None:
    """The customer's raw RFM values, or None before their first purchase."""
    if state.last_purchase is None:
        return None
    return Rfm(state.last_purchase // MS_PER_DAY, state.purchases, state.spend_cents)


def _money_bin(cents: int) -> int:
    return 0 if cents <= 100 else 1 + int(math.log(cents / 100) / math.log(1.1))


def _frequency_bin(purchases: int) -> int:
    return purchases if purchases <= 50 else 50 + int(math.log(purchases / 50) / math.log(1.1))


class Population:
    """Histograms of the buyers' R, F and M bins."""

    def __init__(self) -> None:
        self.recency: Counter[int] = Counter()
        self.frequency: Counter[int] = Counter()
        self.money: Counter[int] = Counter()
        self.size = 0
        #: how many updates changed a histogram (a row computed at an equal count ranks alike)
        self.changes = 0
        #: per histogram, its sorted bins and the running count of buyers below each: built
        #: at the first ranking after a change (rankings, one per score row, far outnumber
        #: changes, one per purchase), so a rank is a bisection, not a pass over the bins
        self._ranked: tuple[tuple[list[int], list[int]], ...] | None = None

    def update(self, old: Rfm | None, new: Rfm | None) -> None:
        """Move one customer from ``old`` to ``new`` values (None: not a buyer)."""
        if old == new:
            return
        self._ranked = None
        self.changes += 1
        for values, step in ((old, -1), (new, 1)):
            if values is None:
                continue
            for histogram, key in self._bins(values):
                histogram[key] += step
                if histogram[key] == 0:
                    del histogram[key]
            self.size += step

    def _bins(self, values: Rfm) -> tuple[tuple[Counter[int], int], ...]:
        return (
            (self.recency, values.last_day),
            (self.frequency, _frequency_bin(values.purchases)),
            (self.money, _money_bin(values.spend_cents)),
        )

    def scores(self, values: Rfm | None) -> tuple[int, int, int]:
        """(R, F, M), each 1-5; (0, 0, 0) for a customer who never bought."""
        if values is None or self.size <= 0:
            return 0, 0, 0
        ranked = self._ranked
        if ranked is None:
            ranked = self._ranked = tuple(self._cumulative(h) for h in (self.recency, self.frequency, self.money))
        out = []
        for (keys, below), (_, key) in zip(ranked, self._bins(values)):
            out.append(1 + min(4, 5 * below[bisect_left(keys, key)] // self.size))
        return out[0], out[1], out[2]

    @staticmethod
    def _cumulative(histogram: Counter[int]) -> tuple[list[int], list[int]]:
        """The sorted bins and, at index i, the count in the bins before the i-th (one more
        entry than bins: the count below a key past every bin is everyone's)."""
        keys = sorted(histogram)
        return keys, [0, *accumulate(histogram[k] for k in keys)]
