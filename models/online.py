"""The worker's online learners and their prequential scores, fed by matured labels.

Each scoring point carries what the learners predicted at its time (``churn_p``,
``loyalty_p``, stored with the point); when its horizon ends, those predictions are
scored against the labels (rolling windows, :mod:`models.prequential`) and the learners
learn. Churn is learned at the end of the horizon by default, when both classes are
known: learning each 0 as soon as a purchase resolves it, and each 1 only a horizon later,
skews what the learner sees toward 0 (measured in ``docs/evaluation.md``).

>>> o = OnlineLearners(horizon_days=30, min_labels=1)
>>> o.observe({"recency_days": 40.0, "gap_mean_days": 7.0}, churned=None, days=0, churn_p=0.9, loyalty_p=0.5)
>>> o.report()["churn"]["labels"], o.report()["loyalty"]["metrics"]["mae"]
(1, 0.5)
"""

from __future__ import annotations

import contextlib
import pickle
import zlib
from collections.abc import Iterator
from typing import Any

from models.churn import DEFAULT_CHURN, DEFAULT_LOYALTY, ChurnModel, LoyaltyModel
from models.prequential import ChurnMetrics, Figures, LoyaltyMetrics
from models.signing import restricted_loads


class OnlineLearners:
    def __init__(
        self, horizon_days: float = 30.0, min_labels: int = 50, churn_kind: str = DEFAULT_CHURN,
        loyalty_kind: str = DEFAULT_LOYALTY, learn_churn_early: bool = False, window: int = 1000,
        churn_prior_learns: bool = False, loyalty_prior_learns: bool = False,
    ) -> None:
        self.churn = ChurnModel(min_labels=min_labels, kind=churn_kind, learned_prior=churn_prior_learns, horizon_days=horizon_days)
        self.loyalty = LoyaltyModel(horizon_days=horizon_days, min_labels=min_labels, kind=loyalty_kind, learned_prior=loyalty_prior_learns)
        self.learn_churn_early = learn_churn_early
        self.window = window
        self.churn_metrics: ChurnMetrics | Figures = ChurnMetrics(window=window)
        self.loyalty_metrics: LoyaltyMetrics | Figures = LoyaltyMetrics(window=window)

    def observe(
        self, x: dict[str, float], churned: int | None, days: int | None,
        churn_p: float | None = None, loyalty_p: float | None = None,
        candidates: tuple[float | None, float | None, float | None, float | None] = (None, None, None, None),
        scored_at: int | None = None,
    ) -> None:
        """A scoring point's labels became known: ``churned`` when a purchase or the end of
        the horizon resolved it, ``days`` at the end of the horizon. Predictions not stored
        with the point (states from before they were) are made now, before learning.
        ``candidates``: the churn and the loyalty learner's (prior, pipeline) predictions
        stored at the scoring time, for their gates; ``scored_at``: that time (ms), for
        the loyalty learner (:meth:`models.churn.LoyaltyModel.judges`)."""
        if churned is not None and self.learn_churn_early:
            self.churn.learn(x, bool(churned))
        if days is None:
            return
        label = int(days == 0)
        p = churn_p if churn_p is not None else self.churn.score(x).value
        n = loyalty_p if loyalty_p is not None else self.loyalty.score(x).value
        self.churn_metrics.update(p, label)
        self.loyalty_metrics.update(n, days)
        if not self.learn_churn_early:
            self.churn.learn(x, bool(label), candidates[0], candidates[1])
        self.loyalty.learn(x, days, candidates[2], candidates[3], scored_at)

    def close(self) -> None:
        """A model period ended (the trainer stamps a snapshot): the blends take their step."""
        self.churn.close()
        self.loyalty.close()

    @contextlib.contextmanager
    def scoring_only(self) -> Iterator[None]:
        """While pickled for a snapshot: the metrics' figures, not their windows, which only
        the trainer updates (they go in its state: :meth:`metrics_state`)."""
        kept = self.churn_metrics, self.loyalty_metrics
        self.churn_metrics, self.loyalty_metrics = kept[0].figures(), kept[1].figures()
        try:
            yield
        finally:
            self.churn_metrics, self.loyalty_metrics = kept

    def metrics_state(self) -> bytes | None:
        """The metrics with their windows (pickled, compressed); None if they are a snapshot's figures."""
        if isinstance(self.churn_metrics, Figures) or isinstance(self.loyalty_metrics, Figures):
            return None
        return zlib.compress(pickle.dumps((self.churn_metrics, self.loyalty_metrics), protocol=pickle.HIGHEST_PROTOCOL), 1)

    def restore_metrics(self, data: bytes | None) -> None:
        """A trainer resuming from a snapshot gets the metrics' windows back from ``data``
        (:meth:`metrics_state`, unpickled as the models are); without it, metrics that are a
        snapshot's figures start again, empty (older snapshots carry the windows in the models)."""
        if data is not None:
            churn, loyalty = restricted_loads(zlib.decompress(data))
            if not isinstance(churn, ChurnMetrics) or not isinstance(loyalty, LoyaltyMetrics):
                raise TypeError(f"not the learners' metrics: {type(churn).__name__}, {type(loyalty).__name__}")
            self.churn_metrics, self.loyalty_metrics = churn, loyalty
        if isinstance(self.churn_metrics, Figures):
            self.churn_metrics = ChurnMetrics(window=self.window)
        if isinstance(self.loyalty_metrics, Figures):
            self.loyalty_metrics = LoyaltyMetrics(window=self.window)

    def report(self) -> dict[str, Any]:
        """What ``GET /models`` shows: versions, labels, whether the prior answers, how the
        answer blends prior and learner (:meth:`models.churn.ChurnModel.blend_report`), and the
        rolling prequential metrics over the last ``window`` matured points."""
        return {
            "window": self.window,
            "churn": {
                "model": self.churn.name, "version": self.churn.version, "labels": self.churn.labels,
                "prior": not self.churn.warm, "blend": self.churn.blend_report(), "metrics": self.churn_metrics.report(),
                "calibration": [
                    {"from": lo, "to": hi, "count": n, "mean_predicted": p, "observed": y}
                    for lo, hi, n, p, y in self.churn_metrics.table()
                ],
            },
            "loyalty": {
                "model": self.loyalty.name, "version": self.loyalty.version, "labels": self.loyalty.labels,
                "prior": not self.loyalty.warm, "blend": self.loyalty.blend_report(), "metrics": self.loyalty_metrics.report(),
            },
        }
