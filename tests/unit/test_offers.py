"""The simulated customers' responses to offers: known effects, both potential outcomes, and the
measured uplift of the engine's own decisions against the true one (closed loop, no broker)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streams.domain.engine import EngineConfig
from streams.domain.policy import PolicyConfig
from streams.domain.timestamps import format_ts
from streams.domain.uplift import report
from streams.simulation import OfferEffects, Shop, SimulationConfig
from streams.simulation.loop import closed_loop
from streams.simulation.shop import CHURNED as STATE_CHURNED
from streams.simulation.shop import LOYAL as STATE_LOYAL

DAY = 86_400_000
CFG = SimulationConfig(customers=60, new_customers_per_day=0, days=40, seed=5)
STATES = ("new", "loyal", "drifting", "churned")


def action(user: str, n: float, group: str, kind: str = "coupon") -> dict:
    aid = f"act-{user}-{kind}"  # as the engine: the group is not part of the id
    return {"action_id": aid, "user_id": user, "ts": format_ts(START + int(n * DAY)), "kind": kind, "group": group,
            "payload": {"code": f"RS-{user}"} if kind == "coupon" else {}, "reason": {"rule": "test"}}


START = 1_767_225_600_000


def run(effects: OfferEffects, offers: dict[str, str]) -> tuple[Shop, list]:
    """A pass in which each user of ``offers`` (user -> group) gets a coupon decided on day 10."""
    shop = Shop(CFG, effects)
    records, sent = [], False
    for record in shop.records():
        if not sent and record.ts_ms >= START + 10 * DAY:
            for user, group in offers.items():
                shop.offer(action(user, 10, group), START + int(10.25 * DAY))
            sent = True
        records.append(record)
    return shop, records


def certain(p: float) -> OfferEffects:
    return OfferEffects(works={"coupon": dict.fromkeys(STATES, p)}, reactivate=0.0, carry=0.0)


USERS = {f"u{i:06d}": ("treatment" if i % 2 else "control") for i in range(40)}


def test_treated_customers_respond_within_the_window_and_control_customers_get_nothing() -> None:
    shop, records = run(certain(1.0), USERS)
    extra = [r for r in records if r.topic == "purchases" and "action_id" in r.value]
    outcomes = [r for r in records if r.topic == "action-outcomes"]
    treated = {u for u, g in USERS.items() if g == "treatment"}
    assert {r.key for r in extra} <= treated and {r.key for r in outcomes} <= treated
    for r in extra:
        assert START + int(10.25 * DAY) <= r.ts_ms <= START + 24 * DAY
        assert r.value["coupon_code"] == f"RS-{r.key}" and r.value["action_id"] == f"act-{r.key}-coupon"
    truth = shop.offers()
    assert len(truth) == len(USERS) and all(o.p_effect > 0.9 for o in truth)
    # W is drawn for every decision; applied to the treated only
    assert {o.offer.user_id for o in truth if o.works and o.offer.group == "treatment"} == {r.key for r in extra}
    assert {r.value["outcome"] for r in outcomes} >= {"delivered", "opened", "clicked"}
    assert all(r.value["user_id"] == r.key and r.value["action_id"].startswith("act-") for r in outcomes)


def test_offers_never_change_the_natural_records_so_y0_is_known_for_both_groups() -> None:
    _, plain = run(certain(1.0), {})
    shop, treated = run(certain(1.0), USERS)
    natural = [r for r in treated if r.topic != "action-outcomes" and not (r.topic == "purchases" and "action_id" in r.value)]
    assert [(r.topic, r.key, r.ts_ms) for r in natural] == [(r.topic, r.key, r.ts_ms) for r in plain]
    truth = {o.offer.user_id: o for o in shop.offers()}
    for user, o in truth.items():
        bought = any(r.topic == "purchases" and r.key == user and START + 10 * DAY < r.ts_ms <= START + 24 * DAY for r in plain)
        assert o.y0 == bought and o.y1 == (bought or o.works) and o.effect == int(o.works and not bought)


def test_common_random_numbers_the_same_decision_draws_the_same_response() -> None:
    a, _ = run(certain(0.5), USERS)
    b, _ = run(certain(0.5), {u: "control" for u in USERS})
    assert [o.works for o in a.offers()] == [o.works for o in b.offers()]
    works = sum(o.works for o in a.offers())
    assert 8 <= works <= 32  # p = 0.5 of 40
    zero, _ = run(certain(0.0), USERS)
    assert not any(o.works for o in zero.offers()) and zero.uplift_truth()["coupon"]["true_uplift"] == 0.0


def test_a_purchase_another_offer_brought_counts_in_y0() -> None:
    effects = OfferEffects(works={"coupon": dict.fromkeys(STATES, 1.0), "recommendation": dict.fromkeys(STATES, 0.0)},
                           reactivate=0.0, carry=0.0)
    shop = Shop(CFG, effects)
    users = [f"u{i:06d}" for i in range(10)]
    sent = False
    for record in shop.records():
        if not sent and record.ts_ms >= START + 10 * DAY:
            for user in users:
                shop.offer(action(user, 10, "treatment"), START + int(10.25 * DAY))
                shop.offer(action(user, 10, "treatment", kind="recommendation"), START + int(10.25 * DAY))
            sent = True
    truth = shop.offers()
    coupons = {o.offer.user_id: o for o in truth if o.offer.kind == "coupon"}
    recos = {o.offer.user_id: o for o in truth if o.offer.kind == "recommendation"}
    assert len(truth) == 20 and len(coupons) == len(recos) == 10 and any(o.works for o in coupons.values())
    for user, reco in recos.items():
        assert not reco.works and reco.effect == 0
        if coupons[user].works:  # the coupon's purchase is in the recommendation's window too
            assert reco.y0 and reco.y1


def test_truth_report_per_kind_and_rule() -> None:
    shop, _ = run(certain(1.0), USERS)
    truth = shop.uplift_truth()
    coupon = truth["coupon"]
    assert coupon["decisions"] == 40 and coupon["treatment"] == 20 and coupon["control"] == 20
    assert coupon["true_uplift"] == pytest.approx(sum(o.effect for o in shop.offers()) / 40)
    assert coupon["true_uplift"] == pytest.approx(1 - coupon["y0_rate"], abs=0.1)
    assert truth["coupon/test"] == coupon


def test_scaled_effects_and_offers_only_during_a_pass() -> None:
    fx = OfferEffects().scaled(2.0)
    assert fx.works["coupon"]["drifting"] == 0.6 and fx.works["care_outreach"]["new"] == 0.1
    assert OfferEffects().scaled(10).works["coupon"]["drifting"] == 1.0
    with pytest.raises(RuntimeError):
        Shop(CFG).offer(action("u000001", 1, "treatment"), START)


# --- the closed loop: the engine's own decisions, measured against the truth ------------------

LOOP = SimulationConfig(customers=500, new_customers_per_day=0, days=120, seed=1)
ENGINE = EngineConfig(policy=PolicyConfig(control_share=0.5))


def measured_and_true(p: float) -> tuple[dict, dict]:
    shop = Shop(LOOP, OfferEffects(works={"coupon": dict.fromkeys(STATES, p)}))
    result = closed_loop(shop, ENGINE)
    # 99%: a 95% interval misses the truth in one fixed-seed world of 20, and these worlds
    # move whenever the learners change which customers are decided on (with the purchase-day
    # feature the null world's control group bought 6 of 36 times by chance, treatment 0 of 29)
    measured = report(result.tally, confidence=0.99)["by_kind"]["coupon"]
    truth = shop.uplift_truth(result.now_ms - ENGINE.attribution.lateness_ms)["coupon"]
    # the same decisions: every matured decision of the engine, and no other, is in the truth
    assert (truth["treatment"], truth["control"]) == (measured["treatment"]["matured"], measured["control"]["matured"])
    return measured, truth


def test_measured_uplift_interval_contains_the_true_uplift_and_excludes_a_different_one() -> None:
    strong, strong_truth = measured_and_true(0.6)
    none, none_truth = measured_and_true(0.0)
    assert strong["treatment"]["matured"] >= 15 and strong["control"]["matured"] >= 15
    assert strong["treatment"]["redemptions"] > 0 and strong["control"]["redemptions"] == 0
    assert strong_truth["true_uplift"] > 0.3 and none_truth["true_uplift"] == 0.0
    for measured, truth, other in ((strong, strong_truth, none_truth), (none, none_truth, strong_truth)):
        interval = measured["uplift"]
        assert interval["low"] <= truth["true_uplift"] <= interval["high"]
        assert interval["low"] <= truth["expected_uplift"] <= interval["high"]
        assert not interval["low"] <= other["true_uplift"] <= interval["high"]  # it tells the two worlds apart


def test_an_offer_that_backfires_takes_the_treated_customers_natural_purchases_of_its_window_away() -> None:
    """The backfire world (issue 21): a treated customer whose offer backfires makes none of
    its natural purchases in the window (nor reviews them); a control one is untouched;
    Y0 (the world without the offer) still has them, so the effect is -1 where Y0 was 1."""
    backfire = OfferEffects(works={"coupon": dict.fromkeys(STATES, 0.0)}, backfire={"coupon": dict.fromkeys(STATES, 1.0)},
                            reactivate=0.0, carry=0.0)
    _, plain = run(certain(0.0), {})
    shop, treated = run(backfire, USERS)
    def natural(records: list, user: str) -> list[int]:
        return [r.ts_ms for r in records if r.topic == "purchases" and r.key == user and "action_id" not in r.value]

    truth = {o.offer.user_id: o for o in shop.offers()}
    taken = 0
    for user, group in USERS.items():
        before, after = natural(plain, user), natural(treated, user)
        o = truth[user]  # the customer learnt of it on the first day not yet generated: from then on to the window's end
        inside = [t for t in before if o.start_ms < t <= o.window_end_ms]
        if group == "control":
            assert after == before
        else:
            assert after == [t for t in before if t not in inside]
            assert shop.truth()[user].suppressed == inside
            taken += len(inside)
        assert o.backfires and o.p_backfire == 1.0 and not o.works
        assert o.effect == -int(bool(o.y0)) and o.expected == (-1.0 if o.y0 else 0.0)
    assert taken > 0
    assert [o.y0 for o in run(certain(0.0), USERS)[0].offers()] == [o.y0 for o in shop.offers()]  # Y0 as without it


def test_an_offer_that_drives_the_customer_away_takes_its_purchases_past_the_window() -> None:
    """``backfire_days`` longer than the window: a treated customer whose offer backfires
    makes none of its natural purchases for that long from when it learnt of the offer (the
    harm an outcome counted over the window alone would miss); a control customer keeps
    them, and Y0 is as without the offer."""
    away = OfferEffects(works={"coupon": dict.fromkeys(STATES, 0.0)}, backfire={"coupon": dict.fromkeys(STATES, 1.0)},
                        backfire_days=20.0, reactivate=0.0, carry=0.0)
    _, plain = run(certain(0.0), {})
    shop, treated = run(away, USERS)

    def natural(records: list, user: str) -> list[int]:
        return [r.ts_ms for r in records if r.topic == "purchases" and r.key == user and "action_id" not in r.value]

    late = 0
    for o in shop.offers():
        user = o.offer.user_id
        before, after = natural(plain, user), natural(treated, user)
        gone = [t for t in before if o.start_ms < t <= o.start_ms + 20 * DAY]
        if o.offer.group == "control":
            assert after == before
        else:
            assert after == [t for t in before if t not in gone] and shop.truth()[user].suppressed == gone
            late += sum(t > o.window_end_ms for t in gone)
    assert late > 0  # some of what it took lies after the 14-day window
    assert [o.y0 for o in run(certain(0.0), USERS)[0].offers()] == [o.y0 for o in shop.offers()]


def test_the_backfire_world_harms_the_dormant_customers_a_coupon_wakes_up() -> None:
    """The targeting evaluation's backfire world (sleeping dogs): churned customers are
    dormant (they come back on their own, reactivation after 180 days on average instead of
    2,500), a coupon never wins one back and drives half of them away for good, so a dormant
    customer who would have bought within the 60-day horizon loses that purchase if treated;
    for a drifting customer a coupon still works. Checked on known customers: the potential
    outcomes of the simulator, treated against the same customers untreated."""
    from streams.simulation.targeting import BACKFIRE_HORIZON_DAYS, backfire_world, tau_of

    world = backfire_world()
    fx = world.effects
    assert fx.window_days == BACKFIRE_HORIZON_DAYS == 60.0 and world.reactivation_mean_days == 180.0
    assert fx.p_backfire("coupon", "churned") == 0.5 and fx.p_works("coupon", "r", "churned") == 0.0
    assert fx.p_backfire("coupon", "drifting") == 0.0 and fx.p_works("coupon", "r", "drifting") == 0.3
    assert tau_of(True, 0.0, 0.5) == -0.5 and tau_of(False, 0.3, 0.0) == 0.3
    # the dynamics: with dormant customers many churned ones come back; by default hardly any
    cfg = SimulationConfig(customers=150, new_customers_per_day=0, days=110, seed=3)
    sim = world.simulation(cfg)

    def comebacks(shop: Shop) -> int:
        return sum(a is STATE_CHURNED and b is STATE_LOYAL for c in shop.truth().values()
                   for (_, a), (_, b) in zip(c.transitions, c.transitions[1:]))

    assert comebacks(Shop(sim, fx)) >= 5 * max(1, comebacks(Shop(cfg)))
    # every customer churned on day 40 gets a coupon then, all treated; the same shop untreated
    probe = Shop(sim, fx)
    dormant = sorted(u for u, c in probe.truth().items() if c.joined_ms < START + 40 * DAY
                     and probe.state_at(u, START + 40 * DAY) is STATE_CHURNED)
    decided = START + 40 * DAY

    def treated_run() -> tuple[Shop, list]:
        shop, records, sent = Shop(sim, fx), [], False
        for record in shop.records():
            if not sent and record.ts_ms >= decided:
                for user in dormant:
                    shop.offer({**action(user, 40, "treatment"), "ts": format_ts(decided)}, decided + 6 * 3_600_000)
                sent = True
            records.append(record)
        return shop, records

    untreated = list(Shop(sim, fx).records())
    shop, treated = treated_run()
    horizon = decided + fx.window_ms
    bought = {u: any(r.topic == "purchases" and r.key == u and decided < r.ts_ms <= horizon for r in untreated) for u in dormant}
    after = {u: any(r.topic == "purchases" and r.key == u and decided < r.ts_ms <= horizon for r in treated) for u in dormant}
    offers = {o.offer.user_id: o for o in shop.offers()}
    assert len(dormant) >= 20 and sum(bought.values()) >= 3  # dormant customers who would come back in the horizon
    assert not any(o.works for o in offers.values())  # a coupon wins none of them back
    lost = [u for u in dormant if bought[u] and not after[u]]
    assert lost and all(offers[u].backfires for u in lost)  # the ones it drove away lost the purchase ...
    assert all(after[u] == bought[u] for u in dormant if not offers[u].backfires)  # ... the others kept it
    assert all(offers[u].effect == -1 for u in lost) and sum(o.backfires for o in offers.values()) >= len(dormant) // 4
    late = [u for u in lost if not any(decided < t <= decided + 14 * DAY for t in shop.truth()[u].natural)]
    assert late  # and some of those lost only come back after the usual 14-day window: a 14-day outcome misses them
