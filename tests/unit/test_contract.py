"""The JSON Schemas (for other teams) and the Python decoders (ours) accept exactly the same records."""

from __future__ import annotations

import json

import msgspec
import pytest

from models.score import Score
from streams.domain.events import EVENT_TYPES, Invalid, decode
from streams.domain.features import features
from streams.domain.lifecycle import Stage
from streams.domain.loyalty import TIER_PATTERN, Loyalty
from streams.domain.snapshots import Segment, decode_scores, encode_scores, snapshot
from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_DAY
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


# --- user-scores (outbound): the schema other teams read and our decoder agree ---------------

SCORES_EXAMPLES = json.loads((SCHEMAS / "examples" / "user-scores.json").read_text())


@pytest.mark.parametrize("value", SCORES_EXAMPLES["valid"], ids=lambda v: str(sorted(v)))
def test_valid_user_scores_pass_schema_and_decoder(value: dict) -> None:
    assert schema_errors("user-scores", value) == []
    row = decode_scores(json.dumps(value).encode())
    assert row.user_id == value["user_id"]
    assert row.segment == value.get("segment", msgspec.UNSET)
    assert row.lifecycle_stage == (Stage(value["lifecycle_stage"]) if "lifecycle_stage" in value else msgspec.UNSET)
    assert row.loyalty_tier == value.get("loyalty_tier", msgspec.UNSET)
    assert row.scores.get("loyalty_score") == value["scores"].get("loyalty_score")


@pytest.mark.parametrize("case", SCORES_EXAMPLES["invalid"], ids=lambda c: c["why"])
def test_invalid_user_scores_fail_schema_and_decoder(case: dict) -> None:
    # (JSON Schema's integer also admits 2.0, which the decoder refuses; we always write 2.)
    assert schema_errors("user-scores", case["value"]), f"schema accepted: {case['why']}"
    with pytest.raises(msgspec.ValidationError):
        decode_scores(json.dumps(case["value"]).encode())


def test_lifecycle_and_segment_are_optional_and_their_values_are_the_enumerated_ones() -> None:
    schema = json.loads((SCHEMAS / "user-scores.v1.schema.json").read_text())
    assert set(schema["required"]) == {"user_id", "ts", "features", "scores", "model_versions"}
    assert schema["properties"]["lifecycle_stage"]["enum"] == [s.value for s in Stage]
    assert schema["properties"]["loyalty_tier"]["pattern"] == TIER_PATTERN


def test_examples_cover_rows_with_and_without_loyalty() -> None:
    with_loyalty = [v for v in SCORES_EXAMPLES["valid"] if "loyalty_tier" in v]
    assert with_loyalty and len(with_loyalty) < len(SCORES_EXAMPLES["valid"])  # older rows stay valid
    assert any("loyalty" in v["priors"] for v in with_loyalty)


def test_a_published_row_round_trips_and_matches_the_schema() -> None:
    state = UserState("u1", first_seen=0, last_seen=0)
    now = 40 * MS_PER_DAY
    values = features(state, now)
    loyalty = Loyalty(Score(0.1234567, "recency-prior", prior=True), 0.875, "gold")
    row = snapshot(state, now, values, Score(0.2, "churn-logreg+9"), "sentiment-lex+nb+0", Segment(3, "segments-kmeans4+7"), loyalty)
    raw = encode_scores(row)
    as_json = json.loads(raw)
    assert schema_errors("user-scores", as_json) == []
    assert as_json["segment"] == 3 and as_json["model_versions"]["segment"] == "segments-kmeans4+7"
    assert as_json["scores"] == {"churn": 0.2, "loyalty": 0.123457, "loyalty_score": 0.875}
    assert as_json["model_versions"]["loyalty"] == "recency-prior" and as_json["priors"] == ["loyalty"]
    assert as_json["loyalty_tier"] == "gold"
    assert as_json["lifecycle_stage"] == "active"  # seen 40 days ago, no purchase yet, churn 0.2
    assert decode_scores(raw) == row
