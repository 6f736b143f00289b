"""Online churn and loyalty learners: River pipelines, chosen by measurement, with priors.

Labels arrive late (a label matures only when its horizon has passed, or a purchase
resolves churn), so each learner answers with a recency-based prior until it has seen
``min_labels`` labels (of both classes, for churn), and says so: ``Score.prior`` is True.
The prior is the formula :func:`recency_prior` / :func:`loyalty_prior` (version
``recency-prior``), a function of the features alone. With ``learned_prior`` (settings
``RETENTION_CHURN_PRIOR_LEARNS``, default off, and ``RETENTION_LOYALTY_PRIOR_LEARNS``,
default on) it is instead, once any label has matured, the churn rate (mean
purchase days, for loyalty) of the labels learned so far in the same recency bin
(:class:`models.baselines.RecencyBaseline`, version ``recency-prior+<labels>``): calibrated
as labels accumulate, but from a handful of labels at first (all early labels of a young
shop may say "bought again"), and learned by each worker. Every score names the version
that made it.

For loyalty, "enough labels" is measured, not only counted: each matured label is first
predicted by both the learner and the prior (before either learns it), and the learner
answers only once it has ``min_labels`` labels and its mean squared error over the last
:data:`GATE_WINDOW` labels is at most the prior's, so a count regressor that diverges for
a while hands back to the (flagged) prior meanwhile. The churn learner has no such gate:
measured, it kept the prior too long (``docs/evaluation.md``). The comparison favours the
prior: labels maturing together (one sweep) share a cohort, and the bins adapt to the
first of them at once, while at scoring time both models knew only older labels.

The pipelines to choose from are in :data:`CHURN_PIPELINES` and :data:`LOYALTY_PIPELINES`;
the defaults were chosen by the prequential comparison in ``docs/evaluation.md``.

>>> m = ChurnModel(min_labels=100, learned_prior=True)
>>> m.score({"recency_days": 30.0, "gap_mean_days": 10.0}).prior
True
>>> for _ in range(10):
...     m.learn({"recency_days": 30.0, "gap_mean_days": 10.0}, True)
>>> m.score({"recency_days": 30.0, "gap_mean_days": 10.0})
Score(value=0.9..., version='recency-prior+10', prior=True)
>>> LoyaltyModel(horizon_days=30).score({"recency_days": 0.0, "gap_mean_days": 10.0, "purchases": 3.0}).value
3.0
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from river import compose, forest, linear_model, optim, preprocessing, tree

from models.baselines import RecencyBaseline
from models.bgnbd import BgNbd
from models.bgnbd_prior import predict as bgnbd_predict
from models.bgnbd_prior import with_bgnbd
from models.score import Score

#: Probabilities are kept within [EPS, 1 - EPS]: a score of exactly 0 or 1 claims a
#: certainty no online model has (and makes one wrong label cost an infinite log loss).
EPS = 1e-3


def log_features(x: dict[str, float]) -> dict[str, float]:
    """Compress heavy tails: ``log1p`` of every non-negative feature (counts, days, money).

    >>> log_features({"recency_days": math.e - 1, "sentiment_mean": -0.5})
    {'recency_days': 1.0, 'sentiment_mean': -0.5}
    """
    return {k: math.log1p(v) if v >= 0 else v for k, v in x.items()}


def _scaled(model: Any) -> Any:
    return compose.Pipeline(compose.FuncTransformer(log_features), preprocessing.StandardScaler(), model)


#: Churn classifiers compared in docs/evaluation.md (name -> factory).
CHURN_PIPELINES: dict[str, Callable[[], Any]] = {
    "logreg": lambda: _scaled(linear_model.LogisticRegression(optimizer=optim.SGD(0.01), l2=1e-4)),
    "logreg-raw": lambda: compose.Pipeline(
        preprocessing.StandardScaler(), linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
    ),
    "arf": lambda: forest.ARFClassifier(n_models=10, seed=1),
    "amf": lambda: compose.Pipeline(compose.FuncTransformer(log_features), forest.AMFClassifier(n_estimators=10, seed=1)),
    "hat": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=1),
}

#: Purchase-day count regressors compared in docs/evaluation.md.
LOYALTY_PIPELINES: dict[str, Callable[[], Any]] = {
    "poisson": lambda: _scaled(
        linear_model.LinearRegression(optimizer=optim.SGD(0.005), loss=optim.losses.Poisson(), l2=1e-4, clip_gradient=10.0)
    ),
    "linear": lambda: _scaled(linear_model.LinearRegression(optimizer=optim.SGD(0.005), l2=1e-4, clip_gradient=10.0)),
    "log-linear": lambda: compose.TargetTransformRegressor(
        _scaled(linear_model.LinearRegression(optimizer=optim.SGD(0.005), l2=1e-4, clip_gradient=10.0)),
        func=math.log1p, inverse_func=math.expm1,
    ),
    "arf": lambda: forest.ARFRegressor(n_models=10, seed=1),
    "amf": lambda: compose.Pipeline(compose.FuncTransformer(log_features), forest.AMFRegressor(n_estimators=10, seed=1)),
    "hat": lambda: tree.HoeffdingAdaptiveTreeRegressor(seed=1),
    # learns the prior's error (label - prior, the prior being BG/NBD's expected purchases once
    # the trainer has fitted it): its answer is the prior plus a small linear correction
    "residual": lambda: _scaled(linear_model.LinearRegression(optimizer=optim.SGD(0.002), l2=1e-3, clip_gradient=1.0)),
}

#: Loyalty learners whose pipeline learns the prior's residual (:meth:`LoyaltyModel.learned`).
RESIDUAL_LOYALTY = frozenset({"residual"})

DEFAULT_CHURN = "logreg"
DEFAULT_LOYALTY = "residual"

#: Matured labels over which the learner's loss is compared with the prior's.
GATE_WINDOW = 200


class Gate:
    """Rolling mean losses of the learner and of the prior over the last ``window`` labels.

    >>> g = Gate(window=2)
    >>> g.update(model_loss=1.0, prior_loss=0.5); g.model_ahead
    False
    >>> g.update(0.0, 0.5); g.update(0.0, 0.5); g.model_ahead
    True
    """

    #: (learner - prior, label - prior) of the labels in the window, for :attr:`weight`;
    #: None in gates pickled before it (their weight is 0 or 1 by the losses).
    pairs: deque[tuple[float, float]] | None = None
    dd = 0.0  #: sum of (learner - prior)^2 over ``pairs``
    dr = 0.0  #: sum of (learner - prior) * (label - prior) over ``pairs``

    def __init__(self, window: int = GATE_WINDOW) -> None:
        self.losses: deque[tuple[float, float]] = deque(maxlen=window)
        self.model = 0.0
        self.prior = 0.0
        self.pairs = deque(maxlen=window)

    def update(self, model_loss: float, prior_loss: float, diff: float | None = None, residual: float | None = None) -> None:
        """One matured label: both losses and, when given, the learner's and the label's
        difference from the prior's prediction (``diff``, ``residual``)."""
        if len(self.losses) == self.losses.maxlen:
            old_model, old_prior = self.losses[0]
            self.model -= old_model
            self.prior -= old_prior
        self.losses.append((model_loss, prior_loss))
        self.model += model_loss
        self.prior += prior_loss
        if diff is None or residual is None:
            return
        if self.pairs is None:
            self.pairs = deque(maxlen=self.losses.maxlen)
        if len(self.pairs) == self.pairs.maxlen:
            old_d, old_r = self.pairs[0]
            self.dd -= old_d * old_d
            self.dr -= old_d * old_r
        self.pairs.append((diff, residual))
        self.dd += diff * diff
        self.dr += diff * residual

    @property
    def model_ahead(self) -> bool:
        """The learner's loss over the window is at most the prior's (and labels were seen)."""
        return bool(self.losses) and self.model <= self.prior + 1e-12

    @property
    def weight(self) -> float:
        """The learner's share ``w`` of the answer ``prior + w (learner - prior)``: the
        least-squares ``w`` in [0, 1] over the window's labels (stacking the two on what
        they predicted); 1 or 0 by :attr:`model_ahead` without those.

        >>> g = Gate(window=10)
        >>> for learner, prior, label in [(1.0, 0.0, 0.5), (2.0, 0.0, 1.0)]:
        ...     g.update((learner - label) ** 2, (prior - label) ** 2, learner - prior, label - prior)
        >>> g.weight
        0.5
        """
        if not self.pairs or self.dd <= 1e-12:
            return 1.0 if self.model_ahead else 0.0
        return min(1.0, max(0.0, self.dr / self.dd))

    def report(self) -> dict[str, Any]:
        """The window's labels, the learner's and the prior's mean loss over them, and :attr:`weight`."""
        n = len(self.losses)
        return {
            "labels": n, "learner_loss": self.model / n if n else None, "prior_loss": self.prior / n if n else None,
            "weight": self.weight,
        }


class _PriorThenLearner:
    """A recency prior until the River pipeline has earned the answer (``warm``); every
    score says which answered (``Score.prior``) and names the version."""

    name: str
    labels: int
    learned_prior: bool
    bins: RecencyBaseline
    #: BG/NBD as the trainer last fitted it (:mod:`models.bgnbd_prior`); None: no fit yet
    #: (and in learners pickled before it existed).
    bgnbd: BgNbd | None = None
    horizon_days: float = 30.0

    def bgnbd_score(self, x: dict[str, float]) -> tuple[float, float] | None:
        """BG/NBD's (P(no purchase in the horizon), expected purchases) for ``x``; None without a fit."""
        return bgnbd_predict(self.bgnbd, x, self.horizon_days)

    def inputs(self, x: dict[str, float]) -> dict[str, float]:
        """What the River pipeline sees: ``x`` and, once BG/NBD is fitted, its predictions for ``x``."""
        return with_bgnbd(self.bgnbd, x, self.horizon_days)

    @property
    def prior_name(self) -> str:
        if self.bgnbd is not None:
            return "bgnbd-prior"
        return f"recency-prior+{self.labels}" if self.bins_answer else "recency-prior"

    @property
    def warm(self) -> bool:
        raise NotImplementedError

    @property
    def bins_answer(self) -> bool:
        """The prior is the learned recency bins (enabled, and a label has matured)."""
        return self.learned_prior and self.labels > 0

    @property
    def version(self) -> str:
        """The answering model and its labels, and ``@snapshot`` when it came in one (:mod:`models.trainer`)."""
        if self.warm:
            base = f"{self.name}+{'bgnbd+' if self.bgnbd is not None else ''}{self.labels}"
        else:
            base = self.prior_name
        return f"{base}@{self.snapshot}" if getattr(self, "snapshot", "") else base

    def prior(self, x: dict[str, float]) -> float:
        raise NotImplementedError

    def learned(self, x: dict[str, float]) -> float:
        raise NotImplementedError

    @property
    def weight(self) -> float:
        """The learner's share of the answer (0: the prior answers alone, 1: the learner)."""
        raise NotImplementedError

    def _answer(self, prior: float, learned: float, w: float) -> float:
        return learned if w >= 1.0 else prior + w * (learned - prior)

    @property
    def share(self) -> float:
        """The learner's share ``w`` in the scores now: :attr:`weight` once :attr:`warm`, else 0."""
        return self.weight if self.warm else 0.0

    def score(self, x: dict[str, float]) -> Score:
        w = self.share
        if w <= 0.0:
            return Score(self.prior(x), self.version, prior=True)
        if w >= 1.0:
            return Score(self.learned(x), self.version)
        return Score(self._answer(self.prior(x), self.learned(x), w), self.version)

    def scored(self, x: dict[str, float]) -> tuple[Score, float, float | None]:
        """The score, and what each candidate predicts: the prior and the River pipeline
        (None before it has learned a label). Stored with the scoring point, the two are
        compared on its label when it matures (:meth:`gate_losses`)."""
        prior = self.prior(x)
        learned = self.learned(x) if self.labels else None
        w = self.weight if self.warm and learned is not None else 0.0
        if learned is None or w <= 0.0:
            return Score(prior, self.version, prior=True), prior, learned
        return Score(self._answer(prior, learned, w), self.version), prior, learned

    def loss(self, predicted: float, label: float) -> float:
        raise NotImplementedError

    def gate_losses(
        self, x: dict[str, float], label: float, prior_p: float | None, learned_p: float | None,
    ) -> tuple[float, float] | None:
        """(the learner's loss, the prior's) on a matured label: of the predictions stored
        at its scoring time when they were (``prior_p`` given; None if the learner had not
        learned anything then), else, for points stored before they were, of both
        candidates' predictions now (before learning it; None before the first label)."""
        if prior_p is not None:
            return None if learned_p is None else (self.loss(learned_p, label), self.loss(prior_p, label))
        if not self.labels:
            return None
        return self.loss(self.learned(x), label), self.loss(self.prior(x), label)

    def _update_gate(self, gate: Gate, x: dict[str, float], label: float, prior_p: float | None, learned_p: float | None) -> None:
        """The gate learns one matured label: the losses and, from predictions stored at
        the scoring time, the pair that sets the blend's weight (:attr:`Gate.weight`)."""
        losses = self.gate_losses(x, label, prior_p, learned_p)
        if losses is None:
            return
        if prior_p is not None and learned_p is not None:
            gate.update(*losses, learned_p - prior_p, label - prior_p)
        else:
            gate.update(*losses)

    def blend_report(self) -> dict[str, Any]:
        """How the answer ``prior + w (learner - prior)`` is made now (``GET /models``): ``weight``
        the learner's share ``w`` in the scores (0 until it is :attr:`warm`), ``answers`` which
        of the two answers (``prior``, ``blend``, ``learner``), ``prior_model`` what the prior
        is (:attr:`prior_name`), and ``gate`` its window (None before it has one)."""
        w = self.share
        gate = getattr(self, "gate", None)
        return {
            "weight": w, "answers": "prior" if w <= 0.0 else "learner" if w >= 1.0 else "blend",
            "prior_model": self.prior_name, "gate": None if gate is None else gate.report(),
        }


class ChurnModel(_PriorThenLearner):
    """P(no purchase in the horizon) from the features of :data:`MODEL_FEATURES`."""

    def __init__(self, min_labels: int = 50, kind: str = DEFAULT_CHURN, learned_prior: bool = False, horizon_days: float = 30.0) -> None:
        self.min_labels = min_labels
        self.horizon_days = horizon_days
        #: False: the prior is the fixed recency formula, so scores depend on the features alone.
        self.learned_prior = learned_prior
        self.kind = kind
        self.name = f"churn-{kind}"
        self.pipeline = CHURN_PIPELINES[kind]()
        self.labels = 0
        self.positives = 0
        #: The calibrated prior: churn rate per recency bin of the labels learned so far.
        self.bins = RecencyBaseline()

    #: Once BG/NBD is fitted, the learner answers only while its log loss over the last
    #: :data:`GATE_WINDOW` labels is at most BG/NBD's (None: no label compared yet).
    gate: Gate | None = None

    @property
    def warm(self) -> bool:
        """True once the learned model, not the prior, gives the scores."""
        enough = self.labels >= self.min_labels and 0 < self.positives < self.labels
        return enough and self.weight > 0.0

    @property
    def weight(self) -> float:
        """Without BG/NBD the learner answers alone once it has enough labels; against
        BG/NBD with the share its stored predictions earned (:attr:`Gate.weight`)."""
        if self.bgnbd is None:
            return 1.0
        return self.gate.weight if self.gate is not None else 0.0

    def prior(self, x: dict[str, float]) -> float:
        """BG/NBD's P(no purchase in the horizon) once the trainer has fitted it, else the
        bin's churn rate once a label has matured, else the :func:`recency_prior` formula."""
        bg = self.bgnbd_score(x)
        if bg is not None:
            p = bg[0]
        else:
            p = self.bins.predict(x.get("recency_days", 0.0))[0] if self.bins_answer else recency_prior(x)
        return min(1.0 - EPS, max(EPS, p))

    def learned(self, x: dict[str, float]) -> float:
        """The learner's probability (whether or not it answers yet), within [EPS, 1 - EPS]."""
        p = self.pipeline.predict_proba_one(self.inputs(x)).get(True, 0.0)
        return min(1.0 - EPS, max(EPS, p))

    def loss(self, predicted: float, label: float) -> float:
        return _log_loss(min(1.0 - EPS, max(EPS, predicted)), label)

    def learn(self, x: dict[str, float], churned: bool, prior_p: float | None = None, learned_p: float | None = None) -> None:
        """Learn a matured label; ``prior_p``, ``learned_p``: the candidates' predictions
        stored at its scoring time (:meth:`gate_losses`)."""
        if self.labels and (self.bgnbd is not None or self.gate is not None):  # the gate against BG/NBD (log loss)
            if self.gate is None:
                self.gate = Gate()
            self._update_gate(self.gate, x, float(churned), prior_p, learned_p)
        self.pipeline.learn_one(self.inputs(x), churned)
        self.bins.learn_churn(x.get("recency_days", 0.0), int(churned))
        self.labels += 1
        self.positives += churned


class LoyaltyModel(_PriorThenLearner):
    """Expected purchase days in the horizon (a count >= 0)."""

    def __init__(self, horizon_days: float = 30.0, min_labels: int = 50, kind: str = DEFAULT_LOYALTY, learned_prior: bool = False) -> None:
        self.horizon_days = horizon_days
        self.min_labels = min_labels
        self.learned_prior = learned_prior
        self.kind = kind
        self.name = f"loyalty-{kind}"
        self.pipeline = LOYALTY_PIPELINES[kind]()
        self.labels = 0
        #: The calibrated prior: mean purchase days per recency bin of the labels learned so far.
        self.bins = RecencyBaseline()
        self.gate = Gate()
        #: The most purchase days any learned label had: predictions are clipped to it.
        self.max_days = 0

    @property
    def warm(self) -> bool:
        return self.labels >= self.min_labels and self.gate.weight > 0.0

    @property
    def weight(self) -> float:
        return self.gate.weight

    def prior(self, x: dict[str, float]) -> float:
        """BG/NBD's expected purchases in the horizon once the trainer has fitted it, else
        the bin's mean purchase days once a label has matured, else :func:`loyalty_prior`."""
        bg = self.bgnbd_score(x)
        if bg is not None:
            return min(self.horizon_days, bg[1])
        if self.bins_answer:
            return self.bins.predict(x.get("recency_days", 0.0))[1]
        return loyalty_prior(x, self.horizon_days)

    def learned(self, x: dict[str, float]) -> float:
        """The learner's prediction (whether or not it answers yet), clipped to [0, the most
        purchase days seen in a label] (never past the horizon): a count regressor that
        overshoots for a while cannot predict more than has ever happened."""
        y = float(self.pipeline.predict_one(self.inputs(x)) or 0.0)
        if math.isnan(y):
            y = 0.0
        if self.kind in RESIDUAL_LOYALTY:
            y += self.prior(x)
        return min(float(self.max_days), self.horizon_days, max(0.0, y))

    def loss(self, predicted: float, label: float) -> float:
        return (predicted - label) ** 2

    def learn(self, x: dict[str, float], days: int, prior_p: float | None = None, learned_p: float | None = None) -> None:
        """Learn a matured label; ``prior_p``, ``learned_p``: the candidates' predictions
        stored at its scoring time (:meth:`gate_losses`)."""
        self._update_gate(self.gate, x, float(days), prior_p, learned_p)
        self.max_days = max(self.max_days, days)
        target = float(days) - self.prior(x) if self.kind in RESIDUAL_LOYALTY else float(days)
        self.pipeline.learn_one(self.inputs(x), target)
        self.bins.learn_loyalty(x.get("recency_days", 0.0), days)
        self.labels += 1


def _log_loss(p: float, y: float) -> float:
    return -math.log(p if y else 1.0 - p)


#: The gap assumed for a customer with a single purchase (no gap of their own yet).
SINGLE_PURCHASE_GAP_DAYS = 30.0


def recency_prior(x: dict[str, float]) -> float:
    """P(churn) from recency relative to the customer's usual gap (two gaps: ~0.63); a
    customer with a single purchase is given :data:`SINGLE_PURCHASE_GAP_DAYS`."""
    gap = x.get("gap_mean_days", 0.0)
    gap = max(gap, 1.0) if gap > 0 else SINGLE_PURCHASE_GAP_DAYS
    return 1.0 - math.exp(-x.get("recency_days", 0.0) / (2.0 * gap))


def loyalty_prior(x: dict[str, float], horizon_days: float) -> float:
    """Purchase days in the horizon if the customer keeps buying at their usual gap (one
    horizon for a single purchase), times the recency prior's P(still buying)."""
    gap = x.get("gap_mean_days", 0.0) if x.get("purchases", 0.0) >= 2 else 0.0
    per_horizon = horizon_days / gap if gap > 0 else 1.0
    return min(horizon_days, per_horizon) * (1.0 - recency_prior(x))
