"""Events through the engine in event-time order, as one partition of a worker does it.

The worker's order, without a broker: the partition's clock reaches a user event first,
:func:`~streams.domain.engine.on_event` folds it in, and then the users due by the clock
get :func:`~streams.domain.engine.on_due`; a heartbeat only moves the clock. Matured labels
go to the trainer as the worker sends them (:mod:`models.trainer`, here in process, its
watermark the replay clock) and every record is scored by the snapshot its event time
selects, as on the workers. Given a policy file, the fold decides by its rules
(:class:`~streams.domain.rules.Decider`) with the customer's row described here
(:func:`offline_row`: features, churn and loyalty scores, lifecycle stage; no loyalty tier
nor segment, which need the worker's ranking), its bandits those of the snapshot the
decision's event time selects, their rewards sent to the trainer as the worker sends
them. Scripts that measure the state or the models
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

from models.bundle import Models
from models.examples import bandit_examples, churn_examples
from models.score import Score
from models.trainer import OfflineTraining
from streams.domain.engine import EngineConfig, Step, on_due, on_event, track_actions
from streams.domain.events import Heartbeat, UserEvent
from streams.domain.features import features, model_inputs
from streams.domain.lifecycle import lifecycle_stage
from streams.domain.policy_file import Policy
from streams.domain.rules import Decider
from streams.domain.schedule import DueQueue
from streams.domain.snapshots import UserScores
from streams.domain.state import Applied, UserState
from streams.domain.timestamps import MS_PER_DAY, format_ts

#: Called after every step of a user (an event folded in or a due check), with the clock.
OnStep = Callable[[UserState, Step, int], None]


def offline_training(
    fresh: Callable[[], Models] = Models.fresh, period_ms: int = MS_PER_DAY, lag: int = 1
) -> OfflineTraining[Models]:
    """A trainer and snapshot selection in process (settings: ``model_period_s``, ``model_lag_periods``)."""
    return OfflineTraining(fresh, period_ms, lag)


def offline_row(state: UserState, now: int, models: Models, cfg: EngineConfig, churn: Score | None = None) -> UserScores:
    """The customer's row at ``now`` as the rules see it in a replay (the worker's row
    without the loyalty tier and segment)."""
    values = features(state, now, cfg.state)
    x = model_inputs(values)
    churn = churn or models.churn.score(x)
    loyalty = models.loyalty.score(x)
    return UserScores(
        state.user_id, format_ts(now), values, {"churn": round(churn.value, 6), "loyalty": round(loyalty.value, 6)},
        {"churn": churn.version, "loyalty": loyalty.version},
        lifecycle_stage=lifecycle_stage(state, now, values, round(churn.value, 6)),
    )


class Fold:
    """One event-time clock, the users' states and their due queue (``policy``: decide by
    the policy file's rules, else by the built-in lapse rule)."""

    def __init__(
        self, cfg: EngineConfig, training: OfflineTraining[Models], on_step: OnStep | None = None, policy: Policy | None = None
    ) -> None:
        self.cfg = cfg
        self.training = training
        self.on_step = on_step
        self.act = None if policy is None else Decider(
            policy, lambda state, now, churn: offline_row(state, now, self.training.models_at(now), cfg, churn),
            bandits=lambda now: self.training.models_at(now).bandits,
        )
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
            state = self.states.setdefault(event.user_id, UserState(event.user_id))
            step = on_event(state, event, self.now, self.cfg, None, models.churn, models.loyalty, self.act)
            if step.applied is not Applied.DUPLICATE:  # a re-sent copy changes nothing
                self._finish(state, step)
        for user_id in self.queue.pop_due(self.now):
            state = self.states[user_id]
            self._finish(state, on_due(state, self.now, models.churn, self.cfg, models.loyalty, self.act))
        return step

    def _finish(self, state: UserState, step: Step) -> None:
        for example in churn_examples(state.user_id, step.examples, self.now):  # as the worker sends them
            self.training.add(example)
        for reward in bandit_examples(step.rewards, self.now):  # the bandits' rewards, the same way
            self.training.add(reward)
        step.tally.add(track_actions(state, step.actions, self.cfg))  # no guard rails here: every action goes out
        if self.on_step is not None:
            self.on_step(state, step, self.now)
        self.queue.schedule(state.user_id, step.due_ms)
