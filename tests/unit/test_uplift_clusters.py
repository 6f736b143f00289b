"""The per-customer (cluster) uplift interval: exact figures, Newcombe with one decision per
customer, coverage with correlated decisions, and old states and tallies still loading."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from scipy.optimize import brentq

from streams.domain.state import UserState, dump_state, load_state
from streams.domain.uplift import Clusters, Counts, Tally, cluster_newcombe, count_matured, design_effect, load_tally, newcombe, report


def sums(customers: list[tuple[int, int]]) -> Clusters:
    n = np.array([c[0] for c in customers])
    y = np.array([c[1] for c in customers])
    return Clusters(len(n), int(n.sum()), int(y.sum()), int((n * n).sum()), int((n * y).sum()), int((y * y).sum()))


TREATED = [(3, 3), (2, 0), (1, 1), (4, 1), (2, 2)]  # (decisions, conversions) per customer
CONTROL = [(2, 0), (3, 1), (1, 0), (2, 2)]


def test_the_tally_sums_are_the_customers_and_the_design_effect_is_the_sandwich_over_the_binomial_variance() -> None:
    tally, mine = Tally(), [{} for _ in TREATED]
    for i, (n, y) in enumerate(TREATED):  # decisions mature one at a time, interleaved across rules
        for j in range(n):
            count_matured(tally, mine[i], "recommendation", f"r{j % 2}", "treatment", j < y)
    assert tally.clusters["recommendation|treatment"] == sums(TREATED)
    # by hand: N = 12, Y = 7, p = 7/12; residuals y_i - p n_i from the decision-level data
    n, y = np.array([c[0] for c in TREATED]), np.array([c[1] for c in TREATED])
    p = y.sum() / n.sum()
    v_cluster = 5 / 4 * ((y - p * n) ** 2).sum() / n.sum() ** 2
    v_binom = p * (1 - p) / (n.sum() - 1)
    assert design_effect(sums(TREATED)) == pytest.approx(v_cluster / v_binom, rel=1e-12)
    # yy = 15, ny = 18, nn = 34: N^2 sum (y_i - p n_i)^2 = 144*15 - 2*12*7*18 + 49*34 = 802; C (N-1) 802 / ((C-1) N^2 Y (N-Y))
    assert design_effect(sums(TREATED)) == 5 * 11 * 802 / (4 * 144 * 7 * 5)


def score_limits(x: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson limits as the roots of the score equation (an independent computation)."""
    p = x / n
    f = lambda q: (p - q) ** 2 - z * z * q * (1 - q) / n  # noqa: E731
    return (brentq(f, 1e-12, p) if p > 0 else 0.0), (brentq(f, p, 1 - 1e-12) if p < 1 else 1.0)


def test_exact_interval_against_the_score_equation_on_the_effective_counts() -> None:
    t, c = Counts(12, 12, 7), Counts(8, 8, 3)
    d1, d2 = design_effect(sums(TREATED)), design_effect(sums(CONTROL))
    est, lo, hi = cluster_newcombe(t, c, d1, d2)
    l1, u1 = score_limits(7 / d1, 12 / d1)
    l2, u2 = score_limits(3 / d2, 8 / d2)
    p1, p2 = 7 / 12, 3 / 8
    assert est == pytest.approx(p1 - p2)
    assert lo == pytest.approx(p1 - p2 - np.hypot(p1 - l1, u2 - p2), abs=1e-9)
    assert hi == pytest.approx(p1 - p2 + np.hypot(u1 - p1, p2 - l2), abs=1e-9)
    assert hi - lo > newcombe(7, 12, 3, 8)[2] - newcombe(7, 12, 3, 8)[1]  # wider than per decision


def test_one_decision_per_customer_is_exactly_newcombe() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        nt, nc = int(rng.integers(2, 80)), int(rng.integers(2, 80))
        yt, yc = rng.integers(0, 2, nt), rng.integers(0, 2, nc)
        st, sc = sums([(1, int(v)) for v in yt]), sums([(1, int(v)) for v in yc])
        assert design_effect(st) == 1.0 and design_effect(sc) == 1.0
        got = cluster_newcombe(Counts(nt, nt, int(yt.sum())), Counts(nc, nc, int(yc.sum())), design_effect(st), design_effect(sc))
        assert got == newcombe(int(yt.sum()), nt, int(yc.sum()), nc)


def arm(rng: np.random.Generator, customers: int, a: float, b: float, mean_n: float) -> tuple[Counts, Clusters]:
    p = rng.beta(a, b, customers)  # each customer's own propensity: its decisions are correlated
    n = 1 + rng.poisson(mean_n - 1, customers)
    y = rng.binomial(n, p)
    return Counts(int(n.sum()), int(n.sum()), int(y.sum())), sums(list(zip(n.tolist(), y.tolist())))


def test_with_correlated_decisions_the_cluster_interval_covers_and_the_per_decision_one_does_not() -> None:
    rng = np.random.default_rng(11)
    runs, truth = 1500, 0.35 - 0.25
    cluster = plain = 0
    for _ in range(runs):
        t, ts = arm(rng, 80, 0.7, 1.3, 5)  # mean 0.35
        c, cs = arm(rng, 30, 0.5, 1.5, 5)  # mean 0.25: a small control group, as in the demo
        _, lo, hi = cluster_newcombe(t, c, design_effect(ts), design_effect(cs))
        cluster += lo <= truth <= hi
        _, lo, hi = newcombe(t.converted, t.matured, c.converted, c.matured)
        plain += lo <= truth <= hi
    assert 0.925 <= cluster / runs <= 0.97
    assert plain / runs < 0.85  # the defect: independent decisions are too narrow


def test_report_names_the_method_and_customers_and_old_states_and_tallies_load() -> None:
    tally, mine = Tally(), {}
    for g, data in (("treatment", TREATED), ("control", CONTROL)):
        for n, y in data:
            mine = {}
            for j in range(n):
                tally.counts("recommendation", "r", g).matured += 1
                tally.counts("recommendation", "r", g).converted += j < y
                count_matured(tally, mine, "recommendation", "r", g, j < y)
    r = report(load_tally(msgspec.msgpack.encode(msgspec.to_builtins(tally))))["by_kind"]["recommendation"]
    assert r["treatment"]["customers"] == 5 and r["control"]["customers"] == 4 and r["uplift"]["method"] == "cluster-newcombe"
    old = load_tally(msgspec.msgpack.encode({"decisions": msgspec.to_builtins(tally.decisions), "outcomes": {}}))
    assert old.clusters == {} and report(old)["by_kind"]["recommendation"]["uplift"]["method"] == "newcombe"
    state = UserState("u1", attributed=mine)
    fields = msgspec.msgpack.decode(dump_state(state))
    before = UserState.__struct_fields__.index("attributed")  # the fields of a state encoded before it
    assert load_state(msgspec.msgpack.encode(fields[:before])).attributed == {}
    assert load_state(dump_state(state)).attributed == mine
