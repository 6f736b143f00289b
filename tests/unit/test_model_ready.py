"""The fold thread asks, for every record, whether its model snapshot is ready: answered once
per period and partition, with the trainer's watermark sent as before."""

from __future__ import annotations

from types import SimpleNamespace

from models.trainer import SnapshotStore
from streams.runtime.agents.batched import BatchIngest, PartitionWork

DAY = 86_400_000


def ingest_with(store: SnapshotStore) -> tuple[BatchIngest, list[int], list[int]]:
    ingest = object.__new__(BatchIngest)  # (only what _model_ready reads: no app, no broker)
    ingest.period_ms = DAY
    ingest.follower = SimpleNamespace(store=store)
    marks: list[int] = []
    asked: list[int] = []
    ready = store.ready

    def watermark(work: PartitionWork, clock_ms: int) -> None:
        if work.marked is None or clock_ms // DAY > work.marked // DAY:  # (as BatchIngest._watermark sends)
            marks.append(clock_ms)
            work.marked = clock_ms

    def asking(t: int) -> bool:
        asked.append(t)
        return ready(t)

    ingest._watermark = watermark  # type: ignore[method-assign]
    store.ready = asking  # type: ignore[method-assign]
    return ingest, marks, asked


def test_readiness_is_asked_once_per_period_and_again_while_it_is_not() -> None:
    store: SnapshotStore = SnapshotStore(dict, lambda raw: {}, period_ms=DAY, lag=1)
    ingest, marks, asked = ingest_with(store)
    work = PartitionWork(0, store=None, merge=None)  # type: ignore[arg-type]
    t = 10 * DAY + 5
    assert not ingest._model_ready(work, t) and not ingest._model_ready(work, t + 1)  # the trainer has not covered day 9
    assert asked == [t, t + 1] and marks == [t]
    store.covered = 9 * DAY
    assert ingest._model_ready(work, t + 2) and work.settled_until == 11 * DAY
    assert all(ingest._model_ready(work, t + k) for k in range(3, 100))  # the rest of the day: nothing asked or sent
    assert ingest._model_ready(work, 3 * DAY)  # an earlier time (the partition's clock is later): ready too
    assert asked == [t, t + 1, t + 2] and marks == [t]
    assert not ingest._model_ready(work, 11 * DAY)  # a new day: asked again, its watermark sent
    assert asked[-1] == 11 * DAY and marks == [t, 11 * DAY]
    work.settled_until = 0  # (a rebalance resets it with the watermark: BatchIngest._reassign)
    work.marked = None
    assert ingest._model_ready(work, t + 200)  # day 10 again: asked again and its watermark sent again
    assert asked[-1] == t + 200 and marks[-1] == t + 200
