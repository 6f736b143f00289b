"""Whatever a producer sends, the decoder answers and the engine folds without raising.

A poison pill is a record that crashes the worker on every delivery: these properties
are what makes one impossible by construction (the worker also contains its own bugs per
record, see ``streams/runtime/agents/batched.py``).
"""

from __future__ import annotations

import base64
import json

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.domain.actions import encode_action
from streams.domain.dead_letters import DeadLetterConfig, dead_letter, dead_letter_key
from streams.domain.engine import EngineConfig
from streams.domain.events import EVENT_TYPES, MAX_RECORD_BYTES, Heartbeat, Invalid, Purchase, decode
from streams.domain.fold import Fold, offline_training
from streams.domain.policy_file import DEFAULT_POLICY, load_policy
from streams.domain.state import MAX_CENTS, dump_state, load_state
from streams.domain.timestamps import MS_PER_DAY, parse_ts
from streams.simulation.loop import PolicyRules
from tests.contract import SCHEMAS, schema_errors

TOPICS = sorted(EVENT_TYPES)
T0 = parse_ts("2026-01-01T00:00:00Z")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _nested(depth: int, opener: bytes, closer: bytes) -> bytes:
    return b'{"event_id":"e","user_id":"u","ts":1767225600000,"kind":"search","x":' + opener * depth + closer * depth + b"}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TOPICS), st.binary(max_size=300))
def test_arbitrary_bytes_give_an_event_or_a_reason(topic: str, raw: bytes) -> None:
    result = decode(topic, raw)
    assert isinstance(result, (Invalid, *EVENT_TYPES.values()))
    assert not isinstance(result, Invalid) or result.error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TOPICS), st.dictionaries(st.sampled_from(
    ["event_id", "user_id", "ts", "kind", "order_id", "items", "total", "currency", "channel", "item_id",
     "rating", "text", "action_id", "outcome", "quantity", "unit_price", "source"]), json_values, max_size=10))
def test_arbitrary_json_objects_give_an_event_or_a_reason(topic: str, value: dict) -> None:
    result = decode(topic, json.dumps(value).encode())
    assert isinstance(result, (Invalid, *EVENT_TYPES.values()))


EXAMPLES = {topic: json.loads((SCHEMAS / "examples" / f"{topic}.json").read_text())["valid"] for topic in TOPICS}
extremes = (
    json_values | st.integers(-(2**70), 2**70) | st.sampled_from([1e308, -1e308, 5e-324, 2**64, 2**63 - 1, -1])
    | st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "2026-02-30T00:00:00Z", "x" * 200])
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TOPICS), st.integers(0, 10), st.data())
def test_valid_records_with_one_field_made_extreme_give_an_event_or_a_reason(topic: str, which: int, data: st.DataObject) -> None:
    value = dict(EXAMPLES[topic][which % len(EXAMPLES[topic])])
    field = data.draw(st.sampled_from(sorted(value)))
    value[field] = data.draw(extremes)
    result = decode(topic, json.dumps(value).encode(), not_after_ms=T0 + 400 * MS_PER_DAY, not_before_ms=0)
    assert isinstance(result, (Invalid, *EVENT_TYPES.values()))


def test_nesting_far_beyond_the_recursion_limit_is_invalid_not_a_crash() -> None:
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        result = decode("clicks", _nested(100_000, opener, closer))
        assert isinstance(result, Invalid) and "nested too deeply" in result.error


def test_records_over_the_size_limit_are_refused_before_parsing() -> None:
    huge = b'{"event_id":"e","user_id":"' + b"u" * MAX_RECORD_BYTES + b'","ts":1767225600000,"kind":"search"}'
    result = decode("clicks", huge)
    assert isinstance(result, Invalid) and f"over the limit of {MAX_RECORD_BYTES} bytes" in result.error


def test_timestamps_outside_the_plausible_range_are_invalid_with_the_reason() -> None:
    old = b'{"event_id":"e","user_id":"u","ts":"0001-01-01T00:00:00Z","kind":"search"}'
    result = decode("clicks", old, not_before_ms=parse_ts("1990-01-01T00:00:00Z"))
    assert isinstance(result, Invalid) and "before the earliest plausible event time 1990-01-01" in result.error
    late = b'{"event_id":"e","user_id":"u","ts":"9999-12-31T23:59:59Z","kind":"search"}'
    result = decode("clicks", late, not_after_ms=T0)
    assert isinstance(result, Invalid) and "beyond the allowed clock skew" in result.error


def _purchase(i: int, user: str, ts: int, total: float) -> Purchase:
    raw = json.dumps({"event_id": f"p{i}", "user_id": user, "ts": ts, "order_id": f"o{i}", "total": total,
                      "items": [{"item_id": f"i{i % 3}", "quantity": 10**30, "unit_price": total}],
                      "currency": "EUR", "channel": "web"}).encode()
    event = decode("purchases", raw)
    assert isinstance(event, Purchase), event
    return event


amounts = st.sampled_from([0.0, 0.01, 9e16, 1.7976931348623157e308, 1e308, 12.5]) | st.floats(0, 1e308)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 400 * MS_PER_DAY), amounts), min_size=1, max_size=25))
def test_extreme_amounts_that_the_contract_allows_are_folded_stored_and_acted_on(
    purchases: list[tuple[str, int, float]],
) -> None:
    """``total`` may be any number >= 0 (1e308 too): the engine saturates money, the state
    still encodes, and actions still encode; nothing is dead-lettered for it."""
    fold = Fold(EngineConfig(), offline_training(), rules=PolicyRules(load_policy(DEFAULT_POLICY)))
    actions = []
    fold.on_step = lambda state, step, now: actions.extend(step.actions)
    for i, (user, at, total) in enumerate(sorted(purchases, key=lambda p: p[1])):
        fold.feed(_purchase(i, user, T0 + at, total))
    fold.feed(Heartbeat(ts=T0 + 800 * MS_PER_DAY))  # every label matures, lapses are checked
    for state in fold.states.values():
        assert 0 <= state.spend_cents <= MAX_CENTS
        assert load_state(dump_state(state)).spend_cents == state.spend_cents
    for action in actions:
        msgspec.json.decode(encode_action(action))


def _letter(key: bytes | None, value: bytes | None, cfg: DeadLetterConfig, error: str = "Expected `str` - at `$.user_id`") -> bytes:
    return dead_letter("clicks", 1, 7, key, value, T0, error, T0, cfg)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.none() | st.binary(max_size=64) | st.just(b"k" * 2_000_000),
       st.none() | st.binary(max_size=64) | st.builds(lambda n: b'{"user_id":"' + b"u" * n + b'"}', st.integers(0, 2_000_000)),
       st.text(max_size=5_000))
def test_a_dead_letter_is_bounded_and_valid_whatever_it_carries(raw: bool, key: bytes | None, value: bytes | None, error: str) -> None:
    cfg = DeadLetterConfig(raw=raw, max_copy_bytes=16_384)
    letter = _letter(key, value, cfg, error or "x")
    assert len(letter) < 3 * cfg.max_copy_bytes + 4_096  # far below any broker's record limit
    assert schema_errors("dead-letters", json.loads(letter)) == []


def test_dead_letters_carry_no_personal_data_unless_raw_copies_are_on() -> None:
    value = b'{"user_id":"ann@example.com","ts":1,"kind":"search","query":"divorce lawyer","x":[{"email":"ann@example.com"}]}'
    letter = json.loads(_letter(b"ann@example.com", value, DeadLetterConfig()))
    assert "ann@example.com" not in json.dumps(letter) and "divorce" not in json.dumps(letter)
    assert json.loads(letter["value_redacted"]) == {"user_id": "***", "ts": 1, "kind": "search", "query": "***", "x": [{"email": "***"}]}
    assert letter["value_size"] == len(value) and letter["paths"] == ["$.user_id"] and letter["key_omitted"] == "redacted"
    assert dead_letter_key(b"ann@example.com", DeadLetterConfig()) is None

    raw = json.loads(_letter(b"ann@example.com", value, DeadLetterConfig(raw=True)))
    assert raw["value"] == value.decode() and raw["key"] == "ann@example.com"


def test_a_raw_value_over_the_copy_limit_is_referenced_with_its_size_and_a_prefix() -> None:
    value = b'{"user_id":"' + b"u" * 1_000_000 + b'"}'
    letter = json.loads(_letter(b"k", value, DeadLetterConfig(raw=True, max_copy_bytes=1_000)))
    assert letter["value"] is None and letter["value_omitted"] == "too large" and letter["value_size"] == len(value)
    assert base64.b64decode(letter["value_prefix_base64"]) == value[:250]
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("clicks", 1, 7)
