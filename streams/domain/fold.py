"""Events through the engine in event-time order, as one partition of a worker does it.

The worker's order, without a broker: the partition's clock reaches a user event first,
:func:`~streams.domain.engine.on_event` folds it in, and then the users due by the clock
get :func:`~streams.domain.engine.on_due`; a heartbeat only moves the clock. Matured labels
go to the trainer as the worker sends them (:mod:`models.trainer`, here in process, its
watermark the replay clock) and every record is scored by the snapshot its event time
selects, as on the workers. Given the policy file's rules (:class:`Rules`, e.g.
``streams.simulation.loop.PolicyRules``), the fold decides by them and their guard rails;
the bandits among them are those of the snapshot the decision's event time selects, and
the rewards of matured bandit decisions go to the trainer as the worker sends them. Scripts that measure the state or the models
(``scripts/measure-state``, ``scripts/measure-segments``) and the ordered replay of the
tests drive the engine through it; folds of several partitions share one training when
the records are fed in one event-time order.

>>> from streams.domain.events import Heartbeat
>>> fold = Fold(EngineConfig(), offline_training())
>>> fold.feed(Heartbeat(ts=5)) is None, fold.now
(True, 5)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from models.bundle import Models
from models.examples import bandit_examples, churn_examples, uplift_examples
from models.score import Score
from models.trainer import OfflineTraining
from streams.domain.actions import RetentionAction
from streams.domain.engine import EngineConfig, Step, Unknown, on_due, on_event, went_out
from streams.domain.events import Heartbeat, UserEvent
from streams.domain.schedule import DueQueue
from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_DAY

#: Called after every step of a user (an event folded in or a due check), with the clock.
OnStep = Callable[[UserState, Step, int], None]


def offline_training(
    fresh: Callable[[], Models] = Models.fresh, period_ms: int = MS_PER_DAY, lag: int = 1
) -> OfflineTraining[Models]:
    """A trainer and snapshot selection in process (settings: ``model_period_s``, ``model_lag_periods``)."""
    return OfflineTraining(fresh, period_ms, lag)


class Rules(Protocol):
    """The policy file's rules as a worker runs them (``streams.simulation.loop.PolicyRules``)."""

    def __call__(
        self, trigger: str, state: UserState, now_ms: int, episode: int, churn: Score | None = None
    ) -> list[RetentionAction]: ...

    def before(self, state: UserState, event: UserEvent) -> Callable[[], None]:
        """Called before ``event`` is folded in; what it returns, after (unless a duplicate)."""
        ...

    def admit(self, state: UserState, action: RetentionAction, now_ms: int) -> bool:
        """The guard rails: False, the action is not sent."""
        ...


class Fold:
    """One event-time clock, the users' states and their due queue.

    Without ``rules`` the engine's own lapse rule decides (every action goes out); with
    them, the policy file's rules decide at every trigger and only the actions their guard
    rails admit go out (``Step.actions`` keeps those)."""

    def __init__(
        self, cfg: EngineConfig, training: OfflineTraining[Models], on_step: OnStep | None = None, rules: Rules | None = None
    ) -> None:
        self.cfg = cfg
        self.training = training
        self.on_step = on_step
        self.rules = rules
        self.states: dict[str, UserState] = {}
        self.queue = DueQueue()
        self.now = 0

    @property
    def models(self) -> Models:
        """The models that score at the current clock."""
        return self.training.models_at(self.now)

    def feed(self, event: UserEvent | Heartbeat) -> Step | None:
        """Fold one event in (its step) or, for a heartbeat, only move the clock (None).
        ``event`` carries no review sentiment (the scripts measure without the text model)."""
        self.now = max(self.now, event.ts)
        self.training.advance(self.now)  # the partitions' watermarks: every example before now was sent
        models = self.models
        step = None
        if not isinstance(event, Heartbeat):
            state = self.states.get(event.user_id)
            due: int | None | Unknown = Unknown.DUE  # a new user's: computed
            if state is None:
                state = self.states[event.user_id] = UserState(event.user_id)
            else:
                due = self.queue.due(event.user_id)  # as the user's last step left it
            after = self.rules.before(state, event) if self.rules is not None else None
            step = on_event(state, event, self.now, self.cfg, None, models.churn, models.loyalty, self.rules, due)
            if step.applied.counted:  # a re-sent copy changes nothing
                if after is not None:
                    after()
                self._finish(state, step)
        for user_id in self.queue.pop_due(self.now):
            state = self.states[user_id]
            self._finish(state, on_due(state, self.now, models.churn, self.cfg, models.loyalty, self.rules))
        return step

    def _finish(self, state: UserState, step: Step) -> None:
        # (each part only when the step has any: most steps are clicks, which have none)
        if step.examples:
            for example in churn_examples(state.user_id, step.examples, self.now):  # as the worker sends them
                self.training.add(example)
        if step.actions:
            if self.rules is not None:
                step.actions = [a for a in step.actions if self.rules.admit(state, a, self.now)]
            went_out(state, step, step.actions, self.cfg)  # their windows start (and mature at a due check)
        if step.rewards:
            for reward in bandit_examples(step.rewards, self.now):  # the bandits' rewards, as the worker sends them
                self.training.add(reward)
        if step.outcomes:
            for outcome in uplift_examples(step.outcomes, self.now):  # the uplift models' outcomes, likewise
                self.training.add(outcome)
        if self.on_step is not None:
            self.on_step(state, step, self.now)
        self.queue.schedule(state.user_id, step.due_ms)
