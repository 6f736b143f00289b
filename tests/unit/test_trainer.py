"""The trainer (models.trainer): learning by period of event time, deterministic snapshots,
de-duplication, watermarks, the choice of snapshot by event time and the gate."""

from __future__ import annotations

import pickle
import random
import zlib

import msgspec
import pytest

from models.bundle import Models
from models.examples import ChurnExample, Example, ReviewExample, SegmentExample, Watermark, decode_example, encode_example
from models.prequential import ChurnMetrics
from models.signing import SnapshotKeys
from models.trainer import (
    SNAPSHOT_VERSION, OfflineTraining, Snapshot, SnapshotStore, Trainer, decode_snapshot, dump_models, encode_snapshot, load_models,
    model_boundary,
)

DAY = 86_400_000
PARTITIONS = 3
KEYS = SnapshotKeys(sign=b"k" * 32, accept=(b"k" * 32,))
X = {"recency_days": 5.0, "gap_mean_days": 9.0, "purchases": 3.0}


def fresh() -> Models:
    return Models.fresh(min_labels=5, loyalty_prior_learns=True)


def examples(days: int = 6, seed: int = 3) -> dict[int, list[Example]]:
    """Per partition, examples in the order the partition makes them (by ``at``)."""
    rng = random.Random(seed)
    out: dict[int, list[Example]] = {p: [] for p in range(PARTITIONS)}
    texts = ["broke at once", "love it", "great value", "awful, never again", "fine"]
    for i in range(300):
        p = rng.randrange(PARTITIONS)
        at = rng.randrange(days * DAY)
        features = [rng.random() * 60 for _ in range(12)]
        days_label = rng.choice([0, 0, 1, 2, 3])
        out[p].append(ChurnExample(id=f"u{i}@{at}/d", at=at, features=features, churned=None, days=days_label,
                                   churn_p=rng.random(), loyalty_p=rng.random() * 3))
        if i % 3 == 0:
            out[p].append(ReviewExample(id=f"r{i}", at=at, text=rng.choice(texts), rating=rng.randint(1, 5)))
        if i % 2 == 0:
            out[p].append(SegmentExample(id=f"u{i}@{at}", at=at, x={"recency_days": features[0], "clicks_30d": features[1]}))
    for part in out.values():
        part.sort(key=lambda e: e.at)
    return out


def stream(parts: dict[int, list[Example]], seed: int, days: int = 6) -> list[Example | Watermark]:
    """The partitions' records interleaved at random (each partition's own order kept), with
    a watermark whenever a partition's clock crosses a day, as the ingest sends them."""
    rng = random.Random(seed)
    queues = {p: list(v) for p, v in parts.items()}
    clocks = {p: 0 for p in parts}
    out: list[Example | Watermark] = []
    while any(queues.values()):
        p = rng.choice([q for q, v in queues.items() if v])
        e = queues[p].pop(0)
        if e.at // DAY > clocks[p] // DAY or clocks[p] == 0:
            out.append(Watermark(partition=p, clock_ms=e.at))
        clocks[p] = max(clocks[p], e.at)
        out.append(e)
    for p in parts:  # the end of the history: every partition's clock passes the last day
        out.append(Watermark(partition=p, clock_ms=days * DAY + 1))
    return out


def run(records: list[Example | Watermark], trainer: Trainer[Models] | None = None) -> tuple[Trainer[Models], list[Snapshot]]:
    trainer = trainer or Trainer(fresh(), DAY, PARTITIONS)
    published: list[Snapshot] = []
    for r in records:
        if isinstance(r, Watermark):
            published.extend(trainer.watermark(r.partition, r.clock_ms))
        else:
            trainer.add(r)
    return trainer, published


def test_any_arrival_order_across_partitions_gives_the_same_snapshots() -> None:
    parts = examples()
    runs = [run(stream(parts, seed))[1] for seed in (1, 2, 3)]
    first = runs[0]
    assert [s.boundary for s in first if s.models] == [d * DAY for d in range(1, 7)]
    for other in runs[1:]:
        assert [(s.boundary, s.models is not None, s.learned) for s in other] == [
            (s.boundary, s.models is not None, s.learned) for s in first
        ]
        for a, b in zip(first, other):
            if a.models is None:
                continue
            ma, mb = load_models(a.models), load_models(b.models)
            assert ma.report() == mb.report()
            assert ma.churn.score(X) == mb.churn.score(X)
            assert ma.loyalty.score(X) == mb.loyalty.score(X)
            assert ma.sentiment.score("broke, awful") == mb.sentiment.score("broke, awful")
            assert ma.segments.predict_one(X) == mb.segments.predict_one(X)
    last = load_models(first[-1].models)
    assert not last.churn.score(X).prior  # it did learn: the learner answers
    assert last.churn.version.endswith("@1970-01-07")


def test_a_repeated_id_is_learned_once_and_counted() -> None:
    parts = examples()
    records = stream(parts, seed=1)
    copies = [r for r in records if not isinstance(r, Watermark)][:40]
    once, _ = run(records)
    # the copies arrive again before their period closed (a re-sent record) ...
    twice, snaps = run(copies + records)
    assert twice.learned == once.learned
    assert twice.dropped["duplicate"] == 40
    assert load_models(snaps[-1].models).report() == once.models.report()
    # ... or after it was learned (read again after a crash)
    late, _ = run(records + copies)
    assert late.learned == once.learned and late.dropped["learned_period"] == 40


def test_nothing_is_learned_before_every_partition_passed_the_period() -> None:
    trainer = Trainer(fresh(), DAY, PARTITIONS)
    trainer.add(ChurnExample(id="a", at=DAY // 2, features=[1.0], churned=None, days=0))
    assert trainer.watermark(0, 5 * DAY) == [] and trainer.watermark(1, 5 * DAY) == []
    assert trainer.missing() == [2]
    first = trainer.watermark(2, DAY - 1)  # still inside day 0: covered up to 0, nothing learned
    assert [(s.boundary, s.models) for s in first] == [(0, None)] and not trainer.learned
    assert trainer.missing() == [2]
    out = trainer.watermark(2, DAY)
    assert [(s.boundary, s.models is not None) for s in out] == [(DAY, True)]
    assert trainer.learned == {"churn": 1}
    # a later period without examples: only a marker of the boundary covered
    marker = trainer.watermark(2, 3 * DAY + 7)
    assert [(s.boundary, s.models, s.model_boundary) for s in marker] == [(3 * DAY, None, DAY)]


def test_a_resumed_trainer_learns_neither_less_nor_more_than_an_uninterrupted_one() -> None:
    records = stream(examples(), seed=5)
    whole, _ = run(records)
    cut = len(records) // 2
    first, published = run(records[:cut])
    # the snapshots survive (model-snapshots); the labels are read again from the last
    # acknowledged one: here, from well before the cut (every record again)
    resumed = Trainer.resume([decode_snapshot(encode_snapshot(s, KEYS.sign), KEYS) for s in published], load_models, fresh(), DAY, PARTITIONS)
    assert resumed.covered == first.covered and resumed.learned == first.learned
    again, _ = run(records, resumed)
    assert again.learned == whole.learned
    assert again.models.report() == whole.models.report()
    assert again.dropped["learned_period"] > 0


def test_the_snapshot_of_a_record_is_chosen_by_its_event_time_with_the_lag() -> None:
    trainer = Trainer(fresh(), DAY, 1)
    store = SnapshotStore(fresh, load_models, DAY, lag=1, keep=3)
    assert not store.ready(0) and store.models_at(DAY)[1] is None  # nothing published: priors
    for day in range(6):
        trainer.add(ReviewExample(id=f"r{day}", at=day * DAY + 1, text="broke at once", rating=1))
        for s in trainer.watermark(0, (day + 1) * DAY):
            store.add(s)
    assert store.covered == 6 * DAY
    assert model_boundary(5 * DAY + 3, DAY, 1) == 4 * DAY
    models, boundary = store.models_at(5 * DAY + 3)
    assert boundary == 4 * DAY and models.sentiment.labels == 4 and models.sentiment.version.endswith("@1970-01-05")
    assert store.ready(8 * DAY - 1) and not store.ready(8 * DAY)  # the gate: boundary 6 is covered, 7 is not
    # older than what is kept (3 snapshots: days 4, 5, 6): the oldest kept answers, counted
    assert store.models_at(2 * DAY)[1] == 4 * DAY and store.misses == 1
    # before the first snapshot with models: the priors
    assert store.models_at(DAY)[1] is None


def test_a_look_up_repeated_after_a_snapshot_arrives_answers_with_the_new_models() -> None:
    """The store remembers its last answer per target boundary; an added snapshot and a miss
    are not answered from that memory."""
    trainer = Trainer(fresh(), DAY, 1)
    store = SnapshotStore(fresh, load_models, DAY, lag=1, keep=2)
    assert store.models_at(3 * DAY + 1) == (store.priors, None)
    for day in range(3):
        trainer.add(ReviewExample(id=f"r{day}", at=day * DAY + 1, text="broke at once", rating=1))
        for s in trainer.watermark(0, (day + 1) * DAY):
            store.add(s)
        models, boundary = store.models_at(3 * DAY + 1)  # target: day 2
        assert boundary == min(day + 1, 2) * DAY and models.sentiment.labels == min(day + 1, 2)
        assert store.models_at(3 * DAY + 2) == (models, boundary)  # the same answer, remembered
    miss = 2 * DAY + 1  # its boundary (day 1) is no longer kept: the oldest kept answers, each time counted
    assert store.models_at(miss)[1] == 2 * DAY and store.models_at(miss)[1] == 2 * DAY and store.misses == 2


def test_the_offline_training_scores_with_the_snapshot_before_the_lag() -> None:
    training = OfflineTraining(fresh, DAY, lag=2)
    for day in range(5):
        training.advance(day * DAY)
        training.add(ReviewExample(id=f"r{day}", at=day * DAY, text="awful", rating=1))
    training.advance(5 * DAY)
    assert training.models_at(5 * DAY).sentiment.labels == 3  # snapshot of day 3: days 0, 1, 2


def test_label_records_round_trip_and_refuse_a_newer_format() -> None:
    e = ChurnExample(id="u@1/d", at=2, features=[1.5], churned=None, days=3, churn_p=0.2, loyalty_p=None)
    assert decode_example(encode_example(e)) == e
    with pytest.raises(ValueError, match="v9"):
        decode_example(encode_example(Watermark(partition=0, clock_ms=1, v=9)))


def test_examples_of_decoded_events_encode() -> None:
    """The engine's times and a review's rating are int subclasses, which msgspec refuses."""
    from streams.domain.events import EventTime, Rating
    from streams.domain.labels import Matured
    from models.examples import churn_examples

    matured = [Matured(ts=EventTime(5), features=[1.0], churned=0, days=None, churn_p=0.5)]
    (example,) = churn_examples("u", matured, EventTime(9))
    assert decode_example(encode_example(example)) == example and example.id == "u@5/c"
    review = ReviewExample(id="r", at=int(EventTime(9)), text="ok", rating=int(Rating(4)))
    assert decode_example(encode_example(review)).rating == 4


def test_the_trainers_customer_histories_travel_apart_from_the_models_the_workers_keep() -> None:
    """Snapshot.models (kept and loaded by every worker, RETENTION_MODEL_SNAPSHOTS_KEPT of
    them) must not grow with the customers; the BG/NBD histories only a trainer needs go in
    Snapshot.state, of which a worker keeps the newest only."""
    crowded = fresh()
    assert crowded.bgnbd is not None
    crowded.bgnbd.histories = {f"u{i}": (i % 5, float(i % 90), 90.0, i) for i in range(20_000)}
    assert len(dump_models(crowded)) < len(dump_models(fresh())) + 2_000
    assert len(crowded.trainer_state() or b"") > 20_000
    assert len(crowded.bgnbd.histories) == 20_000  # (pickled without them, not emptied)

    trainer, published = run(stream(examples(), seed=5))
    histories = trainer.models.bgnbd.histories
    last = [s for s in published if s.models is not None][-1]
    assert histories and last.state is not None
    scoring = load_models(last.models)
    assert scoring.bgnbd.histories == {} and scoring.report()["bgnbd"]["customers"] == len(histories)
    resumed = Trainer.resume([decode_snapshot(encode_snapshot(s, KEYS.sign), KEYS) for s in published], load_models, fresh(), DAY, PARTITIONS)
    assert resumed.models.bgnbd.histories == histories

    # a worker keeps the state of the newest snapshot with models only, not in ``latest``
    store: SnapshotStore[Models] = SnapshotStore(fresh, load_models, DAY, lag=1)
    for s in published:
        store.add(s)
    assert store.state == last.state and store.latest is not None and store.latest.state is None
    scorer_only: SnapshotStore[Models] = SnapshotStore(fresh, load_models, DAY, lag=1, keep_state=False)  # RETENTION_TRAINER=separate
    for s in published:
        scorer_only.add(s)
    assert scorer_only.state is None and scorer_only.kept == store.kept
    # ... and a trainer taking over resumes from what the store holds (streams/runtime/model_sync.py latest())
    models_bytes = store.kept[store.latest.model_boundary]
    taken_over = Trainer.resume_from(store.latest, models_bytes, load_models, fresh(), DAY, PARTITIONS, state=store.state)
    assert taken_over.models.bgnbd.histories == histories
    assert taken_over.models.report()["bgnbd"]["customers"] == len(histories)
    # a state that does not load costs the histories and the metrics' windows, not the models
    broken = Trainer.resume_from(store.latest, models_bytes, load_models, fresh(), DAY, PARTITIONS, state=b"not a state")
    assert broken.refused is None and broken.models.bgnbd.histories == {}
    learners = ("model", "version", "labels", "prior", "blend")
    assert {k: broken.models.report()["churn"][k] for k in learners} == {k: taken_over.models.report()["churn"][k] for k in learners}
    assert broken.models.report()["churn"]["metrics"]["count"] == 0 < taken_over.models.report()["churn"]["metrics"]["count"]

    # a snapshot of before the split (histories inside the models' pickle, no state) still resumes with them
    old = Snapshot(boundary=last.boundary, version=last.version, model_boundary=last.model_boundary, learned=last.learned,
                   dropped=last.dropped, marks=last.marks, models=zlib.compress(pickle.dumps(trainer.models)))
    assert Trainer.resume([old], load_models, fresh(), DAY, PARTITIONS).models.bgnbd.histories == histories


def test_snapshots_carry_the_metrics_figures_and_the_trainer_keeps_their_windows() -> None:
    """The prequential metrics' windows were ~90 % of the models every worker loads at each
    period, only to show a few figures: the models carry the figures, the trainer's state the
    windows, and a resumed trainer goes on with the same windows."""
    from models.prequential import Figures

    trainer, published = run(stream(examples(), seed=5))
    last = [s for s in published if s.models is not None][-1]
    scoring = load_models(last.models)
    assert isinstance(scoring.learners.churn_metrics, Figures) and isinstance(scoring.learners.loyalty_metrics, Figures)
    resumed = Trainer.resume([decode_snapshot(encode_snapshot(s, KEYS.sign), KEYS) for s in published], load_models, fresh(), DAY, PARTITIONS)
    report = resumed.models.report()
    assert report["churn"]["metrics"]["count"] > 0 and report == scoring.report()  # what the workers showed
    assert report["churn"]["calibration"] and report["churn"]["calibration"] == scoring.report()["churn"]["calibration"]
    assert not isinstance(resumed.models.learners.churn_metrics, Figures)
    with pytest.raises(TypeError, match="learn nothing"):
        scoring.learners.observe({"recency_days": 40.0}, churned=None, days=0, churn_p=0.9, loyalty_p=0.5)
    count = report["loyalty"]["metrics"]["count"]
    resumed.models.learners.observe({"recency_days": 40.0}, churned=None, days=0, churn_p=0.9, loyalty_p=0.5)
    assert resumed.models.report()["loyalty"]["metrics"]["count"] == count + 1

    # the windows are most of the learners' bytes: without them the models are a fraction
    with_windows = zlib.compress(pickle.dumps(trainer.models, protocol=pickle.HIGHEST_PROTOCOL), 1)
    assert len(dump_models(trainer.models)) < len(with_windows) / 3
    assert isinstance(trainer.models.learners.churn_metrics, ChurnMetrics)  # (figures only while pickled)

    # a snapshot without a state (none, or from before) resumes with the metrics started again
    bare = msgspec.structs.replace(last, state=None)
    again = Trainer.resume([bare], load_models, fresh(), DAY, PARTITIONS)
    assert again.models.report()["churn"]["metrics"]["count"] == 0
    again.models.learners.observe({"recency_days": 40.0}, churned=None, days=0, churn_p=0.9, loyalty_p=0.5)
    # ... and a v2 record (its state the histories' zlib stream, its models with the windows) still resumes with both
    with_windows_v2 = msgspec.structs.replace(last, v=2, state=trainer.models.bgnbd.dump_histories(),
                                              models=zlib.compress(pickle.dumps(trainer.models), 1))
    v2 = decode_snapshot(encode_snapshot(with_windows_v2, KEYS.sign), KEYS)
    assert v2.v == 2 and last.v == SNAPSHOT_VERSION == 3
    legacy = Trainer.resume([v2], load_models, fresh(), DAY, PARTITIONS).models
    assert legacy.bgnbd.histories == trainer.models.bgnbd.histories and legacy.report() == trainer.models.report()
    assert isinstance(legacy.learners.churn_metrics, ChurnMetrics)
