"""A backlog cannot fill a worker's memory: the event-time merge holds a bounded number of
records, an input over its share stops fetching until half of it is processed, and nothing
is lost or reordered by pausing and resuming."""

from __future__ import annotations

import pytest

from streams.runtime.agents.batched import RECEIVE_CHUNK
from tests.integration.conftest import Pipeline, page_views

pytestmark = pytest.mark.integration

USERS = [f"bp{n}" for n in range(40)]
CLICKS = 15_000
CAP = 300  # RETENTION_MERGE_MAX_RECORDS: per partition, shared by its eight inputs (37 each)
BATCH = 100  # RETENTION_BATCH_MAX_RECORDS


@pytest.mark.parametrize("batch", [BATCH, 5000])
def test_a_backlog_is_paced_by_the_merge_cap_and_every_click_lands(pipeline: Pipeline, batch: int) -> None:
    # clicks over 40 days, the trainer's snapshot periods: records wait for them, and the merges fill behind a waiting record
    records = page_views("bp", USERS, CLICKS, 40)
    publisher = pipeline.publisher()
    report = publisher.publish(records)
    publisher.close()
    assert report.failed == 0, report.errors
    worker = pipeline.worker(RETENTION_MERGE_MAX_RECORDS=str(CAP), RETENTION_BATCH_MAX_RECORDS=str(batch))
    worker.wait_ready()
    worker.wait_processed(report.total, timeout=300)

    assert worker.total("retention_input_pauses_total", topic="clicks") > 0  # the backlog was held back
    peak = worker.total("retention_merge_records_max")
    partitions = pipeline.settings.partitions
    if batch <= RECEIVE_CHUNK:  # a receive's records, taken before a pause, still arrive
        bound = partitions * CAP + batch
    else:  # a receive of 5,000 pauses between its chunks: each partition's clicks outgrow their share by a chunk at most
        bound = partitions * (CAP + RECEIVE_CHUNK)
    assert 0 < peak <= bound, (peak, bound)
    assert worker.total("retention_records_total", result="ok") + worker.total("retention_records_total", result="late") == CLICKS
    assert worker.total("retention_records_total", result="invalid") == 0
    for user in USERS:
        status, profile = worker.get_json(f"/users/{user}")
        assert status == 200 and profile["features"]["page_view_90d"] == CLICKS // len(USERS), (user, profile["features"])
