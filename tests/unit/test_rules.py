"""The policy file's rules at their triggers, through the engine, with explicit event times."""

from __future__ import annotations

import copy

from models.reco import Interaction

from models.score import Score
from streams.domain.actions import action_id, decode_action, encode_action
from streams.domain.engine import EngineConfig, on_due, on_event
from streams.domain.events import Click, ClickKind, Item, Purchase, Review
from streams.domain.features import features
from streams.domain.items import ItemRecommender, history
from streams.domain.policy_file import DEFAULT_POLICY, Policy, load_policy, load_policy_text
from streams.domain.rules import Decider
from streams.domain.snapshots import UserScores
from streams.domain.state import StateConfig, UserState, touch_item
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, format_ts
from tests.contract import schema_errors

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
POLICY = load_policy_text(DEFAULT_POLICY.read_text().replace("control_share: 0.1", "control_share: 0"), "policy.yaml")
CFG = EngineConfig(churn_horizon_days=30, sweep_days=0, policy=POLICY.lapse_config())


def day(n: float) -> int:
    return T0 + int(n * MS_PER_DAY)


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, x: dict[str, float]) -> Score:
        return Score(self.value, "fixed-1")


class Facts:
    """The customer's row as the worker describes it: real features, a chosen stage and tier."""

    def __init__(self, churn: float = 0.7, stage: str = "active", tier: str = "bronze") -> None:
        self.churn, self.stage, self.tier = churn, stage, tier

    def __call__(self, state: UserState, now: int, churn: Score | None) -> UserScores:
        value = churn.value if churn is not None else self.churn
        return UserScores(
            state.user_id, format_ts(now), features(state, now), {"churn": value, "loyalty_score": 0.5},
            {"churn": churn.version if churn is not None else "fixed-1", "loyalty": "prior"},
            lifecycle_stage=self.stage, segment=2, loyalty_tier=self.tier,  # type: ignore[arg-type]
        )


def decider(facts: Facts | None = None, policy: Policy = POLICY, reco: ItemRecommender | None = None) -> Decider:
    return Decider(policy, facts or Facts(), reco or ItemRecommender())


def purchase(n: float, total: float = 50.0, items: tuple[str, ...] = ("i1",), user: str = "u1") -> Purchase:
    return Purchase(
        event_id=f"{user}-p{n}", user_id=user, ts=day(n), order_id=f"o{n}",
        items=[Item(item_id=i, quantity=1, unit_price=total / len(items)) for i in items], total=total, currency="EUR", channel="web",
    )


def streak(state: UserState, act: Decider, days: list[float], total: float = 50.0) -> list:
    actions = []
    for n in days:
        actions += on_event(state, purchase(n, total), day(n), CFG, act=act).actions
    return actions


def test_the_lapse_coupon_fires_once_per_episode_with_its_full_reason() -> None:
    state, act = UserState("u1"), decider()
    assert [a.reason.rule for a in streak(state, act, [0, 7, 14, 21])] == []  # first purchase: recommendation only
    assert on_due(state, day(34), Fixed(0.9), CFG, act=act).actions == []  # not lapsed yet: max(14, 2 * 7) days
    step = on_due(state, day(35), Fixed(0.9), CFG, act=act)
    [coupon] = step.actions
    assert coupon.kind == "coupon" and coupon.action_id == action_id("u1", "lapsed_after_streak", day(21))
    assert coupon.payload["percent_off"] == 10 and str(coupon.payload["code"]).startswith("RS-")
    assert coupon.expires_at == format_ts(day(49))
    reason = coupon.reason
    assert (reason.rule, reason.trigger, reason.lifecycle_stage, reason.loyalty_tier, reason.segment) == (
        "lapsed_after_streak", "lapse", "active", "bronze", 2)
    assert reason.scores["churn"] == 0.9 and reason.model_versions["churn"] == "fixed-1"
    assert reason.features["purchases"] == 4.0
    assert schema_errors("retention-actions", msgspec_builtins(coupon)) == []
    assert on_due(state, day(36), Fixed(0.9), CFG, act=act).actions == []  # one per episode
    assert state.lapse_acted == day(21)


def msgspec_builtins(action) -> dict:
    import json

    return json.loads(encode_action(action))


def test_below_every_rule_the_lapse_is_checked_again_and_fires_later() -> None:
    state, act = UserState("u1"), decider()
    streak(state, act, [0, 7, 14, 21])
    assert on_due(state, day(35), Fixed(0.3), CFG, act=act).actions == []
    assert state.lapse_acted is None and state.lapse_checked == day(35)
    [coupon] = on_due(state, day(36), Fixed(0.6), CFG, act=act).actions
    assert coupon.ts == format_ts(day(36))


def test_loyal_big_spenders_get_the_tiered_coupon_first() -> None:
    gold, bronze = decider(Facts(tier="gold")), decider(Facts(tier="bronze"))
    for act, total, rule, percent in ((gold, 100.0, "vip_lapsed_after_streak", 20), (gold, 50.0, "lapsed_after_streak", 10),
                                      (bronze, 100.0, "lapsed_after_streak", 10)):
        state = UserState("u1")
        streak(state, act, [0, 7, 14, 21], total)
        [coupon] = on_due(state, day(35), Fixed(0.9), CFG, act=act).actions
        assert (coupon.reason.rule, coupon.payload["percent_off"]) == (rule, percent)


def test_a_negative_review_fires_care_outreach_with_its_priority_and_a_stable_id() -> None:
    state, act = UserState("u1"), decider()
    review = Review(event_id="r1", user_id="u1", ts=day(3), item_id="i1", rating=1, text="broken")
    again = copy.deepcopy(state)
    [care] = on_event(state, review, day(3), CFG, sentiment=-0.8, act=act).actions
    assert care.kind == "care_outreach" and care.payload == {"priority": "high", "topic": "negative review"}
    assert care.reason.rule == "care_after_negative_review" and care.reason.trigger == "negative_review"
    assert care.expires_at == format_ts(day(6))
    assert [a.action_id for a in on_event(again, review, day(3), CFG, sentiment=-0.8, act=act).actions] == [care.action_id]
    assert on_event(state, review, day(3), CFG, sentiment=-0.8, act=act).actions == []  # a duplicate: nothing
    positive = Review(event_id="r2", user_id="u1", ts=day(4), item_id="i1", rating=5, text="great")
    assert on_event(state, positive, day(4), CFG, sentiment=0.8, act=act).actions == []


def test_a_first_purchase_gets_items_bought_with_it_by_others_never_its_own() -> None:
    reco = ItemRecommender()
    act = decider(reco=reco)
    for i, user in enumerate(("a", "b", "c")):  # others bought i1 with i2 (and i3)
        other = UserState(user)
        for item in ("i1", "i2", "i3")[: 2 + (i == 0)]:

            reco.learn(Interaction(user, item, "purchase", day(0)), history(other))
            touch_item(other, item, 3, day(0))
    state = UserState("u1")
    [rec] = on_event(state, purchase(1, items=("i1",)), day(1), CFG, act=act).actions
    assert rec.kind == "recommendation" and rec.reason.rule == "recommend_after_first_purchase"
    items = [entry["item_id"] for entry in rec.payload["items"]]  # type: ignore[union-attr]
    assert items[:2] == ["i2", "i3"] and "i1" not in items
    assert rec.reason.model_versions["reco"] == "cooccurrence+7"
    assert on_event(state, purchase(2, items=("i2",)), day(2), CFG, act=act).actions == []  # not the first any more
    assert state.bought == ["i1", "i2"] and [t.item for t in state.items] == ["i1", "i2"]


def test_an_abandoned_cart_fires_when_the_clock_finalizes_it() -> None:
    reco = ItemRecommender()
    reco.learn(Interaction("x", "i9", "purchase", day(0)), [])
    act = decider(reco=reco)
    state = UserState("u1")
    cart = Click(event_id="c1", user_id="u1", ts=day(1), kind=ClickKind.ADD_TO_CART, item_id="i5")
    assert on_event(state, cart, day(1), CFG, act=act).actions == []
    timeout = StateConfig().cart_timeout_ms + StateConfig().allowed_lateness_ms
    assert on_due(state, day(1) + timeout, Fixed(0.1), CFG, act=act).actions == []  # not yet past it
    [rec] = on_due(state, day(1) + timeout + MS_PER_HOUR, Fixed(0.1), CFG, act=act).actions
    assert rec.reason.rule == "recommend_after_abandoned_cart" and rec.action_id == action_id("u1", "recommend_after_abandoned_cart", 1)
    # too short a history for co-occurrence: the popular items (the cart's own item is not one yet)
    assert [e["item_id"] for e in rec.payload["items"]] == ["i9"]  # type: ignore[union-attr]


def test_the_sweep_recommends_to_at_risk_customers_only() -> None:
    sweep = EngineConfig(churn_horizon_days=30, policy=POLICY.lapse_config())  # daily sweeps
    reco = ItemRecommender()
    reco.learn(Interaction("x", "i4", "purchase", day(0)), [])
    for stage, fired in (("at_risk", ["recommend_when_at_risk"]), ("active", [])):
        act = decider(Facts(churn=0.3, stage=stage), reco=reco)
        state = UserState("u1")
        on_event(state, purchase(0, items=("i1", "i2", "i3")), day(0), sweep, act=act)
        step = on_due(state, day(8), Fixed(0.3), sweep, act=act)  # the first sweep storing a point (horizon / 4 after)
        assert [a.reason.rule for a in step.actions] == fired
        if fired:
            assert step.actions[0].action_id == action_id("u1", "recommend_when_at_risk", day(8))
            assert step.actions[0].payload == {"items": [{"item_id": "i4"}]}  # bought items are never offered


def test_without_a_recommender_or_items_no_recommendation_is_sent_and_actions_round_trip() -> None:
    act = Decider(POLICY, Facts())
    assert on_event(UserState("u1"), purchase(0), day(0), CFG, act=act).actions == []
    review = Review(event_id="r1", user_id="u1", ts=day(3), item_id="i1", rating=1, text="broken")
    [care] = on_event(UserState("u1"), review, day(3), CFG, sentiment=-0.9, act=act).actions
    assert decode_action(encode_action(care)) == care


def test_the_control_share_of_the_file_sets_the_group() -> None:
    act = decider(policy=load_policy(DEFAULT_POLICY))  # 10 % control
    review = lambda u: Review(event_id=f"r-{u}", user_id=u, ts=day(3), item_id="i1", rating=1, text="bad")  # noqa: E731
    groups = [on_event(UserState(u), review(u), day(3), CFG, sentiment=-0.9, act=act).actions[0].group for u in map(str, range(400))]
    assert 20 <= groups.count("control") <= 60
