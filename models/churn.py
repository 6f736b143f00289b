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

The learner earns its share of the answer: each matured label is judged on what the prior
and the learner predicted at its scoring time (stored with the point; the learner's
prediction before it learns the label where it had learned nothing then), and the answer
is ``prior + w (learner - prior)`` with ``w`` the learner's share in force (:class:`Gate`):
at every snapshot it moves, by at most :data:`GATE_MAX_STEP`, toward the least-squares
weight of the last :data:`GATE_PERIODS` periods' labels, shrunk toward the prior. Loyalty
answers are multiplied by a scale that matches the predicted total to the actual one on the
same window (:attr:`LoyaltyModel.scale`). Churn and loyalty are gated alike, against
whatever their prior is (BG/NBD, the recency bins or the formula), and neither gains weight
before it has ``min_labels`` labels (of both classes, for churn): ``docs/evaluation.md``.

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
from models.bgnbd_prior import BgNbdFit, nbd_zero, with_prediction
from models.bgnbd_prior import predict as bgnbd_predict
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
    # AdaGrad 0.05 (was SGD 0.01): one label at a time, the constant step's noise cost the
    # ranking (CDNOW master, the learner alone: AUC +0.006 to +0.013 per period); a smaller
    # constant step (SGD 0.001) ranks as well there but learns too slowly on the simulator's
    # 6,628 labels (docs/evaluation.md)
    "logreg": lambda: _scaled(linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.05), l2=1e-4)),
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

#: What the churn prior's probability can be made of (:attr:`ChurnModel.prior_from`).
PRIOR_FROM = ("nbd", "expected", "p")

#: Model periods (snapshots) over which the gate's sums are kept: the blend's weight is
#: estimated over this many days of matured labels (on CDNOW's master history, ~25,000
#: labels), not over a fraction of one day's cohort.
GATE_PERIODS = 30

#: Shrinkage of the least-squares weight toward the prior: as if this many more labels had
#: found the learner no better than the prior (``w = dr / (dd (1 + GATE_SHRINK / n))``).
GATE_SHRINK = 200

#: The most the weight in force moves at one period's end (one snapshot to the next).
GATE_MAX_STEP = 0.1

#: The loyalty answer's scale (labels / answers over the gate's window) stays within these.
SCALE_BOUNDS = (0.5, 2.0)

#: The most the loyalty scale moves at one period's end, as a share of itself.
SCALE_MAX_STEP = 0.05

#: The latest periods of the gate's window whose labels set the loyalty scale: the sum of
#: their labels over the sum of what was forecast for their points at scoring time (the
#: stored candidates blended with the weight in force, :meth:`Gate.calibrate`), so it
#: follows the bias of the answers as they are made.
SCALE_PERIODS = 7

#: Whether a label whose point has no stored learner prediction (the learner had learned
#: nothing when it was scored) is judged on the learner's prediction just before learning it.
#: Measured on the CDNOW sample (docs/evaluation.md, issue 19): it lets the learner in during
#: the second horizon, where it is worse than BG/NBD (churn AUC -0.033, loyalty RMSE +0.121),
#: since that prediction knows the labels matured since the scoring time; off.
JUDGE_UNSTORED = False

#: Whether a label whose point has no stored learner prediction is judged on what both the
#: learner and the prior predict now, where the prior is the recency bins (they learn the same
#: labels: :attr:`_PriorThenLearner.learns_alike`). Measured on the simulator (seeds 7, 3, 11;
#: docs/evaluation.md): loyalty RMSE over all periods 1.425 -> 1.384, 1.427 -> 1.389, 1.468 ->
#: 1.470, but in the second horizon, where the young learner it lets in over-predicts, worse on
#: seeds 3 and 11 (1.558 -> 1.585, 1.663 -> 1.770): the learner, judged on the old points
#: whose neighbours' labels it has just learned, fits them better than the coarse bins do.
#: Without effect on CDNOW (BG/NBD answers before any label matures). On. It applies to the
#: churn learner too where its prior learns (``RETENTION_CHURN_PRIOR_LEARNS=true``, not the
#: default): simulator seed 7, churn AUC 0.784 -> 0.789, ECE 0.041 -> 0.045 (one run each).
JUDGE_ALIKE_NOW = True

_N, _MODEL, _PRIOR, _DD, _DR, _S_ANSWER, _S_LABEL, _N_ANSWER = range(8)


class Gate:
    """Per model period, the sums that judge the learner against the prior on matured labels;
    the learner's share ``w`` of the answer ``prior + w (learner - prior)`` moves toward the
    weight those sums earn, at most :data:`GATE_MAX_STEP` per period.

    Each label adds the learner's and the prior's losses and the pair (learner - prior,
    label - prior) of their predictions. At the end of a model period (:meth:`close`, at
    every snapshot the trainer stamps) the period's sums join the last :data:`GATE_PERIODS`
    periods', the least-squares weight over them (stacking the two on what they predicted),
    shrunk toward 0 by :data:`GATE_SHRINK` labels, is the :attr:`target`, and the weight in
    force (:attr:`weight`) takes one bounded step toward it: within a snapshot the answer is
    one fixed mix, and from one day to the next it changes by at most the step, however noisy
    one day's labels are.

    >>> g = Gate(periods=3)
    >>> for learner, prior, label in [(1.0, 0.0, 1.0)] * 400:
    ...     g.update((learner - label) ** 2, (prior - label) ** 2, learner - prior, label - prior)
    >>> g.close(); round(g.target, 3), g.weight
    (0.667, 0.1)
    >>> g.close(); g.weight, g.change
    (0.2, 0.1)
    """

    #: Gates pickled before the periods (a rolling window of labels) load through :meth:`__setstate__`.
    def __init__(self, periods: int = GATE_PERIODS) -> None:
        self.periods: deque[list[float]] = deque(maxlen=periods)
        self.current = [0.0] * 8
        self.weight = 0.0  #: the learner's share in force (moves at :meth:`close`)
        self.target = 0.0  #: the weight the window's labels earn
        self.change = 0.0  #: the weight's move at the latest :meth:`close`
        self.scale = 1.0  #: labels / answers over the window (the loyalty answer's calibration)
        self.closed = 0  #: periods closed

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "periods" in state:
            self.__dict__.update(state)
            return
        # a gate of the rolling-window format: its weight carries over, its window does not
        self.__init__()  # type: ignore[misc]
        dd, dr = state.get("dd", 0.0), state.get("dr", 0.0)
        if dd > 1e-12 and state.get("pairs"):
            self.weight = min(1.0, max(0.0, dr / dd))
        else:
            self.weight = 1.0 if state.get("losses") and state.get("model", 0.0) <= state.get("prior", 0.0) + 1e-12 else 0.0
        self.target = self.weight

    def update(self, model_loss: float, prior_loss: float, diff: float, residual: float) -> None:
        """One matured label: both losses, and the learner's and the label's difference from
        the prior's prediction (``diff``, ``residual``)."""
        c = self.current
        c[_N] += 1
        c[_MODEL] += model_loss
        c[_PRIOR] += prior_loss
        c[_DD] += diff * diff
        c[_DR] += diff * residual

    def calibrate(self, answer: float, label: float) -> None:
        """One matured label and the answer the models as they are now give its point (before
        learning it): the sums of the loyalty scale (:attr:`scale`)."""
        c = self.current
        c[_S_ANSWER] += answer
        c[_S_LABEL] += label
        c[_N_ANSWER] += 1

    def _sums(self, last: int | None = None) -> list[float]:
        out = [0.0] * 8
        periods = list(self.periods)[-last:] if last else self.periods
        for p in periods:
            for i, v in enumerate(p):
                out[i] += v
        return out

    def close(self, frozen: bool = False) -> None:
        """A model period ended: its labels join the window, and the weight (and the scale)
        take one bounded step toward what the window earns (``frozen``: the learner may not
        answer yet, its weight stays). Deterministic in the labels and their order, so every
        worker's snapshot and the replay's agree."""
        self.closed += 1
        before = self.weight
        if self.current[_N]:
            self.periods.append(self.current)
            self.current = [0.0] * 8
        s = self._sums()
        n = s[_N]
        if n and s[_DD] > 1e-12:
            self.target = min(1.0, max(0.0, s[_DR] / (s[_DD] * (1.0 + GATE_SHRINK / n))))
        elif n:
            self.target = 0.0
        if not frozen:
            self.weight = before + min(GATE_MAX_STEP, max(-GATE_MAX_STEP, self.target - before))
        self.change = self.weight - before
        s = self._sums(SCALE_PERIODS)
        if s[_N_ANSWER] and s[_S_ANSWER] > 1e-9:
            earned = min(SCALE_BOUNDS[1], max(SCALE_BOUNDS[0], s[_S_LABEL] / s[_S_ANSWER]))
            self.scale = min(self.scale * (1 + SCALE_MAX_STEP), max(self.scale * (1 - SCALE_MAX_STEP), earned))

    def restart(self, window: bool = True) -> None:
        """The prior changed kind (:meth:`LoyaltyModel.prior_changed`): the scale calibrated
        another prior's answers and starts again from 1; with ``window`` the weight's sums,
        which judged the learner against another prior, start again too, and so does the
        weight they earned (:attr:`target`): the weight in force stays until new labels move
        it, rather than walking on toward what the emptied window had earned."""
        for sums in (*self.periods, self.current):
            sums[_S_ANSWER] = sums[_S_LABEL] = sums[_N_ANSWER] = 0.0
        if window:
            self.periods.clear()
            self.current = [0.0] * 8
            self.target = self.weight
        self.scale = 1.0

    @property
    def labels(self) -> int:
        return int(self._sums()[_N])

    def report(self) -> dict[str, Any]:
        """The window (periods, labels), the learner's and the prior's mean loss over it,
        the weight it earns (``target``), the weight in force, its latest move and the step bound."""
        s = self._sums()
        n = int(s[_N])
        return {
            "labels": n, "periods": len(self.periods),
            "learner_loss": s[_MODEL] / n if n else None, "prior_loss": s[_PRIOR] / n if n else None,
            "target": self.target, "weight": self.weight, "change": self.change, "max_step": GATE_MAX_STEP,
        }


class _Ask:
    """The default of a ``bg`` argument: BG/NBD's prediction is not known yet, ask for it."""

    def __repr__(self) -> str:
        return "ASK"


ASK = _Ask()
#: BG/NBD's (P(no purchase), expected purchases) for an ``x`` (None: no fit or no purchase), or ASK.
Bg = tuple[float, float] | None | _Ask


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

    def inputs(self, x: dict[str, float], bg: Bg = ASK) -> dict[str, float]:
        """What the River pipeline sees: ``x`` and, once BG/NBD is fitted, its predictions for ``x``
        (``bg``: :meth:`bgnbd_score` of ``x``, when the caller has it)."""
        return with_prediction(x, self.bgnbd_score(x) if bg is ASK else bg)

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

    def prior(self, x: dict[str, float], bg: Bg = ASK) -> float:
        """The prior's prediction for ``x`` (``bg``: :meth:`bgnbd_score` of ``x``, when the caller has it)."""
        raise NotImplementedError

    def learned(self, x: dict[str, float], bg: Bg = ASK) -> float:
        """The River pipeline's prediction for ``x`` (``bg`` as for :meth:`prior`)."""
        raise NotImplementedError

    @property
    def weight(self) -> float:
        """The learner's share of the answer (0: the prior answers alone, 1: the learner)."""
        raise NotImplementedError

    def _answer(self, prior: float, learned: float, w: float) -> float:
        return learned if w >= 1.0 else prior + w * (learned - prior)

    def _scaled(self, value: float) -> float:
        """The answer as published: as it is (loyalty's calibration overrides it)."""
        return value

    @property
    def share(self) -> float:
        """The learner's share ``w`` in the scores now: :attr:`weight` once :attr:`warm`, else 0."""
        return self.weight if self.warm else 0.0

    def score(self, x: dict[str, float]) -> Score:
        # (BG/NBD's prediction for x once: the prior and the pipeline's inputs both read it)
        w, bg = self.share, self.bgnbd_score(x)
        if w <= 0.0:
            return Score(self._scaled(self.prior(x, bg)), self.version, prior=True)
        if w >= 1.0:
            return Score(self._scaled(self.learned(x, bg)), self.version)
        return Score(self._scaled(self._answer(self.prior(x, bg), self.learned(x, bg), w)), self.version)

    def scored(self, x: dict[str, float]) -> tuple[Score, float, float | None]:
        """The score, and what each candidate predicts: the prior and the River pipeline
        (None before it has learned a label). Stored with the scoring point, the two are
        compared on its label when it matures (:meth:`candidates`)."""
        bg = self.bgnbd_score(x)
        prior = self.prior(x, bg)
        learned = self.learned(x, bg) if self.labels else None
        w = self.share if learned is not None else 0.0
        if learned is None or w <= 0.0:
            return Score(self._scaled(prior), self.version, prior=True), prior, learned
        return Score(self._scaled(self._answer(prior, learned, w)), self.version), prior, learned

    def loss(self, predicted: float, label: float) -> float:
        raise NotImplementedError

    def candidates(self, x: dict[str, float], prior_p: float | None, learned_p: float | None) -> tuple[float, float] | None:
        """(the prior's prediction, the learner's) that the gate judges on a matured label:
        those stored at its scoring time; where the learner had learned nothing then
        (``learned_p`` None), both as they predict now, before learning this label (test,
        then train), if the prior learns from the same labels (:attr:`learns_alike`), else
        none (with ``JUDGE_UNSTORED``, the learner's prediction now against the prior's
        stored one); for points stored before the candidates were (``prior_p`` None), both
        now. None before the learner's first label.

        The prediction now knows the labels matured since the scoring time (of other
        customers, in part of the same horizon): it can flatter the learner a little, and
        only until the learner's stored predictions mature, a horizon after its first label."""
        if not self.labels:
            return None
        if prior_p is None or (learned_p is None and self.learns_alike):
            bg = self.bgnbd_score(x)
            return self.prior(x, bg), self.learned(x, bg)
        if learned_p is None and not JUDGE_UNSTORED:
            return None
        return prior_p, learned_p if learned_p is not None else self.learned(x)

    @property
    def learns_alike(self) -> bool:
        """The prior learns from the labels the learner learns (the recency bins answer: no
        BG/NBD fit is in force, and :data:`JUDGE_ALIKE_NOW`): judged on what both predict
        now, before learning a label, both have learned the same labels, so a label scored
        before the learner had learned anything can judge the pair at once (:meth:`candidates`)
        instead of a horizon later. A BG/NBD fit or the formula does not learn labels: against
        them the learner's prediction now would be flattered (``JUDGE_UNSTORED``)."""
        return JUDGE_ALIKE_NOW and self.bgnbd is None and self.bins_answer

    def _update_gate(self, gate: Gate, x: dict[str, float], label: float, prior_p: float | None, learned_p: float | None) -> None:
        """The gate learns one matured label: both candidates' losses and their pair (:meth:`candidates`)."""
        pair = self.candidates(x, prior_p, learned_p)
        if pair is None:
            return
        prior, learned = pair
        gate.update(self.loss(learned, label), self.loss(prior, label), learned - prior, label - prior)

    @property
    def enough(self) -> bool:
        """The learner has the labels it needs to answer at all (``min_labels``)."""
        return self.labels >= self.min_labels

    def close(self) -> None:
        """A model period ended (the trainer stamps a snapshot): the gate's weight takes its
        step (none while the learner has too few labels to answer, so it starts from 0)."""
        gate = getattr(self, "gate", None)
        if gate is not None:
            gate.close(frozen=not self.enough)

    def blend_report(self) -> dict[str, Any]:
        """How the answer ``prior + w (learner - prior)`` is made now (``GET /models``): ``weight``
        the learner's share ``w`` in the scores (0 until it is :attr:`warm`), ``answers`` which
        of the two answers (``prior``, ``blend``, ``learner``), ``prior_model`` what the prior
        is (:attr:`prior_name`), and ``gate`` its window, the weight it earns (``target``), the
        weight in force, its latest move (``change``, at most ``max_step`` a period) (None before it has one)."""
        w = self.share
        gate = getattr(self, "gate", None)
        return {
            "weight": w, "answers": "prior" if w <= 0.0 else "learner" if w >= 1.0 else "blend",
            "prior_model": self.prior_name, "gate": None if gate is None else gate.report(),
        }


class ChurnModel(_PriorThenLearner):
    """P(no purchase in the horizon) from the features of :data:`MODEL_FEATURES`."""

    def __init__(
        self, min_labels: int = 50, kind: str = DEFAULT_CHURN, learned_prior: bool = False, horizon_days: float = 30.0,
        prior_from: str = "nbd",
    ) -> None:
        if prior_from not in PRIOR_FROM:
            raise ValueError(f"prior_from must be one of {PRIOR_FROM}, not {prior_from!r}")
        self.prior_from = prior_from
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
        self.gate = Gate()

    #: The learner's share of the answer against the prior (None in learners pickled before
    #: every churn learner had one: they get one at their next label).
    gate: Gate | None = None

    @property
    def enough(self) -> bool:
        """``min_labels`` labels, of both classes."""
        return self.labels >= self.min_labels and 0 < self.positives < self.labels

    @property
    def warm(self) -> bool:
        """True once the learned model, not the prior, gives the scores."""
        return self.enough and self.weight > 0.0

    @property
    def weight(self) -> float:
        """The share the learner's predictions earned against the prior (:attr:`Gate.weight`)."""
        return self.gate.weight if self.gate is not None else 0.0

    #: What the BG/NBD prior's probability is made of: ``nbd`` (default), the chance of no
    #: purchase if BG/NBD's expected purchase days in the horizon ``E[N]`` came as a negative
    #: binomial count whose shape (:attr:`zero_shape`) the trainer matched to BG/NBD's own
    #: P(no purchase) over its customers at the fit: it ranks customers as the expected
    #: purchases do, which ranks better than BG/NBD's own P(no purchase) (CDNOW, every
    #: period), and is calibrated like it (docs/evaluation.md); ``expected``: ``exp(-E[N])``,
    #: the same ranking as a Poisson count (over-confident before any label: CDNOW's first
    #: horizon); ``p``: BG/NBD's P(no purchase in the horizon). (Learners pickled before it: ``p``.)
    prior_from: str = "p"

    #: The negative binomial's shape of the ``nbd`` prior (:meth:`models.bgnbd_prior.BgNbdFit.zero_shape`),
    #: handed over with each fit; None: not known (``exp(-E[N])``).
    zero_shape: float | None = None

    def blend_report(self) -> dict[str, Any]:
        """The blend (:meth:`_PriorThenLearner.blend_report`), what the BG/NBD prior's probability is
        made of (``prior_from``) and the negative binomial's shape of the latest fit (``zero_shape``)."""
        return {**super().blend_report(), "prior_from": self.prior_from, "zero_shape": self.zero_shape}

    def prior(self, x: dict[str, float], bg: Bg = ASK) -> float:
        """BG/NBD's churn probability (:attr:`prior_from`) once the trainer has fitted it, else
        the bin's churn rate once a label has matured, else the :func:`recency_prior` formula."""
        if bg is ASK:
            bg = self.bgnbd_score(x)
        if bg is not None:
            if self.prior_from == "p":
                p = bg[0]
            elif self.prior_from == "nbd" and self.zero_shape is not None:
                p = nbd_zero(bg[1], self.zero_shape)
            else:
                p = math.exp(-bg[1])
        else:
            p = self.bins.predict(x.get("recency_days", 0.0))[0] if self.bins_answer else recency_prior(x)
        return min(1.0 - EPS, max(EPS, p))

    def learned(self, x: dict[str, float], bg: Bg = ASK) -> float:
        """The learner's probability (whether or not it answers yet), within [EPS, 1 - EPS]."""
        p = self.pipeline.predict_proba_one(self.inputs(x, bg)).get(True, 0.0)
        return min(1.0 - EPS, max(EPS, p))

    def loss(self, predicted: float, label: float) -> float:
        return _log_loss(min(1.0 - EPS, max(EPS, predicted)), label)

    def learn(self, x: dict[str, float], churned: bool, prior_p: float | None = None, learned_p: float | None = None) -> None:
        """Learn a matured label; ``prior_p``, ``learned_p``: the candidates' predictions
        stored at its scoring time (:meth:`candidates`)."""
        if self.gate is None:  # (a learner pickled before every churn learner had its gate)
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
        return self.enough and self.gate.weight > 0.0

    @property
    def weight(self) -> float:
        return self.gate.weight

    @property
    def scale(self) -> float:
        """The answer's calibration: purchase days over answered days on the gate's window
        (:attr:`Gate.scale`, bounded, moving at most 5 % a period), so the predicted total
        follows the actual one."""
        return self.gate.scale

    def _scaled(self, value: float) -> float:
        return min(self.horizon_days, value * self.gate.scale)

    #: Event time (ms) since which the prior's kind in force answers (a BG/NBD fit handed
    #: over where the recency prior answered, or set aside where a fit answered); None:
    #: since the start (and in learners pickled before it).
    prior_since: int | None = None

    def prior_changed(self, at_ms: int) -> None:
        """The prior changed kind at event time ``at_ms`` (:func:`hand_over`). The scale
        calibrated another prior's answers: it starts again from 1, from the labels of points
        scored since (:meth:`judges`). A residual learner answers the prior plus its
        correction, so against another prior it is another learner: its gate's window starts
        again too, judged by the points scored since. (On the simulator the recency bins
        answered until BG/NBD's first usable fit, day 53: the scale they earned, 11 % down,
        cut the fit's answers, which did not over-predict, and the window held the learner's
        first, worse weeks; docs/evaluation.md. The churn learner keeps its window: restarting
        it there cost churn AUC 0.812 -> 0.801.)"""
        self.prior_since = at_ms
        self.gate.restart(window=self.kind in RESIDUAL_LOYALTY)

    def judges(self, scored_at: int | None) -> bool:
        """A label of a point scored at ``scored_at`` (ms; None: not known) is evidence about
        the prior in force: scored since its kind last changed (:meth:`prior_changed`)."""
        return self.prior_since is None or scored_at is None or scored_at >= self.prior_since

    def blend_report(self) -> dict[str, Any]:
        """The blend (:meth:`_PriorThenLearner.blend_report`), ``scale``, the calibration the answer
        is multiplied by, and ``prior_since``, the event time (ms) since which the prior's kind
        answers (:meth:`prior_changed`; None: since the start)."""
        return {**super().blend_report(), "scale": self.gate.scale, "prior_since": self.prior_since}

    def prior(self, x: dict[str, float], bg: Bg = ASK) -> float:
        """BG/NBD's expected purchases in the horizon once the trainer has fitted it, else
        the bin's mean purchase days once a label has matured, else :func:`loyalty_prior`."""
        if bg is ASK:
            bg = self.bgnbd_score(x)
        if bg is not None:
            return min(self.horizon_days, bg[1])
        if self.bins_answer:
            return self.bins.predict(x.get("recency_days", 0.0))[1]
        return loyalty_prior(x, self.horizon_days)

    def learned(self, x: dict[str, float], bg: Bg = ASK) -> float:
        """The learner's prediction (whether or not it answers yet), clipped to [0, the most
        purchase days seen in a label] (never past the horizon): a count regressor that
        overshoots for a while cannot predict more than has ever happened."""
        if bg is ASK:
            bg = self.bgnbd_score(x)
        y = float(self.pipeline.predict_one(self.inputs(x, bg)) or 0.0)
        if math.isnan(y):
            y = 0.0
        if self.kind in RESIDUAL_LOYALTY:
            y += self.prior(x, bg)
        return min(float(self.max_days), self.horizon_days, max(0.0, y))

    def loss(self, predicted: float, label: float) -> float:
        return (predicted - label) ** 2

    def learn(
        self, x: dict[str, float], days: int, prior_p: float | None = None, learned_p: float | None = None,
        scored_at: int | None = None,
    ) -> None:
        """Learn a matured label; ``prior_p``, ``learned_p``: the candidates' predictions
        stored at its scoring time (:meth:`candidates`), ``scored_at`` that time (ms; None:
        not known): a label scored before the prior changed kind (:meth:`judges`) calibrates no
        scale, nor judges a residual learner."""
        judges = self.judges(scored_at)
        if judges or self.kind not in RESIDUAL_LOYALTY:
            self._update_gate(self.gate, x, float(days), prior_p, learned_p)
        if judges and prior_p is not None and learned_p is not None:
            # the scale: the candidates stored at the scoring time, blended with the weight in
            # force (unscaled), against the label: what was forecast then, not what the models
            # as they are now say of an old point. Only points scored once the learner had a
            # label: earlier ones were answered by the first fits or the formula.
            w = self.share
            self.gate.calibrate(prior_p if w <= 0.0 else self._answer(prior_p, learned_p, w), float(days))
        self.max_days = max(self.max_days, days)
        bg = self.bgnbd_score(x)
        target = float(days) - self.prior(x, bg) if self.kind in RESIDUAL_LOYALTY else float(days)
        self.pipeline.learn_one(self.inputs(x, bg), target)
        self.bins.learn_loyalty(x.get("recency_days", 0.0), days)
        self.labels += 1


def hand_over(fit: BgNbdFit | None, model: BgNbd | None, learners: Any) -> None:
    """A snapshot's BG/NBD for the learners: the fitted parameters (``model``, None: no usable
    fit) and, for the churn learners, the zero-count shape of their horizon (the ``nbd`` prior).
    A loyalty learner whose prior changes kind (a first usable fit, or a fit set aside) is
    told so, at the fit's cut-off (:meth:`LoyaltyModel.prior_changed`)."""
    for learner in learners:
        if isinstance(learner, LoyaltyModel) and fit is not None and (learner.bgnbd is None) != (model is None):
            learner.prior_changed(fit.now)
        learner.bgnbd = model
        if isinstance(learner, ChurnModel):
            learner.zero_shape = fit.zero_shape(learner.horizon_days) if fit is not None and model is not None else None


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
