"""The closed loop without a broker: the simulated shop through the engine, offers back to it.

The engine runs in the worker's order (:class:`~streams.domain.fold.Fold`); every action
it decides is delivered to the shop ``delivery_delay_ms`` later (as a marketing system
would), and the customers' responses come back as purchases and outcomes. The result has
the measured counts (what ``GET /actions/stats`` would report for the whole shop) and the
event-time clock at the end, to ask the shop for the true uplift of the same matured
decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.bundle import Models
from streams.domain.engine import EngineConfig, Step
from streams.domain.events import Invalid, decode
from streams.domain.fold import Fold, offline_training
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


def closed_loop(shop: Shop, cfg: EngineConfig, delivery_delay_ms: int = 6 * MS_PER_HOUR) -> LoopResult:
    """Run the whole shop through the engine, delivering each action back to the shop."""
    tally = Tally()

    def on_step(state: UserState, step: Step, now: int) -> None:
        tally.add(step.tally)
        for action in step.actions:
            shop.offer(action, now + delivery_delay_ms)

    fold = Fold(cfg, offline_training(lambda: Models.fresh(horizon_days=cfg.churn_horizon_days)), on_step)
    records = 0
    for record in shop.records():
        event = decode(record.topic, encode(record.value) if isinstance(record.value, dict) else record.value)
        if isinstance(event, Invalid):
            continue
        records += 1
        fold.feed(event)
    return LoopResult(tally, fold.now, records)
