"""Paired bootstrap of the differences between two models scored on the same points, with
the customers resampled: "beats BG/NBD" means the interval of the difference excludes 0.

A customer's scoring points are not independent (one customer is scored every few days,
and their labels overlap), so the unit of resampling is the customer: each resample draws
as many customers as there are, with replacement, and every point of a drawn customer
counts as often as the customer was drawn. Both models are judged on the same resample
(paired), so what varies between them, not the sample, makes the interval.

>>> import numpy as np
>>> users = np.repeat(np.arange(40), 5)
>>> y = (np.arange(200) % 3 == 0).astype(float)
>>> good, bad = y * 0.6 + 0.2, np.full(200, 0.5)
>>> r = paired(users, y, y * 2, good, bad, good * 2, bad, resamples=50)
>>> r.auc.diff, r.auc.low > 0, r.rmse.high < 0
(0.5, True, True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

#: Resamples of the customers (percentile interval: 2.5 % and 97.5 %).
RESAMPLES = 200


class Interval(NamedTuple):
    """A difference (first model minus second) on the data, and its 95 % bootstrap interval."""

    diff: float
    low: float
    high: float


class Paired(NamedTuple):
    points: int
    customers: int
    auc: Interval  #: churn ROC AUC, first minus second (None-free: nan where a class is missing)
    rmse: Interval  #: loyalty RMSE, first minus second


def _ranks(scores: Array) -> tuple[NDArray[np.int64], int]:
    """Each score's group of equal scores, numbered in ascending order of the score."""
    unique, inverse = np.unique(scores, return_inverse=True)
    return inverse.reshape(-1), unique.size


def weighted_auc(groups: NDArray[np.int64], size: int, y: Array, w: Array) -> float:
    """ROC AUC of scores given as tie groups (:func:`_ranks`), each point weighted by ``w``
    (ties count one half): the weighted Mann-Whitney statistic.

    >>> g, n = _ranks(np.array([0.1, 0.4, 0.35, 0.8]))
    >>> weighted_auc(g, n, np.array([0.0, 0.0, 1.0, 1.0]), np.ones(4))
    0.75
    """
    pos = np.bincount(groups, weights=w * y, minlength=size)
    neg = np.bincount(groups, weights=w * (1.0 - y), minlength=size)
    total = pos.sum() * neg.sum()
    if total <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos @ below + 0.5 * pos @ neg) / total)


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact ROC AUC of any real-valued ``scores`` against 0/1 ``labels`` (ties count one half;
    nan without both classes).

    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    y = np.asarray(labels, dtype=float)
    groups, size = _ranks(np.asarray(scores, dtype=float))
    return weighted_auc(groups, size, y, np.ones_like(y))


def _rmse(err2: Array, w: Array) -> float:
    return float(np.sqrt(err2 @ w / w.sum()))


def paired(
    users: ArrayLike, churned: ArrayLike, days: ArrayLike, p_a: ArrayLike, p_b: ArrayLike, n_a: ArrayLike, n_b: ArrayLike,
    resamples: int = RESAMPLES, seed: int = 0,
) -> Paired:
    """AUC of ``p_a`` minus ``p_b`` (P(churn) against ``churned``) and RMSE of ``n_a`` minus
    ``n_b`` (purchase days against ``days``), on the points as given and over ``resamples``
    resamples of the customers (``users``: one id per point)."""
    _, user_index = np.unique(np.asarray(users), return_inverse=True)
    user_index = user_index.reshape(-1)
    customers = int(user_index.max()) + 1 if user_index.size else 0
    y = np.asarray(churned, dtype=float)
    d = np.asarray(days, dtype=float)
    ga, sa = _ranks(np.asarray(p_a, dtype=float))
    gb, sb = _ranks(np.asarray(p_b, dtype=float))
    ea = (np.asarray(n_a, dtype=float) - d) ** 2
    eb = (np.asarray(n_b, dtype=float) - d) ** 2

    def diffs(w: Array) -> tuple[float, float]:
        return weighted_auc(ga, sa, y, w) - weighted_auc(gb, sb, y, w), _rmse(ea, w) - _rmse(eb, w)

    if not customers:
        nan = Interval(float("nan"), float("nan"), float("nan"))
        return Paired(0, 0, nan, nan)
    auc0, rmse0 = diffs(np.ones_like(y))
    rng = np.random.default_rng(seed)
    aucs, rmses = np.empty(resamples), np.empty(resamples)
    for i in range(resamples):
        drawn = np.bincount(rng.integers(0, customers, customers), minlength=customers).astype(float)
        aucs[i], rmses[i] = diffs(drawn[user_index])
    lo, hi = 2.5, 97.5
    return Paired(
        int(y.size), customers,
        Interval(auc0, float(np.nanpercentile(aucs, lo)), float(np.nanpercentile(aucs, hi))),
        Interval(rmse0, float(np.percentile(rmses, lo)), float(np.percentile(rmses, hi))),
    )
