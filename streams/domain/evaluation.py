"""The evaluation replay: a history in event time through the live engine, every model
judged prequentially on the same scoring points.

Events go, in event-time order, through :func:`~streams.domain.engine.on_event` and
:func:`~streams.domain.engine.on_due` exactly as the worker calls them: by default as one
partition with one event-time clock; with ``partition_for`` as the worker's partitions do,
each with its own clock that its users' events and every heartbeat move (at equal times an
event is folded in before users due then are checked). At each scoring point the engine stores, every model predicts: the online
learners (River, as the trainer's snapshot selected by the point's event time has them,
:mod:`models.trainer`, exactly as the workers score), recency alone, and BG/NBD refitted
on the history to date. When a point's label matures each prediction is scored
(:mod:`models.prequential`) in the period of its scoring time, and the label goes to the
trainer, which learns it with its period's labels once the clock has passed the period.
Labels whose horizon runs past the end of the history never mature and are not scored.
Where the worker publishes a user-score row (:func:`~streams.domain.snapshots.snapshot_due`)
the replay sends the trainer the same segment example (the row's model inputs), so the
trainer's BG/NBD fit (:mod:`models.bgnbd_prior`) sees the same customer histories.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from models.baselines import BgNbdBaseline, RecencyBaseline
from models.bgnbd_prior import BgNbdFit, user_of
from models.bgnbd_prior import observed as _observed
from models.bootstrap import RESAMPLES, paired
from models.churn import ChurnModel, LoyaltyModel, hand_over
from models.examples import ChurnExample, Example, ReviewExample, SegmentExample, candidates_of, churn_examples
from models.prequential import ChurnMetrics, LoyaltyMetrics
from models.sentiment import SentimentModel
from models.trainer import OfflineTraining
from streams.domain.engine import EngineConfig, Step, on_due, on_event
from streams.domain.events import Heartbeat, Purchase, Review, UserEvent
from streams.domain.features import MODEL_FEATURES, as_dict
from streams.domain.schedule import DueQueue
from streams.domain.snapshots import snapshot_due
from streams.domain.state import PendingScore, UserState, event_digest, purchase_day_count, purchase_gaps
from streams.domain.timestamps import MS_PER_DAY

RECENCY = MODEL_FEATURES.index("recency_days")

#: BG/NBD's churn ranked by its expected purchase days in the horizon (its probability
#: ``exp(-E[N])``: no purchase if the expected count came as a Poisson count), beside ``bgnbd``
#: (its own P(no purchase in H)): the better of BG/NBD's two rankings on CDNOW, and what the
#: churn learners' prior is made of (:attr:`models.churn.ChurnModel.prior_from`). Churn only.
BGNBD_EXPECTED = "bgnbd-expected"


def history_inputs(state: UserState, now: int) -> dict[str, float]:
    """The model inputs a BG/NBD history is read from (:func:`models.bgnbd_prior.history_of`),
    with the values :func:`~streams.domain.features.feature_vector` gives them at ``now``:
    what the replay's trainer reads of a user-score row's inputs, without the windows'
    sums the other features need (a row per customer and day on CDNOW's master history)."""
    last = state.last_purchase if state.last_purchase is not None else state.first_seen
    return {
        "purchases": float(state.purchases),
        "purchase_days": float(purchase_day_count(state)),
        "gap_mean_days": float(purchase_gaps(state)[0]),
        "recency_days": float(max(0.0, (now - last) / MS_PER_DAY)),
    }



def _answer(model: Any, x: dict[str, float]) -> tuple[float, float | None, float | None]:
    """(the answer, the prior's, the pipeline's) of a learner at a point not stored with one."""
    score, prior, learned = model.scored(x)
    return score.value, prior, learned

@dataclass
class PeriodScores:
    """One period's metrics per model (cumulative within the period)."""

    churn: dict[str, ChurnMetrics] = field(default_factory=dict)
    loyalty: dict[str, LoyaltyMetrics] = field(default_factory=dict)

    def add_churn(self, model: str, p: float, churned: int) -> None:
        metrics = self.churn.get(model)
        if metrics is None:
            metrics = self.churn[model] = ChurnMetrics(window=None)
        metrics.update(p, churned)

    def add_loyalty(self, model: str, predicted: float, days: int) -> None:
        metrics = self.loyalty.get(model)
        if metrics is None:
            metrics = self.loyalty[model] = LoyaltyMetrics(window=None)
        metrics.update(predicted, days)


class ReplayModels:
    """What the replay's trainer learns: every compared learner, the recency baseline and,
    as the workers' trainer does, the review sentiment model (a feature of the learners).

    Churn is learned when the label is resolved (``learn_churn_early``, as the issue
    defines resolution) or at the end of the horizon; recency alone at the end."""

    def __init__(
        self, churn: list[ChurnModel], loyalty: list[LoyaltyModel], learn_churn_early: bool = False, bgnbd: BgNbdFit | None = None,
        candidates: dict[str, dict[str, tuple[float, float | None]]] | None = None, path: list[dict[str, Any]] | None = None,
    ) -> None:
        self.churn_models = churn
        self.loyalty_models = loyalty
        self.recency = RecencyBaseline()
        self.sentiment = SentimentModel()
        self.learn_churn_early = learn_churn_early
        self.bgnbd = bgnbd
        #: ``user@scoring time`` -> {learner: (prior, pipeline) predicted then}: what the
        #: engine stores in the scoring point for the first learners, for every compared one
        #: (shared with the replay, not part of a snapshot).
        self.candidates = candidates if candidates is not None else {}
        #: Every snapshot's blend of the first learners (version, weights, targets, scale):
        #: the weight's path over the replay (shared with the replay, not part of a snapshot).
        self.path = path if path is not None else []

    def __getstate__(self) -> dict[str, Any]:
        # a snapshot scores: the customers' histories (the trainer's BG/NBD fit keeps one per
        # customer, all of them on CDNOW's master history) stay with the trainer, whose fitted
        # parameters the learners carry; pickled into every daily snapshot they were most of its cost
        return {**self.__dict__, "candidates": {}, "path": [], "bgnbd": None}

    def _stored(self, example: ChurnExample, index: int, model: ChurnModel | LoyaltyModel, pop: bool) -> tuple[float | None, float | None]:
        """The (prior, pipeline) predictions of ``model`` stored at the example's scoring
        time: from the example for the first learners (as the workers send it), else the replay's."""
        if index == 0:
            c = candidates_of(example)
            return (c[0], c[1]) if isinstance(model, ChurnModel) else (c[2], c[3])
        key = example.id.rpartition("/")[0]
        stored = self.candidates.get(key, {})
        if pop:
            self.candidates.pop(key, None)
        return stored.get(model.name, (None, None))

    def learn(self, example: Example) -> None:
        if isinstance(example, ReviewExample):
            self.sentiment.learn(example.text, example.rating)
            return
        if isinstance(example, SegmentExample):
            if self.bgnbd is not None:
                self.bgnbd.observe(*_observed(example), example.x)
            return
        assert isinstance(example, ChurnExample)
        x = as_dict(example.features)
        if self.bgnbd is not None:
            self.bgnbd.observe(*_observed(example), x)
        scored_at = user_of(example.id)[1]
        if example.churned is not None and self.learn_churn_early:
            for i, churn in enumerate(self.churn_models):
                churn.learn(x, bool(example.churned), *self._stored(example, i, churn, pop=False))
        if example.days is None:
            return
        label = int(example.days == 0)
        stored = [self._stored(example, i, m, pop=False) for i, m in enumerate(self.churn_models)]
        stored_loyalty = [self._stored(example, i, m, pop=i == len(self.loyalty_models) - 1) for i, m in enumerate(self.loyalty_models)]
        if not self.learn_churn_early:
            for churn, (prior_p, learned_p) in zip(self.churn_models, stored):
                churn.learn(x, bool(label), prior_p, learned_p)
        for loyalty, (prior_p, learned_p) in zip(self.loyalty_models, stored_loyalty):
            loyalty.learn(x, example.days, prior_p, learned_p, scored_at)
        self.recency.learn_churn(example.features[RECENCY], label)
        self.recency.learn_loyalty(example.features[RECENCY], example.days)

    def stamp(self, version: str) -> None:
        fitted = self.bgnbd.tick() if self.bgnbd is not None else None
        if self.bgnbd is not None:
            hand_over(self.bgnbd, fitted, (*self.churn_models, *self.loyalty_models))
        for model in (*self.churn_models, *self.loyalty_models):
            model.close()
            model.snapshot = version
        churn, loyalty = self.churn_models[0], self.loyalty_models[0]
        self.path.append({
            "version": version, "churn_weight": churn.share, "churn_target": churn.gate.target if churn.gate else None,
            "loyalty_weight": loyalty.share, "loyalty_target": loyalty.gate.target, "loyalty_scale": loyalty.scale,
            "labels": churn.labels,
        })


class Replay:
    """Drive the engine over sorted events and score every model on every matured label."""

    def __init__(
        self, cfg: EngineConfig, churn_models: list[ChurnModel], loyalty_models: list[LoyaltyModel],
        period_days: float, bgnbd_refit_days: float = 7.0, learn_churn_early: bool = False,
        model_period_days: float = 1.0, model_lag_periods: int = 1,
        partition_for: Callable[[str], int] | None = None, bgnbd_refit_periods: int = 7, bgnbd_customers: int = 1_000_000,
        scores_interval_ms: int = MS_PER_DAY,
    ) -> None:
        self.cfg = cfg
        self.scores_interval_ms = scores_interval_ms
        self.partition_for = partition_for or (lambda user_id: 0)
        self.learn_churn_early = learn_churn_early
        self.churn_models = churn_models  # (unlearned: the trainer learns copies; here for their names)
        self.loyalty_models = loyalty_models
        #: The compared learners' candidates at each scoring point (:meth:`ReplayModels._stored`).
        self.candidates: dict[str, dict[str, tuple[float, float | None]]] = {}
        #: The first learners' blend at every snapshot (:attr:`ReplayModels.path`).
        self.path: list[dict[str, Any]] = []
        self.training = OfflineTraining(
            lambda: ReplayModels(
                copy.deepcopy(churn_models), copy.deepcopy(loyalty_models), learn_churn_early,
                BgNbdFit(refit_periods=bgnbd_refit_periods, customers=bgnbd_customers) if bgnbd_refit_periods > 0 else None,
                self.candidates, self.path,
            ),
            int(model_period_days * MS_PER_DAY), model_lag_periods,
        )
        self.bgnbd = BgNbdBaseline(refit_days=bgnbd_refit_days)
        self.period_ms = int(period_days * MS_PER_DAY)
        self.states: dict[str, UserState] = {}
        #: Per partition: its event-time clock and its due queue.
        self.clocks: dict[int, int] = {}
        self.queues: dict[int, DueQueue] = {}
        self.clock = 0  # the newest event time seen on any partition (the trainer's watermark)
        self.start: int | None = None
        self.end: int | None = None
        #: (user, scoring ts) -> {model: (P(churn), predicted days)}, until the loyalty label matures.
        self.predictions: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        #: The horizon-end labels as the engine sent them to the trainer (with the first
        #: learners' predictions stored at scoring time), by id: what a worker sends too.
        self.labels: dict[str, ChurnExample] = {}
        #: (user, scoring ts) -> ({model: (P(churn), predicted days)}, purchase days): the scored points.
        self.scored: dict[tuple[str, int], tuple[dict[str, tuple[float, float]], int]] = {}
        self.periods: dict[int, PeriodScores] = {}
        self.total = PeriodScores()
        self.points = 0
        self.events = 0

    def run(self, events: Iterable[UserEvent | Heartbeat]) -> None:
        """Replay ``events`` (sorted by event time; heartbeats move every partition's clock)
        to the last one's time."""
        for event in events:
            self.start = event.ts if self.start is None else self.start
            self.clock = max(self.clock, event.ts)
            self.training.advance(self.clock)  # every label before the clock has been sent
            if isinstance(event, Heartbeat):
                for partition in self.clocks:
                    self._tick(partition, event.ts)
                continue
            self.events += 1
            if isinstance(event, Purchase):
                self.bgnbd.purchase(event.user_id, event.ts)
            partition = self.partition_for(event.user_id)
            now = self.clocks[partition] = max(self.clocks.get(partition, 0), event.ts)
            state = self.states.setdefault(event.user_id, UserState(event.user_id))
            models = self.models_at(partition)
            # the review text scored as the worker scores it (once: a re-sent copy is not), then learned by the trainer
            text = event.text if isinstance(event, Review) and event.text and not event.text.isspace() else None
            sentiment = models.sentiment.score(text) if text and event_digest(event) not in state.recent_ids else None
            step = on_event(state, event, now, self.cfg, sentiment, models.churn_models[0], models.loyalty_models[0])
            if text and step.applied.counted:
                self.training.add(ReviewExample(id=str(event_digest(event)), at=now, text=text, rating=int(event.rating)))
            self._finish(partition, state, step)
            self._tick(partition, now)
        self.end = self.clock

    def models_at(self, partition: int) -> ReplayModels:
        """The snapshot that scores on ``partition`` now (selected by its clock)."""
        return self.training.models_at(self.clocks[partition])

    def _tick(self, partition: int, ts: int) -> None:
        """The partition's clock reaches ``ts``: its users due by then are checked."""
        now = self.clocks[partition] = max(self.clocks[partition], ts)
        models = self.models_at(partition)
        for user_id in self.queues.setdefault(partition, DueQueue()).pop_due(now):
            state = self.states[user_id]
            self._finish(partition, state, on_due(state, now, models.churn_models[0], self.cfg, models.loyalty_models[0]))

    def _finish(self, partition: int, state: UserState, step: Step) -> None:
        for matured in step.examples:
            self._score(state.user_id, matured.ts, matured.churned, matured.days)
        for example in churn_examples(state.user_id, step.examples, self.clocks[partition]):
            self.training.add(example)
            if example.days is not None:
                self.labels[example.id] = example
        for point in step.points:
            self._predict(partition, state.user_id, point)
        now = self.clocks[partition]
        if snapshot_due(state, now, self.scores_interval_ms, scored=step.churn is not None):
            # the worker publishes a user-score row here, and sends its model inputs to the trainer;
            # the replay's trainer reads only the purchase history of them (BG/NBD's x, t_x, T)
            x = history_inputs(state, now)
            self.training.add(SegmentExample(id=f"{state.user_id}@{now}", at=now, x=x))
            state.scores_at = now
        self.queues.setdefault(partition, DueQueue()).schedule(state.user_id, step.due_ms)

    def _predict(self, partition: int, user_id: str, point: PendingScore) -> None:
        """Every model's predictions at a scoring point. The first learners' are those the
        engine stored in the point (the same snapshot scored it at the same clock), so only
        the other compared learners are asked."""
        ts, features = point.ts, point.features
        x = as_dict(features)
        models = self.models_at(partition)
        out: dict[str, tuple[float, float]] = {}
        candidates: dict[str, tuple[float, float | None]] = {}
        stored = ((point.churn_p, point.churn_prior_p, point.churn_learned_p),
                  (point.loyalty_p, point.loyalty_prior_p, point.loyalty_learned_p))
        for kind, learners in enumerate((models.churn_models, models.loyalty_models)):
            for i, model in enumerate(learners):
                value, prior, learned = stored[kind] if i == 0 and stored[kind][0] is not None else _answer(model, x)
                out[model.name] = (value, 0.0) if kind == 0 else (0.0, value)
                candidates[model.name] = (prior, learned)
        if len(models.churn_models) > 1 or len(models.loyalty_models) > 1:
            self.candidates[f"{user_id}@{ts}"] = candidates
        out["recency"] = models.recency.predict(features[RECENCY])
        bg = self.bgnbd.predict(user_id, ts, self.cfg.churn_horizon_days)
        if bg is not None:
            out["bgnbd"] = bg
            out[BGNBD_EXPECTED] = (math.exp(-bg[1]), bg[1])
        self.predictions[(user_id, ts)] = out
        self.points += 1

    def _score(self, user_id: str, ts: int, churned: int | None, days: int | None) -> None:
        """Score the predictions once the horizon is over, when both labels are final
        (churned = no purchase day), so a period's figures never hold the early zeros of
        points whose ones never mature."""
        if days is None:
            return
        label = int(days == 0)
        predicted = self.predictions.pop((user_id, ts), None)
        if predicted is not None:
            self.scored[(user_id, ts)] = (predicted, days)
            period = self.periods.setdefault((ts - (self.start or 0)) // self.period_ms, PeriodScores())
            for name, (p, n) in predicted.items():
                for scores in (period, self.total):
                    if not name.startswith("loyalty-"):
                        scores.add_churn(name, p, label)
                    if not name.startswith("churn-") and name != BGNBD_EXPECTED:
                        scores.add_loyalty(name, n, days)

    def paired(self, churn: str, loyalty: str, baseline: str = "bgnbd", resamples: int = RESAMPLES) -> list[dict[str, Any]]:
        """Per period (and ``all``), the paired customer bootstrap (:mod:`models.bootstrap`) of the
        AUC of ``churn`` minus ``baseline``'s and the RMSE of ``loyalty`` minus ``baseline``'s, on
        the points both scored, with each one's predicted / actual total of purchase days."""
        by_period: dict[int | None, list[tuple[str, float, float, float, float, float, float]]] = {}
        start = self.start or 0
        for (user, ts), (predicted, days) in self.scored.items():
            if baseline not in predicted or churn not in predicted or loyalty not in predicted:
                continue
            row = (user, float(days == 0), float(days), predicted[churn][0], predicted[baseline][0],
                   predicted[loyalty][1], predicted[baseline][1])
            by_period.setdefault((ts - start) // self.period_ms, []).append(row)
            by_period.setdefault(None, []).append(row)
        out = []
        for index in sorted(k for k in by_period if k is not None) + [None]:
            rows = by_period.get(index)
            if not rows:
                continue
            users, y, d, pa, pb, na, nb = zip(*rows)
            result = paired(users, y, d, pa, pb, na, nb, resamples=resamples)
            actual = sum(d)
            out.append({
                "period_start_ms": None if index is None else start + index * self.period_ms, "result": result,
                "total_ratio": (sum(na) / actual, sum(nb) / actual) if actual else (None, None),
            })
        return out

    def table(self) -> list[dict[str, Any]]:
        """One row per period (and ``all``): each model's churn and loyalty figures."""
        rows = []
        for index in sorted(self.periods) + [None]:
            scores = self.total if index is None else self.periods[index]
            start = None if index is None else (self.start or 0) + index * self.period_ms
            rows.append({
                "period_start_ms": start,
                "churn": {m: c.report() for m, c in scores.churn.items()},
                "loyalty": {m: v.report() for m, v in scores.loyalty.items()},
            })
        return rows
