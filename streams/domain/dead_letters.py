"""Dead-letter records: the raw record exactly as received, where it came from, and why.

>>> import json
>>> d = json.loads(dead_letter("clicks", 3, 42, b"u1", b"\\xff", 1767225600000, "not valid UTF-8", 1767225600000))
>>> d["value"], d["value_base64"], d["key"], d["error"]
(None, '/w==', 'u1', 'not valid UTF-8')
"""

from __future__ import annotations

import base64

import msgspec

from streams.domain.timestamps import format_ts


class DeadLetter(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: str | None
    key_base64: str | None
    value: str | None
    value_base64: str | None
    error: str
    ts: str


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


_encoder = msgspec.json.Encoder()


def dead_letter(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    timestamp_ms: int | None, error: str, now_ms: int,
) -> bytes:
    """Encode the dead-letter record (JSON) for one rejected source record."""
    return _encoder.encode(
        DeadLetter(
            topic=topic, partition=partition, offset=offset, timestamp=timestamp_ms,
            key=_text(key), key_base64=_b64(key), value=_text(value), value_base64=_b64(value),
            error=error, ts=format_ts(now_ms),
        )
    )
