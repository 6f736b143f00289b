"""Wire rendering for simulated records: JSON encoding and deliberately malformed payloads.

Malformed payloads exercise the consumers' dead-letter path; each one breaks the
topic contract in exactly one realistic way (see :data:`MALFORMATIONS`).
"""

from __future__ import annotations

import copy
import json
import random


def encode(value: object) -> bytes:
    """Compact UTF-8 JSON, as producers put it on the wire."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: Ways a record can be broken, by topic.
MALFORMATIONS: dict[str, tuple[str, ...]] = {
    "clicks": ("not_json", "truncated", "missing_user_id", "bad_ts", "invalid_utf8", "wrong_kind"),
    "purchases": (
        "not_json",
        "truncated",
        "missing_user_id",
        "bad_ts",
        "invalid_utf8",
        "wrong_channel",
        "negative_quantity",
    ),
    "reviews": ("not_json", "truncated", "missing_user_id", "bad_ts", "invalid_utf8", "rating_out_of_range"),
}

_GARBAGE: tuple[bytes, ...] = (
    b"<html><body>502 Bad Gateway</body></html>",
    b"user_id=u000001&kind=page_view",
    b"\x00\x01\x02\x03binary",
    b"null",
    b"[1, 2, 3]",
    b"",
    b"{'event_id': 'python-repr', 'user_id': 'u1'}",
)
_BAD_TS: tuple[object, ...] = (
    "yesterday",
    "2026/01/05 13:04:05",
    "2026-01-05T13:04:05",  # no offset
    "2026-02-30T10:00:00.000Z",  # no such day
    "",
    1_767_618_245,  # epoch seconds, not milliseconds
)


def malformed(topic: str, value: dict, rng: random.Random) -> tuple[bytes, str | None]:
    """Raw bytes that break the ``topic`` contract, derived from the good ``value``; and the record key."""
    kind = rng.choice(MALFORMATIONS[topic])
    key = value.get("user_id")
    if kind == "not_json":
        return rng.choice(_GARBAGE), key if rng.random() < 0.5 else None
    if kind == "truncated":
        data = encode(value)
        return data[: rng.randint(1, len(data) - 2)], key  # an object cut before its closing brace
    if kind == "invalid_utf8":
        data = encode(value)
        user = encode(key)  # the quoted user id
        return data.replace(user, b'"' + b"\xff\xfe" + user[1:], 1), key
    broken = copy.deepcopy(value)
    if kind == "missing_user_id":
        del broken["user_id"]
        key = None
    elif kind == "bad_ts":
        broken["ts"] = rng.choice(_BAD_TS)
    elif kind == "wrong_kind":
        broken["kind"] = rng.choice(("teleport", "PAGE_VIEW", "purchase", "click"))
    elif kind == "wrong_channel":
        broken["channel"] = rng.choice(("fax", "phone", "WEB"))
    elif kind == "negative_quantity":
        broken["items"][rng.randrange(len(broken["items"]))]["quantity"] = -rng.randint(1, 3)
    elif kind == "rating_out_of_range":
        broken["rating"] = 7 if rng.random() < 0.7 else rng.choice((0, 6, -1))
    return encode(broken), key
