"""The intention-to-treat contrast: one observation per customer from its first decision of a
kind (and of a rule). Hand-computed tallies, the interval against published values, old
states and tallies still loading, and a simulated check that it covers the truth where the
per-decision contrast is biased by the treatment's own feedback."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from streams.domain.attribution import AttributionConfig, mature, next_maturity, on_purchase, track
from streams.domain.engine import EngineConfig, due_at, on_due, on_event, track_actions
from streams.domain.policy import PolicyConfig
from streams.domain.state import Awaiting, UserState, dump_state, load_state
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR
from streams.domain.uplift import SEP, Entered, Itt, Tally, compare_itt, count_matured, dump_tally, load_tally, newcombe, report, total
from tests.unit.test_attribution import purchase
from tests.unit.test_engine import Fixed

T0 = 1_767_225_600_000
CFG = AttributionConfig(window_ms=14 * MS_PER_DAY, lateness_ms=MS_PER_HOUR)


def day(n: float) -> int:
    return T0 + int(n * MS_PER_DAY)


def decide(state: UserState, tally: Tally, aid: str, n: float, rule: str, kind: str = "recommendation") -> None:
    track(state, Awaiting(aid, day(n), kind, rule, state_group(state)), CFG, tally)


def state_group(state: UserState) -> str:
    return "control" if state.user_id.startswith("c") else "treatment"


def test_a_customer_is_one_observation_from_its_first_decision_of_the_kind_and_of_each_rule() -> None:
    treated, control, tally = UserState("t1"), UserState("c1"), Tally()
    decide(treated, tally, "a1", 0, "after_purchase")
    decide(treated, tally, "a2", 7, "after_purchase")  # not its first: no second observation
    decide(treated, tally, "a3", 10, "at_risk")  # its first of this rule: an observation of the rule
    decide(control, tally, "b1", 2, "after_purchase")
    assert tally.itt == {"recommendation|treatment": Itt(entered=1), "recommendation|after_purchase|treatment": Itt(entered=1),
                         "recommendation|at_risk|treatment": Itt(entered=1),
                         "recommendation|control": Itt(entered=1), "recommendation|after_purchase|control": Itt(entered=1)}
    assert set(treated.entered) == {"recommendation", "recommendation|after_purchase", "recommendation|at_risk"}
    on_purchase(treated, day(14), None, None, CFG)  # the window (0, 14] is inclusive; (10, 24] too
    on_purchase(control, day(16.5), None, None, CFG)  # after the window (2, 16]
    on_purchase(control, day(2), None, None, CFG)  # at the decision itself: not after it
    assert next_maturity(treated, CFG) == day(0) + CFG.window_ms + CFG.lateness_ms
    step = Tally()
    mature(treated, day(14) + MS_PER_HOUR - 1, CFG, step)
    assert step.itt == {}  # not before the lateness is over
    mature(treated, day(14) + MS_PER_HOUR, CFG, step)
    mature(control, day(16) + MS_PER_HOUR, CFG, step)
    assert step.itt == {"recommendation|treatment": Itt(matured=1, converted=1), "recommendation|after_purchase|treatment": Itt(matured=1, converted=1),
                        "recommendation|control": Itt(matured=1), "recommendation|after_purchase|control": Itt(matured=1)}
    # the rule entered on day 10 waits for its own window (whose purchase came on day 14), the decision of day 7 for its own
    assert treated.entered["recommendation|at_risk"] == Entered(day(10), "treatment", converted=True)
    assert next_maturity(treated, CFG) == day(7) + CFG.window_ms + CFG.lateness_ms
    mature(treated, day(30), CFG, step)
    assert step.itt["recommendation|at_risk|treatment"] == Itt(matured=1, converted=1)
    assert next_maturity(treated, CFG) is None
    on_purchase(treated, day(30), None, None, CFG)  # after maturity: nothing changes
    decide(treated, tally, "a4", 40, "after_purchase")  # much later: still no second observation
    mature(treated, day(60), CFG, step)
    assert step.itt["recommendation|treatment"] == Itt(matured=1, converted=1)
    assert not any(SEP.join(("recommendation", "after_purchase", "treatment")) == k and v.entered for k, v in step.itt.items())


def test_a_late_purchase_within_the_lateness_converts_and_the_entry_matures_even_when_its_decision_was_evicted() -> None:
    cfg = AttributionConfig(window_ms=14 * MS_PER_DAY, lateness_ms=MS_PER_HOUR, max_awaiting=1)
    state, tally = UserState("t1"), Tally()
    track(state, Awaiting("a1", day(0), "coupon", "r", "treatment"), cfg, tally)
    track(state, Awaiting("a2", day(1), "coupon", "r", "treatment"), cfg, tally)  # evicts a1
    assert [a.action_id for a in state.awaiting] == ["a2"] and tally.decisions["coupon|r|treatment"].evicted == 1
    assert next_maturity(state, cfg) == day(14) + MS_PER_HOUR  # the first decision's window still matures
    on_purchase(state, day(13.99), None, None, cfg)  # arrives late, at clock day 14 + 30 min
    mature(state, day(14) + MS_PER_HOUR, cfg, tally)
    assert tally.itt["coupon|treatment"] == Itt(entered=1, matured=1, converted=1)


def test_the_engine_counts_the_first_lapse_coupon_and_wakes_the_user_when_its_window_is_over() -> None:
    cfg = EngineConfig(churn_horizon_days=30, sweep_days=0, policy=PolicyConfig(control_share=0.0))
    state, steps = UserState("u1"), []
    for n in (0, 7, 14, 21):
        steps.append(on_event(state, purchase(n, f"p{n}"), day(n), cfg))
    fired = on_due(state, day(35), Fixed(0.9), cfg)
    fired.tally.add(track_actions(state, fired.actions, cfg))
    assert fired.tally.itt == {"coupon|treatment": Itt(entered=1), "coupon|lapsed_after_streak|treatment": Itt(entered=1)}
    assert next_maturity(state, cfg.attribution) == day(35) + cfg.attribution.window_ms + cfg.attribution.lateness_ms
    assert due_at(state, cfg) <= next_maturity(state, cfg.attribution)  # the user is woken by then
    steps.append(on_event(state, purchase(40, "p40"), day(40), cfg))
    later = on_due(state, day(49) + MS_PER_HOUR, Fixed(0.0), cfg)
    tally = total([s.tally for s in steps] + [fired.tally, later.tally])
    assert tally.itt["coupon|treatment"] == Itt(entered=1, matured=1, converted=1)


def test_the_report_gives_newcombes_interval_of_the_customers_beside_the_per_decision_one() -> None:
    tally = Tally()
    tally.counts("coupon", "r", "treatment").matured = 90  # several decisions per customer
    tally.counts("coupon", "r", "control").matured = 100
    for rule in (None, "r"):
        tally.entrants("coupon", rule, "treatment").add(Itt(entered=75, matured=70, converted=56))
        tally.entrants("coupon", rule, "control").add(Itt(entered=81, matured=80, converted=48, excluded=2))
    r = report(load_tally(dump_tally(tally)))
    itt = r["by_kind"]["coupon"]["itt"]
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, example (a): 56/70 - 48/80, method 10: (0.0524, 0.3339)
    assert itt["uplift"]["estimate"] == 0.2 and itt["uplift"]["method"] == "newcombe"
    assert round(itt["uplift"]["low"], 4) == 0.0524 and round(itt["uplift"]["high"], 4) == 0.3339
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert (itt["uplift"]["low"], itt["uplift"]["high"]) == (round(lo, 6), round(hi, 6))
    assert itt["treatment"] == {"customers": 75, "matured": 70, "conversions": 56, "conversion_rate": 0.8, "excluded": 0}
    assert itt["control"] == {"customers": 81, "matured": 80, "conversions": 48, "conversion_rate": 0.6, "excluded": 2}
    assert r["by_rule"]["coupon"]["r"]["itt"] == itt
    assert compare_itt(Itt(3, 0, 0), Itt(2, 2, 1))["uplift"] is None  # no matured treated customer yet


def test_old_tallies_and_states_load_and_a_customer_decided_before_counting_is_excluded() -> None:
    tally = Tally()
    tally.counts("coupon", "r", "treatment").decided = 1
    count_matured(tally, {}, "coupon", "r", "treatment", True)
    old = load_tally(msgspec.msgpack.encode({"decisions": msgspec.to_builtins(tally.decisions), "outcomes": {},
                                             "clusters": msgspec.to_builtins(tally.clusters)}))
    assert old.itt == {} and old.clusters == tally.clusters
    itt = report(old)["by_kind"]["coupon"]["itt"]
    assert itt["uplift"] is None and itt["treatment"]["customers"] == 0
    merged = total([old, load_tally(dump_tally(Tally(itt={"coupon|treatment": Itt(1, 1, 1)})))])
    assert merged.itt == {"coupon|treatment": Itt(1, 1, 1)}

    # a state written before the field, with a coupon decision waiting and a matured recommendation
    state, t = UserState("t1"), Tally()
    track(state, Awaiting("a1", day(0), "coupon", "r", "treatment"), CFG, t)
    count_matured(t, state.attributed, "recommendation", "weekly", "treatment", False)
    fields = msgspec.msgpack.decode(dump_state(state))
    before = UserState.__struct_fields__.index("entered")
    old_state = load_state(msgspec.msgpack.encode(fields[:before]))
    assert old_state.entered == {} and old_state.awaiting == state.awaiting
    step = Tally()
    track(old_state, Awaiting("a2", day(3), "coupon", "r", "treatment"), CFG, step)  # not its first coupon
    track(old_state, Awaiting("a3", day(3), "recommendation", "weekly", "treatment"), CFG, step)  # nor recommendation
    track(old_state, Awaiting("a4", day(3), "care_outreach", "care", "treatment"), CFG, step)  # its first care: counted
    assert step.itt == {"coupon|treatment": Itt(excluded=1), "coupon|r|treatment": Itt(excluded=1),
                        "recommendation|treatment": Itt(excluded=1), "recommendation|weekly|treatment": Itt(excluded=1),
                        "care_outreach|treatment": Itt(entered=1), "care_outreach|care|treatment": Itt(entered=1)}
    mature(old_state, day(30), CFG, step)
    assert step.itt["coupon|treatment"] == Itt(excluded=1)  # excluded customers never enter the rates
    assert step.itt["care_outreach|treatment"] == Itt(entered=1, matured=1)
    assert load_state(dump_state(old_state)).entered == old_state.entered


EFFECT = 0.15  # P(the offer brings a purchase in the window)


def experiment(rng: np.random.Generator, customers: int = 160) -> tuple[dict, float]:
    """Customers with their own propensity to buy in a window (Beta(2, 2), mean 0.5), half of
    them treated; a decision every 15 days while the customer buys (a rule that fires on the
    customer's purchases), at most four. An offer that works brings a purchase in its window and
    makes the customer come back (it buys more in later windows): the treatment's own feedback.
    Returns the report and the per-decision truth, mean(W and not Y0) over every decision."""
    tally, effects = Tally(), []
    for i in range(customers):
        group = "treatment" if rng.random() < 0.5 else "control"
        p = rng.beta(2, 2)
        state = UserState(f"u{i}")
        for k in range(4):
            start = day(15 * k)
            track(state, Awaiting(f"a{i}-{k}", start, "recommendation", "r", group), CFG, tally)
            y0, works = rng.random() < p, rng.random() < EFFECT
            effects.append(works and not y0)
            if y0:
                on_purchase(state, start + 5 * MS_PER_DAY, None, None, CFG)
            treated = works and group == "treatment"
            if treated:
                on_purchase(state, start + 3 * MS_PER_DAY, None, None, CFG)
                p = 1 - 0.3 * (1 - p)  # a comeback, after the window
            mature(state, start + CFG.window_ms + CFG.lateness_ms, CFG, tally)
            if not (y0 or treated):
                break
    return report(tally)["by_kind"]["recommendation"], float(np.mean(effects))


def test_with_the_treatments_feedback_the_itt_interval_covers_the_truth_and_the_per_decision_one_does_not() -> None:
    rng = np.random.default_rng(5)
    runs = 1000
    truth = EFFECT * (1 - 0.5)  # E[W and not Y0] of a customer's first window: the effect of being assigned
    itt_in = per_decision_in = 0
    itt_estimates, decision_bias = [], []
    for _ in range(runs):
        r, per_decision_truth = experiment(rng)
        itt, uplift = r["itt"]["uplift"], r["uplift"]
        itt_in += itt["low"] <= truth <= itt["high"]
        itt_estimates.append(itt["estimate"])
        per_decision_in += uplift["low"] <= per_decision_truth <= uplift["high"]
        decision_bias.append(uplift["estimate"] - per_decision_truth)
    assert 0.93 <= itt_in / runs <= 0.975
    assert np.mean(itt_estimates) == pytest.approx(truth, abs=0.008)  # centred: the standard error of the mean is 0.0025
    assert np.mean(decision_bias) > 0.04 and per_decision_in / runs < 0.88  # the defect the contrast removes
