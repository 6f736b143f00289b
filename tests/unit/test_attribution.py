"""Attribution of purchases and outcomes to retention decisions, and the uplift interval maths."""

from __future__ import annotations

import itertools
import math
import random

import msgspec
import pytest

from streams.domain.attribution import AttributionConfig, awaiting_of, mature, next_maturity, on_outcome, on_purchase, track
from streams.domain.engine import EngineConfig, on_due, on_event, track_actions
from streams.domain.events import Item, Outcome, OutcomeKind, Purchase
from streams.domain.policy import PolicyConfig
from streams.domain.state import Awaiting, UserState, dump_state, load_state
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR
from streams.domain.uplift import Counts, Tally, compare, dump_tally, load_tally, newcombe, report, total, wilson, z_for
from tests.unit.test_engine import Fixed

T0 = 1_767_225_600_000
CFG = AttributionConfig(window_ms=14 * MS_PER_DAY, lateness_ms=MS_PER_HOUR)


def day(n: float) -> int:
    return T0 + int(n * MS_PER_DAY)


def decision(aid: str, n: float, group: str = "treatment", kind: str = "coupon", rule: str = "r", code: str | None = None) -> Awaiting:
    return Awaiting(aid, day(n), kind, rule, group, code)


def tracked(*decisions: Awaiting) -> tuple[UserState, Tally]:
    state, tally = UserState("u1"), Tally()
    for d in decisions:
        track(state, d, CFG, tally)
    return state, tally


def test_a_purchase_inside_the_window_converts_each_waiting_decision_once() -> None:
    state, tally = tracked(decision("a", 0), decision("b", 5, group="control"), decision("c", 20))
    on_purchase(state, day(0), None, None, CFG)  # at the decision's own time: not after it
    assert [a.converted for a in state.awaiting] == [False, False, False]
    on_purchase(state, day(10), None, None, CFG)
    on_purchase(state, day(11), None, None, CFG)  # a second purchase converts nothing twice
    assert [a.converted for a in state.awaiting] == [True, True, False]
    mature(state, day(40), CFG, tally)
    assert tally.decisions["coupon|r|treatment"] == Counts(decided=2, matured=2, converted=1)
    assert tally.decisions["coupon|r|control"] == Counts(decided=1, matured=1, converted=1)
    assert state.awaiting == []


def test_the_window_ends_at_decision_plus_window_inclusive() -> None:
    state, _ = tracked(decision("a", 0))
    on_purchase(state, day(14) + 1, None, None, CFG)
    assert not state.awaiting[0].converted
    on_purchase(state, day(14), None, None, CFG)
    assert state.awaiting[0].converted


def test_redemption_by_action_id_or_coupon_code_of_that_decision_only() -> None:
    state, tally = tracked(decision("a", 0, code="RS-A"), decision("b", 0, kind="recommendation"), decision("c", 1, code="RS-C"))
    on_purchase(state, day(3), None, "RS-A", CFG)
    on_purchase(state, day(4), "b", None, CFG)
    assert [(a.action_id, a.redeemed) for a in state.awaiting] == [("a", True), ("b", True), ("c", False)]
    mature(state, day(20), CFG, tally)
    assert tally.decisions["coupon|r|treatment"] == Counts(decided=2, matured=2, converted=2, redeemed=1)
    assert tally.decisions["recommendation|r|treatment"] == Counts(decided=1, matured=1, converted=1, redeemed=1)


def test_decisions_mature_after_window_plus_lateness_and_a_late_purchase_counts_in_any_order() -> None:
    state, tally = tracked(decision("a", 0))
    assert next_maturity(state, CFG) == day(14) + MS_PER_HOUR
    mature(state, day(14) + MS_PER_HOUR - 1, CFG, tally)
    assert tally.decisions["coupon|r|treatment"].matured == 0
    on_purchase(state, day(13.9), None, None, CFG)  # arrives after the window, within the lateness
    mature(state, day(14) + MS_PER_HOUR, CFG, tally)
    assert tally.decisions["coupon|r|treatment"] == Counts(decided=1, matured=1, converted=1)
    assert next_maturity(state, CFG) is None


def test_tracking_is_once_per_action_id_and_bounded() -> None:
    state, tally = tracked(decision("a", 0), decision("a", 0))
    assert len(state.awaiting) == 1 and tally.decisions["coupon|r|treatment"].decided == 1
    small = AttributionConfig(window_ms=CFG.window_ms, max_awaiting=3)
    state, tally = UserState("u1"), Tally()
    for i in range(5):
        track(state, decision(f"a{i}", i), small, tally)
    assert [a.action_id for a in state.awaiting] == ["a2", "a3", "a4"]
    assert tally.decisions["coupon|r|treatment"] == Counts(decided=5, evicted=2)


def test_outcomes_are_counted_for_the_kind_of_the_decision_they_name() -> None:
    state, tally = tracked(decision("a", 0, kind="care_outreach"))
    assert on_outcome(state, "a", "opened", tally)
    assert not on_outcome(state, "zzz", "delivered", tally)
    assert tally.outcomes == {"care_outreach|opened": 1, "unknown|delivered": 1}


def purchase(n: float, eid: str, code: str | None = None) -> Purchase:
    return Purchase(event_id=eid, user_id="u1", ts=day(n), order_id=eid, items=[Item(item_id="i", quantity=1, unit_price=5.0)],
                    total=5.0, currency="EUR", channel="web", coupon_code=code)


def test_the_engine_attributes_the_decisions_that_went_out_and_ignores_redelivered_events() -> None:
    cfg = EngineConfig(churn_horizon_days=30, sweep_days=0, policy=PolicyConfig(control_share=0.0))
    state, steps = UserState("u1"), []
    for n in (0, 7, 14, 21):
        steps.append(on_event(state, purchase(n, f"p{n}"), day(n), cfg))
    fired = on_due(state, day(35), Fixed(0.9), cfg)
    action = fired.actions[0]
    assert state.awaiting == []  # decided, not yet sent: the guard rails may still suppress it
    fired.tally.add(track_actions(state, fired.actions, cfg))  # it went out
    assert fired.tally.decisions == {"coupon|lapsed_after_streak|treatment": Counts(decided=1)}
    assert state.awaiting == [awaiting_of(action)] and state.awaiting[0].code == action.payload["code"]
    assert not track_actions(state, fired.actions, cfg)  # sent again (a redelivery): tracked once
    # the same decision again (a due check re-run after a crash) is not tracked twice
    again = UserState("u1")
    for n in (0, 7, 14, 21):
        on_event(again, purchase(n, f"p{n}"), day(n), cfg)
    assert on_due(again, day(35), Fixed(0.9), cfg).actions == [action]
    code = action.payload["code"]
    steps.append(on_event(state, purchase(38, "p38", code), day(38), cfg))
    steps.append(on_event(state, purchase(38, "p38", code), day(38), cfg))  # a re-sent copy
    outcome = Outcome(action_id=action.action_id, user_id="u1", ts=day(36), outcome=OutcomeKind.OPENED)
    steps += [on_event(state, outcome, day(38), cfg), on_event(state, outcome, day(38), cfg)]
    assert fired.due_ms is not None and fired.due_ms <= day(35) + cfg.attribution.window_ms + cfg.attribution.lateness_ms
    later = on_due(state, day(49) + MS_PER_HOUR, Fixed(0.0), cfg)
    tally = total([s.tally for s in steps] + [fired.tally, later.tally])
    assert tally.decisions == {"coupon|lapsed_after_streak|treatment": Counts(decided=1, matured=1, converted=1, redeemed=1)}
    assert tally.outcomes == {"coupon|opened": 1}


def test_states_encoded_before_attribution_still_load() -> None:
    state = UserState("u1")
    track(state, decision("a", 0), CFG, Tally())
    fields = msgspec.msgpack.decode(dump_state(state))
    before = [f.name for f in msgspec.structs.fields(UserState)].index("awaiting")  # the format before it
    assert load_state(msgspec.msgpack.encode(fields[:before])).awaiting == []
    assert load_state(dump_state(state)).awaiting == state.awaiting


def test_tallies_add_up_and_round_trip() -> None:
    a, b = Tally(), Tally()
    a.counts("coupon", "r", "treatment").add(Counts(3, 2, 1, 1, 0))
    a.outcome("coupon", "opened")
    b.counts("coupon", "r", "treatment").add(Counts(1, 1, 1, 0, 1))
    b.outcome("coupon", "opened", 2)
    both = load_tally(dump_tally(total([a, b])))
    assert both.decisions == {"coupon|r|treatment": Counts(4, 3, 2, 1, 1)} and both.outcomes == {"coupon|opened": 3}


# --- the interval maths: published values, and coverage ------------------------------------


@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (score, no continuity correction)
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_published_values(x: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson(x, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score)
    [(56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090),
     (5, 56, 0, 29, -0.0381, 0.1926), (0, 10, 0, 20, -0.1611, 0.2775), (10, 10, 0, 20, 0.6791, 1.0000)],
)
def test_newcombe_interval_matches_published_values(x1: int, n1: int, x2: int, n2: int, low: float, high: float) -> None:
    d, lo, hi = newcombe(x1, n1, x2, n2)
    assert d == pytest.approx(x1 / n1 - x2 / n2)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_z_and_coverage_of_the_difference_interval_near_nominal() -> None:
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6) and z_for(0.9) == pytest.approx(1.644854, abs=1e-6)
    rng = random.Random(5)
    p1, p2, n1, n2, runs = 0.3, 0.12, 60, 50, 2000
    hits = 0
    for _ in range(runs):
        x1 = sum(rng.random() < p1 for _ in range(n1))
        x2 = sum(rng.random() < p2 for _ in range(n2))
        _, lo, hi = newcombe(x1, n1, x2, n2)
        hits += lo <= p1 - p2 <= hi
    assert 0.93 <= hits / runs <= 0.975


def test_report_per_kind_and_rule_with_rates_only_of_matured_decisions() -> None:
    t = Tally()
    t.counts("coupon", "lapse", "treatment").add(Counts(decided=12, matured=10, converted=4, redeemed=3))
    t.counts("coupon", "vip", "treatment").add(Counts(decided=10, matured=10, converted=6))
    t.counts("coupon", "lapse", "control").add(Counts(decided=5, matured=4, converted=1))
    t.counts("care_outreach", "bad_review", "treatment").add(Counts(decided=3, matured=3, converted=1))
    t.outcome("coupon", "delivered", 20)
    r = report(t, confidence=0.9)
    coupon = r["by_kind"]["coupon"]
    assert coupon["treatment"]["matured"] == 20 and coupon["treatment"]["conversion_rate"] == 0.5
    assert coupon["control"]["conversion_rate"] == 0.25 and coupon["treatment"]["decisions"] == 22
    d, lo, hi = newcombe(10, 20, 1, 4, z_for(0.9))
    assert coupon["uplift"] == {"estimate": round(d, 6), "low": round(lo, 6), "high": round(hi, 6), "confidence": 0.9,
                                "method": "newcombe", "design_effect": {"treatment": 1.0, "control": 1.0}}  # no per-customer sums
    assert r["by_rule"]["coupon"]["vip"]["uplift"] is None  # no control decision of that rule yet
    assert r["by_rule"]["coupon"]["lapse"]["treatment"]["redemption_rate"] == 0.3
    assert r["by_kind"]["care_outreach"]["uplift"] is None and r["outcomes"] == {"coupon": {"delivered": 20}}
    assert compare(Counts(), Counts())["treatment"]["conversion_rate"] is None
