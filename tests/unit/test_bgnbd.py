"""BG/NBD: the paper's CDNOW numbers, parameter recovery, closed forms against the
generative process, and edge cases."""

from __future__ import annotations

import csv
import math
from datetime import date

import numpy as np
import pytest
from scipy import integrate
from scipy.special import beta as beta_fn

from models.bgnbd import MS_PER_DAY, BgNbd, History, Summary, purchase_days_in, simulate, summarize
from models.datasets import SAMPLE, SAMPLE_SUMMARY, cdnow, packaged_file

WEEK_MS = 7 * MS_PER_DAY
#: Fader, Hardie & Lee (2005), CDNOW sample, 39-week calibration: r, alpha (weeks), a, b.
PAPER = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)
PAPER_LL = -9582.4


def _ms(d: date) -> int:
    return (d.toordinal() - date(1970, 1, 1).toordinal()) * MS_PER_DAY


CUTOFF = _ms(date(1997, 9, 30))  # 39 weeks after the first purchases of 1997-01-01


@pytest.fixture(scope="module")
def paper_summary() -> dict[int, History]:
    """The paper's per-customer summary as shipped in the Lifetimes wheel (weeks)."""
    with packaged_file(SAMPLE_SUMMARY).open() as f:
        return {int(r["ID"]): History(int(r["frequency"]), float(r["recency"]), float(r["T"])) for r in csv.DictReader(f)}


def test_cdnow_fit_gives_the_papers_parameters(paper_summary: dict[int, History]) -> None:
    m = BgNbd.fit(Summary.of(paper_summary.values()))
    assert m.customers == 2357
    assert m.r == pytest.approx(PAPER.r, abs=1e-3)
    assert m.alpha == pytest.approx(PAPER.alpha, abs=1e-3)
    assert m.a == pytest.approx(PAPER.a, abs=1e-3)
    assert m.b == pytest.approx(PAPER.b, abs=1e-3)
    assert m.log_likelihood == pytest.approx(PAPER_LL, abs=0.1)


def test_cdnow_conditional_expectation_of_the_papers_example() -> None:
    # The paper's customer: 2 repeat purchases, the last at week 30.43, observed 38.86 weeks.
    assert float(PAPER.expected_purchases(2, 30.43, 38.86, 39)) == pytest.approx(1.226, abs=5e-4)


def test_cdnow_transactions_summarize_to_the_papers_summary(paper_summary: dict[int, History]) -> None:
    with packaged_file(SAMPLE).open() as f:
        sample_id = {line.split()[0]: int(line.split()[1]) for line in f if line.strip()}
    ours = summarize(((t.customer_id, t.ts) for t in cdnow(sample=True)), CUTOFF, unit_ms=WEEK_MS)
    assert len(ours) == len(paper_summary) == 2357
    for customer, h in ours.items():
        ref = paper_summary[sample_id[customer]]
        assert h.x == ref.x
        assert h.t_x == pytest.approx(ref.t_x, abs=0.005)  # the packaged file has 2 decimals
        assert h.T == pytest.approx(ref.T, abs=0.005)


def test_cdnow_master_file() -> None:
    rows = list(cdnow())
    assert len(rows) == 69_659
    assert len({r.customer_id for r in rows}) == 23_570
    assert min(r.ts for r in rows) == _ms(date(1997, 1, 1))
    assert max(r.ts for r in rows) == _ms(date(1998, 6, 30))
    assert all(r.amount >= 0 for r in rows)


def test_parameters_are_recovered_from_simulated_customers() -> None:
    true = BgNbd(r=0.5, alpha=20.0, a=0.8, b=2.5)  # days: one purchase per ~40 days at the mean
    rng = np.random.default_rng(3)
    s = simulate(true, rng.uniform(60, 365, 20_000).round(), 0.0, rng)
    m = BgNbd.fit(Summary.of(History(*h) for h in zip(s.x, s.t_x, s.T)))
    assert m.r == pytest.approx(true.r, rel=0.1)
    assert m.alpha == pytest.approx(true.alpha, rel=0.1)
    assert m.a == pytest.approx(true.a, rel=0.15)
    assert m.b == pytest.approx(true.b, rel=0.15)


@pytest.mark.parametrize("horizon", [7.0, 30.0, 180.0])
def test_closed_forms_match_the_generative_process(horizon: float) -> None:
    """Conditional on any function of the history, the mean prediction is the mean outcome."""
    true = BgNbd(r=0.5, alpha=20.0, a=0.8, b=2.5)
    rng = np.random.default_rng(11)
    s = simulate(true, rng.uniform(0, 365, 200_000), horizon, rng)
    p0 = true.p_no_purchase(s.x, s.t_x, s.T, horizon)
    ey = true.expected_purchases(s.x, s.t_x, s.T, horizon)
    silent = s.future == 0
    recent = s.T - s.t_x < 60
    groups = {
        "x=0": s.x == 0,
        "x=1": s.x == 1,
        "x=2-4 recent": (s.x >= 2) & (s.x <= 4) & recent,
        "x=2-4 lapsed": (s.x >= 2) & (s.x <= 4) & ~recent,
        "x>=5": s.x >= 5,
    }
    for name, g in groups.items():
        n = g.sum()
        assert n > 2000, name
        se = math.sqrt(p0[g].mean() * (1 - p0[g].mean()) / n)
        assert silent[g].mean() == pytest.approx(p0[g].mean(), abs=4 * se + 1e-3), name
        se_y = s.future[g].std() / math.sqrt(n)
        assert s.future[g].mean() == pytest.approx(ey[g].mean(), abs=4 * se_y + 1e-3), name


def _expected_by_quadrature(m: BgNbd, x: int, t_x: float, T: float, t: float) -> float:
    """P(alive) E_p[(1 - ((alpha+T)/(alpha+T+p t))^(r+x)) / p], p ~ Beta(a, b+x): lambda
    integrated out, p by quadrature with the Beta weight (no hypergeometric function)."""

    def f(p: float) -> float:
        if p == 0.0:
            return (m.r + x) * t / (m.alpha + T)  # the limit as p -> 0
        return -math.expm1((m.r + x) * (math.log(m.alpha + T) - math.log(m.alpha + T + p * t))) / p

    value, _ = integrate.quad(f, 0.0, 1.0, weight="alg", wvar=(m.a - 1, m.b + x - 1), limit=200)
    return float(m.p_alive(x, t_x, T)) * value / beta_fn(m.a, m.b + x)


@pytest.mark.parametrize("a", [0.793, 1.6])
@pytest.mark.parametrize(("x", "t_x", "T"), [(0, 0.0, 0.0), (0, 0.0, 40.0), (2, 30.43, 38.86), (15, 10.0, 50.0)])
@pytest.mark.parametrize("horizon", [1.0, 39.0, 520.0, 5200.0])
def test_hypergeometric_form_matches_quadrature(a: float, x: int, t_x: float, T: float, horizon: float) -> None:
    m = BgNbd(r=0.243, alpha=4.414, a=a, b=2.426)
    closed = float(m.expected_purchases(x, t_x, T, horizon))
    assert closed == pytest.approx(_expected_by_quadrature(m, x, t_x, T, horizon), rel=1e-6)


def test_a_new_customer_follows_the_unconditional_nbd() -> None:
    m = PAPER
    t = np.array([1.0, 10.0, 78.0])
    # No repeat purchase yet and no time observed: P(X(t)=0) = (alpha/(alpha+t))^r, FHL eq. (8).
    assert m.p_no_purchase(0, 0.0, 0.0, t) == pytest.approx((m.alpha / (m.alpha + t)) ** m.r)
    # E[X(t)] of FHL eq. (9): (a+b-1)/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b; a+b-1; t/(alpha+t))].
    from scipy.special import hyp2f1

    eq9 = (m.a + m.b - 1) / (m.a - 1) * (1 - (m.alpha / (m.alpha + t)) ** m.r * hyp2f1(m.r, m.b, m.a + m.b - 1, t / (m.alpha + t)))
    assert m.expected_purchases(0, 0.0, 0.0, t) == pytest.approx(eq9)
    assert float(m.p_alive(0, 0.0, 0.0)) == 1.0


def test_edge_cases() -> None:
    m = PAPER
    # A zero horizon: no purchase for sure, none expected.
    assert float(m.p_no_purchase(3, 20.0, 30.0, 0.0)) == pytest.approx(1.0)
    assert float(m.expected_purchases(3, 20.0, 30.0, 0.0)) == pytest.approx(0.0)
    # x = 0: alive for sure in BG/NBD, however long the silence.
    assert float(m.p_alive(0, 0.0, 500.0)) == 1.0
    # A long silence after a busy start: almost surely gone.
    assert float(m.p_alive(20, 5.0, 300.0)) < 1e-3
    # Huge horizons: P(no purchase) falls towards P(dead), the expectation stays finite and grows.
    horizons = np.array([1.0, 10.0, 100.0, 1e4, 1e6])
    p0 = m.p_no_purchase(2, 30.43, 38.86, horizons)
    ey = m.expected_purchases(2, 30.43, 38.86, horizons)
    assert np.all(np.diff(p0) < 0) and np.all(np.diff(ey) > 0)
    assert np.all(np.isfinite(ey))
    assert p0[-1] == pytest.approx(1 - float(m.p_alive(2, 30.43, 38.86)), abs=0.01)
    # Scalars and arrays broadcast together.
    assert m.p_no_purchase([0, 1, 2], [0.0, 5.0, 9.0], 10.0, 30.0).shape == (3,)


def test_a_equal_to_one_is_not_a_singularity() -> None:
    near = [float(BgNbd(0.5, 20.0, a, 2.5).expected_purchases(3, 40.0, 60.0, 30.0)) for a in (1 - 1e-4, 1.0, 1 + 1e-4)]
    assert near[1] == pytest.approx(near[0], rel=1e-3) and near[1] == pytest.approx(near[2], rel=1e-3)


def test_summarize_counts_purchase_days() -> None:
    day = MS_PER_DAY
    purchases = [("u", 2 * day + 10), ("u", 2 * day + 99), ("u", 5 * day), ("u", 5 * day + 1), ("u", 20 * day), ("v", 9 * day)]
    got = summarize(purchases, cutoff_ms=9 * day + day // 2)
    assert got == {"u": History(1, 3.0, 7.5), "v": History(0, 0.0, 0.5)}
    assert summarize(purchases, cutoff_ms=day) == {}
    # The label side: distinct purchase days in (t, t + H].
    assert purchase_days_in(purchases, after_ms=2 * day + 10, horizon_ms=3 * day) == {"u": 2}


def test_summary_merges_identical_histories() -> None:
    s = Summary.of([History(0, 0.0, 10.0), History(0, 0.0, 10.0), History(2, 4.0, 10.0)])
    assert s.customers == 3 and len(s.x) == 2
    with pytest.raises(ValueError):
        BgNbd.fit(Summary.of([]))


def test_expected_purchases_stay_finite_for_a_fit_with_a_large_r() -> None:
    # a fit seen on a small history (r = 18,068): scipy 1.17's hyp2f1 gives nan there
    m = BgNbd(r=18068.191986094243, alpha=162351.79768638685, a=0.09919753417199038, b=37.6366103126297)
    n = m.expected_purchases([2.0, 0.0], [9.0, 0.0], [10.0, 1.0], 30.0)
    assert np.all(np.isfinite(n)) and np.all(n > 0)
    # the mean purchase rate is r / alpha per day: a customer alive for 30 days buys about 30 r / alpha
    assert n[0] <= 30 * 18068.19 / 162351.8 * 1.5


def test_one_customers_closed_forms_are_the_array_methods_bit_for_bit() -> None:
    """The scalar path the score rows use (BgNbd.churn_and_expected) must give the very
    floats of the array methods: the decisions' digest and the replay equality rest on it."""
    import random

    rng = random.Random(2)
    models = [BgNbd(r=rng.uniform(0.1, 5), alpha=rng.uniform(1, 50), a=rng.uniform(0.2, 3), b=rng.uniform(0.5, 10))
              for _ in range(10)] + [BgNbd(r=18_068.2, alpha=400.0, a=0.7, b=1.9), BgNbd(r=0.5, alpha=10.0, a=1.0, b=2.5)]
    for _ in range(3000):
        m = rng.choice(models)
        x = rng.randint(0, 40)
        t_x = rng.uniform(0, 300) if x else 0.0
        T, horizon = t_x + rng.uniform(0, 300), rng.choice([7.5, 30.0, 90.0])
        want = (float(m.p_no_purchase(x, t_x, T, horizon)), float(m.expected_purchases(x, t_x, T, horizon)))
        got = m.churn_and_expected(x, t_x, T, horizon)
        assert all(g == w or (math.isnan(g) and math.isnan(w)) for g, w in zip(got, want)), (m, x, t_x, T, horizon, got, want)


def test_the_fits_likelihood_by_distinct_repeat_counts_is_the_plain_one_bit_for_bit() -> None:
    """The fit computes the terms of ``x`` alone once per distinct repeat count: the very
    floats of the row-by-row form, at any parameters (extremes too, where some are not
    finite), so the trainer's fits, and the models after them, stay as they were."""
    from models.bgnbd import BOUNDS, _log_likelihood

    rng = np.random.default_rng(5)
    x = rng.integers(0, 15, 700).astype(float)
    t_x = np.where(x > 0, rng.uniform(0, 200, 700), 0.0)
    T = t_x + rng.uniform(0, 200, 700)
    repeats = np.unique(x, return_inverse=True)
    assert len(repeats[0]) == 15
    for _ in range(500):
        params = np.exp(rng.uniform(*BOUNDS, 4))
        with np.errstate(all="ignore"):
            plain, gathered = _log_likelihood(params, x, t_x, T), _log_likelihood(params, x, t_x, T, repeats)
        assert np.array_equal(plain, gathered, equal_nan=True), params


def test_a_fit_is_the_one_on_the_plain_likelihood() -> None:
    """The whole fit: the same parameters as L-BFGS-B on the row-by-row likelihood."""
    from scipy.optimize import minimize

    from models.bgnbd import BOUNDS, _log_likelihood

    truth = BgNbd(r=0.8, alpha=12.0, a=0.6, b=3.0)
    s = simulate(truth, np.random.default_rng(3).uniform(20, 300, 400), 0.0, np.random.default_rng(4))
    summary = Summary.of(History(int(x), float(t), float(T)) for x, t, T in zip(s.x, s.t_x, s.T))
    x, t_x, T, w = summary

    def objective(log_params: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            value = -float(w @ _log_likelihood(np.exp(log_params), x, t_x, T)) / w.sum()
        return value if math.isfinite(value) else 1e10

    start = (1.0, max(float(w @ T / w.sum()), 1e-3), 1.0, 1.0)
    plain = np.exp(minimize(objective, np.log(start), method="L-BFGS-B", bounds=[BOUNDS] * 4).x)
    fit = BgNbd.fit(summary)
    assert (fit.r, fit.alpha, fit.a, fit.b) == tuple(float(v) for v in plain)
