"""A hostile producer against a real worker: every bad record is a dead letter, every valid
one is processed, and the worker lives on (no poison pill)."""

from __future__ import annotations

import json

import msgspec
import pytest

from streams.domain.state import MAX_CENTS
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, parse_ts
from streams.runtime.kafka import read_topic
from streams.runtime.publish import Outgoing
from tests.contract import schema_errors
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

T0 = parse_ts("2026-01-01T00:00:00Z")
YEAR_9999 = parse_ts("9999-12-31T00:00:00Z")
MAX_RECORD = 350_000  # the worker's RETENTION_MAX_RECORD_BYTES in this test


def _purchase(user: str, day: int, total: float) -> Outgoing:
    value = {"event_id": f"{user}-{day}", "user_id": user, "ts": T0 + day * MS_PER_DAY, "order_id": f"o-{user}-{day}",
             "items": [{"item_id": "i-1", "quantity": 1, "unit_price": total}], "total": total, "currency": "EUR",
             "channel": "web"}
    return Outgoing("purchases", user, msgspec.json.encode(value), T0 + day * MS_PER_DAY)


def _click(user: str, ts: object, kafka_ts: int, **extra: object) -> Outgoing:
    return Outgoing("clicks", user, msgspec.json.encode({"event_id": f"c-{user}-{ts}", "user_id": user, "ts": ts,
                                                         "kind": "search", **extra}), kafka_ts)


def hostile(at: int) -> list[tuple[Outgoing, str]]:
    """Records no worker may die of, each with (a part of) the reason its dead letter gives."""
    deep = b'{"event_id":"d","user_id":"deep","ts":1767225600000,"kind":"search","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return [
        (Outgoing("clicks", "deep", deep, at), "nested too deeply"),
        (_click("x" * 100_000, T0, at), "length <= 128"),
        (_click("big", T0, at, padding="p" * (MAX_RECORD + 50_000)), f"over the limit of {MAX_RECORD} bytes"),
        (_click("future", "9999-12-31T00:00:00Z", YEAR_9999), "beyond the allowed clock skew"),  # Kafka ts too
        (_click("ancient", "0001-01-01T00:00:00Z", at), "before the earliest plausible event time"),
        (Outgoing("clicks", "tomb", None, at), "tombstone"),  # type: ignore[arg-type]
        (Outgoing("purchases", "bin", bytes(range(256)) * 8, at), "JSON is malformed"),
    ]


def test_a_hostile_mix_ends_as_dead_letters_and_processed_records_and_the_worker_lives(pipeline: Pipeline) -> None:
    worker = pipeline.worker(RETENTION_MAX_RECORD_BYTES=str(MAX_RECORD))
    bad = hostile(T0 + 5 * MS_PER_DAY)
    valid = [_purchase(u, d, 20.0) for u in ("ann", "bob", "cy") for d in (0, 7, 14)]
    valid += [_purchase("rich", 3, 1e308), _purchase("rich", 4, 9e16)]  # valid by the contract
    copy = _purchase("ann", 7, 20.0)  # re-sent as it was: a duplicate
    reused = _purchase("ann", 7, 999.0)  # its event id re-used for other content: a conflict
    heartbeats = [Outgoing("heartbeats", None, msgspec.json.encode({"ts": t}), t)
                  for t in range(T0, T0 + 30 * MS_PER_DAY, 12 * MS_PER_HOUR)]
    publisher = pipeline.publisher()
    report = publisher.publish(sorted(valid + [b for b, _ in bad], key=lambda r: r.ts_ms) + [copy, reused] + heartbeats)
    publisher.close()
    assert report.failed == 0, report.errors
    worker.wait_ready()
    worker.wait_processed(report.total, timeout=180)

    assert worker.alive
    assert worker.total("retention_records_total", result="invalid") == len(bad)
    assert worker.total("retention_records_total", result="duplicate") == 1
    assert worker.total("retention_records_total", result="conflict") == 1
    bad.append((reused, "event_id 'ann-7' was applied before with other content"))
    assert worker.total("retention_records_total", result="ok") + worker.total("retention_records_total", result="late") == len(valid)
    messages = read_topic(pipeline.settings, pipeline.settings.topic_dead_letters, at_least=len(bad))
    letters = [json.loads(m.value()) for m in messages]
    assert len(letters) == len(bad)
    for _, reason in bad:
        assert sum(reason in letter["error"] for letter in letters) == 1, (reason, [d["error"] for d in letters])
    for message, letter in zip(messages, letters):
        assert len(message.value()) < 64_000 and schema_errors("dead-letters", letter) == []
        assert (letter["value_size"] or 0) <= MAX_RECORD + 50_200 and letter["value"] is None  # redacted by default

    status, ann = worker.get_json("/users/ann")
    assert status == 200 and ann["features"]["purchases"] == 3 and ann["features"]["spend"] == 60.0  # the first one stands

    status, rich = worker.get_json("/users/rich")
    assert status == 200 and rich["features"]["purchases"] == 2
    assert rich["features"]["spend"] == MAX_CENTS / 100  # saturated, not dead-lettered

    # still processing after all of it
    more = [_purchase("late-comer", 29, 10.0)]
    publisher = pipeline.publisher()
    assert publisher.publish(more).failed == 0
    publisher.close()
    worker.wait_processed(report.total + 1, timeout=60)
    assert worker.get_json("/users/late-comer")[0] == 200
