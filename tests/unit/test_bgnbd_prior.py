"""BG/NBD in the trainer and the learners (models.bgnbd_prior): histories from the
point-in-time features, the fit shipped in snapshots, the prior before labels, the
learners' inputs, bounded samples and old snapshots without it."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from models.bgnbd import BgNbd, History, Summary, simulate
from models.bgnbd_prior import BGNBD_FEATURES, MAX_SHAPE, BgNbdFit, history_of, predict, with_bgnbd
from models.bundle import Models
from models.churn import ChurnModel, LoyaltyModel, recency_prior
from models.examples import ChurnExample, SegmentExample
from models.signing import SnapshotKeys
from models.trainer import Trainer, decode_snapshot, dump_models, encode_snapshot, load_models
from streams.domain.events import Channel, Item, Purchase
from streams.domain.features import as_dict, feature_vector
from streams.domain.state import StateConfig, UserState, apply_event

DAY = 86_400_000
MODEL = BgNbd(r=0.6, alpha=12.0, a=0.9, b=2.8)


def buyer_features(i: int) -> dict[str, float]:
    """Varied purchase histories (some single buyers, some regulars, some lapsed)."""
    n = 1 + i % 6
    return {"purchases": float(n), "gap_mean_days": float(3 + (i * 7) % 20) if n > 1 else 0.0,
            "recency_days": float((i * 13) % 60)}


def simulated_features(n: int, seed: int = 3) -> list[dict[str, float]]:
    """Features of ``n`` customers drawn from :data:`MODEL` (rates and dropouts that vary), 60 days after their first purchase."""
    s = simulate(MODEL, np.full(n, 60.0), 0.0, np.random.default_rng(seed))
    return [{"purchases": x + 1.0, "gap_mean_days": t_x / x if x else 0.0, "recency_days": T - t_x} for x, t_x, T in zip(s.x, s.t_x, s.T)]


def test_history_is_read_from_the_feature_vector_at_its_point_in_time() -> None:
    state = UserState("u")
    for k, day in enumerate([0, 4, 10]):
        ts = day * DAY + 3_600_000
        event = Purchase(event_id=f"e{k}", user_id="u", ts=ts, order_id=f"o{k}", items=[Item(item_id="i", quantity=1, unit_price=5.0)],
                         total=5.0, currency="USD", channel=Channel.WEB)
        apply_event(state, event, ts, StateConfig())
    at_day_30 = history_of(as_dict(feature_vector(state, 30 * DAY + 3_600_000)))
    assert at_day_30 == History(2, pytest.approx(10.0), pytest.approx(30.0))
    at_day_12 = history_of(as_dict(feature_vector(state, 12 * DAY + 3_600_000)))
    assert at_day_12 == History(2, pytest.approx(10.0), pytest.approx(12.0))
    assert history_of({"purchases": 0.0, "recency_days": 4.0}) is None


def test_orders_of_one_day_are_one_purchase_day_as_the_baseline_counts_them() -> None:
    from models.baselines import BgNbdBaseline

    state, baseline = UserState("u"), BgNbdBaseline()
    for k, ts in enumerate([3_600_000, 7_200_000, 30 * DAY + 3_600_000, 30 * DAY + 9_000_000]):  # days 0, 0, 30, 30
        event = Purchase(event_id=f"e{k}", user_id="u", ts=ts, order_id=f"o{k}", items=[Item(item_id="i", quantity=1, unit_price=5.0)],
                         total=5.0, currency="USD", channel=Channel.WEB)
        apply_event(state, event, ts, StateConfig())
        baseline.purchase("u", ts)
    x = as_dict(feature_vector(state, 40 * DAY))
    assert history_of(x).x == baseline.history("u", 40 * DAY).x == 1  # purchase days 0 and 30: one repeat
    old = {k: v for k, v in x.items() if k != "purchase_days"}  # a point stored before the feature: capped orders
    assert history_of(old).x == 3


def test_trainer_ships_the_bgnbd_fit_of_the_latest_histories_in_its_snapshot() -> None:
    trainer = Trainer(Models.fresh(min_labels=5, bgnbd_refit_periods=1), DAY, partitions=1, dumps=dump_models)
    histories = {}
    for i, x in enumerate(simulated_features(60)):
        trainer.add(SegmentExample(id=f"user{i}@{DAY // 2}", at=DAY // 2, x={**x, "recency_days": x["recency_days"] / 2}))
        trainer.add(SegmentExample(id=f"user{i}@{DAY // 2 + 1}", at=DAY // 2 + 1, x=x))  # later: this one counts
        histories[f"user{i}"] = history_of(x)
    (snapshot,) = [s for s in trainer.watermark(0, DAY + 1) if s.models is not None]
    keys = SnapshotKeys(sign=b"k" * 32, accept=(b"k" * 32,))
    shipped = load_models(decode_snapshot(encode_snapshot(snapshot, keys.sign), keys).models)
    expected = BgNbd.fit(Summary.of([histories[u] for u in sorted(histories)]))
    assert shipped.churn.bgnbd is not None and shipped.loyalty.bgnbd == shipped.churn.bgnbd
    np.testing.assert_allclose(shipped.churn.bgnbd.params, expected.params, rtol=1e-6)
    assert shipped.report()["bgnbd"]["customers"] == 60 and shipped.report()["bgnbd"]["fits"] == 1
    assert shipped.churn.version == "bgnbd-prior@1970-01-02"


def test_a_fit_that_cannot_tell_customers_apart_or_of_one_time_buyers_is_set_aside() -> None:
    homogeneous = BgNbdFit(refit_periods=1)
    for i in range(40):  # regular gaps and counts: BG/NBD finds (almost) one purchase rate for all
        homogeneous.observe(f"u{i}", 0, buyer_features(i))
    assert homogeneous.tick() is None and homogeneous.fits == 1 and homogeneous.rejected == 1
    assert homogeneous.start is not None and homogeneous.start[0] > MAX_SHAPE  # kept as the next fit's start
    one_timers = BgNbdFit(refit_periods=1)
    buyers = simulated_features(60)
    for i, x in enumerate(buyers):
        one_timers.observe(f"u{i}", 0, {**x, "purchases": 3.0 if i < 4 else 1.0})
    assert one_timers.tick() is None and one_timers.fits == 0  # 4 repeat buyers: too few to fit
    for i, x in enumerate(buyers):
        one_timers.observe(f"u{i}", 0, x)
    assert one_timers.tick() is not None and one_timers.fits == 1
    churn = ChurnModel(horizon_days=30.0)
    churn.bgnbd = homogeneous.tick()
    x = buyer_features(3)
    assert churn.score(x).value == pytest.approx(recency_prior(x)) and churn.inputs(x) == x


def test_no_fit_before_enough_buyers_and_churn_examples_count_as_histories() -> None:
    trainer = Trainer(Models.fresh(min_labels=5, bgnbd_refit_periods=1), DAY, partitions=1, dumps=dump_models)
    features = ["purchases", "gap_mean_days", "recency_days"]
    for i in range(10):  # the bundle names a churn example's vector by MODEL_FEATURES: give all of them
        x = buyer_features(i)
        from streams.domain.features import MODEL_FEATURES
        vector = [x.get(name, 0.0) if name in features else 0.0 for name in MODEL_FEATURES]
        trainer.add(ChurnExample(id=f"user{i}@5/c", at=10, features=vector, churned=0, days=None))
    (snapshot,) = [s for s in trainer.watermark(0, DAY + 1) if s.models is not None]
    models = load_models(snapshot.models)
    assert models.bgnbd.report()["customers"] == 10
    assert models.churn.bgnbd is None and models.churn.version == "recency-prior@1970-01-02"


def test_the_prior_is_bgnbd_before_any_label() -> None:
    x = {"purchases": 3.0, "gap_mean_days": 8.0, "recency_days": 20.0}
    churn, loyalty = ChurnModel(min_labels=5, horizon_days=30.0), LoyaltyModel(horizon_days=30.0, min_labels=5, learned_prior=True)
    assert churn.score(x).value == pytest.approx(recency_prior(x))  # no fit: the formula
    churn.bgnbd = loyalty.bgnbd = MODEL
    p = float(MODEL.p_no_purchase(2, 16.0, 36.0, 30.0))
    n = float(MODEL.expected_purchases(2, 16.0, 36.0, 30.0))
    # the churn prior: no purchase if the expected purchase days came as a Poisson count (it
    # ranks as the expected purchases do); BG/NBD's own P(no purchase) with prior_from="p"
    assert churn.score(x).value == pytest.approx(math.exp(-n)) and churn.score(x).prior and churn.score(x).version == "bgnbd-prior"
    own = ChurnModel(min_labels=5, horizon_days=30.0, prior_from="p")
    own.bgnbd = MODEL
    assert own.score(x).value == pytest.approx(p) and own.score(x).prior
    assert loyalty.score(x).value == pytest.approx(n) and loyalty.score(x).prior
    for _ in range(3):  # a few labels: still BG/NBD (not the learned bins)
        loyalty.learn(x, 0)
    assert loyalty.score(x).value == pytest.approx(n)


def test_the_churn_prior_ranks_customers_as_their_expected_purchases_do() -> None:
    """Among histories where BG/NBD's P(no purchase) and its expected purchases disagree on
    the order, the prior follows the expected purchases (fewer: more likely to churn)."""
    churn = ChurnModel(min_labels=5, horizon_days=90.0)
    churn.bgnbd = MODEL
    xs = [{"purchases": float(n), "gap_mean_days": gap, "recency_days": r} for n in (1, 2, 4, 8) for gap in (3.0, 20.0) for r in (1.0, 60.0, 200.0)]
    expected = [predict(MODEL, x, 90.0)[1] for x in xs]
    priors = [churn.prior(x) for x in xs]
    assert sorted(range(len(xs)), key=lambda i: priors[i]) == sorted(range(len(xs)), key=lambda i: -expected[i])
    with pytest.raises(ValueError):
        ChurnModel(prior_from="mean")
    old = ChurnModel(min_labels=5, horizon_days=90.0)
    del old.__dict__["prior_from"]  # as pickled before the option: BG/NBD's P(no purchase)
    old.bgnbd = MODEL
    assert old.prior(xs[0]) == pytest.approx(predict(MODEL, xs[0], 90.0)[0])


def test_learners_see_bgnbd_of_the_point_as_inputs() -> None:
    x = {"purchases": 2.0, "gap_mean_days": 5.0, "recency_days": 40.0}
    inputs = with_bgnbd(MODEL, x, 30.0)
    p = float(MODEL.p_no_purchase(1, 5.0, 45.0, 30.0))
    assert inputs["bgnbd_log_p_churn"] == pytest.approx(math.log(p))
    assert inputs["bgnbd_log_p_buy"] == pytest.approx(math.log(1 - p))
    assert inputs["bgnbd_expected"] == pytest.approx(float(MODEL.expected_purchases(1, 5.0, 45.0, 30.0)))
    model = ChurnModel(min_labels=1, horizon_days=30.0)
    model.bgnbd = MODEL
    for i in range(20):
        model.learn(buyer_features(i), i % 2 == 0)
    weights = model.pipeline["LogisticRegression"].weights
    assert set(BGNBD_FEATURES) <= set(weights) and all(weights[f] != 0 for f in BGNBD_FEATURES)
    assert predict(None, x, 30.0) is None and predict(MODEL, {"purchases": 0.0}, 30.0) is None


def test_histories_are_a_bounded_sample_of_the_same_customers_in_any_order() -> None:
    users = [f"customer-{i}" for i in range(300)]
    forward, backward = BgNbdFit(customers=50), BgNbdFit(customers=50)
    for i, u in enumerate(users):
        forward.observe(u, 0, buyer_features(i))
    for i, u in reversed(list(enumerate(users))):
        backward.observe(u, 0, buyer_features(i))
    assert 0 < len(forward.histories) <= 50 and forward.histories == backward.histories


def test_refits_every_k_periods_warm_started() -> None:
    fit = BgNbdFit(refit_periods=3, min_customers=20)
    assert fit.tick() is None  # no customers yet: tries again next period
    buyers = simulated_features(90)
    for i in range(30):
        fit.observe(f"u{i}", 0, buyers[i])
    first = fit.tick()
    assert first is not None and fit.fits == 1
    for i in range(30, 90):
        fit.observe(f"u{i}", 0, buyers[i])
    assert fit.tick() is first and fit.tick() is first  # not due
    assert fit.tick() is not first and fit.fits == 2
    assert BgNbdFit(refit_periods=0).tick() is None


def test_bundles_and_learners_pickled_before_bgnbd_load_and_go_on_without_it() -> None:
    models = Models.fresh(min_labels=5)
    del models.bgnbd  # as pickled before the attribute existed
    for learner in (models.churn, models.loyalty):
        learner.__dict__.pop("bgnbd", None)
    models.churn.__dict__.pop("horizon_days")
    old = pickle.loads(pickle.dumps(models))
    old.learn(SegmentExample(id="u@1", at=1, x={"purchases": 2.0}))
    old.stamp("2026-01-02")
    x = {"purchases": 3.0, "gap_mean_days": 8.0, "recency_days": 20.0}
    assert old.bgnbd is None and old.churn.bgnbd is None and old.report()["bgnbd"] is None
    assert old.churn.score(x).value == pytest.approx(recency_prior(x)) and old.churn.version == "recency-prior@2026-01-02"




def test_the_nbd_prior_keeps_the_expected_purchases_ranking_with_bgnbds_calibration() -> None:
    """The zero-count shape fitted over the trainer's customers makes ``(1 + E[N]/k)^-k`` close
    to BG/NBD's own P(no purchase) (much closer than ``exp(-E[N])``), and the churn prior made
    of it ranks as the expected purchases do."""
    from models.bgnbd_prior import nbd_zero
    from models.churn import hand_over

    fit = BgNbdFit(refit_periods=1)
    for i, x in enumerate(simulated_features(2000)):
        fit.observe(f"u{i}", 60 * DAY, x)
    assert fit.zero_shape(90.0) is None  # no fit yet
    model = fit.tick()
    assert model is not None
    k = fit.zero_shape(90.0)
    assert k is not None and 0.05 < k < 100 and fit.zero_shape(90.0) == k  # cached per fit and horizon
    xs = simulated_features(400, seed=5)
    p = np.array([predict(model, x, 90.0)[0] for x in xs if x["purchases"] >= 1])
    n = np.array([predict(model, x, 90.0)[1] for x in xs if x["purchases"] >= 1])
    nbd = np.array([nbd_zero(v, k) for v in n])
    assert np.mean((nbd - p) ** 2) < 0.5 * np.mean((np.exp(-n) - p) ** 2)
    churn, poisson, loyalty = ChurnModel(horizon_days=90.0), ChurnModel(horizon_days=90.0, prior_from="expected"), LoyaltyModel(horizon_days=90.0)
    hand_over(fit, model, (churn, poisson, loyalty))
    assert churn.zero_shape == k and loyalty.bgnbd is model and not hasattr(loyalty, "zero_shape")
    assert {key: churn.blend_report()[key] for key in ("prior_model", "prior_from", "zero_shape")} == {
        "prior_model": "bgnbd-prior", "prior_from": "nbd", "zero_shape": k}  # what GET /models shows
    assert churn.prior(xs[0]) == pytest.approx(nbd_zero(predict(model, xs[0], 90.0)[1], k))
    assert poisson.prior(xs[0]) == pytest.approx(math.exp(-predict(model, xs[0], 90.0)[1]))
    by_expected = sorted((x for x in xs if x["purchases"] >= 1), key=lambda x: predict(model, x, 90.0)[1])
    priors = [churn.prior(x) for x in by_expected]  # more expected purchases: never a higher churn prior
    assert all(a >= b for a, b in zip(priors, priors[1:])) and priors[0] > priors[-1]
    hand_over(fit, None, (churn,))  # a fit set aside: no shape either
    assert churn.zero_shape is None and churn.bgnbd is None
