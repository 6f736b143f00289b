"""A user's latest features and scores, as published on ``user-scores`` and served by
``GET /users/{user_id}``.

Snapshots are throttled in event time: a user's snapshot is re-published when the state
changed and ``interval`` has passed since the last one, or when the engine scored the
user (a due check). The topic is keyed by user_id, so its latest record per key is the
user's current row (log compaction keeps just that on a real cluster).

A row also carries the customer's lifecycle stage (:mod:`streams.domain.lifecycle`) and
behavioural segment (:mod:`models.segments`; its version under ``model_versions["segment"]``).
Both are optional in the v1 contract (present in every row published now, never null):
rows published before they existed decode with ``msgspec.UNSET`` there.

Loyalty (:mod:`streams.domain.loyalty`) is published as ``scores["loyalty"]`` (predicted
purchase days in the horizon, >= 0, its model under ``model_versions["loyalty"]`` and
``"loyalty"`` in ``priors`` while the learner answers with its prior),
``scores["loyalty_score"]`` (its percentile among the worker's current customers, 0 to 1)
and the optional field ``loyalty_tier`` (a configured tier name); older rows have none of
them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import msgspec

from models.score import Score
from streams.domain.lifecycle import LifecycleConfig, Stage, lifecycle_stage
from streams.domain.loyalty import TIER_PATTERN, Loyalty, LoyaltyRanks, Tiers, rank_loyalty
from streams.domain.features import MODEL_FEATURES, features, model_inputs
from streams.domain.population import Population
from streams.domain.state import StateConfig, UserState
from streams.domain.timestamps import format_ts

if TYPE_CHECKING:
    from models.bundle import Models


class Segment(NamedTuple):
    """A segment model's answer: the segment id and the version of the model that gave it."""

    id: int
    version: str


class UserScores(msgspec.Struct, frozen=True):
    user_id: str
    ts: str
    features: dict[str, float]
    scores: dict[str, float]
    model_versions: dict[str, str]
    #: Names of the scores that still come from a prior (the model has not learned enough).
    priors: list[str] = msgspec.field(default_factory=list)
    #: Lifecycle stage; absent (UNSET) only in rows published before it existed.
    lifecycle_stage: Stage | msgspec.UnsetType = msgspec.UNSET
    #: Behavioural segment id, 0 to k - 1 (models/segments.py); absent (UNSET) only in older rows.
    segment: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET
    #: Loyalty tier (a name of RETENTION_LOYALTY_TIERS) of scores["loyalty_score"]; absent only in older rows.
    loyalty_tier: Annotated[str, msgspec.Meta(pattern=TIER_PATTERN)] | msgspec.UnsetType = msgspec.UNSET


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UserScores)


def snapshot(
    state: UserState,
    now: int,
    values: dict[str, float],
    churn: Score,
    sentiment_version: str,
    segment: Segment,
    loyalty: Loyalty,
    lifecycle: LifecycleConfig = LifecycleConfig(),
) -> UserScores:
    """The user's row at ``now`` from their :func:`~streams.domain.features.features`
    ``values``; ``sentiment_version`` names the model that scored the review texts,
    ``segment`` is the segment model's answer for these values, ``loyalty`` the loyalty
    learner's answer with its percentile and tier (:func:`streams.domain.loyalty.rank_loyalty`)."""
    churn_value = round(churn.value, 6)  # the stage follows from the published score
    return UserScores(
        user_id=state.user_id,
        ts=format_ts(now),
        features=values,
        scores={"churn": churn_value, "loyalty": round(loyalty.score.value, 6), "loyalty_score": loyalty.percentile},
        model_versions={
            "churn": churn.version, "loyalty": loyalty.score.version,
            "sentiment": sentiment_version, "segment": segment.version,
        },
        priors=[name for name, score in (("churn", churn), ("loyalty", loyalty.score)) if score.prior],
        lifecycle_stage=lifecycle_stage(state, now, values, churn_value, lifecycle),
        segment=segment.id,
        loyalty_tier=loyalty.tier,
    )


class Scored(NamedTuple):
    """What a row is computed from: the features, the model inputs and the models' answers
    (the costly part of :func:`describe`, which a caller may reuse within one step)."""

    values: dict[str, float]
    x: dict[str, float]
    churn: Score
    segment: Segment
    loyalty: Score


def scored_row(
    state: UserState, now: int, models: Models, churn: Score | None = None, state_cfg: StateConfig = StateConfig(),
    population: Population | None = None,
) -> Scored:
    """The user's features at ``now`` (computed once) and the models' answers for them."""
    values = features(state, now, state_cfg, population)
    x = model_inputs(values)
    segment, loyalty = _answers(models, x)
    return Scored(values, x, churn or models.churn.score(x), segment, loyalty)


def _answers(models: Models, x: dict[str, float]) -> tuple[Segment, Score]:
    """The segment and loyalty models' answers for the model inputs ``x`` (a row's, with the churn score)."""
    return Segment(models.segments.predict_one(x), models.segments.version), models.loyalty.score(x)


class StepRows:
    """The features and :func:`scored_row` of the step being folded, computed once: the
    engine's model vector (a scoring point, a lapse check), a trigger's rules and the step's
    published row all read the same features (the vector's inputs do not include the RFM
    scores, the only ones the population moves), and the rules' row and the published row
    the same model answers. Nothing a feature reads changes within a step but the RFM
    population, which is in the key with the user and the time; the answers are also keyed
    by the models and the churn score given. :meth:`clear` when a step starts, so nothing is
    ever read from another step's state."""

    def __init__(self) -> None:
        self._features: tuple[tuple[str, int, int], dict[str, float], dict[str, float]] | None = None
        #: [key, models, the churn model's answer (once asked), segment, loyalty]
        self._answers: list[Any] | None = None
        self._memo: tuple[tuple[str, int, int], Models, Score | None, Scored] | None = None

    def clear(self) -> None:
        self._features = self._answers = self._memo = None

    def features(
        self, state: UserState, now: int, state_cfg: StateConfig, population: Population,
    ) -> tuple[dict[str, float], dict[str, float]]:
        """:func:`~streams.domain.features.features` at ``now`` and the model inputs of them."""
        key = (state.user_id, now, population.changes)
        memo = self._features
        if memo is not None and memo[0] == key:
            return memo[1], memo[2]
        values = features(state, now, state_cfg, population)
        x = model_inputs(values)
        self._features = (key, values, x)
        return values, x

    def vector(self, state: UserState, now: int, state_cfg: StateConfig, population: Population) -> list[float]:
        """The model vector at ``now``, as :func:`~streams.domain.features.feature_vector`
        computes it (its inputs are the same with or without the population)."""
        x = self.features(state, now, state_cfg, population)[1]
        return [x[name] for name in MODEL_FEATURES]

    def scored(
        self, state: UserState, now: int, models: Models, churn: Score | None, state_cfg: StateConfig, population: Population,
    ) -> Scored:
        key = (state.user_id, now, population.changes)
        memo = self._memo
        if memo is not None and memo[0] == key and memo[1] is models and memo[2] is churn:
            return memo[3]
        values, x = self.features(state, now, state_cfg, population)
        answers = self._answers
        if answers is None or answers[0] != key or answers[1] is not models:
            answers = self._answers = [key, models, None, *_answers(models, x)]
        answer = churn
        if answer is None:
            answer = answers[2]
            if answer is None:  # the model's own answer (the caller may bring the step's)
                answer = answers[2] = models.churn.score(x)
        scored = Scored(values, x, answer, answers[3], answers[4])
        self._memo = (key, models, churn, scored)
        return scored


def describe(
    state: UserState, now: int, models: Models, ranks: LoyaltyRanks, tiers: Tiers, churn: Score | None = None,
    learn: bool = True, state_cfg: StateConfig = StateConfig(), population: Population | None = None,
    lifecycle: LifecycleConfig = LifecycleConfig(), scored: Scored | None = None,
) -> tuple[UserScores, dict[str, float]]:
    """The user's row at ``now`` (features computed once, the scores and segment from them)
    and its model inputs, as a worker and the offline loop both build it; a published row
    (``learn``) enters the loyalty distribution ``ranks``, a looked-up one does not.
    ``scored``: :func:`scored_row` of the same state, time, models, churn and population,
    computed earlier in the step."""
    s = scored or scored_row(state, now, models, churn, state_cfg, population)
    loyalty = rank_loyalty(ranks, state.user_id, state.last_purchase, now, s.loyalty, tiers, learn=learn)
    return snapshot(state, now, s.values, s.churn, models.sentiment.version, s.segment, loyalty, lifecycle), s.x


def snapshot_due(state: UserState, now: int, interval_ms: int, scored: bool) -> bool:
    """Publish now? After a scoring, or once ``interval_ms`` of event time has passed."""
    return scored or state.scores_at is None or now - state.scores_at >= interval_ms


def encode_scores(scores: UserScores) -> bytes:
    return _encoder.encode(scores)


def decode_scores(raw: bytes) -> UserScores:
    """A row of the ``user-scores`` topic; raises ``msgspec.ValidationError`` where the v1
    schema would refuse it (the churn score is a probability, 0 to 1; loyalty a count of
    days, at least 0; loyalty_score a percentile, 0 to 1)."""
    row = _decoder.decode(raw)
    for name, low, high, what in _SCORE_RANGES:
        value = row.scores.get(name)
        if value is not None and not low <= value <= high:
            raise msgspec.ValidationError(f"scores.{name} is {what}, not {value}")
    return row


_SCORE_RANGES = (
    ("churn", 0.0, 1.0, "a probability, 0 to 1"),
    ("loyalty", 0.0, float("inf"), "a number of purchase days, at least 0"),
    ("loyalty_score", 0.0, 1.0, "a percentile, 0 to 1"),
)


def profile_of(row: UserScores, state: UserState, partition: int) -> dict[str, Any]:
    """What ``GET /users/{user_id}`` shows: the user's row and a few facts of the state."""
    return {
        **msgspec.to_builtins(row),
        "partition": partition,
        "last_purchase": format_ts(state.last_purchase) if state.last_purchase is not None else None,
        "pending_labels": len(state.pending),
        "lapse_acted_for_purchase_at": format_ts(state.lapse_acted) if state.lapse_acted is not None else None,
        "unsubscribed": state.unsubscribed,
    }
