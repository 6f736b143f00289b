"""Targeting by uplift (issue 21): the online uplift learner, the policy keys, the decisions
and what the trainer learns from them, and the simulator's judge of targeting."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from models.bundle import Models
from models.examples import UpliftExample, decode_example, encode_example
from models.trainer import dump_models, load_models
from models.uplift import UpliftModels
from streams.domain.actions import RetentionAction, decode_action, encode_action
from streams.domain.attribution import awaiting_of
from streams.domain.engine import outcomes_of
from streams.domain.features import MODEL_FEATURES, as_dict, features
from streams.domain.policy_file import PolicyFileError, load_policy, load_policy_text
from streams.domain.rules import Candidate, Decider
from streams.domain.snapshots import UserScores
from streams.domain.state import UserState
from streams.simulation.targeting import Judged, auuc, cross_fitted, qini, spend

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "retention-actions.v1.schema.json"


def synthetic(n: int, seed: int) -> list[tuple[dict[str, float], float, float]]:
    """Customers with a known, heterogeneous effect: ``activity`` in [0, 1] sets both the
    chance to buy anyway (0.1 + 0.4 a) and the effect of the offer (0.4 a: the offer works
    for the active customers only); ``noise`` is unrelated to either."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.random()
        out.append(({"activity": a, "noise": rng.random() * 5}, 0.1 + 0.4 * a, 0.4 * a))
    return out


def trained(n: int = 6000, control: float = 0.5, seed: int = 1) -> UpliftModels:
    rng = random.Random(seed + 100)
    m = UpliftModels(min_examples=30)
    for x, base, tau in synthetic(n, seed):
        group = "control" if rng.random() < control else "treatment"
        p = base + (tau if group == "treatment" else 0.0)
        m.learn_one("coupon", "r", group, x, rng.random() < p, explored=rng.random() < 0.2)
    m.stamp("2026-01-02")
    return m


def test_the_learner_recovers_a_known_heterogeneous_effect() -> None:
    m = trained()
    held_out = synthetic(2000, seed=9)
    predicted = [m.predict("coupon", x) for x, _, _ in held_out]
    truth = [tau for _, _, tau in held_out]
    assert all(p is not None for p in predicted)
    # the ranking: a customer with the larger true effect gets the larger prediction
    pairs = [(i, j) for i in range(0, 2000, 7) for j in range(1, 2000, 11) if abs(truth[i] - truth[j]) > 0.05]
    concordant = sum((predicted[i] > predicted[j]) == (truth[i] > truth[j]) for i, j in pairs) / len(pairs)
    assert concordant > 0.9, concordant
    # the level: the mean predicted effect of the least and the most active fifths
    ranked = sorted(zip((x["activity"] for x, _, _ in held_out), predicted, truth))
    low, high = ranked[:400], ranked[-400:]
    assert abs(sum(p for _, p, _ in low) / 400 - sum(t for _, _, t in low) / 400) < 0.08
    assert abs(sum(p for _, p, _ in high) / 400 - sum(t for _, _, t in high) / 400) < 0.08
    # the treated top fifth by predicted uplift earns far more than a random fifth
    top = sorted(range(2000), key=lambda i: -predicted[i])[:400]
    assert sum(truth[i] for i in top) / 400 > 1.5 * sum(truth) / 2000


def test_no_answer_before_each_group_learned_enough_and_the_cutoff_ranks_the_explored_candidates() -> None:
    m = UpliftModels(min_examples=3)
    for i in range(3):
        m.learn_one("coupon", "r", "treatment", {"a": float(i)}, True, explored=True)
    assert m.predict("coupon", {"a": 1.0}) is None and not m.ready("coupon")
    for i in range(3):
        m.learn_one("coupon", "r", "control", {"a": float(i)}, False, explored=True)
    assert m.ready("coupon") and m.cutoff("r", 0.5) is None  # ranked when the snapshot is stamped
    m.stamp("2026-01-02")
    ranked = sorted(m.predict("coupon", {"a": float(i % 3)}) for i in range(6))
    assert m.sorted["r"] == ranked
    assert m.cutoff("r", 1.0) == ranked[0] and m.cutoff("r", 0.5) == ranked[3] and m.cutoff("r", 0.01) == ranked[-1]
    assert m.version == "uplift-2m+6@2026-01-02"
    assert m.report()["kinds"]["coupon"]["treatment"] == {"decisions": 3, "conversion_rate": 1.0}


def test_the_bundle_learns_uplift_examples_and_a_snapshot_round_trips_through_the_restricted_unpickler() -> None:
    models = Models.fresh(uplift_min_decisions=2)
    for i, group in enumerate(["treatment", "control"] * 3):
        raw = encode_example(UpliftExample(id=f"a{i}", at=i, action="coupon", rule="r", group=group,
                                           features=[float(i)] * len(MODEL_FEATURES), converted=group == "treatment", explored=True))
        models.learn(decode_example(raw))
    models.stamp("2026-01-03")
    back = load_models(dump_models(models))
    x = as_dict([1.0] * len(MODEL_FEATURES))
    assert back.uplift.predict("coupon", x) == models.uplift.predict("coupon", x) is not None
    assert back.uplift.version == "uplift-2m+6@2026-01-03" and models.counts["uplift"] == 6


# -- the policy keys --------------------------------------------------------------------------

RULE = """version: 1
rules:
  - name: c
    trigger: lapse
    action: coupon
{extra}    coupon: {{percent: 10}}
"""


def problems(extra: str, tail: str = "") -> list[tuple[int, str]]:
    with pytest.raises(PolicyFileError) as info:
        load_policy_text(RULE.format(extra=extra) + tail, "p.yaml")
    return info.value.problems


def test_target_defaults_to_risk_and_uplift_keys_load() -> None:
    assert load_policy_text(RULE.format(extra=""), "p.yaml").rules[0].target == "risk"
    assert load_policy(ROOT / "deploy" / "policy.yaml").uplift_kinds == frozenset()
    p = load_policy_text(RULE.format(extra="    target: uplift\n    uplift: {top_share: 0.2, threshold: 0.01}\n"), "p.yaml")
    rule = p.rules[0]
    assert (rule.target, rule.uplift.top_share, rule.uplift.threshold, rule.uplift.exploration) == ("uplift", 0.2, 0.01, 0.1)
    assert p.uplift_kinds == frozenset({"coupon"})
    shipped = load_policy(ROOT / "deploy" / "policies" / "lapse-uplift.yaml")
    assert [r.target for r in shipped.rules] == ["uplift"]


@pytest.mark.parametrize(("extra", "want"), [
    ("    target: reach\n", [(6, "rules[0].target: unknown target 'reach'; expected one of: risk, uplift")]),
    ("    uplift: {top_share: 0.2}\n", [(6, "rules[0].uplift: applies to 'target: uplift' only")]),
    ("    target: uplift\n", [(3, "rules[0]: missing required key 'uplift' for 'target: uplift' (its threshold and/or top_share)")]),
    ("    target: uplift\n    uplift: {exploration: 0.2}\n",
     [(7, "rules[0].uplift: give 'threshold' (the least predicted uplift treated) and/or 'top_share' (of the candidates)")]),
    ("    target: uplift\n    uplift: {top_share: 0.2, exploration: 0}\n",
     [(7, "rules[0].uplift.exploration: must be at least 0.01, got 0: without decisions at random the model stops learning")]),
    ("    target: uplift\n    uplift: {top_share: 0}\n", [(7, "rules[0].uplift.top_share: must be > 0, got 0")]),
    ("    target: uplift\n    uplift:\n      top_share: 1.5\n      threshold: -2\n      exploration: yes\n",
     [(8, "rules[0].uplift.top_share: must be at most 1, got 1.5"), (9, "rules[0].uplift.threshold: must be >= -1, got -2"),
      (10, "rules[0].uplift.exploration: must be a number, got 'yes' (a yes/no value)")]),
    ("    target: uplift\n    uplift: {top_share: 0.2, cutoff: 3}\n", [(7, "rules[0].uplift.cutoff: unknown key; allowed here: exploration, threshold, top_share")]),
])
def test_uplift_keys_are_refused_with_their_line(extra: str, want: list[tuple[int, str]]) -> None:
    assert problems(extra) == want


def test_an_uplift_targeted_rule_in_a_bandit_group_is_refused() -> None:
    text = RULE.format(extra="    target: uplift\n    uplift: {top_share: 0.2}\n") + """  - name: d
    trigger: lapse
    action: coupon
    coupon: {percent: 20}
choose:
  - {trigger: lapse, action: coupon, by: bandit}
"""
    with pytest.raises(PolicyFileError) as info:
        load_policy_text(text, "p.yaml")
    assert info.value.problems == [(14, "choose[0]: a bandit chooses among rules, but 'c' (line 3) is targeted by uplift; use 'target: risk' in a bandit's group")]


# -- decisions --------------------------------------------------------------------------------

POLICY = """version: 1
control_share: 0.0
rules:
  - name: by_uplift
    trigger: lapse
    action: coupon
    target: uplift
    uplift: {{threshold: 0.1, exploration: {exploration}}}
    coupon: {{percent: 20}}
  - name: by_risk
    trigger: lapse
    action: coupon
    when: {{churn_at_least: 0.5}}
    coupon: {{percent: 10}}
"""


def decider(models: UpliftModels, exploration: float = 0.01) -> tuple[Decider, list[Candidate]]:
    row = UserScores("u", "t", features(UserState("u"), 0), {"churn": 0.7}, {"churn": "recency-prior"})
    d = Decider(load_policy_text(POLICY.format(exploration=exploration), "p.yaml"), lambda state, now, churn: row,
                uplift=lambda now: models)
    seen: list[Candidate] = []
    d.on_candidate = seen.append
    return d, seen


class Fixed(UpliftModels):
    """An uplift model that predicts one value for everyone (what a rule does with it)."""

    def __init__(self, value: float | None) -> None:
        super().__init__()
        self.value = value

    def predict(self, kind: str, x: dict[str, float]) -> float | None:
        return self.value


def test_an_uplift_rule_fires_for_a_high_prediction_and_says_why() -> None:
    d, seen = decider(Fixed(0.25))
    [action] = d("lapse", UserState("u"), 5, episode=1)
    assert action.reason.rule == "by_uplift" and action.payload["percent_off"] == 20
    u = action.reason.uplift
    assert (u.target, u.predicted, u.version, u.threshold) == ("uplift", 0.25, "uplift-2m+0@fresh", 0.1)
    assert [(c.rule, c.predicted, c.picked) for c in seen] == [("by_uplift", 0.25, True)]
    # the wire: the optional field round-trips and the JSON schema accepts it
    raw = encode_action(action)
    assert decode_action(raw) == action
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(msgspec.json.decode(raw), msgspec.json.decode(SCHEMA.read_bytes()))


def test_a_low_prediction_leaves_the_customer_to_the_next_rule_of_the_kind_which_carries_the_prediction_too() -> None:
    d, seen = decider(Fixed(0.02))
    [action] = d("lapse", UserState("u"), 5, episode=1)
    assert action.reason.rule == "by_risk"
    assert action.reason.uplift.target == "risk" and action.reason.uplift.predicted == 0.02
    assert [c.picked for c in seen] == [False]
    d, _ = decider(Fixed(None))  # not learned enough: only exploration fires the uplift rule
    assert d("lapse", UserState("u"), 5, episode=1)[0].reason.rule == "by_risk"


def test_exploration_fires_about_its_share_whatever_the_prediction_and_is_seeded_by_the_decision() -> None:
    d, _ = decider(Fixed(-0.5), exploration=0.3)
    fired = [d("lapse", UserState(f"u{i}"), 5 + i, episode=1)[0] for i in range(400)]
    explored = [a for a in fired if a.reason.rule == "by_uplift"]
    assert 0.22 < len(explored) / 400 < 0.38
    assert all(a.reason.uplift.explored and a.reason.uplift.predicted == -0.5 for a in explored)
    again, _ = decider(Fixed(-0.5), exploration=0.3)
    assert [again("lapse", UserState(f"u{i}"), 5 + i, episode=1)[0] for i in range(400)] == fired


def test_a_decision_of_a_learned_kind_matures_into_an_outcome_of_its_group_with_its_inputs() -> None:
    d, _ = decider(Fixed(0.25))
    [action] = d("lapse", UserState("u"), 5, episode=1)
    for group in ("treatment", "control"):
        waiting = awaiting_of(msgspec.structs.replace(action, group=group))
        waiting.converted = group == "treatment"
        [o] = outcomes_of([waiting])
        assert (o.kind, o.rule, o.group, o.converted, o.explored) == ("coupon", "by_uplift", group, group == "treatment", False)
        assert o.features == [action.reason.features[name] for name in MODEL_FEATURES]
    plain = RetentionAction(**{f: getattr(action, f) for f in action.__struct_fields__ if f != "reason"},
                            reason=msgspec.structs.replace(action.reason, uplift=msgspec.UNSET))
    assert outcomes_of([awaiting_of(plain)]) == []  # a kind whose uplift is not learned: nothing


# -- the judge --------------------------------------------------------------------------------

def test_the_judge_spends_each_days_budget_by_the_method_and_the_oracle_bounds_the_others() -> None:
    judged = [Judged(day, f"u{i}", churn=i / 10, predicted=(9 - i) / 10, tau=0.3 if i < 3 else (-0.2 if i > 7 else 0.05),
                     margin=0.0) for day in (1, 2) for i in range(10)]
    risk, uplift, oracle = (spend(judged, m, 0.2) for m in ("risk", "uplift", "oracle"))
    assert risk.coupons == uplift.coupons == oracle.coupons == 4
    # with the rule's threshold: only the top candidates predicted above it (each day 0.9 and 0.8 are the top two)
    assert spend(judged, "uplift>0", 0.2, threshold=0.75).coupons == 4 and spend(judged, "uplift>0", 0.2, threshold=0.85).coupons == 2
    assert risk.incremental == pytest.approx(-0.8) and uplift.incremental == pytest.approx(1.2) == oracle.incremental
    curves = {m: qini(judged, m, points=10) for m in ("risk", "uplift", "oracle", "random")}
    assert curves["uplift"][-1][1] == pytest.approx(sum(j.tau for j in judged) / 20)
    assert auuc(curves["oracle"]) >= auuc(curves["uplift"]) > auuc(curves["random"]) > auuc(curves["risk"])


def test_the_inputs_reference_learns_the_true_effect_from_the_other_customers_only() -> None:
    rng = random.Random(3)
    judged = []
    for i in range(400):
        clicks = rng.choice([0.0, 2.0, 20.0])
        tau = 0.3 if clicks > 10 else 0.05  # the effect follows an input
        judged.append(Judged(i % 10, f"u{i}", churn=rng.random(), predicted=None, tau=tau, margin=0.0,
                             inputs={"clicks_7d": clicks, "noise": rng.random()}))
    fitted = cross_fitted(judged)
    assert [j.tau for j in fitted] == [j.tau for j in judged]
    assert spend(fitted, "inputs", 0.2).incremental == pytest.approx(spend(fitted, "oracle", 0.2).incremental)
    assert spend(fitted, "inputs", 0.2).per_coupon > spend(fitted, "risk", 0.2).per_coupon + 0.1
    # a candidate's own effect never enters its own fit: changing it leaves its key as it was
    changed = cross_fitted([replace_tau(judged[0], 5.0)] + judged[1:])
    assert changed[0].fitted == pytest.approx(fitted[0].fitted)
    assert any(abs(a.fitted - b.fitted) > 1e-6 for a, b in zip(changed[1:], fitted[1:]))  # ... the other half learned it
    assert cross_fitted([]) == []


def replace_tau(j: Judged, tau: float) -> Judged:
    from dataclasses import replace

    return replace(j, tau=tau)


def test_the_summary_pairs_the_methods_by_seed_against_random_and_counts_the_answered_candidates() -> None:
    """Over seeds: per budget, risk and uplift against random per coupon (no treatment earns
    0, so a negative risk row is the loss of targeting by risk), paired by seed; and how many
    evaluation candidates the uplift model answered for (a model not ready ranks at random)."""
    from streams.simulation.targeting import SHARES, SeedResult, Spend, markdown, summary

    results = []
    for seed, (risk, uplift, random_) in enumerate(((-0.10, 0.02, -0.06), (-0.12, 0.00, -0.07), (-0.08, 0.04, -0.05)), 1):
        r = SeedResult(seed, candidates=100, decisions=10, uplift_learned=8, answered=90 + seed)
        for method, per in (("risk", risk), ("uplift", uplift), ("uplift>0", uplift), ("random", random_), ("latent", 0.1),
                            ("inputs", 0.0), ("oracle", 0.2)):
            r.spends[method] = {share: Spend(20, per * 20, 0.0) for share in SHARES}
            r.curves[method] = [(0.0, 0.0), (1.0, per)]
        results.append(r)
    s = summary(results)
    row = s["budgets"][0.2]
    assert row["risk_minus_random_per_coupon"][0] == pytest.approx(-0.04)
    assert row["risk_minus_random_per_coupon"][2] < 0  # the interval over the three seeds excludes 0
    assert row["uplift_minus_random_per_coupon"][0] == pytest.approx(0.08)
    assert row["uplift_over_risk"] is None  # risk earned nothing to divide by
    assert s["answered"] == [91, 92, 93]
    text = markdown("backfire", s)
    assert "with a prediction of the uplift model: 91, 92, 93" in text and "| risk - random, per coupon |" in text


# -- the features measurement (docs/uplift.md, "Features for targeting") ------------------------

def test_the_browsing_candidates_read_recent_depth_carts_and_the_visit_trend_from_the_day_tiles() -> None:
    from streams.domain.features import BEHAVIOUR, behaviour_features
    from streams.domain.timestamps import MS_PER_DAY

    now = 100 * MS_PER_DAY
    steady, fading = UserState("a"), UserState("b")
    for day in range(0, 101):  # a visit every other day: deep, no cart, at a steady pace ...
        if day % 2 == 0:
            steady.tiles.add(day * MS_PER_DAY, {"sessions": 1, "page_view": 1, "product_view": 4}, now=day * MS_PER_DAY)
    for day in range(0, 101):  # ... against visits that thin out, shallow and with abandoned carts lately
        if day < 80 or day % 5 == 0:
            late = day >= 80
            fading.tiles.add(day * MS_PER_DAY, {"sessions": 1, "page_view": 1, "product_view": 1 if late else 4,
                                                "add_to_cart": int(late), "carts_abandoned": int(late)}, now=day * MS_PER_DAY)
    a, b = behaviour_features(steady, now), behaviour_features(fading, now)
    assert set(a) == set(b) == {f.name for f in BEHAVIOUR}
    assert a["browse_depth_14d"] == 5.0 and a["browse_depth_ew"] == pytest.approx(5.0) and a["cart_rate_14d"] == a["abandon_rate_14d"] == 0.0
    assert b["browse_depth_14d"] == 2.0 and b["cart_rate_14d"] == b["abandon_rate_14d"] == 1.0
    assert 2.0 <= b["browse_depth_ew"] < 3.0  # the latest, shallow days weigh most
    assert 0.8 < a["visit_trend"] < 1.2 and b["visit_trend"] < 0.6 * a["visit_trend"]
    assert behaviour_features(UserState("c"), now) == dict.fromkeys(b, 0.0)


def test_a_candidate_carries_its_browsing_candidates() -> None:
    from streams.domain.features import behaviour_features

    d, seen = decider(Fixed(0.25))
    state = UserState("u")
    state.tiles.add(1, {"sessions": 2, "page_view": 6}, now=1)
    d("lapse", state, 5, episode=1)
    assert [c.behaviour for c in seen] == [behaviour_features(state, 5)] and seen[0].behaviour["browse_depth_14d"] == 3.0


def test_the_states_reference_ranks_by_the_state_the_inputs_tell_and_observable_merges_the_recently_recovered() -> None:
    from streams.simulation.targeting import BEHAVIOUR_NAMES, auc, feature_references, observable, state_fitted

    rng = random.Random(5)
    judged = []
    for i in range(600):
        state = rng.choice(["churned", "drifting", "loyal"])
        depth = {"churned": 0.0, "drifting": 2.0, "loyal": 5.0}[state] + rng.random()  # a browsing feature tells the state
        tau = {"churned": 0.15, "drifting": 0.3, "loyal": 0.0}[state] * (rng.random() < 0.9)
        recovered = state == "loyal" and i % 3 == 0
        judged.append(Judged(i % 10, f"u{i}", churn=rng.random(), predicted=None, tau=tau, margin=0.0, state=state,
                             inputs={"clicks_7d": 0.0 if state == "churned" else 5.0, "noise": rng.random()},
                             behaviour=dict.fromkeys(BEHAVIOUR_NAMES, 0.0) | {"browse_depth_ew": depth},
                             since_days=2.0 if recovered else 40.0, previous="drifting" if recovered else "new"))
    with_depth = state_fitted(judged, ["browse_depth_ew"])
    drifting = [j.state == "drifting" for j in judged]
    active = [j.state != "churned" for j in judged]
    assert auc([k for k, a in zip(with_depth, active) if a], [d for d, a in zip(drifting, active) if a]) > 0.95
    without = state_fitted(judged)  # the inputs alone see active or not, not which
    assert auc([k for k, a in zip(without, active) if a], [d for d, a in zip(drifting, active) if a]) < 0.65
    means = observable(judged, 7.0)
    assert set(means) == {"churned", "drifting", "loyal"} and means["loyal"] == 0.0 < means["drifting"] < observable(judged, 0.0)["drifting"]
    report = feature_references(judged, ["browse_depth_ew"])
    per = report["per_coupon"]
    assert per["inputs + browsing, states"][0.1] > per["inputs, states"][0.1] + 0.05
    assert per["latent"][0.1] >= per["observable 7 d"][0.1]
    assert report["recovered_7d"] == sum(j.state == "loyal" and j.since_days < 7 for j in judged)
