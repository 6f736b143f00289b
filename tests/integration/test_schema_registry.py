"""Records framed by a Confluent Schema Registry JSON serializer (magic byte 0, a 4-byte
schema id, then the JSON), through a real worker: processed like plain
JSON, the schema id recorded, and a framed record that breaks the contract dead-lettered with
its schema id named and its redacted copy kept."""

from __future__ import annotations

import json

import msgspec
import pytest

from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, parse_ts
from streams.runtime.kafka import read_topic
from streams.runtime.publish import Outgoing
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

T0 = parse_ts("2026-01-01T00:00:00Z")


def framed(schema_id: int, value: dict[str, object]) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + msgspec.json.encode(value)


def purchase(user: str, day: int) -> Outgoing:
    ts = T0 + day * MS_PER_DAY
    value = {"event_id": f"{user}-{day}", "user_id": user, "ts": ts, "order_id": f"o-{user}-{day}",
             "items": [{"item_id": "i-1", "quantity": 1, "unit_price": 20.0}], "total": 20.0, "currency": "EUR", "channel": "web"}
    return Outgoing("purchases", user, framed(100_007, value), ts)


def test_schema_registry_framed_records_are_processed_and_their_schema_id_recorded(pipeline: Pipeline) -> None:
    worker = pipeline.worker()
    valid = [purchase(u, d) for u in ("ann", "bob") for d in (0, 7, 14)]
    bad = Outgoing("clicks", "eve", framed(9, {"event_id": "c1", "user_id": "eve", "ts": T0 + MS_PER_DAY, "kind": "teleport",
                                               "email": "eve@example.com"}), T0 + MS_PER_DAY)
    heartbeats = [Outgoing("heartbeats", None, framed(3, {"ts": t}), t) for t in range(T0, T0 + 20 * MS_PER_DAY, 12 * MS_PER_HOUR)]
    publisher = pipeline.publisher()
    report = publisher.publish(sorted([*valid, bad], key=lambda r: r.ts_ms) + heartbeats)
    publisher.close()
    assert report.failed == 0, report.errors
    worker.wait_ready()
    worker.wait_processed(report.total, timeout=180)

    assert worker.total("retention_records_total", result="ok") == len(valid)
    assert worker.total("retention_records_total", result="invalid") == 1
    assert worker.total("retention_schema_registry_records_total", topic="purchases") == len(valid)
    assert worker.total("retention_schema_registry_records_total", topic="heartbeats") == len(heartbeats) * pipeline.settings.partitions
    assert worker.total("retention_schema_registry_schema_id", topic="purchases") == 100_007
    assert worker.total("retention_schema_registry_schema_id", topic="clicks") == 9
    status, ann = worker.get_json("/users/ann")
    assert status == 200 and ann["features"]["purchases"] == 3

    [letter] = [json.loads(m.value()) for m in read_topic(pipeline.settings, pipeline.settings.topic_dead_letters, at_least=1)]
    assert "schema id 9" in letter["error"] and "$.kind" in letter["error"]
    redacted = json.loads(letter["value_redacted"])
    assert redacted["kind"] == "teleport" and redacted["email"] != "eve@example.com"
