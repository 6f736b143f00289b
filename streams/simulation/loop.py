"""The closed loop without a broker: the simulated shop through the engine, offers back to it.

The engine runs in the worker's order (:class:`~streams.domain.fold.Fold`); every action
it decides is delivered to the shop ``delivery_delay_ms`` later (as a marketing system
would), and the customers' responses come back as purchases and outcomes. The result has
the measured counts (what ``GET /actions/stats`` would report for the whole shop) and the
event-time clock at the end, to ask the shop for the true uplift of the same matured
decisions. Given a policy file, the engine decides by its rules, bandits and guard rails
(:class:`PolicyRules`); else by the built-in lapse rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from models.bundle import Models
from models.reco import interactions
from models.score import Score
from streams.domain.actions import RetentionAction
from streams.domain.engine import EngineConfig, Step
from streams.domain.events import Heartbeat, Invalid, UserEvent, decode
from streams.domain.fold import Fold, offline_training
from streams.domain.guards import BudgetState, admit, coupon_value_cents, partition_limits
from streams.domain.items import ItemRecommender, history
from streams.domain.loyalty import LoyaltyConfig, LoyaltyRanks
from streams.domain.policy_file import Policy
from streams.domain.rules import Candidate, Decider
from streams.domain.snapshots import UserScores, describe
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
    #: Every action that went out (past the guard rails), in decision order.
    actions: list[RetentionAction] = field(default_factory=list)
    #: The models the trainer had learned at the end (their bandits' report: ``models.bandits.report()``).
    models: Models | None = None
    #: The events folded in, in order (kept with ``keep_events``: to replay them).
    events: list[UserEvent | Heartbeat] = field(default_factory=list)


class PolicyRules:
    """The policy file's rules in the loop, as one worker with one partition runs them: the
    customer's row from the fold's models (features without the RFM population; the
    loyalty ranks of the rows described so far), the item recommender learning every
    touch, and the guard rails (cooldowns, budgets) before an action goes out."""

    def __init__(self, policy: Policy, loyalty: LoyaltyConfig = LoyaltyConfig()) -> None:
        self.policy = policy
        self.loyalty = loyalty
        self.ranks = LoyaltyRanks(capacity=loyalty.capacity, current_days=loyalty.current_days)
        self.reco = ItemRecommender()
        self.budget = BudgetState()
        self.limits = partition_limits(policy.guards, 0, 1)
        self.coupons = {rule.name: rule.coupon for rule in policy.rules if rule.coupon is not None}
        self.decide = Decider(policy, self.describe, self.reco, bandits=lambda now: self.models(now).bandits,
                              uplift=lambda now: self.models(now).uplift)
        self.models: Callable[[int], Models] = lambda now: Models.fresh()
        self.suppressed = 0
        #: Only a policy that recommends needs the item recommender to learn every touch (a
        #: fifth of the closed loop's time: `retention evaluate-targeting` runs coupon-only policies).
        self.recommends = any(rule.recommendation is not None for rule in policy.rules)

    def describe(self, state: UserState, now: int, churn: Score | None) -> UserScores:
        return describe(state, now, self.models(now), self.ranks, self.loyalty.tiers, churn)[0]

    def __call__(self, trigger: str, state: UserState, now_ms: int, episode: int, churn: Score | None = None) -> list[RetentionAction]:
        return self.decide(trigger, state, now_ms, episode, churn)

    def before(self, state: UserState, event: UserEvent) -> Callable[[], None]:
        touches = interactions(event) if self.recommends else []
        past = history(state) if touches else []  # each touch is learned with what came before

        def learn() -> None:
            for touch in touches:
                self.reco.learn(touch, past)

        return learn

    def admit(self, state: UserState, action: RetentionAction, now_ms: int) -> bool:
        coupon = self.coupons.get(action.reason.rule) if action.kind == "coupon" else None
        value = coupon_value_cents(coupon, state) if coupon is not None else 0
        allowed = admit(action.kind, action.action_id, value, state, self.budget, now_ms, self.limits).allowed
        self.suppressed += not allowed
        return allowed


def closed_loop(
    shop: Shop, cfg: EngineConfig, delivery_delay_ms: int = 6 * MS_PER_HOUR, policy: Policy | None = None,
    keep_events: bool = False, on_candidate: Callable[[Candidate], None] | None = None,
) -> LoopResult:
    """Run the whole shop through the engine, delivering each action back to the shop
    (``policy``: its rules, bandits and guard rails decide, as on a worker; without it, the
    engine's own lapse coupon). ``on_candidate``: told of every customer an uplift-targeted
    rule looks at (``streams.simulation.targeting``)."""
    tally = Tally()
    actions: list[RetentionAction] = []

    def on_step(state: UserState, step: Step, now: int) -> None:
        tally.add(step.tally)
        for action in step.actions:
            actions.append(action)
            shop.offer(action, now + delivery_delay_ms)

    rules = PolicyRules(policy) if policy is not None else None
    if rules is not None:
        rules.decide.on_candidate = on_candidate
    fold = Fold(cfg, offline_training(lambda: Models.fresh(horizon_days=cfg.churn_horizon_days)), on_step, rules)
    if rules is not None:
        rules.models = fold.training.models_at
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
