"""The closed loop without a broker: the simulated shop through the engine, offers back to it.

The engine runs in the worker's order (:class:`~streams.domain.fold.Fold`); every action
it decides is delivered to the shop ``delivery_delay_ms`` later (as a marketing system
would), and the customers' responses come back as purchases and outcomes. The result has
the measured counts (what ``GET /actions/stats`` would report for the whole shop) and the
event-time clock at the end, to ask the shop for the true uplift of the same matured
decisions. Given a policy file, the engine decides by its rules (and bandits,
:class:`~streams.domain.fold.Fold`); else by the built-in lapse rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.bundle import Models
from streams.domain.actions import RetentionAction
from streams.domain.engine import EngineConfig, Step
from streams.domain.events import Heartbeat, Invalid, UserEvent, decode
from streams.domain.fold import Fold, offline_training
from streams.domain.policy_file import Policy
from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_HOUR
from streams.domain.uplift import Tally

from .shop import Shop
from .wire import encode


@dataclass
class LoopResult:
    tally: Tally
    #: The event-time clock at the end (decisions matured by it are in the tally's rates).
    now_ms: int
    records: int
    #: Every action decided, in decision order.
    actions: list[RetentionAction] = field(default_factory=list)
    #: The models the trainer had learned at the end (their bandits' report: ``models.bandits.report()``).
    models: Models | None = None
    #: The events folded in, in order (kept with ``keep_events``: to replay them).
    events: list[UserEvent | Heartbeat] = field(default_factory=list)


def closed_loop(
    shop: Shop, cfg: EngineConfig, delivery_delay_ms: int = 6 * MS_PER_HOUR, policy: Policy | None = None,
    keep_events: bool = False,
) -> LoopResult:
    """Run the whole shop through the engine, delivering each action back to the shop."""
    tally = Tally()
    actions: list[RetentionAction] = []

    def on_step(state: UserState, step: Step, now: int) -> None:
        tally.add(step.tally)
        for action in step.actions:
            actions.append(action)
            shop.offer(action, now + delivery_delay_ms)

    fold = Fold(cfg, offline_training(lambda: Models.fresh(horizon_days=cfg.churn_horizon_days)), on_step, policy)
    records = 0
    events: list[UserEvent | Heartbeat] = []
    for record in shop.records():
        event = decode(record.topic, encode(record.value) if isinstance(record.value, dict) else record.value)
        if isinstance(event, Invalid):
            continue
        records += 1
        fold.feed(event)
        if keep_events:
            events.append(event)
    return LoopResult(tally, fold.now, records, actions, fold.training.trainer.models, events)
