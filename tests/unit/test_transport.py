"""The consumer's commit computation (faust-streaming #596: duplicated acknowledged offsets)."""

from __future__ import annotations

from collections import defaultdict

from faust.types import TP
from intervaltree import IntervalTree

from streams.runtime.transport import _Consumer

TOPIC = TP("clicks", 0)


def consumer(committed: int, acked: list[int], gap: tuple[int, int] | None = None) -> _Consumer:
    """A consumer with only the bookkeeping the commit computation reads."""
    c = object.__new__(_Consumer)
    c._acked = defaultdict(list, {TOPIC: list(acked)})
    c._acked_index = defaultdict(set, {TOPIC: set(acked)})
    c._committed_offset = defaultdict(lambda: None, {TOPIC: committed})
    c._gap = defaultdict(IntervalTree)
    if gap:
        c._gap[TOPIC].addi(*gap)
    return c


def test_duplicated_acks_commit_in_one_step() -> None:
    # every offset from 200 to 300 acknowledged twice (the recovery race's signature)
    c = consumer(committed=200, acked=[o for o in range(200, 301) for _ in (1, 2)])
    assert c._new_offset(TOPIC) == 301
    assert c._acked[TOPIC] == []


def test_a_gap_range_overlapping_acks_does_not_slow_the_commit() -> None:
    # Faust recorded 197..350 as a hole in the log, though they were delivered and acked
    c = consumer(committed=196, acked=list(range(196, 400)), gap=(197, 351))
    assert c._new_offset(TOPIC) == 400


def test_an_unacknowledged_record_still_holds_the_commit() -> None:
    c = consumer(committed=100, acked=[100, 101, 103, 104])
    assert c._new_offset(TOPIC) == 102  # 102 is not done: nothing after it is committed


class SlowBuffer:
    """A Faust ProducerBuffer whose flush gives up after sending at most one record."""

    sending = 0

    def __init__(self, size: int) -> None:
        self.size = size
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1
        self.size = max(0, self.size - 1)


def test_the_flush_before_a_commit_waits_until_the_buffer_is_empty() -> None:
    import asyncio

    from streams.runtime.transport import drain

    buffer = SlowBuffer(size=5)
    asyncio.run(drain(buffer))
    assert buffer.size == 0 and buffer.flushes == 5


def test_the_flush_before_a_commit_waits_for_the_record_being_handed_to_aiokafka() -> None:
    """The buffer's sender takes a record off its queue, then waits in aiokafka's ``send``
    (the partition's previous batch is not drained yet): the queue is empty, the record
    is not sent, and a commit must not pass it."""
    import asyncio
    from types import SimpleNamespace

    from streams.runtime.transport import _Buffer, drain

    async def scenario() -> tuple[bool, list[str]]:
        buffer = _Buffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        taken, accepted = asyncio.Event(), asyncio.Event()
        handed: list[str] = []

        async def publish_message(fut: SimpleNamespace, wait: bool = False) -> None:
            taken.set()
            await accepted.wait()  # aiokafka's add_message waiting for the batch to drain
            handed.append(fut.name)

        record = SimpleNamespace(name="users-changelog write", message=SimpleNamespace(
            channel=SimpleNamespace(publish_message=publish_message)))
        await buffer.start()
        try:
            buffer.put(record)
            await taken.wait()
            assert buffer.size == 0  # what the flush looked at
            flushing = asyncio.ensure_future(drain(buffer))
            await asyncio.sleep(0.3)
            returned_early = flushing.done()
            accepted.set()
            await asyncio.wait_for(flushing, timeout=5)
            return returned_early, handed
        finally:
            await buffer.stop()

    returned_early, handed = asyncio.run(scenario())
    assert not returned_early
    assert handed == ["users-changelog write"]
