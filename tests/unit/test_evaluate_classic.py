"""The classic calibration/holdout split: every calibration customer scored once at the cut-off."""

from __future__ import annotations

from models.datasets import Transaction
from streams.domain.engine import EngineConfig
from streams.runtime.evaluate import run_replay
from streams.runtime.evaluate_classic import classic_split, holdout_buyers, report

DAY = 86_400_000


def _shop() -> list[Transaction]:
    # 20 steady customers buying every 3-5 days through both halves; 20 who bought in the
    # first two weeks and stopped; one who first buys in the holdout (not scored)
    rows = [Transaction(f"steady{i}", d * DAY, 10.0) for i in range(20) for d in range(i % 3, 56, 3 + i % 3)]
    rows += [Transaction(f"gone{i}", d * DAY, 5.0) for i in range(20) for d in (i % 7, i % 7 + 2 + i % 3)]
    rows += [Transaction("late", 40 * DAY, 5.0)]
    return sorted(rows, key=lambda t: (t.ts, t.customer_id))


def test_each_calibration_customer_is_scored_once_at_the_cut_off_against_the_holdout() -> None:
    rows = _shop()
    result = classic_split(
        rows, EngineConfig(churn_horizon_days=7), ["logreg"], ["residual"], run_replay, calibration_weeks=4, holdout_weeks=4,
        resamples=20, period_days=7, min_labels=5, bgnbd_refit_days=7,
    )
    assert result.cut_ms == 28 * DAY and result.end_ms == 56 * DAY
    assert result.customers == 40 and result.churned == 20  # "late" bought only in the holdout: not a calibration customer
    # no label of the holdout leaked into the replay: its last event is before the cut-off
    assert result.replay.end == 28 * DAY and "late" not in result.replay.states
    assert result.auc["recency"] is not None and result.auc["recency"] > 0.95  # the stopped ones are the silent ones
    assert result.auc["bgnbd-expected"] is not None and result.auc["bgnbd-expected"] > 0.95
    assert set(result.auc) == {"churn-logreg", "loyalty-residual", "recency", "bgnbd", "bgnbd-expected"}
    assert set(result.versus_bgnbd) == {(a, b) for a in ("churn-logreg", "loyalty-residual") for b in ("bgnbd", "bgnbd-expected")}
    assert all(v.customers == 40 for v in result.versus_bgnbd.values())
    lines = report(result)
    assert "40 customers scored at the cut-off, 20 bought again in the holdout" in lines[0]


def test_holdout_buyers_are_those_with_a_purchase_from_the_cut_off_up_to_the_end() -> None:
    rows = [Transaction("a", 9, 1.0), Transaction("b", 10, 1.0), Transaction("c", 19, 1.0), Transaction("d", 20, 1.0)]
    assert holdout_buyers(rows, cut_ms=10, end_ms=20) == {"b", "c"}
