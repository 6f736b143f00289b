"""BG/NBD, the beta-geometric/NBD model of Fader, Hardie & Lee (2005): a baseline for churn
and loyalty fitted on the purchase history to date.

Each customer buys as a Poisson process of rate ``lambda`` while alive, and after each
repeat purchase drops out for good with probability ``p``; across customers
``lambda ~ Gamma(r, rate alpha)`` and ``p ~ Beta(a, b)``. A customer's history is three
numbers, in one time unit (days here): ``x`` repeat purchases, ``t_x`` the time of the last
purchase since the first, ``T`` the time from the first purchase to the cut-off. The formulas,
their derivation and the validation figures are in ``docs/bgnbd.md``.

Purchases are counted as purchase *days* (:func:`summarize`): several purchases on one UTC
day are one, as in the loyalty definition, so ``expected_purchases`` forecasts purchase days.

>>> m = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)   # CDNOW, weeks (FHL 2005)
>>> round(float(m.expected_purchases(x=2, t_x=30.43, T=38.86, horizon=39)), 3)
1.226
>>> round(float(m.p_alive(x=2, t_x=30.43, T=38.86)), 3)
0.727
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import betaln, expit, gammaln, hyp2f1

MS_PER_DAY = 86_400_000

#: Bounds of the fit's log-parameters (each parameter within [e^-12, e^12]).
BOUNDS = (-12.0, 12.0)

K = TypeVar("K", bound=Hashable)
Array = NDArray[np.float64]


class History(NamedTuple):
    """One customer's BG/NBD summary at a cut-off, in the summary's time unit."""

    x: int  #: repeat purchase days (purchase days after the first one)
    t_x: float  #: time from the first to the last purchase day
    T: float  #: time from the first purchase day to the cut-off


class Summary(NamedTuple):
    """Histories as arrays (``weights`` counts customers sharing one history)."""

    x: Array
    t_x: Array
    T: Array
    weights: Array

    @classmethod
    def of(cls, histories: Iterable[History]) -> Summary:
        """Arrays of the distinct histories, each with the number of customers who share it
        (day-resolution histories repeat a lot, and the fit's cost follows distinct rows)."""
        rows = np.array(list(histories), dtype=float).reshape(-1, 3)
        unique, counts = np.unique(rows, axis=0, return_counts=True)
        return cls(unique[:, 0], unique[:, 1], unique[:, 2], counts.astype(float))

    @property
    def customers(self) -> int:
        return int(self.weights.sum())


def summarize(
    purchases: Iterable[tuple[K, int]], cutoff_ms: int, unit_ms: int = MS_PER_DAY
) -> dict[K, History]:
    """Each buyer's :class:`History` at ``cutoff_ms`` from ``(customer, ts_ms)`` purchases.

    Purchases after the cut-off are ignored; customers without a purchase by then are
    absent. A purchase counts as its UTC day (``ts // MS_PER_DAY``): several on one day
    are one purchase day. ``t_x`` runs from the first to the last purchase day's start,
    ``T`` from the first purchase day's start to the cut-off itself, so ``t_x <= T``.

    >>> day = MS_PER_DAY
    >>> summarize([("u", 0), ("u", 3 * day + 5), ("u", 3 * day + 9), ("u", 9 * day)], 7 * day)
    {'u': History(x=1, t_x=3.0, T=7.0)}
    """
    days: dict[K, set[int]] = {}
    for customer, ts in purchases:
        if ts <= cutoff_ms:
            days.setdefault(customer, set()).add(ts // MS_PER_DAY)
    out: dict[K, History] = {}
    for customer, seen in days.items():
        first, last = min(seen), max(seen)
        out[customer] = History(
            len(seen) - 1, (last - first) * MS_PER_DAY / unit_ms, (cutoff_ms - first * MS_PER_DAY) / unit_ms
        )
    return out


def purchase_days_in(purchases: Iterable[tuple[K, int]], after_ms: int, horizon_ms: int) -> dict[K, int]:
    """Distinct UTC purchase days per customer among purchases in ``(after, after + horizon]``:
    the loyalty label (and ``0`` of them is churn); customers without one are absent.

    >>> purchase_days_in([("u", 5), ("u", 6), ("v", 1)], after_ms=1, horizon_ms=10)
    {'u': 1}
    """
    days: dict[K, set[int]] = {}
    for customer, ts in purchases:
        if after_ms < ts <= after_ms + horizon_ms:
            days.setdefault(customer, set()).add(ts // MS_PER_DAY)
    return {customer: len(seen) for customer, seen in days.items()}


def _log_likelihood(params: Array, x: Array, t_x: Array, T: Array, repeats: tuple[Array, Array] | None = None) -> Array:
    """Per-history log-likelihood of FHL (2005), eq. (6), in log-sum-exp form.

    ``repeats``: ``np.unique(x, return_inverse=True)`` of ``x``: the terms of ``x`` alone (the
    log-gamma and log-beta functions, half the cost) are then computed once per distinct
    repeat count (a dozen in a shop's histories, against hundreds of rows) and gathered.
    Each value is the same bit for bit (the same element-wise operations on the same numbers).

    >>> x, t_x, T = np.array([0.0, 2.0, 2.0, 5.0]), np.array([0.0, 10.0, 12.0, 20.0]), np.array([30.0, 30.0, 31.0, 40.0])
    >>> p = np.array([0.5, 10.0, 0.8, 2.5])
    >>> bool(np.array_equal(_log_likelihood(p, x, t_x, T), _log_likelihood(p, x, t_x, T, np.unique(x, return_inverse=True))))
    True
    """
    r, alpha, a, b = params
    if repeats is None:
        shared = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + betaln(a, b + x) - betaln(a, b)
    else:
        distinct, index = repeats
        shared = (gammaln(r + distinct) - gammaln(r) + r * math.log(alpha) + betaln(a, b + distinct) - betaln(a, b))[index]
    rx = r + x
    alive = -rx * np.log(alpha + T)
    # B(a+1, b+x-1) / B(a, b+x) = a / (b+x-1): dropped out right after the last purchase.
    gone = np.where(
        x > 0, math.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - rx * np.log(alpha + t_x), -np.inf
    )
    return shared + np.logaddexp(alive, gone)


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters; times in the unit of the summary it was fitted on.

    Prediction methods take scalars or arrays (broadcast together) and return arrays.
    """

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")  #: total at the fit
    customers: int = 0  #: customers it was fitted on

    @classmethod
    def fit(cls, summary: Summary, start: tuple[float, float, float, float] | None = None) -> BgNbd:
        """Maximum likelihood on the log-parameters (L-BFGS-B; Nelder-Mead if that fails).

        >>> s = Summary.of([History(0, 0.0, 30.0), History(2, 20.0, 30.0), History(5, 28.0, 30.0)])
        >>> BgNbd.fit(s).customers
        3
        """
        if summary.customers == 0:
            raise ValueError("no customers to fit on")
        x, t_x, T, w = summary
        total = w.sum()
        repeats = np.unique(x, return_inverse=True)  # (the terms of x alone: once per distinct count)

        def objective(log_params: Array) -> float:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a non-finite value is rejected below
                value = -float(w @ _log_likelihood(np.exp(log_params), x, t_x, T, repeats)) / total
            return value if math.isfinite(value) else 1e10

        cold = (1.0, max(float(w @ T / total), 1e-3), 1.0, 1.0)
        # a warm start (the previous fit) saves iterations but can sit in a flat region the
        # new data has left (CDNOW's early fits kept a dropout of ~0.02% for 100 days), so
        # the default start is tried too and the higher likelihood wins
        starts = [cold] if start is None or tuple(start) == cold else [tuple(start), cold]
        best = min((cls._minimize(objective, s) for s in starts), key=lambda result: result.fun)
        r, alpha, a, b = np.exp(best.x)
        return cls(float(r), float(alpha), float(a), float(b), -float(best.fun) * float(total), int(total))

    @staticmethod
    def _minimize(objective: Callable[[Array], float], start: tuple[float, ...]) -> Any:
        """L-BFGS-B on the log-parameters from ``start``; Nelder-Mead if that fails."""
        best = minimize(objective, np.log(np.asarray(start, dtype=float)), method="L-BFGS-B", bounds=[BOUNDS] * 4)
        if not best.success:
            # Nelder-Mead has no bounds: it searches the clipped parameters, so it cannot wander
            # off to a degenerate corner (a simulator fit reached b = 1e193, whose expected
            # purchases then overflowed in the cancellation of eq. (10))
            fallback = minimize(lambda p: objective(np.clip(p, *BOUNDS)), best.x, method="Nelder-Mead",
                                options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-10})
            fallback.x = np.clip(fallback.x, *BOUNDS)
            if fallback.fun <= best.fun:
                best = fallback
        return best

    @property
    def params(self) -> Array:
        return np.array([self.r, self.alpha, self.a, self.b])

    def log_likelihoods(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """Each history's log-likelihood under these parameters."""
        x_, t_x_, T_ = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, t_x, T)))
        return _log_likelihood(self.params, x_, t_x_, T_)

    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> Array:
        """P(still alive at T | x, t_x, T) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)).

        A customer without a repeat purchase is alive for sure: in BG/NBD dropping out
        happens only right after a repeat purchase (a known quirk of the model).
        """
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        odds = (
            math.log(self.a)
            - np.log(np.maximum(self.b + x - 1, 1e-300))
            + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        )
        return np.where(x > 0, expit(-odds), 1.0)

    def p_no_purchase(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, horizon: ArrayLike) -> Array:
        """P(no purchase in (T, T + horizon] | x, t_x, T): the churn probability.

        = (1 - P(alive)) + P(alive) ((alpha+T)/(alpha+T+horizon))^(r+x). An alive customer's
        next purchase comes after an Exp(lambda) wait whatever p is (dropping out happens
        only right after a purchase), and lambda's posterior is Gamma(r+x, alpha+T).
        """
        x, t_x, T, horizon = (np.asarray(v, dtype=float) for v in (x, t_x, T, horizon))
        alive = self.p_alive(x, t_x, T)
        silent = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + horizon)))
        return 1.0 - alive + alive * silent

    def churn_and_expected(self, x: float, t_x: float, T: float, horizon: float) -> tuple[float, float]:
        """(:meth:`p_no_purchase`, :meth:`expected_purchases`) of one customer: the same
        numbers bit for bit (the same numpy and scipy functions, on scalars, with the terms
        the two share computed once) in ~6 µs instead of ~55 (a score row asks for both, and
        numpy's 0-d arrays cost more than the arithmetic).

        >>> m = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
        >>> m.churn_and_expected(2, 20.0, 30.0, 90.0) == (float(m.p_no_purchase(2, 20.0, 30.0, 90.0)), float(m.expected_purchases(2, 20.0, 30.0, 90.0)))
        True
        """
        x, t_x, T, t = float(x), float(t_x), float(T), float(horizon)
        a = self.a if abs(self.a - 1.0) > 1e-7 else 1.0 + 1e-7
        r, alpha, b = self.r, self.alpha, self.b
        alive = 1.0
        if x > 0:
            odds = math.log(self.a) - np.log(max(b + x - 1, 1e-300)) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
            alive = expit(-odds)
        decay = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
        z = t / (alpha + T + t)
        f = hyp2f1(r + x, b + x, a + b + x - 1, z)
        if not math.isfinite(f):
            f = float(gauss_2f1(r + x, b + x, a + b + x - 1, z))
        alive_mean = (a + b + x - 1) / (a - 1) * (1.0 - decay * f)
        return float(1.0 - alive + alive * decay), float(alive * alive_mean)

    def expected_purchases(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike, horizon: ArrayLike) -> Array:
        """E[purchases in (T, T + horizon] | x, t_x, T], FHL (2005) eq. (10):

        P(alive) (a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; t/(alpha+T+t))].
        With ``x = T = 0`` it is E[X(t)] for a new customer (eq. 9). ``a = 1`` is a removable
        singularity; it is evaluated at ``a = 1 + 1e-7``.
        """
        x, t_x, T, t = (np.asarray(v, dtype=float) for v in (x, t_x, T, horizon))
        a = self.a if abs(self.a - 1.0) > 1e-7 else 1.0 + 1e-7
        r, alpha, b = self.r, self.alpha, self.b
        z = t / (alpha + T + t)
        decay = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
        alive_mean = (a + b + x - 1) / (a - 1) * (1.0 - decay * gauss_2f1(r + x, b + x, a + b + x - 1, z))
        return self.p_alive(x, t_x, T) * alive_mean


def gauss_2f1(a: ArrayLike, b: ArrayLike, c: ArrayLike, z: ArrayLike, max_terms: int = 100_000) -> Array:
    """The Gauss hypergeometric function 2F1(a, b; c; z) for 0 <= z < 1: scipy's, and where
    scipy gives no finite value the series summed term by term.

    scipy 1.17's ``hyp2f1`` returns nan for a large first parameter (BG/NBD fits with a large
    ``r``, such as ``r`` = 18,068, ``z`` = 2e-4), where the series converges fast.

    >>> round(float(gauss_2f1(18_068.2, 40.6, 39.7, 1.85e-4)), 6)  # 50-digit Decimal series: 30.4382917585096819...
    30.438292
    >>> bool(np.isclose(gauss_2f1(1.5, 2.0, 3.0, 0.4), hyp2f1(1.5, 2.0, 3.0, 0.4)))
    True
    """
    out = np.array(hyp2f1(a, b, c, z), dtype=float)
    bad = ~np.isfinite(out)
    if not bad.any():
        return out
    a_, b_, c_, z_ = (np.broadcast_to(np.asarray(v, dtype=float), out.shape)[bad] for v in (a, b, c, z))
    term = np.ones_like(z_)
    total = np.ones_like(z_)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(max_terms):
            term = term * (a_ + k) * (b_ + k) / ((c_ + k) * (k + 1)) * z_
            total = total + term
            if np.all(np.abs(term) <= 1e-16 * np.abs(total)) or not np.all(np.isfinite(total)):
                break
    out[bad] = total
    return out


class Simulated(NamedTuple):
    """Customers drawn from the BG/NBD process: their histories at ``T`` and what followed."""

    x: Array  #: repeat purchases in (0, T]
    t_x: Array  #: time of the last of them (0 without one)
    T: Array
    future: Array  #: purchases in (T, T + horizon]


def simulate(model: BgNbd, T: ArrayLike, horizon: float, rng: np.random.Generator) -> Simulated:
    """Draw one customer per entry of ``T`` (first purchase at 0) and run each to
    ``T + horizon`` in continuous time: the generative process the closed forms are
    tested against.

    >>> s = simulate(BgNbd(0.5, 10.0, 0.8, 2.5), np.full(4, 30.0), 30.0, np.random.default_rng(1))
    >>> bool(np.all(s.t_x <= s.T))
    True
    """
    T = np.asarray(T, dtype=float)
    n = T.size
    lam = rng.gamma(model.r, 1.0 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    x, t_x, future = np.zeros(n), np.zeros(n), np.zeros(n)
    t = np.zeros(n)
    active = np.arange(n)
    while active.size:
        t[active] += rng.exponential(1.0 / lam[active])
        ended = t[active] > T[active] + horizon
        before = ~ended & (t[active] <= T[active])
        x[active[before]] += 1
        t_x[active[before]] = t[active[before]]
        future[active[~ended & ~before]] += 1
        dropped = rng.random(active.size) < p[active]
        active = active[~ended & ~dropped]
    return Simulated(x, t_x, T, future)
