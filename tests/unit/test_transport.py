"""The consumer's commit computation (faust-streaming #596: duplicated acknowledged offsets;
#606 and gap ranges over records in flight; records acknowledged or counted done that no
agent processed), the records a seek overtook, and the producer flush before a commit."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from weakref import WeakSet

from faust.types import TP
from intervaltree import IntervalTree

from streams.runtime.transport import _Consumer, dropped, guard, overtaken, processed_up_to

TOPIC = TP("clicks", 0)


GENERATION = 7


class Message:
    """What the commit computation reads of a Faust ConsumerMessage."""

    def __init__(self, offset: int, acked: bool = False, generation_id: int = GENERATION, tp: TP = TOPIC) -> None:
        self.offset, self.acked, self.generation_id, self.tp = offset, acked, generation_id, tp
        self.topic = tp.topic


def consumer(committed: int, acked: list[int], gap: tuple[int, int] | None = None, in_flight: list[Message] = ()) -> _Consumer:
    """A consumer with only the bookkeeping the commit computation reads; ``in_flight``:
    messages handed to the stream and not acknowledged (keep a reference to them)."""
    c = object.__new__(_Consumer)
    c.app = SimpleNamespace(consumer_generation_id=GENERATION)
    c._fetched, c._processed, c._handed, c.overtaken, c.trace = {}, {}, {}, 0, None
    c._acked = defaultdict(list, {TOPIC: list(acked)})
    c._acked_index = defaultdict(set, {TOPIC: set(acked)})
    c._committed_offset = defaultdict(lambda: None, {TOPIC: committed})
    c._gap = defaultdict(IntervalTree)
    c._unacked_messages = WeakSet(in_flight)
    if gap:
        c._gap[TOPIC].addi(*gap)
    return c


def ack(c: _Consumer, message: Message) -> None:
    """Faust's ``Consumer.ack`` bookkeeping for one message."""
    message.acked = True
    if message.offset >= c._committed_offset[TOPIC] and message.offset not in c._acked_index[TOPIC]:
        c._unacked_messages.discard(message)
        c._acked_index[TOPIC].add(message.offset)
        c._acked[TOPIC].append(message.offset)


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


def test_a_gap_range_over_records_still_in_flight_does_not_commit_them() -> None:
    # The recovery race: 6..10 were delivered before the seek reset Faust's read offset, so
    # it recorded them as a gap; 8, 9 and 10 still wait in the event-time merge.
    waiting = [Message(8), Message(9), Message(10)]
    c = consumer(committed=5, acked=[5, 6, 7], gap=(6, 11), in_flight=waiting)
    assert c._new_offset(TOPIC) == 8  # Faust alone: 11, past three unprocessed records
    c._committed_offset[TOPIC] = 8  # the commit lands
    for message in waiting:
        ack(c, message)
    assert c._new_offset(TOPIC) == 11


def test_an_unacknowledged_record_at_the_committed_offset_holds_the_commit() -> None:
    # faust-streaming #606: 2585 is still being processed, 2586..2589 are done
    slow = Message(2585)
    c = consumer(committed=2585, acked=[2586, 2587, 2588, 2589], in_flight=[slow])
    assert c._new_offset(TOPIC) is None  # Faust alone: 2590, and a crash loses 2585
    ack(c, slow)
    assert c._new_offset(TOPIC) == 2590  # the acknowledged offsets were kept


def test_acknowledged_copies_and_older_generations_do_not_hold_the_commit() -> None:
    # a record delivered twice (before and after the recovery seek): the second copy is
    # acknowledged but Faust leaves it among the unacknowledged; and a message of the
    # generation before the last rebalance, dropped by the stream
    copy, stale = Message(103, acked=True), Message(104, generation_id=GENERATION - 1)
    c = consumer(committed=100, acked=[100, 101, 102, 103, 104, 105], in_flight=[copy, stale])
    assert c._new_offset(TOPIC) == 106


def test_a_record_handed_to_the_stream_queue_holds_the_commit_until_acknowledged() -> None:
    """Faust tracks a record only when a stream takes it off its queue; ours tracks it
    when the consumer hands it on, so a record still queued is not committed past."""
    import asyncio

    queued: list[Message] = []

    async def to_stream_queue(message: Message) -> None:
        queued.append(message)

    c = consumer(committed=50, acked=[51, 52])
    c.app.topics = SimpleNamespace(acks_enabled_for=lambda topic: True)
    c._on_message_in = lambda tp, offset, message: None
    record = Message(50)
    record.topic, record.tracked = TOPIC.topic, False
    asyncio.run(c._tracking(to_stream_queue)(record))
    assert queued == [record] and record.tracked
    assert c._new_offset(TOPIC) is None  # Faust alone: 53 (#606), past the queued record
    ack(c, record)
    assert c._new_offset(TOPIC) == 53



# --- guarded topics: a commit never passes a record our agent has not processed ----------


def guarded(committed: int | None, acked: list[int], fetched: range, processed: list[int],
            gap: tuple[int, int] | None = None) -> _Consumer:
    """A consumer whose topic is guarded: ``fetched`` came from the broker in this
    generation and our agent processed ``processed`` (and acknowledged them: in ``acked``
    with whatever else Faust counted done)."""
    c = consumer(committed if committed is not None else 0, acked, gap)
    c._committed_offset[TOPIC] = committed
    guard(c.app, [TOPIC.topic])
    c._fetched[TOPIC] = set(fetched)
    for offset in processed:
        c.processed(Message(offset))
    return c


def process(c: _Consumer, offsets: range) -> None:
    """Our agent processes and acknowledges the re-delivered records ``offsets``."""
    for offset in offsets:
        message = Message(offset)
        c.processed(message)
        ack(c, message)


def test_the_commit_stops_at_the_first_fetched_record_not_processed() -> None:
    assert processed_up_to(10, {10, 11, 12, 13}, {10, 11, 13}) == 12
    assert processed_up_to(None, {3, 4, 5}, {3, 4, 5}) == 6  # nothing committed yet: from the first record
    assert processed_up_to(10, {8, 9, 10}, {8, 9}) == 10  # below the committed offset: not ours to judge
    assert processed_up_to(10, set(), set()) is None


def test_offsets_never_fetched_below_a_processed_one_are_holes_in_the_log() -> None:
    assert processed_up_to(10, {10, 11, 14, 15}, {10, 11, 14, 15}) == 16
    # ... but nothing is committed beyond the highest processed offset
    assert processed_up_to(10, {10, 11}, {10, 11}) == 12


def test_records_the_stream_skipped_and_acknowledged_are_not_committed() -> None:
    """Faust's stream acknowledges the records it skips while the flow is stopped (even
    on a noack stream): 105..110 were acknowledged, never processed."""
    c = guarded(committed=100, acked=list(range(100, 111)), fetched=range(100, 111), processed=list(range(100, 105)))
    assert c._new_offset(TOPIC) == 105  # Faust alone: 111
    c._committed_offset[TOPIC] = 105  # the commit lands
    process(c, range(105, 111))  # read again and processed
    assert c._new_offset(TOPIC) == 111


def test_skipped_records_acknowledged_before_any_was_processed_commit_nothing() -> None:
    c = guarded(committed=100, acked=list(range(100, 171)), fetched=range(0), processed=[])
    assert c._new_offset(TOPIC) is None  # Faust alone: 171, 71 records never applied
    c = guarded(committed=None, acked=[0, 1, 2], fetched=range(0, 3), processed=[])
    assert c._new_offset(TOPIC) == 0  # no committed offset yet: offset 0, nothing passed


def test_a_gap_range_over_records_dropped_at_the_rebalance_does_not_commit_them() -> None:
    """What the offset trace showed on 2026-12-03 (restarted worker, heartbeats[3]):
    committed 816; 816..826 delivered before the post-assignment seek, 824..826 still in
    the event-time merge when the rebalance ended (dropped there, out of Faust's
    unacknowledged set); the rest of the batch then arrived after the seek, Faust
    recorded 817..827 as a gap and committed 912 over 824..826, never processed."""
    processed = [o for o in range(816, 912) if not 824 <= o <= 826]
    c = guarded(committed=816, acked=processed, fetched=range(816, 950), processed=processed, gap=(817, 828))
    assert c._new_offset(TOPIC) == 824  # Faust alone: 912
    c._committed_offset[TOPIC] = 824
    process(c, range(824, 827))
    assert c._new_offset(TOPIC) == 912  # the processed offsets Faust had taken off went back


def test_records_processed_in_an_older_generation_do_not_count() -> None:
    c = guarded(committed=100, acked=[100, 101, 102], fetched=range(100, 103), processed=[])
    c.processed(Message(100, generation_id=GENERATION - 1))  # delivered before the rebalance
    c.processed(Message(101))
    assert c._new_offset(TOPIC) is None  # 100 was not processed in this generation
    c.app.consumer_generation_id = GENERATION + 1  # another rebalance: what was processed is void
    c.processed(Message(100, generation_id=GENERATION + 1))
    assert c._processed[TOPIC] == (GENERATION + 1, {100})


def test_an_unguarded_topic_commits_as_before() -> None:
    c = consumer(committed=100, acked=list(range(100, 111)))
    c.processed(Message(100))  # not a guarded topic: not tracked
    assert c._processed == {} and c._new_offset(TOPIC) == 111



def test_a_record_handed_on_and_neither_processed_nor_in_flight_was_let_go_of() -> None:
    assert dropped(816, set(range(816, 827)), set(range(816, 824)), set()) == 824
    assert dropped(816, set(range(816, 827)), set(range(816, 824)), {824, 825, 826}) is None  # still waiting
    assert dropped(816, {814, 815}, set(), set()) is None  # below the committed offset


def test_records_the_stream_queue_let_go_of_at_resume_are_read_again() -> None:
    """What the trace showed in the rebalance test on 2026-12-03 (model-labels, new owner):
    1653..1683 were handed to the stream during the post-assignment seek and never reached
    the trainer: Faust resumes the flow right after the seek, which clears the streams'
    queues. The partition is sought back to the first of them."""
    import asyncio

    c = guarded(committed=1653, acked=[1653], fetched=range(1653, 1700), processed=[1653])
    for offset in range(1653, 1700):
        c._book(c._handed, Message(offset))
    waiting = [Message(o) for o in range(1684, 1700)]  # still in the trainer's list: in flight
    c._unacked_messages = WeakSet(waiting)
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    c._seek_back = seek
    asyncio.run(c._redeliver_dropped())
    assert sought == [(TOPIC, 1654)]
    assert c._current(c._handed, TOPIC) == {1653}  # the copies to come are booked again when handed on
    sought.clear()
    asyncio.run(c._redeliver_dropped())
    assert sought == []  # nothing else let go of

def test_a_record_at_or_above_the_fetch_position_was_overtaken_by_a_seek() -> None:
    assert overtaken(827, 816) and overtaken(816, 816)
    assert not overtaken(815, 816)  # returned by the fetcher since the seek: the position is past it
    assert not overtaken(827, None)  # position unknown: delivered


def test_the_rest_of_a_batch_fetched_before_the_seek_is_not_delivered(monkeypatch) -> None:
    """The recovery race (#596): the fetcher is half-way through a batch (816..830) when
    the post-assignment seek sets the partition back to the committed offset 816. The rest
    of the batch is dropped: the fetcher reads it again, and Faust's read offset is not
    moved past the records the seek brings back."""
    import asyncio

    from faust.transport.drivers import aiokafka as driver

    position = {TOPIC: 817}

    async def batch(self: _Consumer, timeout: float):  # Faust's getmany over one fetched batch
        for offset in range(816, 831):
            if offset == 821:
                position[TOPIC] = 816  # the seek
            yield TOPIC, Message(offset)
            if position[TOPIC] != 816:
                position[TOPIC] = offset + 2

    monkeypatch.setattr(driver.Consumer, "getmany", batch)
    c = consumer(committed=816, acked=[])
    c._position = position.get

    async def delivered() -> list[int]:
        return [message.offset async for _, message in c.getmany(1.0)]

    assert asyncio.run(delivered()) == [816, 817, 818, 819, 820]
    assert c.overtaken == 10

def record(name: str, publish: object) -> SimpleNamespace:
    """A Faust FutureMessage as the buffer's sender uses it."""
    return SimpleNamespace(name=name, message=SimpleNamespace(channel=SimpleNamespace(publish_message=publish)))


def buffer() -> object:
    from streams.runtime.transport import _Buffer

    new = _Buffer()
    new.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    return new


def test_the_flush_before_a_commit_waits_until_every_queued_record_is_handed_over() -> None:
    """Faust's buffer flush gives up after 0.1 s without a send; a slow producer then
    left table writes queued behind a commit."""
    import asyncio

    from streams.runtime.transport import drain

    async def scenario() -> list[str]:
        handed: list[str] = []

        async def slow_publish(fut: SimpleNamespace, wait: bool = False) -> None:
            await asyncio.sleep(0.15)  # longer than Faust's 0.1 s
            handed.append(fut.name)

        queue = buffer()
        await queue.start()
        try:
            for n in range(3):
                queue.put(record(f"write {n}", slow_publish))
            await asyncio.wait_for(drain(queue), timeout=5)
            return list(handed)
        finally:
            await queue.stop()

    assert asyncio.run(scenario()) == ["write 0", "write 1", "write 2"]


def test_the_flush_before_a_commit_waits_for_the_record_being_handed_to_aiokafka() -> None:
    """The buffer's sender takes a record off its queue, then waits in aiokafka's ``send``
    (the partition's previous batch is not drained yet): the queue is empty, the record
    is not sent, and a commit must not pass it."""
    import asyncio

    from streams.runtime.transport import drain

    async def scenario() -> tuple[bool, list[str]]:
        queue = buffer()
        taken, accepted = asyncio.Event(), asyncio.Event()
        handed: list[str] = []

        async def publish_message(fut: SimpleNamespace, wait: bool = False) -> None:
            taken.set()
            await accepted.wait()  # aiokafka's add_message waiting for the batch to drain
            handed.append(fut.name)

        await queue.start()
        try:
            queue.put(record("users-changelog write", publish_message))
            await taken.wait()
            assert queue.size == 0  # what Faust's flush looks at
            flushing = asyncio.ensure_future(drain(queue))
            await asyncio.sleep(0.3)
            returned_early = flushing.done()
            accepted.set()
            await asyncio.wait_for(flushing, timeout=5)
            return returned_early, handed
        finally:
            await queue.stop()

    returned_early, handed = asyncio.run(scenario())
    assert not returned_early
    assert handed == ["users-changelog write"]


def test_writes_queued_after_the_flush_started_do_not_hold_the_commit() -> None:
    """The agent keeps writing while a commit flushes: waiting for an empty queue kept a
    worker from committing at all for 40 s (the queue was never empty)."""
    import asyncio

    from streams.runtime.transport import drain

    async def scenario() -> list[str]:
        handed: list[str] = []

        async def publish(fut: SimpleNamespace, wait: bool = False) -> None:
            await asyncio.sleep(0.02)
            handed.append(fut.name)

        queue = buffer()
        await queue.start()

        async def agent() -> None:
            n = 0
            while True:  # two writes per send: the queue never empties
                queue.put(record(f"later {n}", publish))
                queue.put(record(f"later {n + 1}", publish))
                n += 2
                await asyncio.sleep(0.02)

        queue.put(record("before the commit", publish))
        writing = asyncio.ensure_future(agent())
        try:
            await asyncio.sleep(0.05)
            await asyncio.wait_for(drain(queue), timeout=2)
            return list(handed)
        finally:
            writing.cancel()
            while queue.size:  # what the agent wrote later is not this test's
                queue.pending.get_nowait()
            await queue.stop()

    handed = asyncio.run(scenario())
    assert handed[0] == "before the commit"


def test_the_commit_filter_gathers_in_flight_offsets_once_for_all_partitions() -> None:
    """``_filter_committable_offsets`` reads Faust's unacknowledged messages once for all
    partitions; each partition's offset is the one ``_new_offset`` gives it alone."""
    other = TP("clicks", 1)
    held, other_held, stale = Message(103), Message(41, tp=other), Message(44, generation_id=GENERATION - 1, tp=other)
    below_commit = Message(38, tp=other)  # in flight but below the committed offset: no hold

    def fresh() -> _Consumer:
        # Faust alone would commit past the in-flight records: its gap ranges cover them (#596)
        c = consumer(committed=100, acked=[100, 101, 102, 104, 105], gap=(103, 104),
                     in_flight=[held, other_held, stale, below_commit])
        c._acked[other], c._acked_index[other] = [40, 42, 43, 44], {40, 42, 43, 44}
        c._gap[other].addi(41, 42)
        c._committed_offset[other] = 40
        c._should_commit = lambda tp, offset: True
        return c

    alone = {}
    for tp in (TOPIC, other):
        alone[tp] = fresh()._new_offset(tp)
    assert alone == {TOPIC: 103, other: 41}
    c = fresh()
    assert c._filter_committable_offsets([TOPIC, other]) == alone
    assert c._in_flight_index is None  # only during the filter
    assert 104 in c._acked_index[TOPIC] and 42 in c._acked_index[other]  # put back for the next commit
