"""The JSON Schemas (for other teams) and the Python decoders (ours) accept exactly the same records."""

from __future__ import annotations

import json

import pytest

from streams.domain.events import EVENT_TYPES, Invalid, decode
from tests.contract import SCHEMAS, schema_errors

EXAMPLES = {topic: json.loads((SCHEMAS / "examples" / f"{topic}.json").read_text()) for topic in EVENT_TYPES}
VALID = [(topic, value) for topic, ex in EXAMPLES.items() for value in ex["valid"]]
INVALID = [(topic, case["why"], case["value"]) for topic, ex in EXAMPLES.items() for case in ex["invalid"]]


def test_every_inbound_topic_has_examples_of_both_kinds() -> None:
    assert set(EXAMPLES) == {"clicks", "purchases", "reviews", "action-outcomes", "heartbeats"}
    for topic, ex in EXAMPLES.items():
        assert ex["valid"] and ex["invalid"], topic


@pytest.mark.parametrize(("topic", "value"), VALID, ids=[f"{t}-{i}" for i, (t, _) in enumerate(VALID)])
def test_valid_examples_pass_schema_and_decoder(topic: str, value: dict) -> None:
    assert schema_errors(topic, value) == []
    event = decode(topic, json.dumps(value, ensure_ascii=False).encode())
    assert not isinstance(event, Invalid), event


@pytest.mark.parametrize(("topic", "why", "value"), INVALID, ids=[f"{t}: {w}" for t, w, _ in INVALID])
def test_invalid_examples_fail_schema_and_decoder(topic: str, why: str, value: object) -> None:
    assert schema_errors(topic, value), f"schema accepted: {why}"
    result = decode(topic, json.dumps(value, ensure_ascii=False).encode())
    assert isinstance(result, Invalid), f"decoder accepted: {why}"
    assert result.error


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", "not valid JSON"),
        (b'{"event_id": "e", "user_id": "u"', "not valid JSON"),
        (b'{"event_id": "e\xff", "user_id": "u", "ts": 1767618245120, "kind": "search"}', "not valid UTF-8"),
        (b"", "not valid JSON"),
        (None, "tombstone"),
    ],
)
def test_bytes_that_are_not_json_objects_are_invalid_with_a_reason(raw: bytes | None, expected: str) -> None:
    result = decode("clicks", raw)
    assert isinstance(result, Invalid)
    assert expected in result.error


def test_decoded_values_are_normalised() -> None:
    ex = EXAMPLES["clicks"]["valid"]
    as_text = decode("clicks", json.dumps(ex[0]).encode())
    as_int = decode("clicks", json.dumps(ex[1]).encode())
    with_offset = decode("clicks", json.dumps(ex[2]).encode())
    assert as_text.ts == as_int.ts == with_offset.ts == 1767618245120
    review = decode("reviews", json.dumps(EXAMPLES["reviews"]["valid"][3]).encode())
    assert review.rating == 4 and isinstance(review.rating, int)


def test_error_names_the_failing_field() -> None:
    value = dict(EXAMPLES["purchases"]["valid"][0], items=[{"item_id": "i", "quantity": 0, "unit_price": 1}])
    result = decode("purchases", json.dumps(value).encode())
    assert isinstance(result, Invalid)
    assert "$.items[0].quantity" in result.error


def test_future_timestamps_beyond_the_skew_are_refused() -> None:
    raw = json.dumps(EXAMPLES["clicks"]["valid"][1]).encode()
    assert not isinstance(decode("clicks", raw, not_after_ms=1767618245120), Invalid)
    late = decode("clicks", raw, not_after_ms=1767618245120 - 60_000)
    assert isinstance(late, Invalid) and "clock skew" in late.error
