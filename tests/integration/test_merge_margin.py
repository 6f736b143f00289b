"""``RETENTION_MERGE_MARGIN_MS=0``: the event-time merge trusts a fetch-reported watermark as of
the last receive that found the queue dry (Kafka Streams' ``max.task.idle.ms=0``). Records of
two inputs a few ms apart may then be folded out of order; within the allowed lateness a
customer's features come out as with the default margin, and nothing is lost."""

from __future__ import annotations

import msgspec
import pytest

from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, parse_ts
from streams.runtime.publish import Outgoing
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

T0 = parse_ts("2026-03-01T00:00:00Z")
USERS = [f"mm{n}" for n in range(20)]
DAYS = 6


def interleaved() -> list[Outgoing]:
    """Each day, every customer's click and, 1 ms later on the other input, a purchase; then
    heartbeats that close the last model period."""
    out = []
    for day in range(DAYS):
        for i, user in enumerate(USERS):
            ts = T0 + day * MS_PER_DAY + i * MS_PER_HOUR // 4
            click = {"event_id": f"mm-c{day}-{i}", "user_id": user, "ts": ts, "kind": "page_view"}
            purchase = {"event_id": f"mm-p{day}-{i}", "user_id": user, "ts": ts + 1, "order_id": f"mm-o{day}-{i}",
                        "items": [{"item_id": "i-1", "quantity": 1, "unit_price": 10.0}], "total": 10.0,
                        "currency": "EUR", "channel": "web"}
            out.append(Outgoing("clicks", user, msgspec.json.encode(click), ts))
            out.append(Outgoing("purchases", user, msgspec.json.encode(purchase), ts + 1))
    end = T0 + (DAYS + 1) * MS_PER_DAY
    out += [Outgoing("heartbeats", None, msgspec.json.encode({"ts": t}), t) for t in range(end - 3 * MS_PER_HOUR, end, MS_PER_HOUR)]
    return out


def test_with_no_margin_every_record_of_two_inputs_lands_and_the_features_are_whole(pipeline: Pipeline) -> None:
    publisher = pipeline.publisher()
    report = publisher.publish(interleaved())
    publisher.close()
    assert report.failed == 0, report.errors
    worker = pipeline.worker(RETENTION_MERGE_MARGIN_MS="0")
    worker.wait_ready()
    worker.wait_processed(report.total, timeout=120)

    folded = worker.total("retention_records_total", result="ok") + worker.total("retention_records_total", result="late")
    assert folded == 2 * DAYS * len(USERS)
    assert worker.total("retention_records_total", result="invalid") == 0
    for user in USERS:
        status, profile = worker.get_json(f"/users/{user}")
        assert status == 200, (user, status)
        features = profile["features"]
        assert (features["page_view_90d"], features["purchases"]) == (DAYS, DAYS), (user, features)
