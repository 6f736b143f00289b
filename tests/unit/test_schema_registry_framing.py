"""Values framed by a Schema Registry JSON serializer decode exactly as their JSON does; the
header is never mistaken in plain JSON; decode never raises on any framing."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from streams.domain.dead_letters import DeadLetterConfig, redacted
from streams.domain.events import Invalid, decode, unframe
from streams.runtime.metrics import count_framing
from tests.unit.test_contract import INVALID, VALID


def framed(schema_id: int, raw: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + raw


def test_every_valid_example_framed_decodes_to_the_same_event() -> None:
    for topic, value in VALID:
        raw = json.dumps(value, ensure_ascii=False).encode()
        assert decode(topic, framed(2**32 - 1, raw)) == decode(topic, raw)


def test_every_invalid_example_framed_stays_invalid_and_names_its_schema_id() -> None:
    for topic, _, value in INVALID:
        raw = json.dumps(value, ensure_ascii=False).encode()
        result = decode(topic, framed(77, raw))
        plain = decode(topic, raw)
        assert isinstance(result, Invalid) and isinstance(plain, Invalid)
        assert result.error == f"{plain.error} (framed by a Schema Registry serializer, schema id 77)"


def test_plain_json_is_never_taken_for_framed_and_short_values_are_left_alone() -> None:
    for raw in (b'{"ts":1}', b" {}", b"[]", b"\x00\x00", b""):
        assert unframe(raw) == (raw, None)
    assert unframe(b"\x00\x00\x00\x00\x05") == (b"", 5)


@given(st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_decode_never_raises_on_any_framed_bytes(body: bytes, schema_id: int) -> None:
    for topic in ("clicks", "heartbeats"):
        result = decode(topic, framed(schema_id, body))
        assert isinstance(result, Invalid) or result.ts >= 0


def test_a_framed_dead_letter_keeps_its_redacted_copy() -> None:
    cfg = DeadLetterConfig(raw=False, max_copy_bytes=4096, redact=frozenset({"email"}))
    assert json.loads(redacted(framed(9, b'{"kind":"x","email":"e@x.org"}'), cfg) or "null") == {"kind": "x", "email": "***"}


def test_framed_records_are_counted_by_topic_with_their_last_schema_id() -> None:
    def sample(name: str, topic: str) -> float:
        return REGISTRY.get_sample_value(name, {"topic": topic}) or 0.0

    before = sample("retention_schema_registry_records_total", "reviews"), sample("retention_schema_registry_records_total", "other")
    count_framing("reviews", framed(12, b"{}"))
    count_framing("reviews", framed(13, b"{}"))
    count_framing("reviews", b"{}")  # plain JSON: not counted
    count_framing("no-such-topic", framed(5, b"{}"))  # bounded labels
    assert sample("retention_schema_registry_records_total", "reviews") == before[0] + 2
    assert sample("retention_schema_registry_schema_id", "reviews") == 13
    assert sample("retention_schema_registry_records_total", "other") == before[1] + 1
