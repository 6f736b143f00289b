"""loyalty_score (percentile among current customers) and tiers: explicit values."""

from __future__ import annotations

import pytest

from models.score import Score
from streams.domain.loyalty import DEFAULT_TIERS, LoyaltyRanks, parse_tiers, rank_loyalty, tier_of
from streams.domain.timestamps import MS_PER_DAY

TIERS = parse_tiers(DEFAULT_TIERS)


def filled(values: dict[str, float], capacity: int = 100, now: int = 0) -> LoyaltyRanks:
    ranks = LoyaltyRanks(capacity=capacity, current_days=365)
    for user, value in values.items():
        ranks.update(user, value, last_purchase=now, now=now)
    return ranks


def test_percentile_counts_customers_below_and_ties_half_with_the_customer_among_them() -> None:
    ranks = filled({"a": 0.0, "b": 1.0, "c": 1.0, "d": 3.0})
    assert ranks.percentile("a", 0.0) == pytest.approx(0.5 / 4)  # nobody below, itself half
    assert ranks.percentile("b", 1.0) == pytest.approx(2 / 4)  # a below; b and c tie: (1 + 2 / 2) / 4
    assert ranks.percentile("c", 1.0) == ranks.percentile("b", 1.0)  # equal predictions, equal scores
    assert ranks.percentile("d", 3.0) == pytest.approx(3.5 / 4)
    # someone not in the distribution is counted among them at their value: 5 customers
    assert ranks.percentile("new", 2.0) == pytest.approx(3.5 / 5)
    assert ranks.percentile("new", 1.0) == pytest.approx((1 + 3 / 2) / 5)
    # a customer's own kept value does not count twice: d now predicted 0.5
    assert ranks.percentile("d", 0.5) == pytest.approx(1.5 / 4)


def test_the_only_customer_is_at_the_middle_and_an_empty_distribution_gives_one_half() -> None:
    assert LoyaltyRanks().percentile("a", 7.0) == 0.5
    assert filled({"a": 7.0}).percentile("a", 7.0) == 0.5


def test_a_customer_keeps_one_latest_value() -> None:
    ranks = filled({"a": 1.0, "b": 2.0})
    for _ in range(10):
        ranks.update("a", 5.0, last_purchase=0, now=0)
    assert len(ranks) == 2
    assert ranks.percentile("b", 2.0) == pytest.approx(0.5 / 2)  # a (5.0) is above b now


def test_customers_leave_when_their_last_purchase_leaves_the_window() -> None:
    ranks = LoyaltyRanks(capacity=100, current_days=365)
    ranks.update("old", 1.0, last_purchase=0, now=0)
    ranks.update("recent", 2.0, last_purchase=100 * MS_PER_DAY, now=100 * MS_PER_DAY)
    ranks.update("recent", 2.0, last_purchase=100 * MS_PER_DAY, now=365 * MS_PER_DAY)
    assert len(ranks) == 2  # "old" bought exactly 365 days before: still current
    ranks.update("recent", 2.0, last_purchase=100 * MS_PER_DAY, now=365 * MS_PER_DAY + 1)
    assert len(ranks) == 1 and ranks.percentile("recent", 2.0) == 0.5
    # a customer who never bought, or bought too long ago, is not kept (and loses an older value)
    ranks.update("never", 9.0, last_purchase=None, now=365 * MS_PER_DAY + 1)
    ranks.update("recent", 2.0, last_purchase=0, now=365 * MS_PER_DAY + 1)
    assert len(ranks) == 0


def test_a_new_purchase_keeps_a_customer_current() -> None:
    ranks = LoyaltyRanks(capacity=100, current_days=10)
    ranks.update("a", 1.0, last_purchase=0, now=0)
    ranks.update("a", 1.0, last_purchase=8 * MS_PER_DAY, now=8 * MS_PER_DAY)
    ranks.expire(15 * MS_PER_DAY)  # the heap still holds a's first purchase: it must not remove a
    assert len(ranks) == 1
    ranks.expire(19 * MS_PER_DAY)
    assert len(ranks) == 0


def test_memory_stays_bounded_by_the_capacity() -> None:
    ranks = LoyaltyRanks(capacity=10, current_days=365)
    for i in range(5000):
        ranks.update(f"u{i % 50}", i % 7, last_purchase=i * 1000, now=i * 1000)
    assert len(ranks) == 10 and len(ranks._sorted) == 10
    assert len(ranks._by_purchase) <= 4 * 10 + 64


def test_capacity_drops_the_least_recently_published() -> None:
    ranks = filled({"a": 1.0, "b": 2.0, "c": 3.0}, capacity=3)
    ranks.update("a", 1.0, last_purchase=0, now=0)  # a is now the most recent
    ranks.update("d", 4.0, last_purchase=0, now=0)  # drops b
    assert len(ranks) == 3
    assert ranks.percentile("x", 2.5) == pytest.approx(1.5 / 4)  # only a below among a, c, d


def test_merge_keeps_each_customers_latest_value() -> None:
    one = LoyaltyRanks(capacity=10)
    two = LoyaltyRanks(capacity=10)
    one.update("a", 1.0, last_purchase=0, now=0)
    one.update("b", 2.0, last_purchase=0, now=MS_PER_DAY)
    two.update("b", 8.0, last_purchase=0, now=2 * MS_PER_DAY)  # later: wins
    two.update("c", 3.0, last_purchase=0, now=MS_PER_DAY)
    merged = one.merge(two)
    assert len(merged) == 3
    assert merged.percentile("b", 8.0) == pytest.approx(2.5 / 3)
    assert merged.percentile("a", 1.0) == pytest.approx(0.5 / 3)
    assert len(one) == 2 and len(two) == 2  # the inputs are left alone


def test_tiers_follow_the_cut_points() -> None:
    assert TIERS == (("bronze", 0.0), ("silver", 0.5), ("gold", 0.8), ("platinum", 0.95))
    assert [tier_of(s, TIERS) for s in (0.0, 0.4999, 0.5, 0.79, 0.8, 0.9499, 0.95, 1.0)] == [
        "bronze", "bronze", "silver", "silver", "gold", "gold", "platinum", "platinum"]
    assert tier_of(0.3, parse_tiers("all:0")) == "all"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not name:cut-point"),
        ("bronze", "not name:cut-point"),
        ("bronze:0,silver", "not name:cut-point"),
        ("bronze:0.1,silver:0.5", "must start at 0"),
        ("bronze:0,silver:0.5,gold:0.5", "must increase"),
        ("bronze:0,silver:0.8,gold:0.5", "must increase"),
        ("bronze:0,silver:1.5", "in [0, 1]"),
        ("bronze:0,silver:nan", "in [0, 1]"),
        ("bronze:0,silver:half", "not a number"),
        ("Bronze:0", "must match"),
        ("bronze:0,bronze:0.5", "named twice"),
        ("gold tier:0", "must match"),
    ],
)
def test_bad_tier_settings_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_tiers(text)


def test_rank_loyalty_publishes_and_a_lookup_reads_the_same_percentile() -> None:
    ranks = filled({"a": 0.2, "b": 0.4, "c": 3.0})
    published = rank_loyalty(ranks, "u", 0, 0, Score(1.0, "loyalty-log-linear+60"), TIERS)
    assert published.percentile == pytest.approx(2.5 / 4) and published.tier == "silver"
    assert len(ranks) == 4
    looked_up = rank_loyalty(ranks, "u", 0, 0, Score(1.0, "loyalty-log-linear+60"), TIERS, learn=False)
    assert looked_up == published and len(ranks) == 4
    # a lookup with a new prediction does not change the distribution
    top = rank_loyalty(ranks, "u", 0, 0, Score(9.0, "loyalty-log-linear+60"), TIERS, learn=False)
    assert top.percentile == pytest.approx(3.5 / 4) and top.tier == "gold"
    assert ranks.percentile("x", 2.0) == pytest.approx(3.5 / 5)  # u still kept at 1.0
