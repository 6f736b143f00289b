"""Every model the worker scores with, as one unit the trainer learns and snapshots.

The churn and loyalty learners with their prequential metrics (:mod:`models.online`), the
review sentiment model and the behavioural segment model learn from the examples of the
``model-labels`` topic (:mod:`models.examples`), and so do the policy's contextual bandits
(:mod:`models.bandit`, from the rewards of matured decisions) and the uplift model of each
action kind (:mod:`models.uplift`, from the outcomes of matured treatment and control decisions); a snapshot of the bundle is what every
scorer uses (:mod:`models.trainer`). The customer histories those examples carry are kept
for BG/NBD (:mod:`models.bgnbd_prior`), refitted as periods are stamped; the churn and
loyalty learners get the fitted parameters (their prior and three of their inputs).

>>> from models.examples import ReviewExample
>>> m = Models.fresh(min_labels=1)
>>> m.learn(ReviewExample(id="r", at=0, text="broke at once", rating=1))
>>> m.counts["review"], m.sentiment.labels
(1, 1)
>>> m.stamp("2026-03-02"); m.sentiment.version
'sentiment-lex+nb+1@2026-03-02'
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec

from models.bandit import Bandits
from models.bgnbd_prior import BgNbdFit, user_of
from models.bgnbd_prior import observed as _observed
from models.churn import DEFAULT_LOYALTY, hand_over
from models.examples import BanditExample, ChurnExample, Example, ReviewExample, SegmentExample, UpliftExample, candidates_of
from models.online import OnlineLearners
from models.segments import SegmentModel
from models.sentiment import SentimentModel
from models.uplift import MIN_EXAMPLES, UpliftModels
from streams.domain.features import as_dict


class TrainerState(msgspec.Struct, frozen=True):
    """``Snapshot.state``: what only a trainer needs to go on, beside the models every worker
    keeps: the BG/NBD histories of every customer (:meth:`models.bgnbd_prior.BgNbdFit.dump_histories`)
    and the learners' metrics with their windows (:meth:`models.online.OnlineLearners.metrics_state`).
    Written as a msgpack map; a state from before the metrics were in it is the histories'
    zlib stream alone (its first byte 0x78, which no msgpack map starts with)."""

    histories: bytes | None = None
    metrics: bytes | None = None

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> TrainerState:
        if data[:1] == b"\x78":
            return cls(histories=data)
        return msgspec.msgpack.decode(data, type=cls)


class Models:
    """The learners of one snapshot; ``counts``: examples learned per kind."""

    #: (None in bundles pickled before BG/NBD was part of them: they go on without it.)
    bgnbd: BgNbdFit | None = None

    def __init__(
        self, learners: OnlineLearners, sentiment: SentimentModel, segments: SegmentModel, bgnbd: BgNbdFit | None = None
    ) -> None:
        self.learners = learners
        self.sentiment = sentiment
        self.segments = segments
        self.bandits = Bandits()
        self.uplift = UpliftModels()
        self.bgnbd = bgnbd
        self.counts: Counter[str] = Counter()

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("bandits", Bandits())  # a snapshot of a trainer from before the bandits
        state.setdefault("uplift", UpliftModels())  # ... or from before the uplift models
        self.__dict__.update(state)

    @classmethod
    def fresh(
        cls, horizon_days: float = 30.0, min_labels: int = 50, churn_kind: str = "logreg", loyalty_kind: str = DEFAULT_LOYALTY,
        churn_prior_learns: bool = False, loyalty_prior_learns: bool = False, segment_clusters: int = 4,
        segment_halflife: float = 0.05, bgnbd_refit_periods: int = 7, bgnbd_customers: int = 1_000_000,
        uplift_min_decisions: int = MIN_EXAMPLES,
    ) -> Models:
        """Models that have learned nothing: every score is a prior (flagged so)."""
        learners = OnlineLearners(
            horizon_days=horizon_days, min_labels=min_labels, churn_kind=churn_kind, loyalty_kind=loyalty_kind,
            churn_prior_learns=churn_prior_learns, loyalty_prior_learns=loyalty_prior_learns,
        )
        bgnbd = BgNbdFit(refit_periods=bgnbd_refit_periods, customers=bgnbd_customers) if bgnbd_refit_periods > 0 else None
        models = cls(learners, SentimentModel(), SegmentModel(n_clusters=segment_clusters, halflife=segment_halflife), bgnbd)
        models.uplift = UpliftModels(min_examples=uplift_min_decisions)
        return models

    @property
    def churn(self) -> Any:
        return self.learners.churn

    @property
    def loyalty(self) -> Any:
        return self.learners.loyalty

    def learn(self, example: Example) -> None:
        if isinstance(example, ChurnExample):
            x = as_dict(example.features)
            if self.bgnbd is not None:
                self.bgnbd.observe(*_observed(example), x)
            scored_at = user_of(example.id)[1]
            self.learners.observe(x, example.churned, example.days, example.churn_p, example.loyalty_p, candidates_of(example), scored_at)
        elif isinstance(example, ReviewExample):
            self.sentiment.learn(example.text, example.rating)
        elif isinstance(example, SegmentExample):
            if self.bgnbd is not None:
                self.bgnbd.observe(*_observed(example), example.x)
            self.segments.learn_one(example.x)
        elif isinstance(example, BanditExample):
            self.bandits.learn_one(example.bandit, example.arm, example.context, example.reward)
        elif isinstance(example, UpliftExample):
            self.uplift.learn_one(example.action, example.rule, example.group, as_dict(example.features), example.converted,
                                  example.explored)
        self.counts[type(example).__name__.removesuffix("Example").lower()] += 1

    def trainer_state(self) -> bytes:
        """What only the trainer needs to go on (:class:`TrainerState`), apart from the
        models the workers score with (:func:`models.trainer.dump_models`)."""
        histories = self.bgnbd.dump_histories() if self.bgnbd is not None else None
        return TrainerState(histories=histories, metrics=self.learners.metrics_state()).encode()

    def restore_trainer_state(self, data: bytes | None) -> None:
        """The trainer's state back (``data``: :meth:`trainer_state`, None if the snapshot has
        none); the metrics start again, empty, where it brings none (or does not load)."""
        try:
            state = TrainerState.decode(data) if data is not None else TrainerState()
            if state.histories is not None and self.bgnbd is not None:
                self.bgnbd.load_histories(state.histories)
            self.learners.restore_metrics(state.metrics)
        finally:
            self.learners.restore_metrics(None)  # (no-op unless they are still a snapshot's figures)

    @contextlib.contextmanager
    def scoring_only(self) -> Iterator[None]:
        """While pickled for a snapshot: without the trainer's state."""
        with contextlib.ExitStack() as stack:
            if self.bgnbd is not None:
                stack.enter_context(self.bgnbd.without_histories())
            stack.enter_context(self.learners.scoring_only())
            yield

    def forget(self, user: str) -> bool:
        """Forget what the bundle keeps per customer (the BG/NBD history; every other model
        keeps aggregates only); True if something was dropped."""
        return self.bgnbd is not None and self.bgnbd.forget(user)

    def stamp(self, version: str) -> None:
        """Every model's version names the snapshot it came in (``...@version``); BG/NBD is
        refitted when due and its parameters handed to the churn and loyalty learners."""
        if self.bgnbd is not None:
            hand_over(self.bgnbd, self.bgnbd.tick(), (self.churn, self.loyalty))
        self.learners.close()
        for model in (self.churn, self.loyalty, self.sentiment, self.segments, self.bandits):
            model.snapshot = version
        self.uplift.stamp(version)  # (ranks the explored candidates with the new models)

    def report(self) -> dict[str, Any]:
        """The learners' report (versions, labels, prior flags, prequential metrics) and the others' versions."""
        return {
            **self.learners.report(),
            "sentiment": {"version": self.sentiment.version, "labels": self.sentiment.labels},
            "segments": {"version": self.segments.version, "learned": self.segments.learned},
            "bandits": self.bandits.report(),
            "uplift": self.uplift.report(),
            "bgnbd": None if self.bgnbd is None else self.bgnbd.report(),
            "examples": dict(sorted(self.counts.items())),
        }
