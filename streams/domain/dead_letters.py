"""Dead-letter records: where a rejected record came from, why, and a copy that is safe to share.

The dead-letter topic is read by many teams, so by default it carries no raw personal
data: the reason, the position (topic, partition, offset: the raw record stays on its
source topic for those allowed to read it), the field paths that failed, the value's size,
and a **redacted** copy (the configured fields masked at any depth). An operator may turn
raw copies on (``DeadLetterConfig.raw``). Either way a dead letter is bounded in size, so
one huge record can never make a dead letter the broker refuses (a poison pill).

>>> import json
>>> cfg = DeadLetterConfig(redact=frozenset({"user_id"}))
>>> d = json.loads(dead_letter("clicks", 3, 42, b"u1", b'{"user_id":"u1","ts":"x"}', 1767225600000,
...                            "Invalid timestamp - at `$.ts`", 1767225600000, cfg))
>>> d["value"], d["value_omitted"], d["value_redacted"], d["key"], d["paths"]
(None, 'redacted', '{"user_id":"***","ts":"x"}', None, ['$.ts'])
>>> d = json.loads(dead_letter("clicks", 3, 42, b"u1", b"\\xff", None, "not valid UTF-8", 0, DeadLetterConfig(raw=True)))
>>> d["value"], d["value_base64"], d["key"], d["value_size"]
(None, '/w==', 'u1', 1)
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from streams.domain.events import unframe
from streams.domain.timestamps import format_ts

#: Fields masked in the redacted copy by default: identifiers and free text a customer wrote.
DEFAULT_REDACT = frozenset({"user_id", "email", "name", "phone", "address", "ip", "query", "text", "coupon_code"})
MASK = "***"
#: Longest reason kept (a reason quoting an exception can be long).
MAX_ERROR_CHARS = 1_000
_PATH = re.compile(r"at `(\$[^`]{0,200})`")


@dataclass(frozen=True)
class DeadLetterConfig:
    """What a dead letter may copy (``RETENTION_DEAD_LETTER_*``)."""

    raw: bool = False  #: copy the raw key and value (personal data!) instead of a redacted copy
    max_copy_bytes: int = 16_384  #: the largest key or value copied; beyond, a reference and a prefix
    redact: frozenset[str] = field(default_factory=lambda: DEFAULT_REDACT)


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
    # v1 additions (optional for consumers: absent in dead letters written before them)
    value_size: int | None = None
    value_omitted: str | None = None
    value_redacted: str | None = None
    value_prefix_base64: str | None = None
    key_omitted: str | None = None
    paths: list[str] = []


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _masked(value: Any, redact: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: MASK if k in redact else _masked(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, redact) for v in value]
    return value


_encoder = msgspec.json.Encoder()


def redacted(value: bytes, cfg: DeadLetterConfig) -> str | None:
    """The value's JSON (a Schema Registry header stripped) with the configured fields masked, or None when it is not JSON,
    nested too deeply, or its redacted copy is over the size limit."""
    try:
        text = _encoder.encode(_masked(msgspec.json.decode(unframe(value)[0]), cfg.redact))
    except Exception:  # not JSON, too deep, not encodable: no copy, the reference stays
        return None
    return text.decode("utf-8") if len(text) <= cfg.max_copy_bytes else None


def _key_fields(key: bytes | None, cfg: DeadLetterConfig) -> dict[str, Any]:
    if key is None:
        return {"key": None, "key_base64": None}
    if not cfg.raw and "user_id" in cfg.redact:  # inbound records are keyed by user_id
        return {"key": None, "key_base64": None, "key_omitted": "redacted"}
    if len(key) > cfg.max_copy_bytes:
        return {"key": None, "key_base64": None, "key_omitted": "too large"}
    return {"key": _text(key), "key_base64": _b64(key)}


def _value_fields(value: bytes | None, cfg: DeadLetterConfig) -> dict[str, Any]:
    if value is None:
        return {"value": None, "value_base64": None}
    size = {"value_size": len(value)}
    if not cfg.raw:
        return {"value": None, "value_base64": None, "value_omitted": "redacted", "value_redacted": redacted(value, cfg), **size}
    if len(value) > cfg.max_copy_bytes:
        prefix = _b64(value[: cfg.max_copy_bytes // 4])
        return {"value": None, "value_base64": None, "value_omitted": "too large", "value_prefix_base64": prefix, **size}
    return {"value": _text(value), "value_base64": _b64(value), **size}


def dead_letter_key(key: bytes | None, cfg: DeadLetterConfig) -> bytes | None:
    """The dead letter's own Kafka key: the source key when it may be copied, else none."""
    return key if key is not None and "key_omitted" not in _key_fields(key, cfg) else None


def dead_letter(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    timestamp_ms: int | None, error: str, now_ms: int, cfg: DeadLetterConfig = DeadLetterConfig(),
) -> bytes:
    """Encode the dead-letter record (JSON) for one rejected source record; its size is
    bounded by ``cfg.max_copy_bytes`` whatever the source record's."""
    return _encoder.encode(
        DeadLetter(
            topic=topic, partition=partition, offset=offset, timestamp=timestamp_ms,
            error=error[:MAX_ERROR_CHARS], ts=format_ts(now_ms), paths=_PATH.findall(error)[:20],
            **_key_fields(key, cfg), **_value_fields(value, cfg),
        )
    )
