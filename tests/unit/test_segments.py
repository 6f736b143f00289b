"""The behavioural segment model: values, determinism and id stability (no broker)."""

from __future__ import annotations

import math
import pickle
import random
import subprocess
import sys

from models.segments import SEGMENT_FEATURES, SegmentModel, behaviour

LOYAL = {"recency_days": 4.0, "purchases_90d": 8.0, "clicks_30d": 80.0, "days_active_30d": 15.0,
         "gap_mean_days": 10.0, "avg_order_value": 60.0, "carts_abandoned_30d": 1.0}
GONE = {"recency_days": 120.0, "purchases_90d": 0.0, "clicks_30d": 0.0, "days_active_30d": 0.0,
        "gap_mean_days": 12.0, "avg_order_value": 55.0, "carts_abandoned_30d": 0.0}
BROWSER = {"recency_days": 20.0, "purchases_90d": 0.0, "clicks_30d": 40.0, "days_active_30d": 8.0,
           "gap_mean_days": 0.0, "avg_order_value": 0.0, "carts_abandoned_30d": 3.0}


def jitter(x: dict[str, float], rng: random.Random) -> dict[str, float]:
    return {k: v * rng.uniform(0.8, 1.2) for k, v in x.items()}


def trained(seed: int = 42, n: int = 300) -> SegmentModel:
    model = SegmentModel(n_clusters=4, seed=seed)
    rng = random.Random(1)
    for _ in range(n):
        for kind in (LOYAL, GONE, BROWSER):
            model.learn_one(jitter(kind, rng))
    return model


def test_behaviour_is_log1p_of_the_segment_features_and_ignores_the_rest() -> None:
    z = behaviour({**LOYAL, "reviews": 9.0, "recency_days": -1.0})
    assert list(z) == list(SEGMENT_FEATURES)
    assert z["purchases_90d"] == math.log1p(8.0) and z["recency_days"] == 0.0
    assert behaviour({}) == dict.fromkeys(SEGMENT_FEATURES, 0.0)


def test_distinct_behaviours_get_distinct_segments_and_similar_ones_the_same() -> None:
    model = trained()
    ids = {name: model.predict_one(x) for name, x in (("loyal", LOYAL), ("gone", GONE), ("browser", BROWSER))}
    assert len(set(ids.values())) == 3, ids
    rng = random.Random(2)
    for name, x in (("loyal", LOYAL), ("gone", GONE), ("browser", BROWSER)):
        assert all(model.predict_one(jitter(x, rng)) == ids[name] for _ in range(50)), name
    assert all(0 <= i < 4 for i in ids.values())


def test_ids_stay_put_while_the_model_keeps_learning_the_same_behaviours() -> None:
    model = trained(n=300)
    before = [model.predict_one(x) for x in (LOYAL, GONE, BROWSER)]
    rng = random.Random(3)
    for _ in range(300):
        for kind in (GONE, BROWSER, LOYAL):
            model.learn_one(jitter(kind, rng))
    assert [model.predict_one(x) for x in (LOYAL, GONE, BROWSER)] == before


def test_learn_one_returns_none_and_the_version_counts_what_was_learned() -> None:
    model = SegmentModel(n_clusters=6)
    assert model.version == "segments-kmeans6+0"
    assert model.learn_one(LOYAL) is None
    assert model.version == "segments-kmeans6+1"


def test_the_same_seed_gives_the_same_segments_whatever_the_hash_seed() -> None:
    """River draws a centre's coordinates lazily in set order, which depends on PYTHONHASHSEED;
    the model draws them up front in a fixed order."""
    program = (
        "import random; from tests.unit.test_segments import trained, LOYAL, GONE, BROWSER;"
        "m = trained(seed=5, n=20); print([m.predict_one(x) for x in (LOYAL, GONE, BROWSER)], m.kmeans.centers[0]['clicks_30d'])"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(h), "PATH": ""}).stdout
        for h in (0, 1, 2, 3)
    }
    assert len(outputs) == 1, outputs


def test_the_answer_from_the_figures_read_once_is_rivers_and_follows_learning() -> None:
    rng = random.Random(3)

    def customer() -> dict[str, float]:
        return {name: rng.choice([0.0, rng.expovariate(0.1), rng.uniform(0, 400)]) for name in SEGMENT_FEATURES}

    model = SegmentModel(n_clusters=4, seed=5)
    fresh = [customer() for _ in range(20)]
    assert [model.predict_one(x) for x in fresh] == [model.river_predict_one(x) for x in fresh]  # untrained: scaled to 0
    for _ in range(300):
        model.learn_one(customer())
    asked = [customer() for _ in range(2000)]
    assert [model.predict_one(x) for x in asked] == [model.river_predict_one(x) for x in asked]
    assert len({model.predict_one(x) for x in asked}) > 1
    for _ in range(300):  # the centres move: the figures are read again
        model.learn_one(customer())
    assert [model.predict_one(x) for x in asked] == [model.river_predict_one(x) for x in asked]
    assert "_frozen" not in pickle.loads(pickle.dumps(model)).__dict__  # derived, never in a snapshot
