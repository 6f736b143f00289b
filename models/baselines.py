"""Baselines scored on the same scoring points as the online learners.

- :class:`RecencyBaseline`: recency alone. The churn rate and the mean purchase days of
  past matured labels in the same bin of ``recency_days`` (log-spaced bins), learned from
  the same delayed labels as the online learners: a calibrated, one-feature model.
- :class:`BgNbdBaseline`: BG/NBD (``models/bgnbd.py``) refitted on the purchase history to
  date every ``refit_days`` of event time, giving P(no purchase in H) and the expected
  purchase days in H from each customer's ``(x, t_x, T)`` at the scoring time.

>>> r = RecencyBaseline()
>>> for recency, churned, days in [(1.0, 0, 3), (1.2, 0, 1), (60.0, 1, 0), (70.0, 1, 0)]:
...     r.learn_churn(recency, churned); r.learn_loyalty(recency, days)
>>> r.predict(1.1)[0] < 0.5 < r.predict(65.0)[0]
True
"""

from __future__ import annotations

import math
from functools import lru_cache

from models.bgnbd import MS_PER_DAY, BgNbd, History, Summary


def _bin(recency_days: float) -> int:
    """Bins of about 15 % width in (1 + recency): 0, 0.15, 0.3 ... days up to years."""
    return int(math.log1p(max(0.0, recency_days)) / math.log(1.15))


class RecencyBaseline:
    """Churn rate and mean purchase days per recency bin, shrunk toward the overall means."""

    name = "recency"

    def __init__(self, shrink: float = 5.0) -> None:
        self.shrink = shrink
        self.churn: dict[int, list[float]] = {}  # bin -> [labels, churned]
        self.loyalty: dict[int, list[float]] = {}  # bin -> [labels, sum of days]
        self.totals = [0.0, 0.0, 0.0, 0.0]  # churn labels, churned, loyalty labels, days

    def learn_churn(self, recency_days: float, churned: int) -> None:
        cell = self.churn.setdefault(_bin(recency_days), [0.0, 0.0])
        cell[0] += 1
        cell[1] += churned
        self.totals[0] += 1
        self.totals[1] += churned

    def learn_loyalty(self, recency_days: float, days: int) -> None:
        cell = self.loyalty.setdefault(_bin(recency_days), [0.0, 0.0])
        cell[0] += 1
        cell[1] += days
        self.totals[2] += 1
        self.totals[3] += days

    def predict(self, recency_days: float) -> tuple[float, float]:
        """(P(churn), expected purchase days) for a customer ``recency_days`` after their last purchase."""
        b = _bin(recency_days)
        n, churned = self.churn.get(b, (0.0, 0.0))
        rate = (self.totals[1] + 1) / (self.totals[0] + 2)
        p = (churned + self.shrink * rate) / (n + self.shrink)
        m, days = self.loyalty.get(b, (0.0, 0.0))
        mean = self.totals[3] / self.totals[2] if self.totals[2] else 0.0
        return p, (days + self.shrink * mean) / (m + self.shrink)


class BgNbdBaseline:
    """BG/NBD refitted on the history to date; each customer's purchase days kept as
    (first day, last day, distinct days) from purchases seen in event-time order.

    >>> b = BgNbdBaseline(refit_days=1, min_customers=2)
    >>> for user, day in [("a", 0), ("a", 5), ("a", 9), ("b", 0), ("c", 3), ("c", 4)]:
    ...     b.purchase(user, day * MS_PER_DAY)
    >>> p, n = b.predict("a", 10 * MS_PER_DAY, horizon_days=30)
    >>> 0 < p < 1 and n > 0
    True
    """

    name = "bgnbd"

    def __init__(self, refit_days: float = 7.0, min_customers: int = 20) -> None:
        self.refit_ms = int(refit_days * MS_PER_DAY)
        self.min_customers = min_customers
        self.days: dict[str, list[int]] = {}
        self.model: BgNbd | None = None
        self.fitted_at: int | None = None
        self.fits = 0

    def purchase(self, customer: str, ts_ms: int) -> None:
        day = ts_ms // MS_PER_DAY
        seen = self.days.get(customer)
        if seen is None:
            self.days[customer] = [day, day, 1]
        elif day > seen[1]:
            seen[1] = day
            seen[2] += 1
        elif day < seen[0]:  # an out-of-order earlier day
            seen[0] = day
            seen[2] += 1

    def history(self, customer: str, now_ms: int) -> History | None:
        seen = self.days.get(customer)
        if seen is None:
            return None
        first, last, n = seen
        return History(n - 1, float(last - first), (now_ms - first * MS_PER_DAY) / MS_PER_DAY)

    def _refit(self, now_ms: int) -> None:
        if self.fitted_at is not None and now_ms - self.fitted_at < self.refit_ms:
            return
        if len(self.days) < self.min_customers:
            return
        rows = [h for c in self.days if (h := self.history(c, now_ms)) is not None]
        start = None if self.model is None else (self.model.r, self.model.alpha, self.model.a, self.model.b)
        self.model = BgNbd.fit(Summary.of(rows), start=start)
        self.fitted_at = now_ms
        self.fits += 1

    def predict(self, customer: str, now_ms: int, horizon_days: float) -> tuple[float, float] | None:
        """(P(no purchase in H), expected purchase days in H); None before the first fit
        or for a customer without a purchase."""
        self._refit(now_ms)
        h = self.history(customer, now_ms)
        if self.model is None or h is None:
            return None
        m = self.model
        return _answer((m.r, m.alpha, m.a, m.b), h.x, h.t_x, h.T, float(horizon_days))


@lru_cache(maxsize=1 << 16)
def _answer(params: tuple[float, float, float, float], x: int, t_x: float, T: float, horizon_days: float) -> tuple[float, float]:
    """BG/NBD's answer for one history. Cached: histories are whole days (purchase days,
    a midnight sweep), so on a day's sweep many customers share one (x, t_x, T) (every
    one-time buyer of the same first day), and the closed forms cost more than the look-up."""
    model = BgNbd(*params)
    p = float(model.p_no_purchase(x, t_x, T, horizon_days))
    n = float(model.expected_purchases(x, t_x, T, horizon_days))
    return min(1.0 - 1e-6, max(1e-6, p)), n
