"""A customer's lifecycle stage, from documented rules over point-in-time features and the
churn score.

Six stages; the first rule that holds wins (the same table is in docs/segments.md and
the README). ``G`` is the customer's usual gap between purchases: ``gap_mean_days`` with
two purchases or more, else ``default_gap_days``.

====  ===============  ======================================================================
rule  stage            holds when
====  ===============  ======================================================================
1     ``new``          ``first_seen_days < new_days``
2     ``churned``      ``recency_days >= max(churned_min_days, churned_gap_factor * G)`` and
                       ``last_seen_days >= churned_idle_days``
3     ``at_risk``      ``recency_days >= max(at_risk_min_days, at_risk_gap_factor * G)``, or
                       the churn score ``>= at_risk_churn``
4     ``reactivated``  a purchase within the last ``reactivated_days`` came after a gap that
                       had made the customer at risk by rule 3's recency test (a comeback)
5     ``loyal``        ``purchases_90d >= loyal_min_purchases_90d``
6     ``active``       otherwise
====  ===============  ======================================================================

Everything is measured at the event-time clock ``now`` (recency keeps growing while a
customer is silent), so a stage is a function of the state and the clock, never of the
order in which events arrived. A comeback (rule 4) is read from the purchase times the
state keeps anyway (the first purchase, the count, and the latest 16 by event time): the
usual gap *before* a purchase is ``(previous purchase - first purchase) / purchases
before the previous one``, so a late purchase that fills a gap undoes the comeback, and
changing the thresholds re-reads history with the new ones. Consequence of the bound: a
comeback followed by 15 or more purchases is forgotten (the customer is then ``loyal``).

>>> from streams.domain.features import features
>>> from streams.domain.timestamps import MS_PER_DAY
>>> state = UserState("u", first_seen=0, last_seen=0)
>>> lifecycle_stage(state, 3 * MS_PER_DAY, features(state, 3 * MS_PER_DAY), churn=0.1)
<Stage.NEW: 'new'>
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_DAY


class Stage(str, enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    AT_RISK = "at_risk"
    CHURNED = "churned"
    REACTIVATED = "reactivated"
    LOYAL = "loyal"


@dataclass(frozen=True)
class LifecycleConfig:
    """Thresholds of the lifecycle rules (days unless said otherwise)."""

    new_days: float = 30.0
    default_gap_days: float = 30.0
    at_risk_min_days: float = 14.0
    at_risk_gap_factor: float = 2.0
    at_risk_churn: float = 0.8
    churned_min_days: float = 60.0
    churned_gap_factor: float = 4.0
    churned_idle_days: float = 14.0
    reactivated_days: float = 30.0
    loyal_min_purchases_90d: int = 3

    def at_risk_wait(self, gap_days: float) -> float:
        """Days without a purchase after which a customer with usual gap ``gap_days`` is at risk."""
        return max(self.at_risk_min_days, self.at_risk_gap_factor * gap_days)

    def churned_wait(self, gap_days: float) -> float:
        return max(self.churned_min_days, self.churned_gap_factor * gap_days)


def lifecycle_stage(
    state: UserState, now: int, values: dict[str, float], churn: float, cfg: LifecycleConfig = LifecycleConfig()
) -> Stage:
    """The stage at event time ``now`` from :func:`~streams.domain.features.features`
    ``values`` (computed at ``now``), the churn score, and the state's purchase times."""
    if values["first_seen_days"] < cfg.new_days:
        return Stage.NEW
    gap = values["gap_mean_days"] if values["purchases"] >= 2 else cfg.default_gap_days
    recency = values["recency_days"]
    if recency >= cfg.churned_wait(gap) and values["last_seen_days"] >= cfg.churned_idle_days:
        return Stage.CHURNED
    if recency >= cfg.at_risk_wait(gap) or churn >= cfg.at_risk_churn:
        return Stage.AT_RISK
    comeback = last_comeback(state, cfg)
    if comeback is not None and now - comeback < cfg.reactivated_days * MS_PER_DAY:
        return Stage.REACTIVATED
    if values["purchases_90d"] >= cfg.loyal_min_purchases_90d:
        return Stage.LOYAL
    return Stage.ACTIVE


def last_comeback(state: UserState, cfg: LifecycleConfig = LifecycleConfig()) -> int | None:
    """Event time of the latest purchase that ended a gap long enough to make the customer
    at risk (judged with the usual gap before that purchase), among the kept purchase times.

    >>> day = 86_400_000
    >>> s = UserState("u", purchases=4, first_purchase=0, last_purchase=80 * day,
    ...               purchase_times=[0, 10 * day, 20 * day, 80 * day])
    >>> last_comeback(s) == 80 * day   # usual gap 10 days, then 60 days without a purchase
    True
    >>> last_comeback(UserState("u", purchases=2, first_purchase=0, last_purchase=day, purchase_times=[0, day]))
    """
    times = state.purchase_times
    if state.first_purchase is None:
        return None
    dropped = state.purchases - len(times)  # purchases older than the kept times
    for j in range(len(times) - 1, 0, -1):
        before = dropped + j - 1  # purchases before times[j - 1]
        gap = (times[j - 1] - state.first_purchase) / MS_PER_DAY / before if before >= 1 else cfg.default_gap_days
        if (times[j] - times[j - 1]) / MS_PER_DAY >= cfg.at_risk_wait(gap):
            return times[j]
    return None
