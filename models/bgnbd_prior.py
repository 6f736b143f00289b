"""BG/NBD inside the online learners: fitted by the trainer, used by every scorer.

The trainer (:mod:`models.trainer`) keeps each customer's latest purchase history as the
examples it learns carry it (the model inputs of a published score row, or of a matured
label's scoring point): ``x`` repeat purchases, ``t_x`` first to last purchase, ``T`` first
purchase to the observation, all read from the point-in-time features ``purchases``,
``gap_mean_days`` and ``recency_days`` (:func:`history_of`). Every ``refit_periods``
periods (:meth:`BgNbdFit.tick`, called when the trainer stamps a snapshot) it refits BG/NBD
(:mod:`models.bgnbd`) on them, each ``T`` extended to the latest observation's time (no
news of a customer since their last observation is taken as no purchase since: a purchase
publishes a score row unless one was published less than a day before, so this misses only
purchases that close together), warm-started from the previous fit, and the fitted
parameters travel in the snapshot with the learners. A scorer then needs no history of its
own: BG/NBD's closed forms on the features of the point give P(no purchase in H) and the
expected purchases in H (:func:`predict`), which are the learners' prior before they have
enough labels (no label needed, so the first horizon is covered) and three more inputs of
the River learners afterwards (:func:`with_bgnbd`).

A fit is used only if it can tell customers apart: it needs ``min_customers`` histories
of which ``min_repeaters`` with a repeat purchase (a fit on a few one-time buyers is no
fit), and its purchase rates must vary across customers (``r`` <= :data:`MAX_SHAPE`: the
Gamma of the rates has a coefficient of variation ``1/sqrt(r)`` of at least 10%). Where
they do not (the simulator's shop: ``r`` in the thousands and almost no dropout, so BG/NBD
predicts about the same for everyone, docs/evaluation.md) the fit is set aside and the
learners go on with their recency priors and without the BG/NBD inputs until a refit passes.

The fit uses every customer's sufficient statistics (x, t_x, T: three numbers each), up to
``customers`` of them (default a million); beyond that a bottom-k sample by a fixed hash of
the user id (the same customers whatever the order of arrival), so the fit's cost and the
snapshot's size stay bounded. (It was 5,000 by default: on CDNOW's master history that kept
2,909 of 23,570 customers.)

BG/NBD counts purchase *days* (as the replay's BG/NBD baseline and the loyalty label do),
read from the feature ``purchase_days`` (distinct UTC days with a purchase). Points stored
before that feature existed have only ``purchases``: their repeat purchase days are taken as
at most the whole days between the first and the last purchase (two orders on a customer's
first day and none since are no repeat; orders on days 0, 0 and 30 still count two).

>>> fit = BgNbdFit(refit_periods=1, min_customers=3, min_repeaters=2)
>>> for user, n, gap, recency in [("a", 1, 0, 40), ("b", 3, 10, 5), ("c", 5, 6, 2), ("d", 2, 30, 20)]:
...     fit.observe(user, 0, {"purchases": n, "gap_mean_days": gap, "recency_days": recency})
>>> fit.tick() is not None and fit.fits
1
>>> p, n = predict(fit.model, {"purchases": 5, "gap_mean_days": 6.0, "recency_days": 2.0}, 30.0)
>>> 0 < p < 1 and n > 0
True
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import msgspec
import numpy as np

from models.bgnbd import MS_PER_DAY, BgNbd, History, Summary

#: Names of the learners' BG/NBD inputs: log P(no purchase in H), log P(a purchase in H)
#: (both <= 0, so :func:`models.churn.log_features` leaves them as they are, and their
#: difference is BG/NBD's logit) and the expected purchases in H (>= 0, log1p-compressed).
BGNBD_FEATURES = ("bgnbd_log_p_churn", "bgnbd_log_p_buy", "bgnbd_expected")

#: P(no purchase in H) is kept within [EPS, 1 - EPS] (its logs stay finite).
EPS = 1e-6


def history_of(x: dict[str, float]) -> History | None:
    """The customer's BG/NBD history (days) at the time of the features ``x``; None
    without a purchase.

    >>> history_of({"purchases": 3.0, "gap_mean_days": 10.0, "recency_days": 4.0})
    History(x=2, t_x=20.0, T=24.0)
    >>> history_of({"purchases": 3.0, "purchase_days": 2.0, "gap_mean_days": 10.0, "recency_days": 4.0})
    History(x=1, t_x=20.0, T=24.0)
    """
    n = x.get("purchases", 0.0)
    if not n >= 1:
        return None
    repeats = int(round(n)) - 1
    t_x = max(0.0, x.get("gap_mean_days", 0.0)) * repeats
    # repeat purchase *days* (what BG/NBD is fitted on and the loyalty label counts): the
    # count of purchase days where the features have it, else (points stored before it) no
    # more than the days between the first and the last purchase (orders on one day are one)
    known = x.get("purchase_days", 0.0)
    days = int(round(known)) - 1 if known >= 1 else repeats
    days = min(repeats, days, math.ceil(t_x - 1e-9))
    return History(days, t_x, t_x + max(0.0, x.get("recency_days", 0.0)))


@lru_cache(maxsize=4096)
def _closed_forms(params: tuple[float, float, float, float], x: int, t_x: float, T: float, horizon: float) -> tuple[float, float]:
    p_, n_ = BgNbd(*params).churn_and_expected(x, t_x, T, horizon)
    p, n = float(p_), float(n_)
    if not math.isfinite(p):
        p = 1.0 - EPS
    if not math.isfinite(n) or n < 0:
        n = 0.0
    return min(1.0 - EPS, max(EPS, p)), n


def predict(model: BgNbd | None, x: dict[str, float], horizon_days: float) -> tuple[float, float] | None:
    """(P(no purchase in the horizon), expected purchases in it) for the customer whose
    point-in-time features are ``x``; None without a fit or a purchase. Cached: the churn
    and the loyalty learner ask about the same point."""
    h = history_of(x) if model is not None else None
    if h is None or model is None:
        return None
    return _closed_forms((model.r, model.alpha, model.a, model.b), h.x, h.t_x, h.T, float(horizon_days))


def with_bgnbd(model: BgNbd | None, x: dict[str, float], horizon_days: float) -> dict[str, float]:
    """``x`` with the :data:`BGNBD_FEATURES` (``x`` itself without a fit or a purchase).

    >>> m = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    >>> sorted(with_bgnbd(m, {"purchases": 2.0, "gap_mean_days": 5.0, "recency_days": 1.0}, 30.0))[:3]
    ['bgnbd_expected', 'bgnbd_log_p_buy', 'bgnbd_log_p_churn']
    >>> with_bgnbd(None, {"purchases": 2.0}, 30.0)
    {'purchases': 2.0}
    """
    return with_prediction(x, predict(model, x, horizon_days))


def with_prediction(x: dict[str, float], predicted: tuple[float, float] | None) -> dict[str, float]:
    """:func:`with_bgnbd` from the prediction :func:`predict` made for ``x`` (None: ``x`` itself)."""
    if predicted is None:
        return x
    p, n = predicted
    return {**x, "bgnbd_log_p_churn": math.log(p), "bgnbd_log_p_buy": math.log1p(-p), "bgnbd_expected": n}


def user_of(example_id: str) -> tuple[str, int | None]:
    """The user of an example id and the event time of its features (``user@time`` or
    ``user@time/c``; a user id may hold '@'); None for an id of another shape.

    >>> user_of("a@b.c@1700000000000/d")
    ('a@b.c', 1700000000000)
    """
    user, _, rest = example_id.rpartition("@")
    try:
        return user, int(rest.partition("/")[0])
    except ValueError:
        return user, None


_HASH_SPACE = 1 << 32

#: Largest Gamma shape ``r`` of a usable fit: beyond it the purchase rates hardly vary
#: across customers (coefficient of variation ``1/sqrt(r)`` < 10%).
MAX_SHAPE = 100.0


def _plain(value: Any) -> Any:
    """numpy scalars in a history (features computed with numpy) as the numbers they are."""
    if hasattr(value, "item"):
        return value.item()
    raise NotImplementedError(f"{type(value).__name__} in a BG/NBD history")


_HISTORIES = msgspec.msgpack.Encoder(enc_hook=_plain)


class BgNbdFit:
    """The trainer's customer histories and the BG/NBD fitted on them."""

    #: (Class defaults: fits pickled before the guard load with them.)
    min_repeaters = 5
    rejected = 0  #: fits set aside as unable to tell customers apart
    start: tuple[float, float, float, float] | None = None  #: the latest fit's parameters (warm start)
    known: int | None = None  #: customers with a history, in a copy pickled without them

    def __init__(self, refit_periods: int = 7, customers: int = 1_000_000, min_customers: int = 20, min_repeaters: int = 5) -> None:
        self.refit_periods = refit_periods  #: 0: never fit
        self.customers = max(1, customers)
        self.min_customers = min_customers
        self.min_repeaters = min_repeaters
        #: user -> (x, t_x, T, event time of the observation)
        self.histories: dict[str, tuple[int, float, float, int]] = {}
        self.now = 0  #: the latest observation's event time: the fit's cut-off
        self.threshold = _HASH_SPACE  #: a customer is kept iff the hash of the id is below it
        self.model: BgNbd | None = None
        self.periods = 0
        self.fitted_period: int | None = None
        self.fits = 0

    def observe(self, user: str, at_ms: int, x: dict[str, float]) -> None:
        """The customer's features at event time ``at_ms``: keep the latest history."""
        if self.refit_periods <= 0:
            return
        self.now = max(self.now, at_ms)
        h = history_of(x)
        if h is None or zlib.crc32(user.encode()) >= self.threshold:
            return
        old = self.histories.get(user)
        if old is None or (at_ms, h.T) >= (old[3], old[2]):
            self.histories[user] = (h.x, h.t_x, h.T, at_ms)
        while len(self.histories) > self.customers:  # halve the sample, the same customers in any order
            self.threshold //= 2
            self.histories = {u: v for u, v in self.histories.items() if zlib.crc32(u.encode()) < self.threshold}

    def forget(self, user: str) -> bool:
        """Drop the customer's history (an erased customer); True if there was one."""
        return self.histories.pop(user, None) is not None

    def dump_histories(self) -> bytes:
        """The customers' histories as bytes of their own (msgpack, compressed): the trainer's
        state, published beside the models (``Snapshot.state``) so that the models the workers
        keep and load do not grow with the customers.

        >>> fit = BgNbdFit(); fit.histories = {"ann": (2, 10.5, 30.0, 1700000000000)}
        >>> other = BgNbdFit(); other.load_histories(fit.dump_histories()); other.histories
        {'ann': (2, 10.5, 30.0, 1700000000000)}
        """
        return zlib.compress(_HISTORIES.encode(self.histories), 1)

    def load_histories(self, data: bytes) -> None:
        self.histories = msgspec.msgpack.decode(zlib.decompress(data), type=dict[str, tuple[int, float, float, int]])
        self.known = None  # (the count of the pickled copy: the histories now count)

    @contextlib.contextmanager
    def without_histories(self) -> Iterator[None]:
        """The fit pickled without its histories (they go as :meth:`dump_histories`)."""
        histories, self.histories, self.known = self.histories, {}, len(self.histories)
        try:
            yield
        finally:
            self.histories, self.known = histories, None

    def tick(self) -> BgNbd | None:
        """A period was learned: refit when due (first as soon as there are
        ``min_customers``, then every ``refit_periods``); the current fit (None: none yet)."""
        if self.refit_periods <= 0:
            return None
        self.periods += 1
        due = self.fitted_period is None or self.periods - self.fitted_period >= self.refit_periods
        repeaters = sum(1 for h in self.histories.values() if h[0] > 0) if due else 0
        if due and len(self.histories) >= self.min_customers and repeaters >= self.min_repeaters:
            self._refit()
        return self.model

    #: (fit, horizon in days) -> the zero-count shape :meth:`zero_shape` found; reset at each refit.
    shapes: dict[tuple[int, float], float | None] | None = None

    def zero_shape(self, horizon_days: float) -> float | None:
        """The shape ``k`` with which the negative binomial's chance of no count,
        ``(1 + E[N] / k) ** -k``, best matches BG/NBD's own P(no purchase in the horizon)
        over the customers of the latest fit (least squares, each customer's ``T`` extended to
        the latest observation as in the fit); None without a fit.

        The churn prior ranks by BG/NBD's expected purchases ``E[N]`` (the better ranking),
        and ``exp(-E[N])`` (``k`` infinite, a Poisson count) under-states the chance of no
        purchase of a population whose rates vary: on CDNOW's master history, first horizon, before
        any label, its calibration error was 0.15 against BG/NBD's own 0.05. A function of ``E[N]`` alone
        keeps the ranking; ``k`` gives it BG/NBD's calibration (docs/evaluation.md). Computed
        once per fit and horizon (cached: the trainer asks at the stamp that follows the fit).

        >>> fit = BgNbdFit(refit_periods=1, min_customers=3, min_repeaters=2)
        >>> for user, n, gap, recency in [("a", 1, 0, 40), ("b", 3, 10, 5), ("c", 5, 6, 2), ("d", 2, 30, 20)]:
        ...     fit.observe(user, 0, {"purchases": n, "gap_mean_days": gap, "recency_days": recency})
        >>> fit.zero_shape(30.0) is None, fit.tick() is not None, fit.zero_shape(30.0) > 0
        (True, True, True)
        """
        if self.model is None or not self.histories:
            return None
        key = (self.fits, float(horizon_days))
        if self.shapes is None:
            self.shapes = {}
        if key not in self.shapes:
            summary = self.__dict__.get("_summary")  # the latest fit's own (not pickled)
            self.shapes[key] = _zero_shape(self.model, summary if summary is not None else Summary.of(self._rows()), float(horizon_days))
        return self.shapes[key]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_summary"}

    def _rows(self) -> list[History]:
        return [History(x, t_x, T + max(0, self.now - at) / MS_PER_DAY) for x, t_x, T, at in (self.histories[u] for u in sorted(self.histories))]

    def _refit(self) -> None:
        start = self.start if self.start is not None else (
            None if self.model is None else (self.model.r, self.model.alpha, self.model.a, self.model.b))
        summary = Summary.of(self._rows())
        try:
            model = BgNbd.fit(summary, start=start)
        except (ValueError, FloatingPointError):
            return
        if all(math.isfinite(v) and v > 0 for v in (model.r, model.alpha, model.a, model.b)):
            self.start = (model.r, model.alpha, model.a, model.b)
            self.fitted_period = self.periods
            self.fits += 1
            self.shapes, self._summary = {}, summary
            usable = model.r <= MAX_SHAPE
            self.model = model if usable else None
            self.rejected += not usable

    def report(self) -> dict[str, Any]:
        m = self.model
        return {
            "customers": len(self.histories) if self.known is None else self.known, "fits": self.fits, "rejected": self.rejected,
            "params": None if m is None else {"r": m.r, "alpha": m.alpha, "a": m.a, "b": m.b, "customers": m.customers},
        }


#: Bounds of the zero-count shape's logarithm (:meth:`BgNbdFit.zero_shape`): ``k`` within
#: [e^-6, e^8]; at the upper end the count is as good as Poisson (``exp(-E[N])``).
SHAPE_BOUNDS = (-6.0, 8.0)


def nbd_zero(expected: float, shape: float) -> float:
    """The chance of no count of a negative binomial with mean ``expected`` and shape ``shape``.

    >>> round(nbd_zero(1.0, 1.0), 3), round(nbd_zero(1.0, 1e6), 3) == round(math.exp(-1.0), 3)
    (0.5, True)
    """
    return math.exp(-shape * math.log1p(expected / shape))


def _zero_shape(model: BgNbd, s: Summary, horizon: float) -> float | None:
    from scipy.optimize import minimize_scalar

    with np.errstate(all="ignore"):
        p = model.p_no_purchase(s.x, s.t_x, s.T, horizon)
        n = model.expected_purchases(s.x, s.t_x, s.T, horizon)
    ok = np.isfinite(p) & np.isfinite(n) & (n >= 0)
    if not ok.any():
        return None
    p, n, w = p[ok], n[ok], s.weights[ok]

    def loss(log_k: float) -> float:
        k = math.exp(log_k)
        return float(w @ (p - np.exp(-k * np.log1p(n / k))) ** 2)

    best = minimize_scalar(loss, bounds=SHAPE_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x))


def observed(example: Any) -> tuple[str, int]:
    """(user, event time of the features) of a churn or segment example: the time in its id
    (a churn label's scoring time), else the example's ``at``."""
    user, ts = user_of(example.id)
    return user, ts if ts is not None else int(example.at)
