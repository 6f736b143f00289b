"""The evaluation replay, the baselines and the transactions CSV, with explicit times."""

from __future__ import annotations

from pathlib import Path

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
    assert {m: c.count for m, c in total.churn.items()} == {"churn-logreg": 27, "recency": 27, "bgnbd": 27 - 19}
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
