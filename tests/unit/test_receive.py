"""The fold thread's receive and the event-time merge's proof that the other inputs are caught
up (BatchIngest._poll, _caught_up): a record received alone is released once a later receive
finds librdkafka's queue dry, and that receive follows at once, without waiting, even when it
comes within the same millisecond (as it does when the fold in between is quick)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from streams.domain.clock import InputMerge
from streams.domain.events import Heartbeat
from streams.runtime.agents import batched
from streams.runtime.agents.batched import BatchIngest, PartitionWork

START_S = 1_767_225_605.0002  #: a wall clock inside a millisecond (not on its edge)
STEP_S = 0.0001  #: each read of the clock moves it 0.1 ms: the fold thread's calls are that close


class Message:
    def __init__(self, topic: str, offset: int, value: bytes, kafka_ts: int) -> None:
        self._topic, self._offset, self._value, self._ts = topic, offset, value, kafka_ts

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


class Consumer:
    """librdkafka's queue as the fold thread sees it; the high watermarks of the fetches."""

    def __init__(self, clock: list[float], highs: dict[str, int]) -> None:
        self.clock, self.highs = clock, highs
        self.queue: list[Message] = []
        self.waits: list[float] = []  #: the timeout of every receive, in order

    def poll(self, timeout: float) -> Message | None:
        self.waits.append(timeout)
        if self.queue:
            return self.queue.pop(0)
        self.clock[0] += timeout
        return None

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self.waits.append(timeout)
        out, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        if not out:
            self.clock[0] += timeout
        return out

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        return 0, self.highs[tp.topic]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [START_S]

    def read() -> float:
        now[0] += STEP_S
        return now[0]

    monkeypatch.setattr(batched.time, "time", read)
    return now


def ingest_with(consumer: Consumer, work: PartitionWork) -> BatchIngest:
    ingest = object.__new__(BatchIngest)  # (only what the receive and the merge read: no app, no broker)
    ingest.max_batch = 5000
    ingest.merge_margin = 0  # RETENTION_MERGE_MARGIN_MS=0: the receive's own time is the bound
    ingest.undrained = False
    ingest.polled_ms = ingest.drained_ms = 0
    ingest.consumer = consumer
    ingest.works = {0: work}
    ingest.logical = {"purchases": "purchases", "heartbeats": "heartbeats"}
    ingest.privacy = SimpleNamespace(decoder=lambda logical: None)
    ingest.settings = SimpleNamespace(max_record_bytes=1_000_000)
    ingest.skew_ms, ingest.min_event_ms = 60_000, 0
    ingest.partition_for = lambda user_id: 0
    return ingest


def receive(ingest: BatchIngest) -> int:
    messages = ingest._poll()
    for msg in messages:
        ingest._receive(msg)
    return len(messages)


def release(ingest: BatchIngest, work: PartitionWork) -> Any:
    item = work.merge.pop(lambda topic, since_ms: ingest._caught_up(work, topic, since_ms))
    return None if item is None else item[2]


@pytest.mark.parametrize("purchases_on_broker", [0, 1])
def test_a_record_received_alone_is_released_by_the_next_receive_which_does_not_wait(
        clock: list[float], purchases_on_broker: int) -> None:
    # purchases read to offset 3; the fetches say the log ends there (or one record later)
    consumer = Consumer(clock, {"purchases": 3 + purchases_on_broker, "heartbeats": 1})
    work = PartitionWork(0, store=None, merge=InputMerge(["purchases", "heartbeats"]),  # type: ignore[arg-type]
                         start={"purchases": 3, "heartbeats": 0})
    ingest = ingest_with(consumer, work)
    consumer.queue.append(Message("heartbeats", 0, b'{"ts": 1767225600000}', kafka_ts=int(START_S * 1000)))

    assert receive(ingest) == 1
    # purchases are proven caught up only by a receive after the heartbeat's: it waits
    assert release(ingest, work) is None
    assert receive(ingest) == 0  # the queue is dry, found so at once
    assert consumer.waits == [batched.RECEIVE_WAIT_S, 0, 0]  # (the poll found the record at once)
    released = release(ingest, work)
    if purchases_on_broker:
        assert released is None  # a purchase is still to be received: it may be earlier
    else:
        assert released == Heartbeat(ts=1767225600000)


class PausingConsumer(Consumer):
    """... and pausing as librdkafka does: a paused input's records already fetched are dropped
    from the queue and fetched again, from the position reached, on resume."""

    def __init__(self, clock: list[float], highs: dict[str, int]) -> None:
        super().__init__(clock, highs)
        self.paused: set[str] = set()
        self.dropped: list[Message] = []

    def pause(self, tps: list[Any]) -> None:
        for tp in tps:
            self.paused.add(tp.topic)
            self.dropped += [m for m in self.queue if m.topic() == tp.topic]
            self.queue = [m for m in self.queue if m.topic() != tp.topic]

    def resume(self, tps: list[Any]) -> None:
        for tp in tps:
            self.paused.discard(tp.topic)
            self.queue += [m for m in self.dropped if m.topic() == tp.topic]
            self.dropped = [m for m in self.dropped if m.topic() != tp.topic]


def test_a_receive_pauses_an_input_once_its_share_of_the_merge_is_full_and_takes_no_batch_more(clock: list[float]) -> None:
    records = 3000
    consumer = PausingConsumer(clock, {"purchases": 0, "heartbeats": records})
    work = PartitionWork(0, store=None, merge=InputMerge(["purchases", "heartbeats"]),  # type: ignore[arg-type]
                         start={"purchases": 0, "heartbeats": 0})
    ingest = ingest_with(consumer, work)
    ingest.merge_cap = 600  # a share of 300 for each of the two inputs
    first_ts = 1_767_225_600_000
    consumer.queue += [Message("heartbeats", n, b'{"ts": %d}' % (first_ts + n), kafka_ts=int(START_S * 1000))
                       for n in range(records)]

    received: list[int] = []
    for _ in range(20):
        messages = ingest._poll()
        for msg in messages:
            ingest._receive(msg)
        received += [msg.offset() for msg in messages]
        # a chunk (500) past the share at most, not the receive's whole batch of 5,000
        assert work.merge.size <= 300 + 500
        while release(ingest, work) is not None:
            pass
        ingest._pace(work)
    assert work.merge.size == 0 and not consumer.paused
    assert received == list(range(records))  # each record once, in offset order, none lost to the pauses


def test_a_partition_given_back_while_paused_is_resumed_before_it_is_unassigned(clock: list[float]) -> None:
    # librdkafka keeps a pause across an unassignment: taken again later, the partition would never fetch
    calls: list[tuple[str, list[tuple[str, int]]]] = []
    consumer = SimpleNamespace(
        resume=lambda tps: calls.append(("resume", [(tp.topic, tp.partition) for tp in tps])),
        incremental_unassign=lambda tps: calls.append(("unassign", sorted((tp.topic, tp.partition) for tp in tps))),
    )
    kept = PartitionWork(0, store=None, merge=InputMerge(["purchases", "heartbeats"]), paused={"purchases"})  # type: ignore[arg-type]
    gone = PartitionWork(1, store=None, merge=InputMerge(["purchases", "heartbeats"]), paused={"purchases"})  # type: ignore[arg-type]
    ingest = ingest_with(consumer, kept)  # type: ignore[arg-type]
    ingest.works = {0: kept, 1: gone}
    ingest.inputs = ["purchases", "heartbeats"]

    ingest._unassign({1})

    assert calls == [("resume", [("purchases", 1)]), ("unassign", [("heartbeats", 1), ("purchases", 1)])]
