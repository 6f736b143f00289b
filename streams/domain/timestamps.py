"""Event timestamps on the wire: RFC 3339 with an offset, or integer epoch milliseconds.

Internally every time is an ``int`` of epoch milliseconds (UTC), so arithmetic on
event time is exact and cheap.

>>> parse_ts("2026-01-05T13:04:05.120Z")
1767618245120
>>> parse_ts(1767618245120)
1767618245120
>>> format_ts(1767618245120)
'2026-01-05T13:04:05.120Z'
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

MS_PER_SECOND = 1_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000

#: Integer timestamps below this (2000-01-01) are almost surely epoch *seconds*.
MIN_EPOCH_MS = 946_684_800_000
#: 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
MAX_EPOCH_MS = 253_402_300_799_999

#: RFC 3339 ``date-time``; the same pattern is in the JSON Schemas.
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TimestampError(ValueError):
    """A ``ts`` that is neither RFC 3339 with an offset nor plausible epoch milliseconds."""


def parse_ts(value: str | int) -> int:
    """Return epoch milliseconds for a wire timestamp, or raise :class:`TimestampError`."""
    if isinstance(value, bool):  # bool is an int subclass; never a timestamp
        raise TimestampError("ts must be an RFC 3339 string or integer epoch milliseconds")
    if isinstance(value, int):
        if value < MIN_EPOCH_MS:
            raise TimestampError(
                f"ts {value} is before 2000-01-01 as epoch milliseconds (epoch seconds are not accepted)"
            )
        if value > MAX_EPOCH_MS:
            raise TimestampError(f"ts {value} is beyond the year 9999")
        return value
    if not _RFC3339.match(value):
        raise TimestampError(f"ts {value!r} is not RFC 3339 with an offset (e.g. 2026-01-05T13:04:05Z)")
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        parsed = datetime.fromisoformat(text.replace("t", "T"))
    except ValueError as exc:
        raise TimestampError(f"ts {value!r} is not a valid date and time: {exc}") from None
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * MS_PER_SECOND + delta.microseconds // 1_000


_DAY_PREFIXES: dict[int, str] = {}


def format_ts(epoch_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds, the form every topic we produce uses.

    Fast (no datetime per call): the date part is cached per day.
    """
    seconds, millis = divmod(epoch_ms, MS_PER_SECOND)
    day, sod = divmod(seconds, 86_400)
    prefix = _DAY_PREFIXES.get(day)
    if prefix is None:
        if len(_DAY_PREFIXES) > 100_000:  # bound the cache; pure, so clearing is harmless
            _DAY_PREFIXES.clear()
        date = (_EPOCH + timedelta(days=day)).date()
        prefix = _DAY_PREFIXES[day] = f"{date.year:04d}-{date.month:02d}-{date.day:02d}T"  # strftime drops a year's leading zeros
    return f"{prefix}{sod // 3600:02d}:{sod // 60 % 60:02d}:{sod % 60:02d}.{millis:03d}Z"
