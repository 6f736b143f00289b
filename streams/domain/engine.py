"""One user's step through the pipeline: event -> state -> labels -> score -> action.

The Faust agent calls these two functions and does only I/O around them, so the whole
decision path is tested without a broker, with explicit event times.

- :func:`on_event` folds an event into the state (once per event id) and, at a
  purchase, resolves pending labels and records a new scoring point.
- :func:`on_due` runs when the event-time clock reaches the user's due time: labels
  mature; a periodic sweep re-scores a known customer who went silent (a scoring point);
  and the lapse rule scores the user and may emit a coupon.

Both attribute (:mod:`streams.domain.attribution`): a purchase converts or redeems the
user's waiting decisions, an outcome is counted, and :func:`on_due` matures the decisions
whose window is over; :func:`track_actions` starts the windows of the actions that went
out (the caller's call: after the guard rails). The step's
:class:`~streams.domain.uplift.Tally` says what to add to the partition's counts.

Scoring points are stored with the live learners' predictions (when the caller passes
the learners), so each prediction is judged against its label when it matures
(:mod:`models.prequential`).

Both return a :class:`Step` whose ``due_ms`` tells when the user next needs a look.

**Bandit rewards.** A matured decision whose rule a bandit chose (``reason.chosen``) and
that was *treated* gives a :class:`Reward` (its context, arm and reward) in
``Step.rewards``, which the caller sends to the trainer like the matured labels. A control
decision gives none: it was not acted on, so its outcome is the baseline of the uplift,
not the reward of an arm.

**Uplift outcomes.** A matured decision of a kind whose uplift the policy learns
(``reason.uplift``) gives an :class:`UpliftOutcome` in ``Step.outcomes``, treatment *and* control
(the uplift model compares the two), sent to the trainer likewise.

**Rules.** Given an ``act`` (the policy file's rules, :class:`streams.domain.rules.Decider`),
the engine calls it at each trigger with the trigger's *episode* (what makes the action id
of the decision deterministic): ``lapse`` (the lapse check; episode: the last purchase),
``negative_review`` (the review's event time), ``first_purchase`` (its event time),
``abandoned_cart`` (the customer's count of abandoned carts once it grew) and ``sweep``
(the sweep's grid point). Without one, the built-in lapse rule (:mod:`streams.domain.policy`)
decides, as the evaluation replays do.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from models.bandit import CONTEXT
from models.score import Score
from models.score import is_negative
from streams.domain import attribution
from streams.domain.actions import RetentionAction
from streams.domain.attribution import AttributionConfig
from streams.domain.events import Outcome, Purchase, UserEvent
from streams.domain.features import as_dict, feature_vector
from streams.domain.labels import Matured, add_scoring_point, mature, next_maturity, next_storable, on_purchase
from streams.domain.policy import PolicyConfig, decide_lapse, lapse_check_due
from streams.domain.state import Applied, Awaiting, PendingScore, StateConfig, UserState, advance, apply_event
from streams.domain.timestamps import MS_PER_DAY
from streams.domain.uplift import Tally


class ChurnScorer(Protocol):
    def score(self, x: dict[str, float]) -> Score: ...


class LoyaltyScorer(Protocol):
    def score(self, x: dict[str, float]) -> Score: ...


#: The model vector of a user at an event time (:func:`~streams.domain.features.feature_vector`
#: by default; a worker passes one that shares the step's features with its rows).
Vector = Callable[[UserState, int], list[float]]


class Actor(Protocol):
    """The policy's rules at a trigger (:class:`streams.domain.rules.Decider`)."""

    def __call__(
        self, trigger: str, state: UserState, now_ms: int, episode: int, churn: Score | None = None
    ) -> list[RetentionAction]: ...


@dataclass(frozen=True)
class EngineConfig:
    #: H: churn at t = no purchase in (t, t + H]; loyalty at t = purchase days in (t, t + H].
    churn_horizon_days: float = 30.0
    #: Known customers (with a purchase) are re-scored on this event-time grid (0: never).
    sweep_days: float = 1.0
    #: Sweeps stop this long after a customer's last purchase.
    sweep_silence_days: float = 365.0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    state: StateConfig = field(default_factory=StateConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)

    @property
    def horizon_ms(self) -> int:
        return int(self.churn_horizon_days * MS_PER_DAY)

    @property
    def sweep_ms(self) -> int:
        return int(self.sweep_days * MS_PER_DAY)


@dataclass(frozen=True)
class Reward:
    """A treated bandit decision's outcome: what the trainer's bandit learns (``models.bandit``)."""

    action_id: str
    bandit: str
    arm: str
    context: dict[str, float]
    reward: float


def rewards_of(matured: list[Awaiting]) -> list[Reward]:
    """The rewards of the matured decisions a bandit chose and that were treated: ``gain``
    for a conversion in the window, minus ``cost`` for a redemption."""
    return [
        Reward(a.action_id, a.bandit.bandit, a.rule, dict(zip(CONTEXT, a.bandit.context)),
               a.bandit.gain * a.converted - a.bandit.cost * a.redeemed)
        for a in matured
        if a.bandit is not None and a.group == "treatment"
    ]


@dataclass(frozen=True)
class UpliftOutcome:
    """A matured decision of a kind whose uplift is learned, treatment or control: what the
    trainer's uplift model learns (``models.uplift``)."""

    action_id: str
    kind: str
    rule: str
    group: str
    features: list[float]
    converted: bool
    explored: bool


def outcomes_of(matured: list[Awaiting]) -> list[UpliftOutcome]:
    """The outcomes of the matured decisions that carry an uplift trace, both groups: the
    control decisions are the baseline the treated ones are compared with."""
    return [UpliftOutcome(a.action_id, a.kind, a.rule, a.group, a.uplift.features, a.converted, a.uplift.explored)
            for a in matured if a.uplift is not None]


@dataclass
class Step:
    applied: Applied
    #: Labels that matured in this step.
    examples: list[Matured] = field(default_factory=list)
    #: Scoring points stored in this step (the evaluation replay scores its baselines on them).
    points: list[PendingScore] = field(default_factory=list)
    actions: list[RetentionAction] = field(default_factory=list)
    due_ms: int | None = None
    #: The churn score the step computed, if it scored the user.
    churn: Score | None = None
    #: The event was a review whose text reads negative (an event the policy can react to).
    negative_review: bool = False
    #: What this step adds to the attribution counts (decisions, matured windows, outcomes).
    tally: Tally = field(default_factory=Tally)
    #: The rewards of the bandit decisions that matured in this step (for the trainer).
    rewards: list[Reward] = field(default_factory=list)
    #: The outcomes of the decisions whose uplift is learned that matured in this step (for the trainer).
    outcomes: list[UpliftOutcome] = field(default_factory=list)


def sweep_due(state: UserState, cfg: EngineConfig) -> int | None:
    """Event time of the customer's next scoring sweep: the first point of the sweep grid
    (multiples of ``sweep_days`` since the epoch) after the last sweep or purchase at which
    a scoring point may be stored; None for a customer without a purchase, or silent for
    longer than ``sweep_silence_days``.

    >>> s = UserState("u", last_purchase=MS_PER_DAY // 2)
    >>> sweep_due(s, EngineConfig(churn_horizon_days=4)) == MS_PER_DAY
    True
    """
    step = cfg.sweep_ms
    last = state.last_purchase
    if step <= 0 or last is None:
        return None
    after = max(last, state.swept_at or 0)
    due = (after // step + 1) * step
    storable = next_storable(state, cfg.horizon_ms)
    if storable is not None and storable > due:
        due = -(-storable // step) * step  # the first grid point at or after it
    if due > last + int(cfg.sweep_silence_days * MS_PER_DAY):
        return None
    return due


def due_at(state: UserState, cfg: EngineConfig) -> int | None:
    """The next event time at which :func:`on_due` has something to do for this user.

    Computed once per step, at its end (``Step.due_ms``); only actions going out after the
    guard rails change it again (:func:`went_out`)."""
    due = None
    for t in (next_maturity(state, cfg.horizon_ms), lapse_check_due(state, cfg.policy), sweep_due(state, cfg),
              attribution.next_maturity(state, cfg.attribution)):
        if t is not None and (due is None or t < due):
            due = t
    return due


def _score_point(
    state: UserState, now_ms: int, features: list[float], cfg: EngineConfig,
    churn: ChurnScorer | None, loyalty: LoyaltyScorer | None,
) -> PendingScore | None:
    """Store a scoring point at ``now_ms`` with the learners' predictions (when spaced enough)."""
    earliest = next_storable(state, cfg.horizon_ms)
    if earliest is not None and now_ms < earliest:
        return None
    x = as_dict(features)
    churn_p, churn_prior, churn_learned = _scored(churn, x)
    loyalty_p, loyalty_prior, loyalty_learned = _scored(loyalty, x)
    return add_scoring_point(
        state, now_ms, features, cfg.horizon_ms, churn_p, loyalty_p, (churn_prior, churn_learned, loyalty_prior, loyalty_learned),
    )


def _scored(model: ChurnScorer | LoyaltyScorer | None, x: dict[str, float]) -> tuple[float | None, float | None, float | None]:
    """(the answer, the prior's prediction, the learner's) of ``model`` for ``x``; the last
    two None for a scorer that does not tell them apart (:meth:`models.churn.ChurnModel.scored`)."""
    if model is None:
        return None, None, None
    scored = getattr(model, "scored", None)
    if scored is None:
        return model.score(x).value, None, None
    score, prior, learned = scored(x)
    return score.value, prior, learned


def _vector(state: UserState, now_ms: int, cfg: EngineConfig, vector: Vector | None) -> list[float]:
    return feature_vector(state, now_ms, cfg.state) if vector is None else vector(state, now_ms)


class Unknown(enum.Enum):
    """The caller does not know the user's due time (:func:`on_event` computes it)."""

    DUE = "unknown"


def on_event(
    state: UserState, event: UserEvent, now_ms: int, cfg: EngineConfig, sentiment: float | None = None,
    churn: ChurnScorer | None = None, loyalty: LoyaltyScorer | None = None, act: Actor | None = None,
    due_before: int | None | Unknown = Unknown.DUE, vector: Vector | None = None,
) -> Step:
    """Fold ``event`` in at event-time clock ``now_ms`` (``sentiment``: a review text's score).

    A purchase resolves pending labels and is a scoring point; ``churn`` and ``loyalty``,
    when given, record their predictions with it. ``act``: the rules of the triggers an
    event can fire (negative review, first purchase, a cart found abandoned).

    ``due_before``: the due time the user's previous step left (``Step.due_ms``, as the
    caller's due queue holds it), if the caller knows it. Only a purchase or an outcome
    moves what the due time depends on (labels, purchases, the unsubscription, the
    decisions waiting: the actions of this step wait only once they went out, see
    :func:`went_out`), so for a click or a review it is the step's due time, not computed
    again: most events are clicks. ``vector``: how the step's model vector is computed
    (default :func:`~streams.domain.features.feature_vector`)."""
    carts = state.carts_abandoned
    applied = apply_event(state, event, now_ms, cfg.state, sentiment)
    counted = applied.counted
    purchase = isinstance(event, Purchase)
    examples: list[Matured] = []
    points: list[PendingScore] = []
    if counted and purchase:
        examples = on_purchase(state, event.ts, cfg.horizon_ms)  # the truth, however late
        if applied is Applied.OK:
            features = _vector(state, event.ts, cfg, vector)
            point = _score_point(state, event.ts, features, cfg, churn, loyalty)
            points = [point] if point is not None else []
    negative = counted and sentiment is not None and is_negative(sentiment)
    actions: list[RetentionAction] = []
    if act is not None and counted:
        if negative:
            actions += act("negative_review", state, now_ms, event.ts)
        if purchase and state.purchases == 1:
            actions += act("first_purchase", state, now_ms, event.ts)
        if state.carts_abandoned > carts:
            actions += _abandoned(act, state, now_ms, carts)
    tally = _attribute_event(state, event, applied, cfg)
    moved = due_before is Unknown.DUE or purchase or isinstance(event, Outcome)
    return Step(applied=applied, examples=examples, points=points, actions=actions,
                due_ms=due_at(state, cfg) if moved else due_before, negative_review=negative, tally=tally)


def _abandoned(act: Actor, state: UserState, now_ms: int, before: int) -> list[RetentionAction]:
    """The abandoned-cart rules, once per cart the clock finalized as abandoned (episode: the count)."""
    return [a for n in range(before + 1, state.carts_abandoned + 1) for a in act("abandoned_cart", state, now_ms, n)]


def _attribute_event(state: UserState, event: UserEvent, applied: Applied, cfg: EngineConfig) -> Tally:
    """A purchase converts (or redeems) the user's waiting decisions; an outcome is counted."""
    tally = Tally()
    if not applied.counted:
        return tally
    if isinstance(event, Purchase):
        attribution.on_purchase(state, event.ts, event.action_id, event.coupon_code, cfg.attribution)
    elif isinstance(event, Outcome):
        attribution.on_outcome(state, event.action_id, event.outcome.value, tally)
    return tally


def track_actions(state: UserState, actions: list[RetentionAction], cfg: EngineConfig) -> Tally:
    """Start the attribution windows of the actions that went out (after the guard rails:
    a suppressed decision is in neither group). The caller adds the tally to the step's."""
    tally = Tally()
    for action in actions:
        attribution.track(state, attribution.awaiting_of(action), cfg.attribution, tally)
    return tally


def went_out(state: UserState, step: Step, actions: list[RetentionAction], cfg: EngineConfig) -> None:
    """The step's ``actions`` that passed the guard rails went out: their attribution windows
    start (counted in the step's tally) and, if there are any, the step's due time becomes
    the earlier of its own and their maturity. Without actions nothing that sets the due
    time changed since the step computed it, so it is not computed again."""
    if actions:
        step.tally.add(track_actions(state, actions, cfg))
        step.due_ms = due_at(state, cfg)


def on_due(
    state: UserState, now_ms: int, churn: ChurnScorer, cfg: EngineConfig, loyalty: LoyaltyScorer | None = None,
    act: Actor | None = None, vector: Vector | None = None,
) -> Step:
    """The clock reached the user's due time: labels mature, a sweep scores, the lapse rule runs
    (``act``: the policy file's rules at the lapse check, the sweep and abandoned carts;
    ``vector`` as for :func:`on_event`)."""
    carts = state.carts_abandoned
    advance(state, now_ms, cfg.state)
    examples = mature(state, now_ms, cfg.horizon_ms)
    points: list[PendingScore] = []
    features: list[float] | None = None
    actions = [] if act is None else _abandoned(act, state, now_ms, carts)
    sweep = sweep_due(state, cfg)
    if sweep is not None and now_ms >= sweep:
        features = _vector(state, now_ms, cfg, vector)
        point = _score_point(state, now_ms, features, cfg, churn, loyalty)
        points = [point] if point is not None else []
        state.swept_at = now_ms
        if act is not None:
            actions += act("sweep", state, now_ms, sweep)
    due = lapse_check_due(state, cfg.policy)
    churn_score: Score | None = None
    if due is not None and now_ms >= due:
        if features is None:
            features = _vector(state, now_ms, cfg, vector)
        churn_score = churn.score(as_dict(features))
        if act is None:
            action = decide_lapse(state, now_ms, features, churn_score, cfg.policy)
            actions += [action] if action is not None else []
        else:
            actions += _lapse(act, state, now_ms, churn_score)
    tally = Tally()
    matured = attribution.mature(state, now_ms, cfg.attribution, tally)  # the windows over by now
    return Step(applied=Applied.OK, examples=examples, points=points, actions=actions, due_ms=due_at(state, cfg),
                churn=churn_score, tally=tally, rewards=rewards_of(matured), outcomes=outcomes_of(matured))


def _lapse(act: Actor, state: UserState, now_ms: int, churn: Score) -> list[RetentionAction]:
    """The lapse check by the policy file's rules: checked now; one action per episode (the
    last purchase) once a rule fires, else checked again after ``recheck_days``."""
    episode = state.last_purchase
    assert episode is not None  # lapse_check_due guarantees it
    state.lapse_checked = now_ms
    actions = act("lapse", state, now_ms, episode, churn)
    if actions:
        state.lapse_acted = episode
    return actions
