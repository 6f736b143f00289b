"""The evaluation replay, the baselines and the transactions CSV, with explicit times."""

from __future__ import annotations

import math

from pathlib import Path

import msgspec
import pytest

from models.datasets import Transaction, detect_columns, read_transactions
from streams.domain.engine import EngineConfig
from streams.domain.evaluation import Replay
from models.churn import ChurnModel, LoyaltyModel
from streams.runtime.evaluate import purchases_of

DAY = 86_400_000


def test_replay_scores_every_model_on_the_same_matured_points() -> None:
    # a weekly buyer (days 0..56) and a one-time buyer (day 0), H = 20 days, no sweeps
    rows = [Transaction("weekly", d * DAY, 10.0) for d in range(0, 57, 7)] + [Transaction("once", 0, 5.0)]
    rows += [Transaction(f"c{i}", 0, 1.0) for i in range(20)]  # BG/NBD needs 20 buyers for its first fit
    rows.sort(key=lambda t: (t.ts, t.customer_id))
    cfg = EngineConfig(churn_horizon_days=20, sweep_days=0)
    replay = Replay(cfg, [ChurnModel(min_labels=10**6)], [LoyaltyModel(20, min_labels=10**6)], period_days=100)
    replay.run(purchases_of(rows))
    # points: day 0 for all 22 customers; the weekly buyer's at 7, 14, ... are H/4 = 5 days apart: all stored
    assert replay.points == 22 + 8
    # matured by day 56: the day-0 points (22), and weekly points of days 7..35 (ts + 20 < 56)
    total = replay.total
    # BG/NBD predicts from its first fit on (the 20th buyer, c19), so c0..c18's day-0 points lack it
    assert {m: c.count for m, c in total.churn.items()} == {"churn-logreg": 27, "recency": 27, "bgnbd": 27 - 19, "bgnbd-expected": 27 - 19}
    assert "bgnbd-expected" not in total.loyalty  # churn only: its expected days are bgnbd's
    # bgnbd-expected is exp(-E[N]) of bgnbd's expected purchase days at every scored point
    scored = [p for p, _ in replay.scored.values() if "bgnbd" in p]
    assert scored and all(p["bgnbd-expected"] == (pytest.approx(math.exp(-p["bgnbd"][1])), p["bgnbd"][1]) for p in scored)
    assert total.loyalty["recency"].count == 27
    weekly_day0 = 2  # purchase days 7 and 14 in (0, 20]
    assert total.loyalty["recency"].report()["mean_label"] == pytest.approx((weekly_day0 + 5 * 2) / 27)  # each later weekly point: 2 purchase days
    assert total.churn["recency"].report()["churn_rate"] == pytest.approx(21 / 27)


def test_csv_columns_are_detected_and_returns_skipped(tmp_path: Path) -> None:
    path = tmp_path / "retail.csv"
    path.write_text(
        "InvoiceNo,Quantity,InvoiceDate,UnitPrice,CustomerID\n"
        "1,2,12/1/2010 8:26,2.5,17850.0\n"
        "2,-1,12/1/2010 9:00,2.5,17850.0\n"
        "3,1,not a date,1.0,1\n"
        "4,3,12/2/2010 10:00,1.0,13047\n"
    )
    skipped: list[int] = []
    cols, rows = read_transactions(path, skipped=skipped)
    assert cols == detect_columns(["InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"])
    assert rows == [Transaction("17850", 1291191960000, 5.0), Transaction("13047", 1291284000000, 3.0)]
    assert skipped == [2]


def _weekly_rows(customers: int = 8, days: int = 50) -> list[Transaction]:
    rows = [Transaction(f"u{i}", (d + i) * DAY + 3_600_000 * i, 10.0 + i) for i in range(customers) for d in range(0, days, 3 + i)]
    return sorted(rows, key=lambda t: (t.ts, t.customer_id))


def test_each_partition_keeps_its_own_clock_moved_by_its_events_and_by_heartbeats() -> None:
    from streams.domain.events import Heartbeat

    cfg = EngineConfig(churn_horizon_days=10, sweep_days=1)
    # "a" and "b" on different partitions: b's purchase on day 5 must not age a's partition
    rows = [Transaction("a", 0, 10.0), Transaction("b", 5 * DAY + 1, 10.0)]
    replay = Replay(cfg, [ChurnModel(min_labels=10**6)], [LoyaltyModel(10, min_labels=10**6)], period_days=100,
                    partition_for=lambda user: 0 if user == "a" else 1)
    replay.run(purchases_of(rows))
    assert replay.clocks == {0: 0, 1: 5 * DAY + 1}
    assert replay.states["a"].swept_at in (None, 0)  # no sweep of a: its partition's clock stayed at day 0
    replay.run([Heartbeat(ts=6 * DAY)])  # a heartbeat moves every partition's clock
    assert replay.clocks == {0: 6 * DAY, 1: 6 * DAY}
    assert replay.states["a"].swept_at == 6 * DAY  # a's sweep ran when its own clock reached day 6
    # in one partition b's purchase moves a's clock: a is swept at b's purchase instead
    one = Replay(cfg, [ChurnModel(min_labels=10**6)], [LoyaltyModel(10, min_labels=10**6)], period_days=100)
    one.run(purchases_of(rows))
    assert one.states["a"].swept_at == 5 * DAY + 1


def test_the_replay_keeps_each_horizon_label_with_the_predictions_stored_at_its_scoring_time() -> None:
    cfg = EngineConfig(churn_horizon_days=10, sweep_days=1)
    replay = Replay(cfg, [ChurnModel(min_labels=5)], [LoyaltyModel(10, min_labels=5)], period_days=100)
    replay.run(purchases_of(_weekly_rows()))
    assert len(replay.labels) == replay.total.churn["churn-logreg"].count > 50
    for label in replay.labels.values():
        user, scored_at = label.id.rsplit("/", 1)[0].rsplit("@", 1)
        predictions, days = replay.scored[(user, int(scored_at))]
        assert days == label.days
        # what the engine stored with the point is what the replay scored for the first learners
        assert predictions["churn-logreg"][0] == pytest.approx(label.churn_p, abs=1e-12)
        assert predictions["loyalty-residual"][1] == pytest.approx(label.loyalty_p, abs=1e-12)


def test_daily_heartbeats_cover_every_day_after_the_first_record_to_the_day_after_the_last() -> None:
    from streams.runtime.evaluate import daily_heartbeats, decoded, transaction_records

    t0 = 20_454 * DAY  # 2026-01-01 (the decoder refuses times before 2000)
    records = transaction_records([Transaction("a", t0 + DAY + 5, 1.0), Transaction("b", t0 + 3 * DAY + 7, 2.0)])
    beats = daily_heartbeats(records)
    assert [b.ts_ms - t0 for b in beats] == [2 * DAY, 3 * DAY, 4 * DAY]
    events = decoded(records + beats, heartbeats=True)
    assert [type(e).__name__ for e in events] == ["Purchase", "Heartbeat", "Heartbeat", "Purchase", "Heartbeat"]
    assert [e.ts - t0 for e in decoded(records + beats, heartbeats=False)] == [DAY + 5, 3 * DAY + 7]
    assert events[0].user_id == "a" and events[0].total == 1.0


def test_the_comparison_names_every_point_that_differs_missing_or_extra() -> None:
    from models.examples import ChurnExample
    from streams.runtime.evaluate_workers import compare

    def label(i: int, churn_p: float = 0.5, days: int = 1) -> ChurnExample:
        return ChurnExample(id=f"u{i}@{i}/d", at=i, features=[1.0, 2.0], churned=None, days=days, churn_p=churn_p, loyalty_p=1.0)

    replay = {x.id: x for x in (label(1), label(2), label(3), label(4))}
    assert compare(replay, dict(replay)).equal
    workers = {x.id: x for x in (label(1), label(2, churn_p=0.5 + 1e-6), label(3, days=2), label(5))}
    agreement = compare(replay, workers)
    assert not agreement.equal
    assert agreement.missing == ["u4@4/d"] and agreement.extra == ["u5@5/d"]
    assert agreement.different == ["u2@2/d: churn_p 0.5 vs 0.500001", "u3@3/d: purchase days 1 vs 2"]
    assert "DIFFER" in agreement.summary()


def test_the_comparison_names_a_difference_in_any_stored_candidate_prediction() -> None:
    from models.examples import ChurnExample
    from streams.runtime.evaluate_workers import STORED_PREDICTIONS, _difference, compare

    stored = {"churn_prior_p": 0.4, "churn_learned_p": 0.6, "loyalty_prior_p": 1.5, "loyalty_learned_p": None}
    base = ChurnExample(id="u1@1/d", at=1, features=[1.0, 2.0], churned=None, days=1, churn_p=0.5, loyalty_p=1.0, **stored)
    assert _difference(base, msgspec.structs.replace(base)) is None  # None equals None
    assert _difference(base, msgspec.structs.replace(base, churn_learned_p=0.6 + 1e-12)) is None  # within 1e-9
    for name in ("churn_prior_p", "churn_learned_p", "loyalty_prior_p"):
        other = msgspec.structs.replace(base, **{name: stored[name] + 1e-6})
        assert _difference(base, other) == f"{name} {stored[name]} vs {stored[name] + 1e-6}"
        assert compare({base.id: base}, {base.id: other}).different == [f"u1@1/d: {name} {stored[name]} vs {stored[name] + 1e-6}"]
    # a prediction stored on one side only differs, either way round
    assert _difference(base, msgspec.structs.replace(base, loyalty_learned_p=0.0)) == "loyalty_learned_p None vs 0.0"
    assert _difference(base, msgspec.structs.replace(base, churn_prior_p=None)) == "churn_prior_p 0.4 vs None"
    assert set(STORED_PREDICTIONS) == {"churn_p", "loyalty_p", *stored}  # every prediction a label carries
    assert set(STORED_PREDICTIONS) == {f.name for f in msgspec.structs.fields(ChurnExample) if f.name.endswith("_p")}


def test_a_history_before_2000_goes_on_the_wire_as_rfc3339_and_decodes_to_its_time() -> None:
    from streams.runtime.evaluate import decoded, transaction_records

    ts = 852_076_800_000  # 1997-01-01, CDNOW's first day: an integer this small reads as epoch seconds
    [record] = transaction_records([Transaction("00004", ts, 29.33)])
    assert b'"ts":"1997-01-01T00:00:00.000Z"' in record.value or b'"ts":"1997-01-01T00:00:00Z"' in record.value
    [event] = decoded([record], heartbeats=False)
    assert event.ts == ts and event.total == 29.33


def test_the_history_inputs_of_a_score_row_are_the_feature_vectors_values() -> None:
    from streams.domain.evaluation import history_inputs
    from streams.domain.features import as_dict, feature_vector
    from streams.domain.state import UserState, apply_event

    cfg = EngineConfig()
    state = UserState("u")
    history = [Transaction("u", ts, total) for ts, total in [(0, 10.0), (3_600_000, 5.0), (9 * DAY + 7, 20.0), (40 * DAY, 7.5)]]
    for event in purchases_of(history):
        apply_event(state, event, event.ts, cfg.state)
        for now in (event.ts, event.ts + 5 * DAY + 11):  # at the purchase and days after it
            x = as_dict(feature_vector(state, now, cfg.state))
            assert history_inputs(state, now) == {k: x[k] for k in ("purchases", "purchase_days", "gap_mean_days", "recency_days")}
    assert history_inputs(state, 45 * DAY)["purchase_days"] == 3.0  # two orders on day 0 are one purchase day


def test_a_replay_snapshot_carries_the_fitted_bgnbd_but_not_the_customers_histories() -> None:
    import pickle

    rows = _weekly_rows(customers=25)
    cfg = EngineConfig(churn_horizon_days=10, sweep_days=1)
    replay = Replay(cfg, [ChurnModel(min_labels=1)], [LoyaltyModel(10, min_labels=1)], period_days=100, bgnbd_refit_periods=1)
    replay.run(purchases_of(rows))
    trainer_side = replay.training.trainer.models
    assert trainer_side.bgnbd is not None and len(trainer_side.bgnbd.histories) == 25
    scorer_side = pickle.loads(pickle.dumps(trainer_side))
    assert scorer_side.bgnbd is None
    assert scorer_side.churn_models[0].bgnbd == trainer_side.churn_models[0].bgnbd is not None  # the fit the learners use


def test_the_first_learners_predictions_read_from_the_point_are_those_a_fresh_scoring_gives() -> None:
    import copy

    class Fresh(Replay):  # asks every learner again at each point, as the replay did before
        def _predict(self, partition, user_id, point):  # type: ignore[no-untyped-def]
            unstored = copy.copy(point)
            unstored.churn_p = unstored.loyalty_p = None
            super()._predict(partition, user_id, unstored)

    rows = _weekly_rows(customers=25)
    cfg = EngineConfig(churn_horizon_days=10, sweep_days=1)
    runs = []
    for cls in (Replay, Fresh):
        replay = cls(cfg, [ChurnModel(min_labels=5), ChurnModel(min_labels=5, kind="amf")], [LoyaltyModel(10, min_labels=5)], period_days=100)
        replay.run(purchases_of(rows))
        runs.append(replay)
    assert len(runs[0].scored) > 100
    assert runs[0].scored == runs[1].scored and runs[0].candidates == runs[1].candidates
    assert any(p["churn-logreg"][0] != p["recency"][0] for p, _ in runs[0].scored.values())


def test_the_bgnbd_baselines_cached_answer_is_its_closed_forms() -> None:
    from models.baselines import BgNbdBaseline
    from models.bgnbd import BgNbd

    b = BgNbdBaseline(refit_days=1, min_customers=2)
    for user, day in [("a", 0), ("a", 5), ("a", 9), ("b", 0), ("c", 3), ("c", 4)]:
        b.purchase(user, day * DAY)
    p, n = b.predict("a", 10 * DAY, horizon_days=30)
    assert b.model is not None
    m = BgNbd(b.model.r, b.model.alpha, b.model.a, b.model.b)
    assert (p, n) == (float(m.p_no_purchase(2, 9.0, 10.0, 30.0)), float(m.expected_purchases(2, 9.0, 10.0, 30.0)))
    assert b.predict("a", 10 * DAY, horizon_days=30) == (p, n)
