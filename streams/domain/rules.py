"""The policy file's rules at their triggers: which actions a customer gets, and why.

The engine (:mod:`streams.domain.engine`) calls a :class:`Decider` at each trigger of a
user: ``lapse`` (the lapse check of a streak customer), ``negative_review``,
``abandoned_cart``, ``first_purchase`` (at the event) and ``sweep`` (the periodic scoring).
For the trigger, the rules are read in file order and the **first rule of each action kind
whose ``when`` holds fires**: tiered offers (by loyalty tier or order value) are written
before the base offer of the same trigger. A group of one trigger and kind marked
``choose: by: bandit`` in the policy file fires instead the eligible rule (``when`` holds)
that its contextual bandit chooses (:mod:`models.bandit`, the bandit of the model snapshot
the decision's event time selects); the reason's ``chosen`` says so, with the arms, the
bandit's version, its estimate and the context it saw.

What a rule looks at is the customer's row as published on ``user-scores``
(:class:`~streams.domain.snapshots.UserScores`: scores, model versions, lifecycle stage,
loyalty tier, features), which the caller computes (``describe``): the worker's loyalty
ranking and segment model live in the worker. The action's ``reason`` carries that row's
scores, model versions and model inputs (the churn model's features), the trigger, stage,
tier and segment.

Action ids are deterministic: (user, rule, episode), the episode being the trigger's own
event time or count (see the engine), so a decision re-made after a redelivery or a
restart has the same id. The guard rails (:mod:`streams.domain.guards`) run afterwards,
in the worker, on each action.

>>> from streams.domain.policy_file import DEFAULT_POLICY, load_policy
>>> from streams.domain.snapshots import UserScores
>>> from streams.domain.features import features
>>> row = UserScores("u1", "2026-01-01T00:00:00.000Z", features(UserState("u1"), 0), {"churn": 0.7},
...                  {"churn": "recency-prior"}, lifecycle_stage="at_risk")
>>> decide = Decider(load_policy(DEFAULT_POLICY), lambda state, now, churn: row)
>>> [a.kind for a in decide("negative_review", UserState("u1"), 0, episode=0)]
['care_outreach']
>>> decide("negative_review", UserState("u1"), 0, episode=0)[0].payload
{'priority': 'high', 'topic': 'negative review'}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b

import msgspec

from models.bandit import Bandits, context_of, decision_seed
from models.score import Score
from models.uplift import UpliftModels
from streams.domain.actions import Chosen, Reason, RetentionAction, Targeting, action_id, coupon_code, experiment_group
from streams.domain.features import behaviour_features, model_inputs
from streams.domain.policy_file import Choose, Policy, Rule, When
from streams.domain.snapshots import UserScores
from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_DAY, format_ts

#: The customer's row at ``now`` (``churn``: a score already computed at this point, or None).
Describe = Callable[[UserState, int, Score | None], UserScores]


@dataclass(frozen=True)
class Picks:
    """A recommender's answer: item ids, best first, and the model version that chose them."""

    items: list[str]
    version: str


#: Up to ``k`` items for this customer at ``now`` (none already bought).
Recommend = Callable[[UserState, int, int], Picks]
#: The bandits of the model snapshot that scores event time ``now``.
BanditsAt = Callable[[int], Bandits]
#: The uplift models of the snapshot that scores event time ``now``.
UpliftAt = Callable[[int], UpliftModels]


@dataclass(frozen=True)
class Candidate:
    """A customer an uplift-targeted rule looked at (its ``when`` held), whether or not it
    fired: what the targeting evaluation ranks (``streams.simulation.targeting``)."""

    user_id: str
    at: int
    rule: str
    kind: str
    churn: float
    predicted: float | None
    explored: bool
    picked: bool
    features: dict[str, float]
    #: The browsing candidates of ``streams.domain.features.BEHAVIOUR`` (measured, not model inputs).
    behaviour: dict[str, float] = field(default_factory=dict)


def explore_draw(user_id: str, rule: str, episode: int, now_ms: int) -> float:
    """A uniform draw in [0, 1) seeded by the decision and its time (not by any model or
    global state), so a worker, a restarted worker and a replay explore alike; the time is
    in it because a rule can look at the same episode again (the daily lapse re-check).

    >>> 0.0 <= explore_draw("u1", "r", 5, 7) < 1.0, explore_draw("u1", "r", 5, 7) == explore_draw("u1", "r", 5, 8)
    (True, False)
    """
    digest = blake2b(f"{user_id}\x1f{rule}\x1f{episode}\x1f{now_ms}".encode(), digest_size=8, person=b"explore").digest()
    return int.from_bytes(digest, "big") / 2**64


def matches(when: When, row: UserScores, state: UserState) -> bool:
    """Every condition given holds for this customer (absent conditions hold).

    >>> row = UserScores("u", "t", {}, {"churn": 0.4}, {}, lifecycle_stage="at_risk", loyalty_tier="gold")
    >>> matches(When(stages=("at_risk",), churn_below=0.5, loyalty_tiers=("gold",)), row, UserState("u"))
    True
    >>> matches(When(min_order_value=20), row, UserState("u", purchases=2, spend_cents=3000))
    False
    """
    churn = row.scores.get("churn", 0.0)
    if when.stages is not None and row.lifecycle_stage not in when.stages:
        return False
    if when.churn_at_least is not None and churn < when.churn_at_least:
        return False
    if when.churn_below is not None and churn >= when.churn_below:
        return False
    if when.min_purchases is not None and state.purchases < when.min_purchases:
        return False
    if when.loyalty_tiers is not None and row.loyalty_tier not in when.loyalty_tiers:
        return False
    if when.min_order_value is not None:
        if state.purchases <= 0 or state.spend_cents / state.purchases < when.min_order_value * 100:
            return False
    return True


class Decider:
    """The policy's rules, callable by the engine at a trigger (see the module docstring).
    ``bandits``: the bandits of the snapshot at an event time (without it, untrained ones)."""

    def __init__(self, policy: Policy, describe: Describe, recommend: Recommend | None = None,
                 bandits: BanditsAt | None = None, uplift: UpliftAt | None = None) -> None:
        self.policy = policy
        self.describe = describe
        self.recommend = recommend
        fresh = Bandits()
        self.bandits: BanditsAt = bandits or (lambda now: fresh)
        untrained = UpliftModels()
        self.uplift: UpliftAt = uplift or (lambda now: untrained)
        self.uplift_kinds = policy.uplift_kinds
        #: Told of every customer an uplift-targeted rule looks at (the targeting evaluation's log).
        self.on_candidate: Callable[[Candidate], None] | None = None
        self.triggers = frozenset(rule.trigger for rule in policy.rules)

    def __call__(
        self, trigger: str, state: UserState, now_ms: int, episode: int, churn: Score | None = None
    ) -> list[RetentionAction]:
        """The actions the trigger's rules fire for this customer at ``now_ms``."""
        if trigger not in self.triggers:
            return []  # nothing to look at: the row is not even computed
        row = self.describe(state, now_ms, churn)
        fired: dict[str, RetentionAction] = {}
        chosen: set[str] = set()  # kinds a bandit chose for (once, whatever came of it)
        for rule in self.policy.rules:
            if rule.trigger != trigger or rule.action in fired or rule.action in chosen or not matches(rule.when, row, state):
                continue
            group = self.policy.bandit_for(trigger, rule.action)
            if group is not None:
                chosen.add(rule.action)
                action = self.choose(group, state, now_ms, episode, row)
            else:
                fire, targeting = self.target(rule, state, now_ms, episode, row)
                if not fire:
                    continue  # the uplift model does not pick this customer: a later rule of the kind may
                action = self.action(rule, state, now_ms, episode, row, targeting)
            if action is not None:
                fired[rule.action] = action
        return list(fired.values())

    def target(self, rule: Rule, state: UserState, now_ms: int, episode: int, row: UserScores) -> tuple[bool, Targeting | msgspec.UnsetType]:
        """Whether the rule fires for this customer, and the reason's ``uplift`` (UNSET for a
        kind whose uplift the policy does not learn). A ``risk`` rule fires (its ``when``
        held); an ``uplift`` rule when the predicted uplift reaches its threshold and/or the
        top-share cut-off of its candidates, or when the decision's own draw explores."""
        if rule.action not in self.uplift_kinds:
            return True, msgspec.UNSET
        models = self.uplift(now_ms)
        predicted = models.predict(rule.action, model_inputs(row.features))
        shown = None if predicted is None else round(predicted, 4)
        if rule.target != "uplift" or rule.uplift is None:
            return True, Targeting("risk", shown, models.version)
        u = rule.uplift
        explored = explore_draw(state.user_id, rule.name, episode, now_ms) < u.exploration
        cutoff = models.cutoff(rule.name, u.top_share) if u.top_share is not None else None
        picked = predicted is not None and (u.threshold is None or predicted >= u.threshold) and (
            u.top_share is None or (cutoff is not None and predicted >= cutoff))
        if self.on_candidate is not None:
            self.on_candidate(Candidate(state.user_id, now_ms, rule.name, rule.action, row.scores.get("churn", 0.0), predicted,
                                        explored, picked, model_inputs(row.features), behaviour_features(state, now_ms)))
        if not (picked or explored):
            return False, msgspec.UNSET
        return True, Targeting("uplift", shown, models.version, explored=explored, threshold=u.threshold,
                               cutoff=None if cutoff is None else round(cutoff, 4))

    def choose(self, group: Choose, state: UserState, now_ms: int, episode: int, row: UserScores) -> RetentionAction | None:
        """The action of the eligible rule of ``group`` that its bandit chooses."""
        arms = [r for r in self.policy.rules if r.trigger == group.trigger and r.action == group.action and matches(r.when, row, state)]
        x = context_of(row.scores, row.features)
        bandits = self.bandits(now_ms)
        pick = bandits.choose(group.key, [r.name for r in arms], x, group.algorithm, group.exploration,
                              decision_seed(state.user_id, group.key, str(episode)))
        rule = next(r for r in arms if r.name == pick.arm)
        action = self.action(rule, state, now_ms, episode, row, self.target(rule, state, now_ms, episode, row)[1])
        if action is None:
            return None
        versions = {**action.reason.model_versions, "bandit": pick.version}
        trace = Chosen(by="bandit", bandit=group.key, algorithm=group.algorithm, arms=[r.name for r in arms],
                       estimate=round(pick.estimate, 4), bonus=round(pick.bonus, 4), version=pick.version, context=x,
                       gain=group.reward.conversion, cost=round(group.reward.coupon_cost * _share_off(rule), 6))
        return msgspec.structs.replace(action, reason=msgspec.structs.replace(action.reason, model_versions=versions, chosen=trace))

    def action(self, rule: Rule, state: UserState, now_ms: int, episode: int, row: UserScores,
               targeting: Targeting | msgspec.UnsetType = msgspec.UNSET) -> RetentionAction | None:
        """The rule's action for this customer (None: a recommendation with no item to offer)."""
        aid = action_id(state.user_id, rule.name, episode)
        versions = dict(row.model_versions)
        if rule.coupon is not None:
            c = rule.coupon
            payload: dict[str, object] = {"code": coupon_code(aid)}
            if c.percent is not None:
                payload["percent_off"] = c.percent
            else:
                payload.update(amount_off=c.amount, currency=c.currency)
            valid_days = c.valid_days
        elif rule.recommendation is not None:
            if self.recommend is None:
                return None
            picks = self.recommend(state, now_ms, rule.recommendation.items)
            if not picks.items:
                return None
            payload = {"items": [{"item_id": item} for item in picks.items]}
            versions["reco"] = picks.version
            valid_days = rule.recommendation.valid_days
        else:
            assert rule.care is not None  # the validator requires the kind's section
            payload = {"priority": rule.care.priority}
            if rule.care.topic is not None:
                payload["topic"] = rule.care.topic
            valid_days = rule.care.valid_days
        return RetentionAction(
            action_id=aid,
            user_id=state.user_id,
            ts=format_ts(now_ms),
            kind=rule.action,
            payload=payload,
            reason=Reason(
                rule=rule.name,
                scores={k: round(v, 4) for k, v in row.scores.items()},
                model_versions=versions,
                features=model_inputs(row.features),  # what the churn model looked at, as the lapse rule reports
                trigger=rule.trigger,
                lifecycle_stage=row.lifecycle_stage,
                loyalty_tier=row.loyalty_tier,
                segment=row.segment,
                uplift=targeting,
            ),
            group=experiment_group(state.user_id, self.policy.control_share, kind=rule.action, by=self.policy.control_by),
            expires_at=format_ts(now_ms + int(valid_days * MS_PER_DAY)),
        )


def rule_named(policy: Policy, name: str) -> Rule | None:
    """The policy's rule of this name (an action's ``reason.rule``)."""
    return next((r for r in policy.rules if r.name == name), None)



def _share_off(rule: Rule) -> float:
    """A coupon's share off (percent / 100; an amount coupon: amount / 100, the share of a
    100-unit order); 0 for other kinds."""
    c = rule.coupon
    if c is None:
        return 0.0
    return (c.percent if c.percent is not None else c.amount or 0.0) / 100.0
