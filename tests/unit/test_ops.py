"""Consumer lag arithmetic, series removal and readiness of streams/runtime/ops.py, on a
Faust app that is never started and a consumer double with known offsets."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import faust
import pytest
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from prometheus_client import REGISTRY

from streams.runtime import metrics
from streams.runtime.ops import Operations
from streams.runtime.settings import Settings


class FakeConsumer:
    """What Operations reads from Faust's consumer: assignment, fetch high watermarks,
    committed offsets (None until the first commit), and the log start offsets."""

    def __init__(self) -> None:
        self.assigned: set[TP] | None = None  # None: not started
        self.highwaters: dict[TP, int | None] = {}
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.earliest: dict[TP, int] = {}
        self.earliest_asked: list[TP] = []

    def assignment(self) -> set[TP]:
        if self.assigned is None:
            raise ConsumerNotStarted("not started")
        return self.assigned

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters.get(tp)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.earliest_asked += tps
        return {tp: self.earliest[tp] for tp in tps}


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> tuple[Operations, FakeConsumer]:
    monkeypatch.setenv("RETENTION_TOPIC_CLICKS", "shop.clicks")
    monkeypatch.setenv("RETENTION_APP_ID", "ops-unit")
    app = faust.App("ops-unit", autodiscover=False, store="memory://")
    operations = Operations(app, Settings())
    fake = FakeConsumer()
    app.consumer = fake  # type: ignore[assignment]
    return operations, fake


def lag(topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value("retention_consumer_lag_records", {"topic": topic, "partition": str(partition)})


def assigned(topic: str) -> float | None:
    return REGISTRY.get_sample_value("retention_assigned_partitions", {"topic": topic})


def test_lag_is_the_fetch_high_watermark_minus_the_committed_offset(ops: tuple[Operations, Any]) -> None:
    operations, consumer = ops
    clicks0, clicks1, beats0, rekey1 = TP("shop.clicks", 0), TP("shop.clicks", 1), TP("heartbeats", 0), TP("ops-unit-rekeyed", 1)
    changelog = TP("ops-unit-users-changelog", 0)
    consumer.assigned = {clicks0, clicks1, beats0, rekey1, changelog}
    consumer.highwaters = {clicks0: 120, clicks1: 50, beats0: None, rekey1: 7, changelog: 999}
    consumer._committed_offset.update({clicks0: 100, rekey1: 7})
    consumer.earliest = {clicks1: 10, beats0: 0}
    asyncio.run(operations.refresh())

    assert lag("clicks", 0) == 20  # logical topic name in the label
    assert lag("clicks", 1) == 40  # nothing committed yet: counted from the log start
    assert lag("rekeyed", 1) == 0
    assert lag("heartbeats", 0) is None  # not fetched yet: no high watermark, no series
    assert lag("ops-unit-users-changelog", 0) is None  # changelogs are not inbound topics
    assert (assigned("clicks"), assigned("heartbeats"), assigned("rekeyed")) == (2, 1, 1)
    assert sorted(consumer.earliest_asked) == [beats0, clicks1]

    # a rebalance in flight changes nothing; once it settles, series of lost partitions go
    metrics.EVENT_TIME.labels("0").set(1.0)
    metrics.EVENT_TIME.labels("1").set(2.0)
    operations.app.rebalancing = True
    consumer.assigned = set()
    asyncio.run(operations.refresh())
    assert lag("clicks", 0) == 20
    operations.app.rebalancing = False
    consumer.assigned = {clicks1}
    consumer._committed_offset[clicks1] = 45
    asyncio.run(operations.refresh())
    assert (lag("clicks", 0), lag("clicks", 1), lag("rekeyed", 1)) == (None, 5, None)
    assert (assigned("clicks"), assigned("heartbeats"), assigned("rekeyed")) == (1, None, None)
    assert REGISTRY.get_sample_value("retention_event_time_seconds", {"partition": "0"}) is None
    assert REGISTRY.get_sample_value("retention_event_time_seconds", {"partition": "1"}) == 2.0
    metrics.EVENT_TIME.remove("1")


def test_ready_only_with_partitions_and_recovery_done(ops: tuple[Operations, Any]) -> None:
    operations, consumer = ops
    assert operations.not_ready_reason() == "consumer not started"
    consumer.assigned = {TP("ops-unit-users-changelog", 0)}
    assert operations.not_ready_reason() == "no partitions assigned"
    consumer.assigned = {TP("shop.clicks", 0)}
    assert operations.not_ready_reason() == "table recovery in progress"
    operations.app.tables.recovery.completed.set()
    assert operations.not_ready_reason() is None
    operations.app.rebalancing = True
    assert operations.not_ready_reason() == "rebalancing"


class FakeProgress:
    """The agent as readiness sees it: records processed, and what waits too long."""

    def __init__(self) -> None:
        self.processed = 0
        self.waiting: list[str] = []

    def waits(self) -> list[str]:
        return self.waiting


def test_not_ready_while_records_wait_and_nothing_moves_for_the_stall_timeout(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RETENTION_TOPIC_CLICKS", "shop.clicks")
    monkeypatch.setenv("RETENTION_STALL_TIMEOUT_S", "60")
    caplog.set_level(logging.INFO, logger="streams.runtime.ops")
    app = faust.App("ops-unit", autodiscover=False, store="memory://")
    progress = FakeProgress()
    operations = Operations(app, Settings(), progress)
    consumer = app.consumer = FakeConsumer()  # type: ignore[assignment]
    clicks0 = TP("shop.clicks", 0)
    consumer.assigned = {clicks0}
    consumer.highwaters = {clicks0: 10}
    consumer._committed_offset[clicks0] = 10
    app.tables.recovery.completed.set()
    clock = [1000.0]
    monkeypatch.setattr("streams.runtime.ops.time.monotonic", lambda: clock[0])

    assert operations.not_ready_reason() is None  # no lag: idle is not stalled
    clock[0] += 300
    consumer.highwaters[clicks0] = 15  # new records: the wait starts now
    assert operations.not_ready_reason() is None
    clock[0] += 59
    assert operations.not_ready_reason() is None
    clock[0] += 2
    progress.waiting = ["partition 0: 5 records wait in the event-time merge ..."]
    reason = operations.not_ready_reason()
    assert reason is not None and reason.startswith("stalled: 5 records to read and none processed or committed for 61 s")
    assert reason.endswith("partition 0: 5 records wait in the event-time merge ...")
    operations.not_ready_reason()
    assert [r.message for r in caplog.records if r.message.startswith("worker stalled")] == [f"worker {reason}"]  # logged once

    progress.processed += 1  # a record processed: ready again, and the wait starts over
    assert operations.not_ready_reason() is None
    clock[0] += 61
    consumer._committed_offset[clicks0] = 12  # committed offsets moving is progress too
    assert operations.not_ready_reason() is None
    clock[0] += 61
    progress.waiting = []
    assert "the consumer fetches nothing" in (operations.not_ready_reason() or "")
    assert any(r.message.startswith("no longer stalled") for r in caplog.records)


def test_not_ready_once_crashed_or_stopping(ops: tuple[Operations, Any]) -> None:
    operations, consumer = ops
    consumer.assigned = {TP("shop.clicks", 0)}
    operations.app.tables.recovery.completed.set()
    assert operations.not_ready_reason() is None
    operations.stopping = "SIGTERM"
    assert operations.not_ready_reason() == "stopping (SIGTERM)"
    operations.stopping = None
    operations.app._crash(Exception("IO error: No space left on device"))
    assert operations.not_ready_reason() == "crashed: Exception('IO error: No space left on device')"
