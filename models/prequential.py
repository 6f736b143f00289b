"""Prequential evaluation with delayed labels: each prediction, made at its scoring time,
is compared with its label when the label matures (and only then does the model learn it).

River's metrics do the work (``RollingROCAUC`` is exact over its window; ``LogLoss``,
``MSE``, ``MAE``, ``RMSE``, wrapped in ``utils.Rolling`` for a window). River has no
calibration metric, so :class:`Calibration` (binned reliability and expected calibration
error) is here; the Brier score is River's ``MSE`` of the probability against the 0/1 label.

``window=None`` gives cumulative figures (the evaluation replay's per-period tables).

A snapshot carries the metrics' :class:`Figures`, not their windows: the workers only show
them, and the windows (~90 % of the learners' bytes) stay in the trainer's state.

>>> m = ChurnMetrics(window=None)
>>> for p, y in [(0.9, 1), (0.8, 1), (0.3, 0), (0.6, 0)]:
...     m.update(p, y)
>>> r = m.report()
>>> r["auc"], round(r["brier"], 4), r["count"]
(1.0, 0.125, 4)
>>> l = LoyaltyMetrics(window=None)
>>> for pred, days in [(1.0, 0), (2.0, 2), (0.0, 3)]:
...     l.update(pred, days)
>>> {k: round(v, 4) for k, v in l.report().items()}
{'count': 3, 'mae': 1.3333, 'rmse': 1.8257, 'mean_label': 1.6667, 'mean_prediction': 1.0}
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from river import metrics, stats, utils

#: Exact AUC over every labelled point: a RollingROCAUC window larger than any evaluation.
UNBOUNDED = 10**7


def _windowed(metric: type, window: int | None) -> Any:
    """``metric`` over the last ``window`` points (River builds it: an instance is deprecated), or over all."""
    return metric() if window is None else utils.Rolling(metric, window_size=window)


def _mean(window: int | None) -> Any:
    return _windowed(stats.Mean, window)


def _value(metric: Any) -> float | None:
    value = metric.get()
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


class Calibration:
    """Binned reliability of probabilities: per bin of predicted probability, the mean
    prediction and the observed rate; ECE is their gap weighted by the bins' shares.

    >>> c = Calibration(bins=2)
    >>> for p, y in [(0.2, 0), (0.2, 1), (0.9, 1), (0.9, 1)]:
    ...     c.update(p, y)
    >>> round(c.ece(), 3), c.table()
    (0.2, [(0.0, 0.5, 2, 0.2, 0.5), (0.5, 1.0, 2, 0.9, 1.0)])
    """

    def __init__(self, bins: int = 10, window: int | None = None) -> None:
        self.bins = bins
        self.window = window
        self.n = [0] * bins
        self.p_sum = [0.0] * bins
        self.y_sum = [0] * bins
        self.recent: deque[tuple[float, int]] = deque()

    def _bin(self, p: float) -> int:
        return min(self.bins - 1, max(0, int(p * self.bins)))

    def _add(self, p: float, y: int, sign: int) -> None:
        b = self._bin(p)
        self.n[b] += sign
        self.p_sum[b] += sign * p
        self.y_sum[b] += sign * y

    def update(self, p: float, y: int) -> None:
        self._add(p, y, 1)
        if self.window is not None:
            self.recent.append((p, y))
            if len(self.recent) > self.window:
                self._add(*self.recent.popleft(), -1)

    def ece(self) -> float | None:
        total = sum(self.n)
        if not total:
            return None
        return sum(abs(self.p_sum[b] - self.y_sum[b]) for b in range(self.bins) if self.n[b]) / total

    def table(self) -> list[tuple[float, float, int, float, float]]:
        """(low, high, count, mean prediction, observed rate) per non-empty bin."""
        return [
            (b / self.bins, (b + 1) / self.bins, self.n[b], self.p_sum[b] / self.n[b], self.y_sum[b] / self.n[b])
            for b in range(self.bins) if self.n[b]
        ]


class ChurnMetrics:
    """Rolling (or cumulative) ROC AUC, log loss, Brier score and calibration of P(churn)."""

    def __init__(self, window: int | None = 1000) -> None:
        self.auc = metrics.RollingROCAUC(window_size=window or UNBOUNDED)
        self.log_loss = _windowed(metrics.LogLoss, window)
        self.brier = _windowed(metrics.MSE, window)
        self.calibration = Calibration(window=window)
        self.rate = _mean(window)
        self.count = 0

    def update(self, p: float, churned: int) -> None:
        self.auc.update(bool(churned), p)
        self.log_loss.update(bool(churned), p)
        self.brier.update(float(churned), p)
        self.calibration.update(p, int(churned))
        self.rate.update(float(churned))
        self.count += 1
        if self.count % self.auc.window_size == 0:
            # River's rolling AUC keeps every update in a Python list until it is read: unread,
            # the trainer's memory and every snapshot the workers load grew with the run
            self.auc.get()

    def table(self) -> list[tuple[float, float, int, float, float]]:
        """The calibration table (:meth:`Calibration.table`)."""
        return self.calibration.table()

    def figures(self) -> Figures:
        return Figures(self.report(), self.table())

    def report(self) -> dict[str, Any]:
        both = 0 < (self.rate.get() or 0.0) < 1  # AUC needs both classes
        return {
            "count": self.count,
            "auc": _value(self.auc) if both else None,
            "log_loss": _value(self.log_loss) if self.count else None,
            "brier": _value(self.brier) if self.count else None,
            "ece": self.calibration.ece(),
            "churn_rate": self.rate.get() if self.count else None,
        }


class LoyaltyMetrics:
    """Rolling (or cumulative) MAE and RMSE of the predicted purchase days."""

    def __init__(self, window: int | None = 1000) -> None:
        self.mae = _windowed(metrics.MAE, window)
        self.rmse = _windowed(metrics.RMSE, window)
        self.label = _mean(window)
        self.prediction = _mean(window)
        self.count = 0

    def update(self, predicted: float, days: int) -> None:
        self.mae.update(float(days), predicted)
        self.rmse.update(float(days), predicted)
        self.label.update(float(days))
        self.prediction.update(predicted)
        self.count += 1

    def figures(self) -> Figures:
        return Figures(self.report())

    def report(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "mae": None, "rmse": None, "mean_label": None, "mean_prediction": None}
        return {
            "count": self.count, "mae": _value(self.mae), "rmse": _value(self.rmse),
            "mean_label": self.label.get(), "mean_prediction": self.prediction.get(),
        }


class Figures:
    """What :class:`ChurnMetrics` or :class:`LoyaltyMetrics` reported when a snapshot was
    taken, without the windows behind it: what a worker shows of the trainer's metrics.

    >>> m = LoyaltyMetrics(window=10)
    >>> m.update(2.0, 1)
    >>> f = m.figures(); f.report() == m.report(), f.figures() is f
    (True, True)
    >>> f.update(1.0, 0)
    Traceback (most recent call last):
    ...
    TypeError: a snapshot's metric figures learn nothing: the windows are in the trainer's state
    """

    def __init__(self, report: dict[str, Any], table: list[tuple[float, float, int, float, float]] | None = None) -> None:
        self._report = report
        self._table = table or []

    def report(self) -> dict[str, Any]:
        return dict(self._report)

    def table(self) -> list[tuple[float, float, int, float, float]]:
        return list(self._table)

    def figures(self) -> Figures:
        return self

    def update(self, *_: Any) -> None:
        raise TypeError("a snapshot's metric figures learn nothing: the windows are in the trainer's state")
