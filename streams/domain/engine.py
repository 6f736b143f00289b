"""One user's step through the pipeline: event -> state -> labels -> score -> action.

The Faust agent calls these two functions and does only I/O around them, so the whole
decision path is tested without a broker, with explicit event times.

- :func:`on_event` folds an event into the state (once per event id) and, at a
  purchase, resolves pending churn labels and records a new scoring point.
- :func:`on_due` runs when the event-time clock reaches the user's due time: labels
  mature, and the lapse rule scores the user and may emit a coupon.

Both return a :class:`Step` whose ``due_ms`` tells when the user next needs a look.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from models.score import Score
from models.sentiment import is_negative
from streams.domain.actions import RetentionAction
from streams.domain.events import Purchase, UserEvent
from streams.domain.features import as_dict, feature_vector
from streams.domain.labels import Example, add_scoring_point, mature, next_maturity, resolve_on_purchase
from streams.domain.policy import PolicyConfig, decide_lapse, lapse_check_due
from streams.domain.state import Applied, StateConfig, UserState, advance, apply_event
from streams.domain.timestamps import MS_PER_DAY


class ChurnScorer(Protocol):
    def score(self, x: dict[str, float]) -> Score: ...


@dataclass(frozen=True)
class EngineConfig:
    churn_horizon_days: float = 30.0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    state: StateConfig = field(default_factory=StateConfig)

    @property
    def horizon_ms(self) -> int:
        return int(self.churn_horizon_days * MS_PER_DAY)


@dataclass
class Step:
    applied: Applied
    examples: list[Example] = field(default_factory=list)
    actions: list[RetentionAction] = field(default_factory=list)
    due_ms: int | None = None
    #: The churn score the step computed, if it scored the user.
    churn: Score | None = None
    #: The event was a review whose text reads negative (an event the policy can react to).
    negative_review: bool = False


def due_at(state: UserState, cfg: EngineConfig) -> int | None:
    """The next event time at which :func:`on_due` has something to do for this user."""
    times = [t for t in (next_maturity(state, cfg.horizon_ms), lapse_check_due(state, cfg.policy)) if t is not None]
    return min(times, default=None)


def on_event(state: UserState, event: UserEvent, now_ms: int, cfg: EngineConfig, sentiment: float | None = None) -> Step:
    """Fold ``event`` in at event-time clock ``now_ms`` (``sentiment``: a review text's score)."""
    applied = apply_event(state, event, now_ms, cfg.state, sentiment)
    examples: list[Example] = []
    if applied is not Applied.DUPLICATE and isinstance(event, Purchase):
        examples = resolve_on_purchase(state, event.ts, cfg.horizon_ms)  # the truth, however late
        if applied is Applied.OK:
            add_scoring_point(state, event.ts, feature_vector(state, event.ts, cfg.state))
    negative = applied is not Applied.DUPLICATE and sentiment is not None and is_negative(sentiment)
    return Step(applied=applied, examples=examples, due_ms=due_at(state, cfg), negative_review=negative)


def on_due(state: UserState, now_ms: int, churn: ChurnScorer, cfg: EngineConfig) -> Step:
    advance(state, now_ms, cfg.state)
    examples = mature(state, now_ms, cfg.horizon_ms)
    actions: list[RetentionAction] = []
    due = lapse_check_due(state, cfg.policy)
    churn_score: Score | None = None
    if due is not None and now_ms >= due:
        features = feature_vector(state, now_ms, cfg.state)
        if state.lapse_checked is None or state.last_purchase is None or state.lapse_checked <= state.last_purchase:
            add_scoring_point(state, now_ms, features)  # first check of this lapse episode
        churn_score = churn.score(as_dict(features))
        action = decide_lapse(state, now_ms, features, churn_score, cfg.policy)
        if action is not None:
            actions.append(action)
    return Step(applied=Applied.OK, examples=examples, actions=actions, due_ms=due_at(state, cfg), churn=churn_score)
