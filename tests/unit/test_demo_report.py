"""The demo's picture (streams/runtime/demo_report.py): calibration bins and per-day counts
computed right, and one self-contained HTML page with the three charts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from streams.runtime.demo_report import MS_PER_DAY, calibration_bins, per_day, write_report


def test_calibration_bins_hold_the_mean_score_the_share_true_and_the_count() -> None:
    points = [(0.05, False), (0.15, True), (0.55, True), (0.52, False), (0.58, True), (1.0, True)]
    assert calibration_bins(points, bins=4) == [(0.1, 0.5, 2), (0.55, 0.666667, 3), (1.0, 1.0, 1)]
    assert calibration_bins([]) == []


def test_per_day_counts_from_the_first_day() -> None:
    start = 1_000 * MS_PER_DAY
    assert per_day([start, start + 5, start + MS_PER_DAY, start + 3 * MS_PER_DAY - 1], start) == Counter({0: 2, 1: 1, 2: 1})


def test_the_report_is_one_page_with_three_inline_charts(tmp_path: Path) -> None:
    path = write_report(
        tmp_path / "report.html", title="demo <test>", records={"clicks": Counter({0: 100, 1: 120}), "purchases": Counter({0: 5, 1: 7})},
        actions={"coupon": Counter({1: 3})}, uplift={"coupon": {"estimate": 0.1, "low": -0.05, "high": 0.25}},
        truth={"coupon": {"true_uplift": 0.08}}, calibration=[(0.2, 0.1, 10), (0.8, 0.7, 12)], notes=["same seed & shop"],
    )
    text = path.read_text()
    assert text.count("<svg") == 3 and "<h1>demo &lt;test&gt;</h1>" in text and "same seed &amp; shop" in text
    assert "Uplift per kind of action" in text and "Churn-score calibration" in text
    assert not any(tag in text for tag in ('src="http', "<link", "<script", 'href="http'))  # self-contained: nothing fetched
