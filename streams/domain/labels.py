"""Churn and loyalty labels that mature in event time.

At a scoring time ``t`` (a purchase, or a periodic sweep of a known customer) the user's
point-in-time features are kept until the truth is known:

- **churn** at ``t``: no purchase in ``(t, t + horizon]``. A purchase inside the horizon
  resolves it as 0 at once; the event-time clock passing ``t + horizon`` resolves it as 1.
- **loyalty** at ``t``: the number of distinct UTC purchase days in ``(t, t + horizon]``,
  known only when the clock passes ``t + horizon``.

State stays bounded: at most :data:`MAX_PENDING` points wait per user, and a new point is
stored only if the newest one is at least ``horizon / MAX_PENDING`` older (so the stored
points of a user span one horizon, whatever their purchase rate). Scorings in between are
still scored, just not kept for learning.

>>> H = 10
>>> s = UserState("u", pending=[PendingScore(0, [1.0]), PendingScore(5, [2.0])])
>>> [(m.ts, m.churned, m.days) for m in on_purchase(s, purchase_ms=8, horizon_ms=H)]
[(0, 0, None), (5, 0, None)]
>>> [(m.ts, m.churned, m.days) for m in mature(s, now_ms=11, horizon_ms=H)]
[(0, None, 1)]
>>> [(m.ts, m.churned, m.days) for m in mature(s, now_ms=16, horizon_ms=H)]
[(5, None, 1)]
"""

from __future__ import annotations

from typing import NamedTuple

from streams.domain.state import PendingScore, UserState
from streams.domain.timestamps import MS_PER_DAY

#: At most this many scoring points wait per user (bounded state).
MAX_PENDING = 4


class Matured(NamedTuple):
    """A scoring point's label(s) that became known in this step."""

    ts: int  #: the scoring time
    features: list[float]
    churned: int | None  #: 1 churned, 0 bought within the horizon; None: resolved earlier
    days: int | None  #: purchase days in the horizon; None: the horizon is not over yet
    churn_p: float | None = None  #: the live learner's prediction at ``ts``, if recorded
    loyalty_p: float | None = None
    #: The learners' two candidates at ``ts`` (:class:`~streams.domain.state.PendingScore`).
    churn_prior_p: float | None = None
    churn_learned_p: float | None = None
    loyalty_prior_p: float | None = None
    loyalty_learned_p: float | None = None


def spacing_ms(horizon_ms: int) -> int:
    """Least event time between two stored scoring points of one user."""
    return max(1, horizon_ms // MAX_PENDING)


def next_storable(state: UserState, horizon_ms: int) -> int | None:
    """Earliest event time at which a new scoring point may be stored (None: any time).

    >>> next_storable(UserState("u", pending=[PendingScore(100, [])]), horizon_ms=40)
    110
    """
    if not state.pending:
        return None
    return max(p.ts for p in state.pending) + spacing_ms(horizon_ms)


def add_scoring_point(
    state: UserState, ts: int, features: list[float], horizon_ms: int,
    churn_p: float | None = None, loyalty_p: float | None = None,
    candidates: tuple[float | None, float | None, float | None, float | None] = (None, None, None, None),
) -> PendingScore | None:
    """Keep a scoring point until its labels mature; None if it is too close to the last one.

    >>> s = UserState("u")
    >>> add_scoring_point(s, 0, [1.0], horizon_ms=40) is not None, add_scoring_point(s, 5, [2.0], horizon_ms=40)
    (True, None)
    """
    earliest = next_storable(state, horizon_ms)
    if earliest is not None and ts < earliest:
        return None
    point = PendingScore(ts, features, churn_p=churn_p, loyalty_p=loyalty_p)
    point.churn_prior_p, point.churn_learned_p, point.loyalty_prior_p, point.loyalty_learned_p = candidates
    state.pending.append(point)
    if len(state.pending) > MAX_PENDING:  # only if the horizon setting shrank
        del state.pending[0]
    return point


def _matured(point: PendingScore, churned: int | None, days: int | None) -> Matured:
    return Matured(
        point.ts, point.features, churned, days, point.churn_p, point.loyalty_p,
        point.churn_prior_p, point.churn_learned_p, point.loyalty_prior_p, point.loyalty_learned_p,
    )


def _final(point: PendingScore) -> Matured:
    return _matured(point, None if point.churn_done else 1, point.days)


def on_purchase(state: UserState, purchase_ms: int, horizon_ms: int) -> list[Matured]:
    """A purchase at ``purchase_ms``: counts a purchase day for every point whose horizon
    holds it (resolving churn = 0 the first time); points whose horizon had already passed
    (the clock had not reached them yet) mature as they were."""
    day = purchase_ms // MS_PER_DAY
    out: list[Matured] = []
    keep: list[PendingScore] = []
    for point in state.pending:
        if purchase_ms <= point.ts:
            keep.append(point)
        elif purchase_ms <= point.ts + horizon_ms:
            if day != point.last_day:
                point.days += 1
                point.last_day = day
            if not point.churn_done:
                point.churn_done = True
                out.append(_matured(point, 0, None))
            keep.append(point)
        else:
            out.append(_final(point))
    state.pending = keep
    return out


def mature(state: UserState, now_ms: int, horizon_ms: int) -> list[Matured]:
    """Every point whose horizon the event-time clock has passed: its loyalty count, and
    churn = 1 if no purchase resolved it."""
    done = [p for p in state.pending if p.ts + horizon_ms < now_ms]
    if done:
        state.pending = [p for p in state.pending if p.ts + horizon_ms >= now_ms]
    return [_final(p) for p in done]


def next_maturity(state: UserState, horizon_ms: int) -> int | None:
    """The event time at which the oldest pending point matures (just past its horizon)."""
    return min((p.ts + horizon_ms + 1 for p in state.pending), default=None)
