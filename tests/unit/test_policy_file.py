"""The policy file: the default loads and equals today's rule; every kind of invalid file
is refused with a message naming the file, the line and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.domain.policy import PolicyConfig
from streams.domain.policy_file import DEFAULT_POLICY, Coupon, PolicyFileError, load_policy, load_policy_text

GOOD = """\
version: 1
rules:
  - name: lapsed_after_streak
    trigger: lapse
    action: coupon
    when:
      churn_at_least: 0.5
    coupon:
      percent: 10
"""


def test_default_file_loads_and_gives_todays_rule() -> None:
    policy = load_policy(DEFAULT_POLICY)
    assert policy.lapse_config() == PolicyConfig()
    assert [(r.name, r.trigger, r.action) for r in policy.rules] == [
        ("vip_lapsed_after_streak", "lapse", "coupon"),
        ("lapsed_after_streak", "lapse", "coupon"),
        ("care_after_negative_review", "negative_review", "care_outreach"),
        ("recommend_when_at_risk", "sweep", "recommendation"),
        ("recommend_after_abandoned_cart", "abandoned_cart", "recommendation"),
        ("recommend_after_first_purchase", "first_purchase", "recommendation"),
    ]
    vip, base = policy.rules[0], policy.rules[1]
    assert vip.when.loyalty_tiers == ("gold", "platinum") and vip.when.min_order_value == 80 and vip.when.tiered
    assert vip.coupon == Coupon(percent=20, max_value=40, valid_days=14)
    assert base.coupon == Coupon(percent=10, valid_days=14) and not base.when.tiered
    assert policy.rules[2].care is not None and policy.rules[2].care.priority == "high"
    assert policy.rules[3].when.stages == ("at_risk", "reactivated")
    assert policy.guards.daily_budget.per_kind["coupon"].value == 20_000


def test_minimal_file_takes_the_documented_defaults() -> None:
    policy = load_policy_text(GOOD)
    assert policy.lapse_config() == PolicyConfig()
    assert policy.guards.cooldown_days == {"coupon": 30.0, "recommendation": 7.0, "care_outreach": 14.0}
    assert policy.guards.daily_budget.count == 10_000


def test_changed_values_reach_the_rule() -> None:
    text = GOOD.replace("percent: 10", "percent: 15\n      valid_days: 7").replace("0.5", "0.6")
    cfg = load_policy_text("lapse: {min_purchases: 4}\n" + text).lapse_config()
    assert (cfg.coupon_percent, cfg.coupon_ttl_days, cfg.churn_threshold, cfg.streak_min_purchases) == (15, 7, 0.6, 4)


def test_tiered_offers_come_first_and_the_base_rule_configures_the_lapse_check() -> None:
    tier = GOOD.split("rules:\n")[1].replace("lapsed_after_streak", "vip").replace("percent: 10", "percent: 25").replace(
        "churn_at_least: 0.5", "churn_at_least: 0.4\n      loyalty_tiers: [gold]")
    policy = load_policy_text(GOOD.replace("rules:\n", "rules:\n" + tier))
    assert [r.name for r in policy.rules] == ["vip", "lapsed_after_streak"]
    assert policy.lapse_config() == PolicyConfig()  # the base rule's threshold and coupon
    for trigger in ("abandoned_cart", "first_purchase"):
        text = f"version: 1\nrules:\n- {{name: r, trigger: {trigger}, action: recommendation, recommendation: {{items: 3}}}}\n"
        assert load_policy_text(text).rules[0].trigger == trigger


def refused(text: str) -> PolicyFileError:
    with pytest.raises(PolicyFileError) as info:
        load_policy_text(text, "policy.yaml")
    return info.value


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (("percent: 10", "percent: 150"), 9, "rules[0].coupon.percent: must be at most 100, got 150"),
        (("percent: 10", "percent: ten"), 9, "rules[0].coupon.percent: must be a number, got 'ten'"),
        (("percent: 10", "percent: 10\n      colour: red"), 10, "rules[0].coupon.colour: unknown key"),
        (("action: coupon", "action: voucher"), 5, "rules[0].action: unknown action kind 'voucher'; expected one of: coupon, recommendation, care_outreach"),
        (("trigger: lapse", "trigger: moon"), 4, "rules[0].trigger: unknown trigger 'moon'"),
        (("churn_at_least: 0.5", "stages: [at_risk, dormant]"), 7, "rules[0].when.stages[1]: unknown lifecycle stage 'dormant'"),
        (("churn_at_least: 0.5", "churn_at_least: 1.5"), 7, "rules[0].when.churn_at_least: must be at most 1, got 1.5"),
        (("churn_at_least: 0.5", "churn_at_least: 0.5\n      churn_below: 0.3"), 8, "churn_below: must be above churn_at_least (0.5)"),
        (("percent: 10", "amount: 5"), 9, "rules[0].coupon: an 'amount' coupon needs a 'currency'"),
        (("percent: 10", "percent: 10\n      amount: 5"), 9, "give exactly one of 'percent' and 'amount'"),
        (("percent: 10", "amount: 5\n      currency: euro"), 10, "currency: must be a three-letter ISO currency code"),
        (("version: 1", "version: 2"), 1, "version: unsupported version 2"),
        (("    coupon:\n      percent: 10\n", "    care:\n      priority: high\n"), 3, "rules[0]: missing required key 'coupon' for a coupon action"),
        (("name: lapsed_after_streak", "name: Lapsed Rule"), 3, "rules[0].name: must be a name of lower-case letters"),
        (("churn_at_least: 0.5", "loyalty_tiers: gold"), 7, "rules[0].when.loyalty_tiers: must be a non-empty list of loyalty tier names, got 'gold'"),
        (("churn_at_least: 0.5", "loyalty_tiers: [gold, Gold]"), 7, "rules[0].when.loyalty_tiers[1]: must be a loyalty tier name"),
        (("churn_at_least: 0.5", "min_order_value: -3"), 7, "rules[0].when.min_order_value: must be >= 0, got -3"),
        (("trigger: lapse", "trigger: abandoned_carts"), 4, "unknown trigger 'abandoned_carts'; expected one of: lapse, negative_review, sweep, abandoned_cart, first_purchase"),
    ],
)
def test_invalid_files_are_refused_naming_line_and_problem(edit: tuple[str, str], line: int, words: str) -> None:
    err = refused(GOOD.replace(*edit))
    assert any(l == line and words in msg for l, msg in err.problems), err.problems
    assert f"policy.yaml:{line}: " in str(err)


def test_guard_problems_name_their_lines() -> None:
    text = GOOD + """\
guards:
  cooldown_days:
    coupon: -1
    gift: 3
  checkout_window_minutes: soon
  daily_budget:
    count: -5
    per_kind:
      care_outreach: {count: 2, value: 10}
"""
    err = refused(text)
    assert err.problems == [
        (12, "guards.cooldown_days.coupon: must be >= 0, got -1"),
        (13, "guards.cooldown_days.gift: unknown key; allowed here: care_outreach, coupon, recommendation"),
        (14, "guards.checkout_window_minutes: must be a number, got 'soon'"),
        (16, "guards.daily_budget.count: must be >= 0, got -5"),
        (18, "guards.daily_budget.per_kind.care_outreach.value: a value budget applies to coupons only"),
    ]
    assert str(err).startswith("policy.yaml: 5 problems\n  policy.yaml:12: ")


def test_structural_problems() -> None:
    assert refused(GOOD + "rules: []\n").problems == [(10, "rules: duplicate key (first given on line 2)")]
    assert refused("rules: []\n").problems == [(1, "file: missing required key 'version'")]
    assert refused("version: 1\nrules: {a: 1}\n").problems == [(2, "rules: must be a list of rules, got a mapping")]
    assert refused("- 1\n").problems == [(1, "file: must be a mapping of keys to values, got a list")]
    assert refused("").problems == [(1, "the file is empty")]
    dup = GOOD + GOOD.split("rules:\n")[1]
    assert (10, "rules[1].name: duplicate rule name 'lapsed_after_streak' (first on line 3)") in refused(dup).problems


def test_yaml_syntax_errors_name_the_line() -> None:
    err = refused("version: 1\nrules: [\n  {name: x\n")
    assert err.problems[0][0] == 4 and "not valid YAML" in err.problems[0][1]


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read the file"):
        load_policy(tmp_path / "missing.yaml")


def test_the_cli_check_and_the_worker_refuse_an_invalid_file_naming_line_and_problem(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    bad = tmp_path / "policy.yaml"
    bad.write_text(DEFAULT_POLICY.read_text().replace("percent: 20", "percent: 200"))
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "percent: 200" in text)
    want = f"{bad}:{line}: rules[0].coupon.percent: must be at most 100, got 200"
    env = {**os.environ, "RETENTION_POLICY_FILE": str(bad), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    def run(args: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True, timeout=60)

    refused = (["policy", "check"], ["worker"])  # the worker stops before it connects to anything
    with ThreadPoolExecutor(3) as pool:  # the three at once: each spends seconds on its imports
        checked = pool.submit(run, ["policy", "check", str(DEFAULT_POLICY)], None)
        for args, result in zip(refused, list(pool.map(run, refused, [env] * len(refused)))):
            assert result.returncode == 2 and want in result.stderr, (args, result.stderr[-2000:])
        ok = checked.result()
    assert ok.returncode == 0 and "valid" in ok.stdout and "lapsed_after_streak: lapse -> coupon" in ok.stdout
