"""The learners' gates judge the predictions stored at scoring time: the prior's and the
River pipeline's predictions travel with the scoring point (PendingScore -> Matured ->
ChurnExample), the trainer compares them on the label and blends the two by the weight
they earned; points and examples stored before these fields still load and learn."""

from __future__ import annotations

import math

import msgspec
import pytest

from models.bgnbd import BgNbd
from models.bundle import Models
from models.churn import ChurnModel, Gate, LoyaltyModel
from models.examples import ChurnExample, churn_examples, decode_example, encode_example
from streams.domain.engine import EngineConfig, on_due, on_event
from streams.domain.events import Item, Purchase
from streams.domain.policy import PolicyConfig
from streams.domain.state import UserState, dump_state, load_state
from streams.domain.timestamps import MS_PER_DAY

T0 = 1_767_225_600_000  # 2026-01-01
CFG = EngineConfig(churn_horizon_days=30, sweep_days=0, policy=PolicyConfig(control_share=0.0))
X = {"recency_days": 10.0, "gap_mean_days": 5.0, "purchases": 3.0}


def purchase(n: float) -> Purchase:
    return Purchase(event_id=f"p{n}", user_id="u1", ts=T0 + int(n * MS_PER_DAY), order_id=f"o{n}",
                    items=[Item(item_id="i1", quantity=1, unit_price=5.0)], total=5.0, currency="EUR", channel="web")


def trained_loyalty(labels: int = 60) -> LoyaltyModel:
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear")
    for i in range(labels):
        model.learn({"recency_days": float(i % 5)}, i % 3)
    return model


def test_the_scoring_point_keeps_both_candidates_and_they_reach_the_trainer() -> None:
    churn, loyalty = ChurnModel(min_labels=10), trained_loyalty()
    churn.learn(X, True)  # one label: the pipeline predicts, the prior still answers
    state = UserState("u1")
    step = on_event(state, purchase(0), T0, CFG, churn=churn, loyalty=loyalty)
    (point,) = step.points
    assert point.churn_prior_p == pytest.approx(churn.prior(_x(point))) and point.churn_p == point.churn_prior_p
    assert point.churn_learned_p == pytest.approx(churn.learned(_x(point)))
    assert point.loyalty_prior_p == pytest.approx(loyalty.prior(_x(point)))
    assert point.loyalty_learned_p == pytest.approx(loyalty.learned(_x(point)))
    restored = load_state(dump_state(state))  # the changelog keeps them
    assert restored.pending[0].loyalty_learned_p == point.loyalty_learned_p
    matured = on_due(restored, T0 + 31 * MS_PER_DAY, churn, CFG, loyalty)
    (example,) = churn_examples("u1", matured.examples, T0 + 31 * MS_PER_DAY)
    decoded = decode_example(encode_example(example))
    assert (decoded.churn_prior_p, decoded.churn_learned_p, decoded.loyalty_prior_p, decoded.loyalty_learned_p) == (
        point.churn_prior_p, point.churn_learned_p, point.loyalty_prior_p, point.loyalty_learned_p)


def _x(point) -> dict[str, float]:
    from streams.domain.features import as_dict

    return as_dict(point.features)


def test_points_and_examples_stored_before_the_candidates_still_load() -> None:
    state = UserState("u1")
    on_event(state, purchase(0), T0, CFG, churn=ChurnModel(), loyalty=LoyaltyModel())
    fields = msgspec.msgpack.decode(dump_state(state))
    names = [f.name for f in msgspec.structs.fields(UserState)]
    at = names.index("pending")
    fields[at] = [point[:7] for point in fields[at]]  # up to loyalty_p: the format before the candidates
    loaded = load_state(msgspec.msgpack.encode(fields))
    assert loaded.pending[0].churn_prior_p is None and loaded.pending[0].loyalty_learned_p is None
    old = b'{"kind":"churn","id":"u@1/d","at":5,"features":[1.0],"churned":1,"days":0,"churn_p":0.5,"loyalty_p":0.2,"v":1}'
    example = decode_example(old)
    assert isinstance(example, ChurnExample) and example.churn_prior_p is None and example.loyalty_learned_p is None
    models = Models.fresh(min_labels=1, bgnbd_refit_periods=0)
    models.learn(example)  # learned as before: both candidates predicted now
    assert models.loyalty.labels == 1 and models.churn.labels == 1


def _close(model, periods: int) -> None:
    """``periods`` model periods end (the trainer stamps that many snapshots)."""
    for _ in range(periods):
        model.close()


def test_the_gate_compares_what_was_predicted_at_scoring_time_not_at_maturity(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.churn

    model = trained_loyalty()
    before = model.gate.current[0]
    # the learner had learned nothing when this point was scored: not judged (by default)
    model.learn(X, 2, prior_p=1.0, learned_p=None)
    assert model.gate.current[0] == before
    # the stored predictions are compared, whatever the models predict now
    sums = list(model.gate.current)
    model.learn(X, 2, prior_p=0.0, learned_p=2.0)
    added = [a - b for a, b in zip(model.gate.current, sums)]
    assert added[:5] == [1.0, 0.0, 4.0, 4.0, 4.0]  # a label; learner loss, prior loss, (2 - 0)^2, (2 - 0)(2 - 0)
    # judged on its prediction just before learning the label (test, then train), if so set
    monkeypatch.setattr(models.churn, "JUDGE_UNSTORED", True)
    now = model.learned(X)
    sums = list(model.gate.current)
    model.learn(X, 2, prior_p=1.0, learned_p=None)
    added = [a - b for a, b in zip(model.gate.current, sums)]
    assert added[0] == 1.0 and added[1] == pytest.approx((now - 2) ** 2) and added[3] == pytest.approx((now - 1) ** 2)
    fresh = LoyaltyModel(horizon_days=30, min_labels=1, kind="linear")
    fresh.learn(X, 2, prior_p=1.0, learned_p=None)  # its first label: nothing to judge yet
    assert fresh.gate.current[0] == 0


def test_the_answer_blends_prior_and_learner_by_the_weight_their_stored_predictions_earned() -> None:
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear")
    for i in range(1000):  # the label lies halfway between the prior's and the learner's stored predictions
        model.learn({"recency_days": float(i % 4)}, 2, prior_p=1.0, learned_p=3.0)
    assert model.weight == 0.0 and not model.warm  # nothing moves until a period ends
    _close(model, 1)
    assert model.gate.target == pytest.approx(0.5 / (1 + 200 / 999)) and model.weight == pytest.approx(0.1) and model.warm
    _close(model, 10)  # one bounded step a period, up to the weight earned
    assert model.weight == pytest.approx(model.gate.target)
    prior, learned = model.prior(X), model.learned(X)
    score = model.score(X)
    w = model.weight
    assert not score.prior and score.value == pytest.approx((prior + w * (learned - prior)) * model.scale)
    assert model.scored(X) == (score, pytest.approx(prior), pytest.approx(learned))
    for i in range(40_000):  # then the learner is the one that is off, for longer than the window remembers
        model.learn({"recency_days": float(i % 4)}, 1, prior_p=1.0, learned_p=3.0)
        if i % 1000 == 999:
            before = model.weight
            model.close()
            assert abs(model.weight - before) <= 0.1 + 1e-12  # never more than the step
    assert model.gate.target < 0.05 and model.weight < 0.05


def test_the_weight_moves_at_most_one_step_a_period_however_noisy_the_labels() -> None:
    gate = Gate(periods=30)
    weights = []
    for day in range(60):
        for i in range(300):  # a day's labels: the learner right on some days, wrong on others
            right = (day % 3 == 0) == (i % 2 == 0)
            gate.update(0.0, 0.0, 1.0, 1.0 if right else 0.0)
        gate.close()
        weights.append(gate.weight)
    steps = [abs(b - a) for a, b in zip(weights, weights[1:])]
    assert max(steps) <= 0.1 + 1e-12 and max(weights[30:]) - min(weights[30:]) < 0.05


def test_the_learner_does_not_gain_weight_before_it_has_its_minimum_labels() -> None:
    model = LoyaltyModel(horizon_days=30, min_labels=100, kind="linear")
    for i in range(50):
        model.learn(X, 2, prior_p=1.0, learned_p=2.0)
    _close(model, 5)
    assert model.gate.target > 0.0 and model.weight == 0.0 and model.score(X).prior


def test_the_loyalty_scale_matches_the_predicted_total_to_the_actual_one() -> None:
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear")
    for day in range(30):
        for i in range(100):
            model.learn({"recency_days": float(i % 4), "purchases": 2.0, "gap_mean_days": 10.0}, 3, prior_p=1.0, learned_p=1.0)
        model.close()
    answer = model.prior(X) + model.weight * (model.learned(X) - model.prior(X))
    assert model.scale > 1.0 and model.score(X).value == pytest.approx(min(30.0, answer * model.scale))
    assert model.blend_report()["scale"] == model.scale


def test_the_loyalty_scale_is_judged_on_what_was_forecast_at_scoring_time_only() -> None:
    """The scale compares labels with the candidates stored at their scoring time, and only
    where the learner had a label then (earlier points were the first fits' or the formula's)."""
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear")
    for _ in range(200):  # scored before the learner had learned anything: no stored learner prediction
        model.learn(X, 5, prior_p=1.0, learned_p=None)
    model.close()
    assert model.scale == 1.0
    for _ in range(40):
        for _ in range(100):
            model.learn(X, 1, prior_p=2.0, learned_p=2.0)  # 2 purchase days forecast, 1 came
        before = model.scale
        model.close()
        assert before * (1 - 0.05) - 1e-12 <= model.scale <= before
    assert model.scale == pytest.approx(0.5)  # the bound


def test_every_churn_learner_earns_its_share_against_its_prior() -> None:
    model = ChurnModel(min_labels=10)
    for i in range(40):
        model.learn({"recency_days": float(i % 40)}, i % 2 == 0, prior_p=0.5, learned_p=0.9 if i % 2 == 0 else 0.1)
    assert model.weight == 0.0 and not model.warm  # earned, but no period has ended
    model.close()
    assert model.weight == pytest.approx(0.1) and model.warm
    model.bgnbd = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    assert model.weight == pytest.approx(0.1)  # a new prior does not reset what was earned
    for _ in range(20):
        for i in range(40):  # the learner's stored probability was right every time, BG/NBD's half-way
            model.learn(X, i % 2 == 0, prior_p=0.5, learned_p=0.99 if i % 2 == 0 else 0.01)
        model.close()
    assert model.weight > 0.8 and model.score(X).value == pytest.approx(
        model.prior(X) + model.weight * (model.learned(X) - model.prior(X)))


def test_gates_pickled_in_the_rolling_window_format_keep_their_weight() -> None:
    import pickle
    from collections import deque

    old = Gate.__new__(Gate)
    old.__dict__.update({"losses": deque([(0.1, 1.0)], maxlen=200), "model": 0.1, "prior": 1.0,
                         "pairs": deque([(1.0, 0.5)], maxlen=200), "dd": 1.0, "dr": 0.5})
    gate = pickle.loads(pickle.dumps(old))
    assert gate.weight == 0.5 and gate.labels == 0 and gate.report()["periods"] == 0
    gate.update(1.0, 1.0, 1.0, 1.0)
    gate.close()
    assert gate.weight == pytest.approx(0.4)  # one label, shrunk toward the prior: one step down


def test_models_report_shows_the_blend_its_gate_and_the_prior() -> None:
    from prometheus_client import REGISTRY

    from models.online import OnlineLearners
    from streams.runtime import metrics

    learners = OnlineLearners(horizon_days=30, min_labels=2, loyalty_kind="linear", loyalty_prior_learns=True)
    fresh = learners.report()
    gate0 = {"labels": 0, "periods": 0, "learner_loss": None, "prior_loss": None, "target": 0.0, "weight": 0.0,
             "change": 0.0, "max_step": 0.1}
    assert fresh["loyalty"]["blend"] == {"weight": 0.0, "answers": "prior", "prior_model": "recency-prior", "gate": gate0, "scale": 1.0, "prior_since": None}
    assert fresh["churn"]["blend"] == {"weight": 0.0, "answers": "prior", "prior_model": "recency-prior", "gate": gate0,
                                       "prior_from": "nbd", "zero_shape": None}
    learners.loyalty.learn(X, 1, prior_p=0.0, learned_p=None)  # the first label: nothing to judge yet
    # stored (learner, prior) against the label: (2, 0) on 1, (4, 0) on 1: w = (2 + 4) / (4 + 16) = 0.3, shrunk by 200 labels
    for learned_p in (2.0, 4.0):
        learners.loyalty.learn(X, 1, prior_p=0.0, learned_p=learned_p)
    learners.close()
    blend = learners.report()["loyalty"]["blend"]
    assert blend["weight"] == pytest.approx(0.3 / 101) and blend["answers"] == "blend"
    assert blend["prior_model"] == "recency-prior+3"  # the learned recency bins, after three labels
    assert blend["gate"] == {"labels": 2, "periods": 1, "learner_loss": pytest.approx(5.0), "prior_loss": pytest.approx(1.0),
                             "target": pytest.approx(0.3 / 101), "weight": pytest.approx(0.3 / 101),
                             "change": pytest.approx(0.3 / 101), "max_step": 0.1}
    metrics.export_learners(learners)
    assert REGISTRY.get_sample_value("retention_model_blend_weight", {"model": "loyalty"}) == pytest.approx(0.3 / 101)
    assert REGISTRY.get_sample_value("retention_model_blend_weight", {"model": "churn"}) == 0.0
    learners.loyalty.bgnbd = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    assert learners.report()["loyalty"]["blend"]["prior_model"] == "bgnbd-prior"


def test_learners_pickled_before_every_churn_learner_had_a_gate_still_learn_and_report() -> None:
    import pickle

    from models.online import OnlineLearners

    learners = OnlineLearners(horizon_days=30, min_labels=1, loyalty_kind="linear")
    del learners.churn.gate  # as pickled when only a churn learner against BG/NBD had one: the class default
    old = pickle.loads(pickle.dumps(learners))
    assert old.report()["churn"]["blend"]["gate"] is None and old.churn.weight == 0.0
    old.churn.learn(X, True)
    old.churn.learn(X, False, prior_p=0.5, learned_p=0.4)
    assert old.churn.gate is not None and old.churn.gate.current[0] == 1


def _bins_loyalty(labels: int = 60) -> LoyaltyModel:
    """A loyalty learner whose prior is the recency bins (it learns the labels the learner learns)."""
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear", learned_prior=True)
    for i in range(labels):
        model.learn({"recency_days": float(i % 5)}, i % 3)
    return model


def test_a_point_scored_before_the_learner_learned_is_judged_now_when_the_prior_learns_the_same_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both candidates as they predict now, before learning the label: neither knows more
    than the other when the prior is the recency bins; against BG/NBD (which learns no label)
    such a point is not judged."""
    model = _bins_loyalty()
    assert model.learns_alike
    prior, learned = model.prior(X), model.learned(X)
    assert prior != pytest.approx(0.25)  # (the prior's stored prediction below is not what it says now)
    sums = list(model.gate.current)
    model.learn(X, 2, prior_p=0.25, learned_p=None)
    added = [a - b for a, b in zip(model.gate.current, sums)]
    assert added[:5] == [1.0, pytest.approx((learned - 2) ** 2), pytest.approx((prior - 2) ** 2),
                         pytest.approx((learned - prior) ** 2), pytest.approx((learned - prior) * (2 - prior))]
    assert added[5:] == [0.0, 0.0, 0.0]  # not a forecast that was made: the scale does not count it
    import models.churn

    monkeypatch.setattr(models.churn, "JUDGE_ALIKE_NOW", False)  # switched off: not judged
    sums = list(model.gate.current)
    model.learn(X, 2, prior_p=0.25, learned_p=None)
    assert model.gate.current == sums
    monkeypatch.setattr(models.churn, "JUDGE_ALIKE_NOW", True)
    model.bgnbd = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    assert not model.learns_alike
    sums = list(model.gate.current)
    model.learn(X, 2, prior_p=0.25, learned_p=None)
    assert model.gate.current == sums
    churn = ChurnModel(min_labels=10)  # the formula prior learns nothing: not judged either
    churn.learn(X, True)
    assert not churn.learns_alike and churn.candidates(X, 0.5, None) is None


def test_the_loyalty_scale_starts_again_when_the_prior_changes_kind() -> None:
    """The recency bins over-predicted, the scale came down; a first usable BG/NBD fit answers
    now: the scale starts from 1 and learns only from points scored since the change, while
    the weight's sums are kept. A refit of the same kind changes nothing; a fit set aside
    starts it again."""
    from models.bgnbd_prior import BgNbdFit
    from models.churn import hand_over

    model = _bins_loyalty()
    for day in range(20):
        for _ in range(100):
            model.learn(X, 1, prior_p=2.0, learned_p=2.0, scored_at=T0 + day * MS_PER_DAY)
        model.close()
    labels, weight = model.gate.labels, model.weight
    assert model.scale == pytest.approx(0.5)  # 2 forecast, 1 came: down 5 % a period, to the bound
    fit, first = BgNbdFit(), BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    fit.now = T0 + 20 * MS_PER_DAY
    hand_over(fit, first, (model,))
    assert model.prior_since == fit.now and model.scale == 1.0 and model.bgnbd is first
    assert model.blend_report()["prior_since"] == fit.now
    assert model.gate.labels == labels and model.weight == weight
    assert all(p[5:] == [0.0, 0.0, 0.0] for p in model.gate.periods)
    for _ in range(100):  # matured now, scored before the change: the bins' answers
        model.learn(X, 1, prior_p=2.0, learned_p=2.0, scored_at=fit.now - MS_PER_DAY)
    model.close()
    assert model.scale == 1.0 and model.gate.labels == labels + 100
    for _ in range(100):  # scored since: they count
        model.learn(X, 1, prior_p=2.0, learned_p=2.0, scored_at=fit.now)
    model.close()
    assert model.scale == pytest.approx(0.95)
    fit.now += 7 * MS_PER_DAY
    hand_over(fit, BgNbd(r=0.6, alpha=9.0, a=0.8, b=2.5), (model,))  # a refit: the same kind
    assert model.prior_since == fit.now - 7 * MS_PER_DAY and model.scale == pytest.approx(0.95)
    hand_over(fit, None, (model,))  # set aside: the recency prior answers again
    assert model.prior_since == fit.now and model.scale == 1.0 and model.bgnbd is None


def test_the_trainer_hands_each_label_its_scoring_time_for_the_scale() -> None:
    from models.examples import ChurnExample
    from streams.domain.features import MODEL_FEATURES

    models = Models.fresh(min_labels=1, loyalty_kind="linear")
    loyalty = models.loyalty
    for i in range(3):
        loyalty.learn(X, 1)
    loyalty.prior_since = T0
    features = [1.0] * len(MODEL_FEATURES)

    def example(scored_at: int) -> ChurnExample:
        return ChurnExample(id=f"u1@{scored_at}/d", at=scored_at + 30 * MS_PER_DAY, features=features, churned=None, days=1,
                            churn_p=0.5, loyalty_p=2.0, churn_prior_p=0.5, churn_learned_p=0.5, loyalty_prior_p=2.0,
                            loyalty_learned_p=2.0)

    judged = loyalty.gate.current[0]
    models.learn(example(T0 - 1))  # the gate judges it, the scale does not count it
    assert loyalty.gate.current[0] == judged + 1 and loyalty.gate.current[5:] == [0.0, 0.0, 0.0]
    models.learn(example(T0))
    assert loyalty.gate.current[5:] == [2.0, 1.0, 1.0]


def test_the_replay_hands_each_label_its_scoring_time_as_the_trainer_does() -> None:
    """The workers' trainer and the in-process replay decide alike: the same examples, one
    scored before the prior changed kind and one since, leave the same loyalty gate in both."""
    from models.examples import ChurnExample
    from streams.domain.evaluation import ReplayModels
    from streams.domain.features import MODEL_FEATURES

    trainer = Models.fresh(min_labels=1, loyalty_kind="residual", loyalty_prior_learns=True)
    replay = ReplayModels([ChurnModel(min_labels=1)], [LoyaltyModel(horizon_days=30, min_labels=1, kind="residual", learned_prior=True)])
    features = [1.0] * len(MODEL_FEATURES)

    def example(scored_at: int, days: int) -> ChurnExample:
        return ChurnExample(id=f"u1@{scored_at}/d", at=scored_at + 30 * MS_PER_DAY, features=features, churned=None, days=days,
                            churn_p=0.5, loyalty_p=2.0, churn_prior_p=0.5, churn_learned_p=0.5, loyalty_prior_p=2.0,
                            loyalty_learned_p=2.5)

    for models, loyalty in ((trainer, trainer.loyalty), (replay, replay.loyalty_models[0])):
        for i in range(3):
            models.learn(example(T0 - 10 * MS_PER_DAY + i, i % 3))
        loyalty.prior_since = T0
        models.learn(example(T0 - 1, 1))  # scored before the change: judges nothing, no scale
        models.learn(example(T0, 1))  # scored since: both
    mine, theirs = trainer.loyalty.gate, replay.loyalty_models[0].gate
    # the first label judges nothing (no learner yet), the one scored before the change neither;
    # the scale counts every stored answer but that one: 2 forecast four times, 0 + 1 + 2 + 1 came
    assert mine.current == pytest.approx(theirs.current) and mine.current[0] == 3 and mine.current[5:] == [8.0, 4.0, 4.0]


def test_a_residual_learner_is_judged_again_from_the_points_scored_under_its_new_prior() -> None:
    """The residual learner answers the prior plus its correction: against a new prior it is
    another learner, so its window starts again and the labels of points scored before the
    change judge it no more; the weight in force stays until new labels move it."""
    from models.bgnbd_prior import BgNbdFit
    from models.churn import hand_over

    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="residual", learned_prior=True)
    for day in range(10):  # the learner's stored predictions were right, the prior's not
        for i in range(100):
            model.learn({"recency_days": float(i % 4)}, 2, prior_p=1.0, learned_p=2.0, scored_at=T0 + day * MS_PER_DAY)
        model.close()
    weight = model.weight
    assert weight == pytest.approx(1 / (1 + 200 / 999))  # the least-squares weight 1, shrunk (the first label judges nothing)
    fit = BgNbdFit()
    fit.now = T0 + 10 * MS_PER_DAY
    hand_over(fit, BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5), (model,))
    assert model.gate.labels == 0 and model.weight == weight and model.scale == 1.0
    for i in range(100):  # scored before the change (against the bins): judge nothing
        model.learn(X, 2, prior_p=2.0, learned_p=0.0, scored_at=fit.now - 1)
    model.close()
    assert model.gate.labels == 0 and model.weight == weight
    for i in range(1000):  # scored since: the learner was wrong against BG/NBD
        model.learn(X, 2, prior_p=2.0, learned_p=0.0, scored_at=fit.now)
    model.close()
    assert model.gate.labels == 1000 and model.gate.target == 0.0 and model.weight == pytest.approx(weight - 0.1)


def test_a_restarted_window_holds_the_weight_in_force_until_new_labels_move_it() -> None:
    """The weight had not reached the target its old window earned when the prior changed
    kind: with the window emptied it stays where it was (it does not walk on toward a target
    earned against the other prior) while the labels of points scored before the change
    mature and judge nothing."""
    from models.bgnbd_prior import BgNbdFit
    from models.churn import hand_over

    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="residual", learned_prior=True)
    for day in range(3):
        for i in range(100):
            model.learn({"recency_days": float(i % 4)}, 2, prior_p=1.0, learned_p=2.0, scored_at=T0 + day * MS_PER_DAY)
        model.close()
    weight = model.weight
    assert weight == pytest.approx(0.3) and model.gate.target > weight + 0.2  # two steps of 0.1 (the first period frozen)
    fit = BgNbdFit()
    fit.now = T0 + 3 * MS_PER_DAY
    hand_over(fit, BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5), (model,))
    assert model.gate.target == weight
    for day in range(5):
        for i in range(100):
            model.learn(X, 2, prior_p=2.0, learned_p=0.0, scored_at=fit.now - MS_PER_DAY)
        model.close()
        assert model.gate.labels == 0 and model.weight == weight and model.gate.report()["target"] == weight
