"""Guard rails with explicit event times: cooldown, budgets, unsubscribe, checkout,
and that redelivery and restart (state encoded and decoded) never count twice."""

from __future__ import annotations

import msgspec
import pytest

from streams.domain.events import Channel, Click, ClickKind, Item, Outcome, OutcomeKind, Purchase
from streams.domain.guards import (
    BudgetState, GuardLimits, Verdict, admit, check, coupon_value_cents, decode_budget, encode_budget,
    partition_limits, partition_share,
)
from streams.domain.policy_file import DEFAULT_POLICY, Coupon, load_policy
from streams.domain.state import Acted, StateConfig, UserState, apply_event, dump_state, load_state
from streams.domain.timestamps import MS_PER_DAY

T0 = 20_454 * MS_PER_DAY  # 2026-01-01T00:00Z, a UTC day boundary
HOUR = 3_600_000
MIN = 60_000
LIMITS = GuardLimits(
    cooldown_ms={"coupon": 30 * MS_PER_DAY, "recommendation": 7 * MS_PER_DAY, "care_outreach": 14 * MS_PER_DAY},
    checkout_window_ms=30 * MIN,
    count=100,
)


def test_cooldown_holds_within_and_expires_after() -> None:
    user, budget = UserState("u1"), BudgetState()
    assert admit("coupon", "a1", 0, user, budget, T0, LIMITS).allowed
    assert admit("coupon", "a2", 0, user, budget, T0 + 30 * MS_PER_DAY - 1, LIMITS) == Verdict(False, "cooldown")
    # another kind has its own cooldown
    assert admit("recommendation", "r1", 0, user, budget, T0 + MS_PER_DAY, LIMITS).allowed
    assert admit("recommendation", "r2", 0, user, budget, T0 + 8 * MS_PER_DAY, LIMITS).allowed
    assert admit("coupon", "a2", 0, user, budget, T0 + 30 * MS_PER_DAY, LIMITS) == Verdict(True)
    assert user.acted["coupon"] == Acted(T0 + 30 * MS_PER_DAY, "a2")


def test_budget_count_per_kind_and_overall_and_reset_at_next_utc_day() -> None:
    limits = GuardLimits(count=3, count_per_kind={"coupon": 2})
    budget = BudgetState()
    users = [UserState(f"u{i}") for i in range(5)]
    t = T0 + 23 * HOUR
    assert admit("coupon", "c0", 0, users[0], budget, t, limits).allowed
    assert admit("coupon", "c1", 0, users[1], budget, t, limits).allowed
    assert admit("coupon", "c2", 0, users[2], budget, t, limits) == Verdict(False, "budget_count")  # per kind
    assert admit("care_outreach", "o2", 0, users[2], budget, t, limits).allowed
    assert admit("recommendation", "r3", 0, users[3], budget, t, limits) == Verdict(False, "budget_count")  # overall
    assert (budget.count, budget.per_kind["coupon"].count) == (3, 2)
    # one millisecond into the next UTC day: fresh budget
    assert admit("coupon", "c3", 0, users[3], budget, T0 + MS_PER_DAY, limits).allowed
    assert (budget.day, budget.count) == (T0 // MS_PER_DAY + 1, 1)


def test_coupon_value_budget() -> None:
    limits = GuardLimits(count=100, coupon_value_cents=1_000)
    budget = BudgetState()
    assert admit("coupon", "c0", 600, UserState("u0"), budget, T0, limits).allowed
    assert admit("coupon", "c1", 500, UserState("u1"), budget, T0, limits) == Verdict(False, "budget_value")
    assert admit("coupon", "c2", 400, UserState("u2"), budget, T0, limits).allowed  # exactly the limit
    assert budget.per_kind["coupon"].value_cents == 1_000
    assert admit("recommendation", "r0", 0, UserState("u3"), budget, T0, limits).allowed  # value is coupons only


def test_same_action_id_spent_twice_counts_once() -> None:
    limits = GuardLimits(count=1, cooldown_ms={"coupon": 30 * MS_PER_DAY})
    user, budget = UserState("u1"), BudgetState()
    assert admit("coupon", "a1", 500, user, budget, T0, limits) == Verdict(True)
    again = admit("coupon", "a1", 500, user, budget, T0 + MIN, limits)  # redelivered decision
    assert again == Verdict(True, repeat=True)
    assert (budget.count, budget.per_kind["coupon"].value_cents, budget.ids.__len__()) == (1, 500, 1)
    # the budget is full for anything else
    assert admit("coupon", "b1", 0, UserState("u2"), budget, T0 + MIN, limits) == Verdict(False, "budget_count")


def test_repeat_just_after_midnight_still_counts_once() -> None:
    limits = GuardLimits(count=1)
    budget = BudgetState()
    assert admit("coupon", "a1", 0, UserState("u1"), budget, T0 + MS_PER_DAY - 1, limits).allowed
    assert admit("coupon", "a1", 0, UserState("u1"), budget, T0 + MS_PER_DAY + 5, limits) == Verdict(True, repeat=True)
    assert budget.count == 0 and budget.previous_ids
    assert admit("coupon", "b1", 0, UserState("u2"), budget, T0 + MS_PER_DAY + 6, limits) == Verdict(True)


def test_restart_from_encoded_states_does_not_double_spend() -> None:
    """Both tables stored, the worker killed, a fresh one decodes them and re-makes the decision."""
    limits = GuardLimits(count=2, cooldown_ms={"coupon": 30 * MS_PER_DAY})
    user, budget = UserState("u1"), BudgetState()
    assert admit("coupon", "a1", 700, user, budget, T0, limits).allowed
    raw_user, raw_budget = dump_state(user), encode_budget(budget)
    user2, budget2 = load_state(raw_user), decode_budget(raw_budget)
    assert budget2 == budget and user2.acted == user.acted
    assert admit("coupon", "a1", 700, user2, budget2, T0 + 1, limits) == Verdict(True, repeat=True)
    assert admit("coupon", "a2", 0, user2, budget2, T0 + 2, limits) == Verdict(False, "cooldown")
    assert (budget2.count, budget2.per_kind["coupon"].value_cents) == (1, 700)


def test_restart_with_budget_stored_but_user_state_lost() -> None:
    """The budget table committed, the user's table not: the re-made decision is a repeat."""
    limits = GuardLimits(count=1)
    budget = BudgetState()
    assert admit("coupon", "a1", 0, UserState("u1"), budget, T0, limits).allowed
    budget2 = decode_budget(encode_budget(budget))
    fresh_user = UserState("u1")
    assert admit("coupon", "a1", 0, fresh_user, budget2, T0 + 10, limits) == Verdict(True, repeat=True)
    assert fresh_user.acted["coupon"].action_id == "a1" and budget2.count == 1


def test_state_encoded_before_the_guard_fields_still_loads() -> None:
    old = dump_state(UserState("u1", purchases=4))
    # without the four trailing fields, the array is what a worker before issue 5 wrote
    fields = msgspec.msgpack.decode(old)
    assert len(fields) == len(UserState.__struct_fields__)
    state = load_state(msgspec.msgpack.encode(fields[:-4]))
    assert state.purchases == 4 and state.cart_touched is None and state.acted == {}
    # and without the recommender's item history (added after the guard fields)
    state = load_state(msgspec.msgpack.encode(fields[:-2]))
    assert state.purchases == 4 and state.items == [] and state.bought == []


def test_unsubscribed_suppresses_every_kind_and_repeats() -> None:
    user, budget = UserState("u1"), BudgetState()
    assert admit("care_outreach", "o1", 0, user, budget, T0, LIMITS).allowed
    apply_event(user, Outcome(action_id="o1", user_id="u1", ts=T0 + 1, outcome=OutcomeKind.UNSUBSCRIBED), T0 + 1, StateConfig())
    for kind in ("coupon", "recommendation", "care_outreach"):
        assert check(kind, f"{kind}-2", 0, user, budget, T0 + 60 * MS_PER_DAY, LIMITS) == Verdict(False, "unsubscribed")
    assert check("care_outreach", "o1", 0, user, budget, T0 + 2, LIMITS) == Verdict(False, "unsubscribed")
    # and it survives a restart
    assert check("coupon", "x", 0, load_state(dump_state(user)), budget, T0 + 3, LIMITS).reason == "unsubscribed"


def click(ts: int, kind: ClickKind, eid: str) -> Click:
    return Click(event_id=eid, user_id="u1", ts=ts, kind=kind)


def test_checking_out_suppresses_coupons_only_until_a_purchase_or_the_window_ends() -> None:
    cfg = StateConfig()
    user, budget = UserState("u1"), BudgetState()
    apply_event(user, click(T0, ClickKind.ADD_TO_CART, "e1"), T0, cfg)
    apply_event(user, click(T0 + 20 * MIN, ClickKind.CHECKOUT_START, "e2"), T0 + 20 * MIN, cfg)
    now = T0 + 45 * MIN  # 25 minutes after the checkout started
    assert check("coupon", "c1", 0, user, budget, now, LIMITS) == Verdict(False, "checking_out")
    assert check("recommendation", "r1", 0, user, budget, now, LIMITS).allowed
    assert check("care_outreach", "o1", 0, user, budget, now, LIMITS).allowed
    # the window has passed without a purchase: coupons allowed again
    assert check("coupon", "c1", 0, user, budget, T0 + 50 * MIN + 1, LIMITS).allowed
    # a purchase after the cart ends the checkout
    apply_event(user, Purchase(event_id="p1", user_id="u1", ts=T0 + 30 * MIN, order_id="o1",
                               items=[Item(item_id="i", quantity=1, unit_price=10.0)], total=10.0,
                               currency="EUR", channel=Channel.WEB), T0 + 30 * MIN, cfg)
    assert check("coupon", "c1", 0, user, budget, now, LIMITS).allowed


def test_partition_shares_add_up_to_the_total() -> None:
    for total in (0, 1, 7, 10_000):
        for n in (1, 3, 12):
            assert sum(partition_share(total, p, n) for p in range(n)) == total
    assert partition_share(2, 2, 3) == 0  # a budget below the partition count leaves some with none
    with pytest.raises(ValueError):
        partition_share(5, 3, 3)


def test_default_policy_limits_for_one_of_four_partitions() -> None:
    limits = partition_limits(load_policy(DEFAULT_POLICY).guards, 1, 4)
    assert limits.count == 2_500 and limits.count_per_kind == {"coupon": 500, "recommendation": 2_000, "care_outreach": 125}
    assert limits.coupon_value_cents == 500_000
    assert limits.cooldown_ms["coupon"] == 30 * MS_PER_DAY and limits.checkout_window_ms == 30 * MIN


def test_coupon_value() -> None:
    buyer = UserState("u", purchases=2, spend_cents=30_000)  # mean order 150.00
    assert coupon_value_cents(Coupon(percent=10), buyer) == 1_500
    assert coupon_value_cents(Coupon(percent=10, max_value=12), buyer) == 1_200
    assert coupon_value_cents(Coupon(percent=10, max_value=12), UserState("new")) == 1_200
    assert coupon_value_cents(Coupon(amount=5, currency="EUR"), buyer) == 500
