"""The control group drawn per customer or per customer and kind (``control_by``, docs/uplift.md)."""

from __future__ import annotations

from dataclasses import replace
from hashlib import blake2b

import pytest

from streams.domain.actions import experiment_group
from streams.domain.engine import EngineConfig
from streams.domain.events import Review
from streams.domain.policy import PolicyConfig
from streams.domain.policy_file import DEFAULT_POLICY, load_policy, load_policy_text
from streams.domain.state import UserState
from streams.domain.engine import on_event
from streams.simulation import OfferEffects, Shop, SimulationConfig
from streams.simulation.loop import closed_loop
from streams.simulation.offers import Offered, OfferTruth, itt_truth_report
from tests.unit.test_policy_file import GOOD, refused
from tests.unit.test_rules import CFG, day, decider

USERS = [f"cust-{i}" for i in range(4000)]
KINDS = ("coupon", "recommendation", "care_outreach")


def todays_group(user_id: str, share: float) -> str:
    """experiment_group as it was before ``control_by`` (commit 040e347), written out."""
    digest = blake2b(f"retention-v1\x1f{user_id}".encode(), digest_size=8).digest()
    return "control" if int.from_bytes(digest, "big") / 2**64 < share else "treatment"


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
def test_by_customer_is_todays_assignment_for_every_kind(share: float) -> None:
    today = [todays_group(u, share) for u in USERS]
    assert [experiment_group(u, share) for u in USERS] == today
    for kind in KINDS:
        assert [experiment_group(u, share, kind=kind) for u in USERS] == today
        assert [experiment_group(u, share, kind=kind, by="customer") for u in USERS] == today
    # pinned: the first control customers at 0.5 (the integration tests pick users by it)
    assert [u for u in USERS[:12] if experiment_group(u, 0.5) == "control"] == [
        u for u in USERS[:12] if todays_group(u, 0.5) == "control"
    ]


def test_by_kind_draws_each_kind_independently_and_stably() -> None:
    groups = {k: [experiment_group(u, 0.5, kind=k, by="kind") for u in USERS] for k in KINDS}
    assert groups == {k: [experiment_group(u, 0.5, kind=k, by="kind") for u in USERS] for k in KINDS}  # deterministic
    n = len(USERS)
    for k in KINDS:
        assert 0.46 <= groups[k].count("control") / n <= 0.54  # each kind keeps the share (se 0.008)
    coupon, reco = groups["coupon"], groups["recommendation"]
    assert coupon != reco
    both = sum(c == r == "control" for c, r in zip(coupon, reco)) / n
    assert 0.22 <= both <= 0.28  # independent: 0.5 x 0.5 (se 0.007); one group per customer would give 0.5
    mixed = sum(c != todays_group(u, 0.5) for u, c in zip(USERS, coupon)) / n
    assert 0.45 <= mixed <= 0.55  # by kind is a new draw: about half the customers change a kind's group
    share = [experiment_group(u, 0.1, kind="coupon", by="kind") for u in USERS].count("control") / n
    assert 0.08 <= share <= 0.12
    assert all(experiment_group(u, 0.0, kind="coupon", by="kind") == "treatment" for u in USERS[:200])
    assert all(experiment_group(u, 1.0, kind="coupon", by="kind") == "control" for u in USERS[:200])


def test_by_kind_needs_the_kind_and_an_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="needs the action kind"):
        experiment_group("u1", 0.5, by="kind")
    with pytest.raises(ValueError, match="unknown control_by 'rule'"):
        experiment_group("u1", 0.5, kind="coupon", by="rule")  # type: ignore[arg-type]


def test_the_policy_file_reads_control_by_with_customer_as_default() -> None:
    assert load_policy_text(GOOD, "p.yaml").control_by == "customer"
    assert load_policy(DEFAULT_POLICY).control_by == "customer"  # shipped: nobody moves between groups
    policy = load_policy_text(GOOD.replace("version: 1", "version: 1\ncontrol_by: kind"), "p.yaml")
    assert policy.control_by == "kind"
    assert policy.lapse_config() == replace(PolicyConfig(), control_by="kind")


@pytest.mark.parametrize(("value", "words"), [
    ("rule", "control_by: unknown control_by 'rule'; expected one of: customer, kind"),
    ("3", "control_by: unknown control_by '3'; expected one of: customer, kind"),
    ("[kind]", "control_by: must be a single value"),
])
def test_an_invalid_control_by_is_refused_naming_line_and_problem(value: str, words: str) -> None:
    err = refused(GOOD.replace("version: 1", f"version: 1\ncontrol_by: {value}"))
    assert any(line == 2 and words in msg for line, msg in err.problems), err.problems
    assert "policy.yaml:2: control_by: " in str(err)


def test_the_rules_draw_the_group_of_the_actions_kind() -> None:
    text = kind_policy_text()
    act = decider(policy=load_policy_text(text, "policy.yaml"))
    users = [str(i) for i in range(200)]
    review = lambda u: Review(event_id=f"r-{u}", user_id=u, ts=day(3), item_id="i1", rating=1, text="bad")  # noqa: E731
    groups = [on_event(UserState(u), review(u), day(3), CFG, sentiment=-0.9, act=act).actions[0].group for u in users]
    assert groups == [experiment_group(u, 0.5, kind="care_outreach", by="kind") for u in users]
    assert groups != [experiment_group(u, 0.5) for u in users]


def kind_policy_text() -> str:
    """The shipped policy with half the customers in control, drawn per kind."""
    text = DEFAULT_POLICY.read_text()
    assert "\ncontrol_share: 0.1\n" in text and "\ncontrol_by: customer\n" in text
    return text.replace("\ncontrol_share: 0.1\n", "\ncontrol_share: 0.5\n").replace("\ncontrol_by: customer\n", "\ncontrol_by: kind\n")


def offer(aid: str, user: str, kind: str, group: str, decided: float, extra: float | None) -> OfferTruth:
    fx = OfferEffects()
    return OfferTruth(Offered(aid, user, kind, "r", group, day(decided), None), day(decided) + fx.window_ms, "loyal",
                      0.3, extra is not None, start_ms=day(decided), p_works=0.3, extra_ms=None if extra is None else day(extra))


def test_the_itt_truth_per_kind_counts_only_the_kinds_own_offers_and_the_others_actual_purchases_as_y0() -> None:
    # u1: a control coupon, then a treated recommendation that brought a purchase on day 3
    # u2: a treated coupon that brought one on day 2, then a control recommendation that would have on day 1.5
    offers = [offer("a1", "u1", "coupon", "control", 0, 4), offer("a2", "u1", "recommendation", "treatment", 1, 3),
              offer("a3", "u2", "coupon", "treatment", 0, 2), offer("a4", "u2", "recommendation", "control", 1, 1.5)]
    extra = {"u1": [(day(3), "a2")], "u2": [(day(2), "a3")]}
    args = (offers, {"u1": [], "u2": []}, extra, OfferEffects(), day(100))
    kind = itt_truth_report(*args, control_by="kind")
    # u1's coupon: the recommendation's purchase happens in both coupon worlds (Y0); u2's: the coupon works
    assert kind["coupon"]["true_uplift"] == 0.5 and kind["coupon"]["own_kind_uplift"] == 0.5
    assert kind["coupon"]["y0_rate_by_group"] == {"treatment": 0.0, "control": 1.0}
    # u1's recommendation works (nothing before it bought); u2's: the coupon's purchase is its Y0
    assert kind["recommendation"]["true_uplift"] == 0.5 and kind["recommendation"]["y0_rate"] == 0.5
    customer = itt_truth_report(*args)  # one assignment: the recommendation's purchase is u1's coupon-entry effect
    assert customer["coupon"]["true_uplift"] == 1.0 and customer["coupon"]["y0_rate"] == 0.0
    assert itt_truth_report(*args, control_by="customer") == customer
    with pytest.raises(ValueError, match="unknown control_by"):
        itt_truth_report(*args, control_by="rule")


def test_on_the_closed_loop_every_action_carries_its_kinds_group_and_the_truth_counts_the_same_entrants() -> None:
    text = kind_policy_text()
    policy = load_policy_text(text, "policy.yaml")
    shop = Shop(SimulationConfig(customers=80, new_customers_per_day=0, days=60, seed=3), OfferEffects().scaled(2))
    result = closed_loop(shop, EngineConfig(policy=policy.lapse_config()), policy=policy)
    assert result.actions
    assert all(a.group == experiment_group(a.user_id, 0.5, kind=a.kind, by="kind") for a in result.actions)
    kinds_of: dict[str, set[str]] = {}
    for a in result.actions:
        kinds_of.setdefault(a.user_id, set()).add(a.group)
    assert any(len(g) == 2 for g in kinds_of.values())  # some customers are treated for one kind, control for another
    truth = shop.itt_truth(result.now_ms, policy.control_by)
    for kind, row in truth.items():
        if "/" in kind:
            continue
        assert row["treatment"] + row["control"] == row["customers"]
        assert row["own_kind_uplift"] == row["true_uplift"]  # per kind only the kind's own offers are assigned
