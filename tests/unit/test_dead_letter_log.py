"""The worker log's dead-letter summary: one line per topic and interval, counts by reason,
WARNING only when a topic's dead letters exceed 1 % of its records in the interval."""

from __future__ import annotations

import logging

from streams.runtime.dead_letter_log import MAX_REASONS, DeadLetterSummary, reason_class


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str, dict]] = []

    def __call__(self, level: int, message: str, extra: dict) -> None:
        self.lines.append((level, message, extra))


def counts(values: dict[str, float]):  # type: ignore[no-untyped-def]
    asked: list[int] = []

    def records() -> dict[str, float]:
        asked.append(1)
        return dict(values)

    return records, asked


def test_a_stray_record_is_an_info_line_a_broken_producer_a_warning() -> None:
    out = Lines()
    summary = DeadLetterSummary(interval_s=60, emit=out)
    totals = {"clicks": 0.0, "purchases": 0.0}
    summary.flush(0, lambda: dict(totals))
    for i in range(3):
        summary.add("clicks", f"clicks[0]@{i}", "not valid JSON: Input data was truncated", now=i)
    for i in range(12):
        summary.add("purchases", f"purchases[1]@{i}", "Object missing required field `user_id`", now=i)
    summary.add("reviews", "reviews[0]@3", "not valid UTF-8", now=3)
    totals.update(clicks=10_000.0, purchases=400.0, reviews=50.0)  # 0.03 % of the clicks, 3 % of the purchases, 2 % of the reviews
    summary.flush(60, lambda: dict(totals))
    by_topic = {extra["topic"]: (level, message, extra) for level, message, extra in out.lines}
    assert len(out.lines) == 3
    level, message, extra = by_topic["clicks"]
    assert level == logging.INFO and extra["dead_letters"] == 3 and extra["records"] == 10_000
    assert message == ("dead-lettered 3 of 10000 clicks records in the last 60 s (0.03 %), first clicks[0]@0: "
                       "3 not valid JSON: Input data was truncated; reasons and positions on the dead-letter topic")
    level, message, extra = by_topic["purchases"]
    assert level == logging.WARNING and extra["reasons"] == {"Object missing required field `user_id`": 12}
    assert "(3.00 %)" in message and "first purchases[1]@0" in message
    level, message, extra = by_topic["reviews"]  # one bad record of a slow minute's 50: a stray one, not a broken producer
    assert level == logging.INFO and "(2.00 %)" in message


def test_one_summary_per_interval_and_none_for_a_quiet_one() -> None:
    out = Lines()
    summary = DeadLetterSummary(interval_s=60, emit=out)
    records, asked = counts({"clicks": 0.0})
    summary.flush(0, records)
    summary.add("clicks", "clicks[0]@1", "Invalid enum value 'click' - at `$.kind`", now=1)
    for now in (10, 30, 59):
        summary.flush(now, records)
    assert out.lines == [] and len(asked) == 1  # the counts are asked only when an interval ends
    summary.flush(60, records)
    assert len(out.lines) == 1
    summary.flush(125, records)  # an interval without dead letters: no line
    summary.add("clicks", "clicks[0]@2", "Invalid enum value 'click' - at `$.kind`", now=130)
    summary.flush(150, records)
    summary.flush(186, records)
    assert len(out.lines) == 2 and "in the last 61 s" in out.lines[1][1] and "first clicks[0]@2" in out.lines[1][1]


def test_the_shutdown_writes_what_is_left() -> None:
    out = Lines()
    summary = DeadLetterSummary(interval_s=60, emit=out)
    summary.add("reviews", "reviews[2]@7", "not valid UTF-8", now=5)
    summary.flush(6, force=True)  # no counts: the share is unknown, an INFO line
    assert [(level, extra["dead_letters"], extra["records"]) for level, _, extra in out.lines] == [(logging.INFO, 1, None)]
    summary.flush(7, force=True)
    assert len(out.lines) == 1  # nothing left


def test_alike_reasons_add_up_and_the_reasons_kept_apart_are_bounded() -> None:
    out = Lines()
    summary = DeadLetterSummary(interval_s=1, emit=out)
    for value in ("click", "PAGE_VIEW", "purchase"):
        summary.add("clicks", "clicks[0]@1", f"Invalid enum value '{value}' - at `$.kind`", now=0)
    for n in range(MAX_REASONS + 5):
        summary.add("clicks", "clicks[0]@2", f"Object missing required field `f{n}`", now=0)
    summary.flush(2, force=True)
    reasons = out.lines[0][2]["reasons"]
    assert reasons["Invalid enum value '…' - at `$.kind`"] == 3
    assert len(reasons) == MAX_REASONS and reasons["other reasons"] == MAX_REASONS + 5 - (MAX_REASONS - 2)
    assert sum(reasons.values()) == 3 + MAX_REASONS + 5


def test_reason_classes_mask_the_records_values_not_the_contract() -> None:
    assert reason_class("ts '2026-02-30T10:00:00.000Z' is not a valid date and time: day is out of range") == \
        "ts '…' is not a valid date and time: day is out of range"
    assert reason_class("Expected `int` >= 1, got -3 - at `$.items[0].quantity`") == \
        "Expected `int` >= 1, got … - at `$.items[0].quantity`"
    assert reason_class("processing failed: ValueError('x')\nmore") == "processing failed: ValueError('…')"
    assert len(reason_class("x" * 1000)) == 160
