from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.timestamps import MAX_EPOCH_MS, MIN_EPOCH_MS, TimestampError, format_ts, parse_ts


def test_format_is_rfc3339_utc_with_milliseconds() -> None:
    assert format_ts(1_767_618_245_120) == "2026-01-05T13:04:05.120Z"
    assert format_ts(1_767_225_600_000) == "2026-01-01T00:00:00.000Z"
    assert format_ts(parse_ts("0001-01-01T00:00:00Z")) == "0001-01-01T00:00:00.000Z"  # four digits, as RFC 3339 has it


@given(st.integers(min_value=MIN_EPOCH_MS, max_value=MAX_EPOCH_MS))
def test_format_and_parse_round_trip(epoch_ms: int) -> None:
    assert parse_ts(format_ts(epoch_ms)) == epoch_ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-05T14:04:05.120+01:00", 1_767_618_245_120),
        ("2026-01-05T08:04:05.12-05:00", 1_767_618_245_120),
        ("2026-01-05t13:04:05.120z", 1_767_618_245_120),
        ("2026-01-05T13:04:05.120999Z", 1_767_618_245_120),
    ],
)
def test_offsets_and_fractions(text: str, expected: int) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize("bad", ["2026-01-05 13:04:05Z", "2026-01-05T13:04:05", "1767618245120", True, 1_767_618_245])
def test_rejects_what_rfc3339_and_epoch_ms_do_not_allow(bad: object) -> None:
    with pytest.raises(TimestampError):
        parse_ts(bad)  # type: ignore[arg-type]
