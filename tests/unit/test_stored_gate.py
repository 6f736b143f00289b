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


def test_the_gate_compares_what_was_predicted_at_scoring_time_not_at_maturity() -> None:
    model = trained_loyalty()
    before = len(model.gate.losses)
    # the learner had learned nothing when this point was scored: no comparison
    model.learn(X, 2, prior_p=1.0, learned_p=None)
    assert len(model.gate.losses) == before
    # the stored predictions are compared, whatever the models predict now
    model.learn(X, 2, prior_p=0.0, learned_p=2.0)
    assert model.gate.losses[-1] == (0.0, 4.0) and model.gate.pairs[-1] == (2.0, 2.0)


def test_the_answer_blends_prior_and_learner_by_the_weight_their_stored_predictions_earned() -> None:
    model = LoyaltyModel(horizon_days=30, min_labels=10, kind="linear")
    for i in range(100):  # the label lies halfway between the prior's and the learner's stored predictions
        model.learn({"recency_days": float(i % 4)}, 2, prior_p=1.0, learned_p=3.0)
    assert model.gate.weight == pytest.approx(0.5) and model.warm
    prior, learned = model.prior(X), model.learned(X)
    score = model.score(X)
    assert not score.prior and score.value == pytest.approx(prior + 0.5 * (learned - prior))
    assert model.scored(X) == (score, pytest.approx(prior), pytest.approx(learned))
    for i in range(200):  # a window later the learner is the one that is off
        model.learn({"recency_days": float(i % 4)}, 1, prior_p=1.0, learned_p=3.0)
    assert model.gate.weight == 0.0 and not model.warm and model.score(X).prior


def test_the_churn_learner_is_blended_only_against_bgnbd() -> None:
    model = ChurnModel(min_labels=10)
    for i in range(40):
        model.learn({"recency_days": float(i % 40)}, i % 2 == 0, prior_p=0.5, learned_p=0.9)
    assert model.gate is None and model.weight == 1.0 and model.warm  # no BG/NBD: the learner alone
    model.bgnbd = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    assert model.weight == 0.0 and not model.warm  # against BG/NBD: nothing earned yet
    for i in range(40):  # the learner's stored probability was right every time, BG/NBD's half-way
        model.learn(X, True, prior_p=0.5, learned_p=0.99)
    assert model.weight == pytest.approx(1.0) and model.score(X).value == pytest.approx(model.learned(X))


def test_old_gates_without_pairs_weigh_by_their_losses() -> None:
    gate = Gate(window=3)
    del gate.pairs  # as pickled before the blend: the class default
    gate.update(0.1, 1.0)
    assert gate.weight == 1.0
    gate.update(5.0, 1.0, 1.0, 1.0)  # a stored pair starts the blend
    assert gate.pairs is not None and gate.weight == 1.0


def test_models_report_shows_the_blend_its_gate_and_the_prior() -> None:
    from prometheus_client import REGISTRY

    from models.online import OnlineLearners
    from streams.runtime import metrics

    learners = OnlineLearners(horizon_days=30, min_labels=2, loyalty_kind="linear", loyalty_prior_learns=True)
    fresh = learners.report()
    assert fresh["loyalty"]["blend"] == {
        "weight": 0.0, "answers": "prior", "prior_model": "recency-prior",
        "gate": {"labels": 0, "learner_loss": None, "prior_loss": None, "weight": 0.0},
    }
    assert fresh["churn"]["blend"] == {"weight": 0.0, "answers": "prior", "prior_model": "recency-prior", "gate": None}
    # stored (learner, prior) against the label: (2, 0) on 1, (4, 0) on 1: w = (2 + 4) / (4 + 16) = 0.3
    for learned_p in (2.0, 4.0):
        learners.loyalty.learn(X, 1, prior_p=0.0, learned_p=learned_p)
    blend = learners.report()["loyalty"]["blend"]
    assert blend["weight"] == pytest.approx(0.3) and blend["answers"] == "blend"
    assert blend["prior_model"] == "recency-prior+2"  # the learned recency bins, after two labels
    assert blend["gate"] == {"labels": 2, "learner_loss": pytest.approx(5.0), "prior_loss": pytest.approx(1.0), "weight": pytest.approx(0.3)}
    metrics.export_learners(learners)
    assert REGISTRY.get_sample_value("retention_model_blend_weight", {"model": "loyalty"}) == pytest.approx(0.3)
    assert REGISTRY.get_sample_value("retention_model_blend_weight", {"model": "churn"}) == 0.0
    learners.loyalty.bgnbd = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    assert learners.report()["loyalty"]["blend"]["prior_model"] == "bgnbd-prior"


def test_a_churn_learner_without_bgnbd_reports_weight_one_once_warm_and_zero_against_bgnbd_until_earned() -> None:
    from prometheus_client import REGISTRY

    from models.online import OnlineLearners
    from streams.runtime import metrics

    learners = OnlineLearners(horizon_days=30, min_labels=10)
    model = learners.churn
    for i in range(9):
        model.learn({"recency_days": float(i)}, i % 2 == 0)
    assert model.blend_report()["weight"] == 0.0 and model.blend_report()["answers"] == "prior"  # 9 of 10 labels
    model.learn(X, True)
    assert model.blend_report() == {"weight": 1.0, "answers": "learner", "prior_model": "recency-prior", "gate": None}
    metrics.export_learners(learners)
    assert REGISTRY.get_sample_value("retention_model_blend_weight", {"model": "churn"}) == 1.0
    model.bgnbd = BgNbd(r=0.5, alpha=10.0, a=0.8, b=2.5)
    assert model.blend_report() == {"weight": 0.0, "answers": "prior", "prior_model": "bgnbd-prior", "gate": None}
    model.learn(X, True, prior_p=0.5, learned_p=0.9)  # the learner was nearer: w = 0.5 / 0.4, capped at 1
    assert model.blend_report()["weight"] == 1.0 and model.blend_report()["answers"] == "learner"
    gate = model.blend_report()["gate"]
    assert gate["labels"] == 1 and gate["learner_loss"] == pytest.approx(-math.log(0.9)) and gate["prior_loss"] == pytest.approx(math.log(2))


def test_learners_pickled_with_gates_before_the_blend_still_report() -> None:
    import pickle

    from models.online import OnlineLearners

    learners = OnlineLearners(horizon_days=30, min_labels=1, loyalty_kind="linear")
    learners.loyalty.learn(X, 1)
    del learners.loyalty.gate.pairs  # as pickled before the blend: the class default
    old = pickle.loads(pickle.dumps(learners))
    old.loyalty.learn(X, 1)  # compared on predictions made now: losses, no pair
    assert old.loyalty.gate.pairs is None
    blend = old.report()["loyalty"]["blend"]
    gate = old.loyalty.gate
    assert blend["gate"]["labels"] == 1 and blend["gate"]["weight"] == (1.0 if gate.model_ahead else 0.0)
    assert blend["weight"] == blend["gate"]["weight"] and old.report()["churn"]["blend"]["gate"] is None
