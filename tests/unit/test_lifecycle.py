"""Lifecycle stages, one rule at a time, with explicit event times (no broker)."""

from __future__ import annotations

import pytest

from streams.domain.events import Click, ClickKind, Item, Purchase, UserEvent
from streams.domain.features import features
from streams.domain.lifecycle import LifecycleConfig, Stage, last_comeback, lifecycle_stage
from streams.domain.state import StateConfig, UserState, apply_event
from streams.domain.timestamps import MS_PER_DAY

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CFG = LifecycleConfig()
LOW = 0.1  # a churn score below every threshold


def day(n: float) -> int:
    return T0 + int(n * MS_PER_DAY)


def buy(n: float) -> Purchase:
    return Purchase(event_id=f"p{n}", user_id="u", ts=day(n), order_id=f"o{n}",
                    items=[Item(item_id="i", quantity=1, unit_price=20.0)], total=20.0, currency="EUR", channel="web")


def visit(n: float) -> Click:
    return Click(event_id=f"c{n}", user_id="u", ts=day(n), kind=ClickKind.PAGE_VIEW, session_id=f"s{n}")


def user(*events: UserEvent) -> UserState:
    """The state after ``events``, each folded at a clock that has just reached it."""
    state = UserState("u")
    for event in events:
        apply_event(state, event, event.ts, StateConfig())
    return state


def stage(state: UserState, at_day: float, churn: float = LOW, cfg: LifecycleConfig = CFG) -> Stage:
    now = day(at_day)
    return lifecycle_stage(state, now, features(state, now), churn, cfg)


def test_new_until_the_tenure_reaches_new_days_whatever_else() -> None:
    state = user(visit(0), buy(1))
    assert stage(state, 29.9) is Stage.NEW
    assert stage(state, 29.9, churn=0.99) is Stage.NEW
    assert stage(state, 30.0) is Stage.ACTIVE  # one purchase, 29 days ago: usual gap 30 assumed, at risk at 60


def test_active_loyal_at_risk_and_churned_by_recency_against_the_usual_gap() -> None:
    state = user(*[buy(n) for n in (0, 10, 20, 30, 40)])  # usual gap 10 days
    assert stage(state, 45) is Stage.LOYAL  # 5 purchases in 90 days
    assert stage(state, 59.9) is Stage.LOYAL
    assert stage(state, 60) is Stage.AT_RISK  # 20 days = 2 usual gaps (more than 14 days)
    assert stage(state, 99.9) is Stage.AT_RISK
    assert stage(state, 100) is Stage.CHURNED  # 60 days (more than 4 gaps) and idle for 60


def test_a_customer_still_browsing_is_at_risk_not_churned() -> None:
    state = user(*[buy(n) for n in (0, 10, 20, 30, 40)], visit(95))
    assert stage(state, 105) is Stage.AT_RISK  # 65 days without a purchase, but seen 10 days ago
    assert stage(state, 109) is Stage.CHURNED  # idle for 14 days


def test_the_gap_rule_has_floors_in_days() -> None:
    state = user(visit(0), *[buy(n) for n in (30, 31, 32, 33, 34)])  # a daily buyer
    assert stage(state, 47.9) is Stage.LOYAL
    assert stage(state, 48) is Stage.AT_RISK  # 14 days, not 2 days
    assert stage(state, 93.9) is Stage.AT_RISK
    assert stage(state, 94) is Stage.CHURNED  # 60 days, not 4 days


def test_a_high_churn_score_alone_makes_a_customer_at_risk() -> None:
    state = user(*[buy(n) for n in (0, 10, 20, 30, 40)])
    assert stage(state, 45, churn=0.79) is Stage.LOYAL
    assert stage(state, 45, churn=0.8) is Stage.AT_RISK


def test_active_when_buying_but_not_enough_for_loyal() -> None:
    state = user(buy(0), buy(25))  # two purchases, usual gap 25
    assert stage(state, 40) is Stage.ACTIVE
    assert stage(state, 75) is Stage.AT_RISK  # 50 days = 2 gaps


def test_reactivated_after_a_purchase_that_ends_an_at_risk_gap_then_loyal() -> None:
    state = user(*[buy(n) for n in (0, 10, 20, 30)])
    assert stage(state, 70) is Stage.AT_RISK
    state = user(*[buy(n) for n in (0, 10, 20, 30, 70)])  # 40 days = 4 gaps of 10: a comeback
    assert last_comeback(state) == day(70)
    assert stage(state, 71) is Stage.REACTIVATED
    state = user(*[buy(n) for n in (0, 10, 20, 30, 70, 80)])  # buying again does not end it
    assert stage(state, 99.9) is Stage.REACTIVATED
    assert stage(state, 100) is Stage.LOYAL  # 30 days after the comeback; 4 purchases in the last 90 days (13 weeks)
    assert stage(state, 100, cfg=LifecycleConfig(loyal_min_purchases_90d=5)) is Stage.ACTIVE


def test_a_gap_shorter_than_the_at_risk_wait_is_no_comeback() -> None:
    state = user(*[buy(n) for n in (0, 10, 20, 30, 49)])  # 19 days < 2 gaps of 10
    assert last_comeback(state) is None
    assert stage(state, 50) is Stage.LOYAL


def test_a_late_purchase_inside_the_gap_undoes_the_comeback_whatever_the_arrival_order() -> None:
    in_order = user(*[buy(n) for n in (0, 10, 20, 30, 48, 70)])  # 18 and 22 days: below 2 usual gaps each time
    late = user(*[buy(n) for n in (0, 10, 20, 30, 70)])
    assert stage(late, 71) is Stage.REACTIVATED
    apply_event(late, buy(48), day(71), StateConfig(allowed_lateness_ms=30 * MS_PER_DAY))
    assert stage(late, 71) is stage(in_order, 71) is Stage.LOYAL
    assert last_comeback(late) is None


def test_the_first_comeback_after_a_single_purchase_uses_the_default_gap() -> None:
    state = user(visit(0), buy(0), buy(59))
    assert last_comeback(state) is None  # 59 days < 2 default gaps of 30
    state = user(visit(0), buy(0), buy(60))
    assert last_comeback(state) == day(60)
    assert stage(state, 61) is Stage.REACTIVATED


def test_thresholds_come_from_the_config() -> None:
    state = user(*[buy(n) for n in (0, 10, 20, 30, 40)])
    assert stage(state, 45, cfg=LifecycleConfig(loyal_min_purchases_90d=6)) is Stage.ACTIVE
    assert stage(state, 45, cfg=LifecycleConfig(new_days=60)) is Stage.NEW
    assert stage(state, 60, cfg=LifecycleConfig(at_risk_gap_factor=3)) is Stage.LOYAL


def test_settings_expose_every_threshold_with_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import fields

    from streams.runtime.settings import Settings

    assert Settings().lifecycle == LifecycleConfig()
    for f in fields(LifecycleConfig):
        assert f"lifecycle_{f.name}" in Settings.model_fields
    monkeypatch.setenv("RETENTION_LIFECYCLE_REACTIVATED_DAYS", "7")
    assert Settings().lifecycle.reactivated_days == 7.0
