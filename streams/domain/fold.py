"""Events through the engine in event-time order, as one partition of a worker does it.

The worker's order, without a broker: the partition's clock reaches a user event first,
:func:`~streams.domain.engine.on_event` folds it in, and then the users due by the clock
get :func:`~streams.domain.engine.on_due`; a heartbeat only moves the clock. Matured labels
are learned by the learners the way the worker learns them. Scripts that measure the
state or the models (``scripts/measure-state``, ``scripts/measure-segments``) and the
ordered replay of the tests drive the engine through it.

>>> from streams.domain.events import Heartbeat
>>> fold = Fold(EngineConfig(), OnlineLearners())
>>> fold.feed(Heartbeat(ts=5)) is None, fold.now
(True, 5)
"""

from __future__ import annotations

from collections.abc import Callable

from models.online import OnlineLearners
from streams.domain.engine import EngineConfig, Step, on_due, on_event, track_actions
from streams.domain.events import Heartbeat, UserEvent
from streams.domain.features import as_dict
from streams.domain.schedule import DueQueue
from streams.domain.state import Applied, UserState

#: Called after every step of a user (an event folded in or a due check), with the clock.
OnStep = Callable[[UserState, Step, int], None]


class Fold:
    """One event-time clock, the users' states and their due queue."""

    def __init__(self, cfg: EngineConfig, learners: OnlineLearners, on_step: OnStep | None = None) -> None:
        self.cfg = cfg
        self.learners = learners
        self.on_step = on_step
        self.states: dict[str, UserState] = {}
        self.queue = DueQueue()
        self.now = 0

    def feed(self, event: UserEvent | Heartbeat) -> Step | None:
        """Fold one event in (its step) or, for a heartbeat, only move the clock (None).
        ``event`` carries no review sentiment (the scripts measure without the text model)."""
        self.now = max(self.now, event.ts)
        step = None
        if not isinstance(event, Heartbeat):
            state = self.states.setdefault(event.user_id, UserState(event.user_id))
            step = on_event(state, event, self.now, self.cfg, None, self.learners.churn, self.learners.loyalty)
            if step.applied is not Applied.DUPLICATE:  # a re-sent copy changes nothing
                self._finish(state, step)
        for user_id in self.queue.pop_due(self.now):
            state = self.states[user_id]
            self._finish(state, on_due(state, self.now, self.learners.churn, self.cfg, self.learners.loyalty))
        return step

    def _finish(self, state: UserState, step: Step) -> None:
        for m in step.examples:  # as the worker learns them
            self.learners.observe(as_dict(m.features), m.churned, m.days, m.churn_p, m.loyalty_p)
        step.tally.add(track_actions(state, step.actions, self.cfg))  # no guard rails here: every action goes out
        if self.on_step is not None:
            self.on_step(state, step, self.now)
        self.queue.schedule(state.user_id, step.due_ms)
