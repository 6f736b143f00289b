"""Consumer lag series, series removal and readiness of streams/runtime/ops.py, on a Faust app
that is never started and a double of the agent that folds batches with known offsets."""

from __future__ import annotations

import asyncio
import logging

import faust
import pytest
from prometheus_client import REGISTRY

from streams.runtime import metrics
from streams.runtime.ops import Operations
from streams.runtime.settings import Settings


class FakeIngest:
    """What Operations reads from the agent that folds batches: the partitions it owns, its
    lag per input partition (fetch high watermark minus committed offset), its committed
    offsets, the records it processed, what waits too long, and its stores' size."""

    def __init__(self) -> None:
        self.owned: set[int] = set()
        self.assigned: set[int] | None = None  # None: what it owns (no restore under way)
        self.lags: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.processed = 0
        self.waiting: list[str] = []

    def owned_partitions(self) -> set[int]:
        return set(self.owned)

    def assigned_partitions(self) -> set[int]:
        return set(self.owned) if self.assigned is None else set(self.assigned)

    def lag_of(self) -> dict[tuple[str, int], int]:
        return dict(self.lags)

    def waits(self) -> list[str]:
        return self.waiting

    def store_size(self) -> tuple[int, int]:
        return 12, 3456


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> tuple[Operations, FakeIngest]:
    monkeypatch.setenv("RETENTION_TOPIC_CLICKS", "shop.clicks")
    monkeypatch.setenv("RETENTION_APP_ID", "ops-unit")
    monkeypatch.setenv("RETENTION_STALL_TIMEOUT_S", "60")
    app = faust.App("ops-unit", autodiscover=False, store="memory://")
    ingest = FakeIngest()
    return Operations(app, Settings(), ingest), ingest


def lag(topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value("retention_consumer_lag_records", {"topic": topic, "partition": str(partition)})


def assigned(topic: str) -> float | None:
    return REGISTRY.get_sample_value("retention_assigned_partitions", {"topic": topic})


def test_lag_series_are_the_agents_per_input_partition_and_go_with_the_partition(ops: tuple[Operations, FakeIngest]) -> None:
    operations, ingest = ops
    ingest.owned = {0, 1}
    ingest.lags = {("shop.clicks", 0): 20, ("shop.clicks", 1): 40, ("ops-unit-rekeyed", 1): 0, ("shop.clicks", 7): 5}
    asyncio.run(operations.refresh())

    assert lag("clicks", 0) == 20 and lag("clicks", 1) == 40  # the logical topic name in the label
    assert lag("rekeyed", 1) == 0
    assert lag("heartbeats", 0) is None  # not fetched yet: no high watermark, no series
    assert lag("clicks", 7) is None  # a partition no longer owned
    assert (assigned("clicks"), assigned("heartbeats"), assigned("rekeyed")) == (2, 2, 2)
    assert REGISTRY.get_sample_value("retention_table_keys", {"table": "users"}) == 12
    assert REGISTRY.get_sample_value("retention_table_bytes", {"table": "users"}) == 3456

    # a rebalance in flight changes nothing; once it settles, series of lost partitions go
    metrics.EVENT_TIME.labels("0").set(1.0)
    metrics.EVENT_TIME.labels("1").set(2.0)
    operations.app.rebalancing = True
    ingest.owned = set()
    asyncio.run(operations.refresh())
    assert lag("clicks", 0) == 20
    operations.app.rebalancing = False
    ingest.owned = {1}
    ingest.lags = {("shop.clicks", 1): 5}
    asyncio.run(operations.refresh())
    assert (lag("clicks", 0), lag("clicks", 1), lag("rekeyed", 1)) == (None, 5, None)
    assert (assigned("clicks"), assigned("heartbeats"), assigned("rekeyed")) == (1, 1, 1)
    assert REGISTRY.get_sample_value("retention_event_time_seconds", {"partition": "0"}) is None
    assert REGISTRY.get_sample_value("retention_event_time_seconds", {"partition": "1"}) == 2.0
    metrics.EVENT_TIME.remove("1")


def test_ready_only_with_partitions_and_recovery_done(ops: tuple[Operations, FakeIngest]) -> None:
    operations, ingest = ops
    assert operations.not_ready_reason() == "no partitions assigned"
    ingest.assigned = {0, 1}  # assigned by the group, not restored yet
    assert operations.not_ready_reason() == "restoring partitions [0, 1] from the changelog"
    ingest.owned = {0}
    assert operations.not_ready_reason() == "restoring partitions [1] from the changelog"
    ingest.assigned = None
    assert operations.not_ready_reason() == "table recovery in progress"
    operations.app.tables.recovery.completed.set()
    assert operations.not_ready_reason() is None
    operations.app.rebalancing = True
    assert operations.not_ready_reason() == "rebalancing"


def test_not_ready_while_records_wait_and_nothing_moves_for_the_stall_timeout(
    ops: tuple[Operations, FakeIngest], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streams.runtime.ops")
    operations, ingest = ops
    ingest.owned = {0}
    ingest.committed = {("shop.clicks", 0): 10}
    operations.app.tables.recovery.completed.set()
    clock = [1000.0]
    monkeypatch.setattr("streams.runtime.ops.time.monotonic", lambda: clock[0])

    assert operations.not_ready_reason() is None  # no lag: idle is not stalled
    clock[0] += 300
    ingest.lags = {("shop.clicks", 0): 5}  # new records: the wait starts now
    assert operations.not_ready_reason() is None
    clock[0] += 59
    assert operations.not_ready_reason() is None
    clock[0] += 2
    ingest.waiting = ["partition 0: 5 records wait in the event-time merge ..."]
    reason = operations.not_ready_reason()
    assert reason is not None and reason.startswith("stalled: 5 records to read and none processed or committed for 61 s")
    assert reason.endswith("partition 0: 5 records wait in the event-time merge ...")
    operations.not_ready_reason()
    assert [r.message for r in caplog.records if r.message.startswith("worker stalled")] == [f"worker {reason}"]  # logged once

    ingest.processed += 1  # a record processed: ready again, and the wait starts over
    assert operations.not_ready_reason() is None
    clock[0] += 61
    ingest.committed[("shop.clicks", 0)] = 12  # committed offsets moving is progress too
    assert operations.not_ready_reason() is None
    clock[0] += 61
    ingest.waiting = []
    assert "the consumer fetches nothing" in (operations.not_ready_reason() or "")
    assert any(r.message.startswith("no longer stalled") for r in caplog.records)


def test_not_ready_once_crashed_or_stopping(ops: tuple[Operations, FakeIngest]) -> None:
    operations, ingest = ops
    ingest.owned = {0}
    operations.app.tables.recovery.completed.set()
    assert operations.not_ready_reason() is None
    operations.stopping = "SIGTERM"
    assert operations.not_ready_reason() == "stopping (SIGTERM)"
    operations.stopping = None
    operations.app._crash(Exception("IO error: No space left on device"))
    assert operations.not_ready_reason() == "crashed: Exception('IO error: No space left on device')"
