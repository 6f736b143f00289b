"""Faust's aiokafka transport: a configurable fetch wait, a commit that survives duplicated
acks and never passes a record our agents have not processed, a producer flush that really sends
everything before a commit, and an opt-in trace of the consumer's offsets (offset_trace.py).

Faust creates its consumer with ``fetch_max_wait_ms=1500`` hard-coded. On the embedded
broker every hop then waits up to ~0.75 s; ``RETENTION_FETCH_MAX_WAIT_MS`` sets it.

After a rebalance, Faust's recovery makes the input partitions active and *then* seeks
them to their committed offsets, while its fetcher may be half-way through delivering a
batch fetched before the seek (faust-streaming issue #596). The rest of that batch then
arrives after the seek, Faust's gap detection takes the jump from the committed offset
to the batch's next offset for a hole in the log, and records offsets that were in fact
delivered and acknowledged as a "gap": every one of them ends up twice in its list of
acknowledged offsets. Its commit advances over one run of consecutive offsets per commit,
so the duplicates made the committed offset crawl forward by about one record per commit
interval: after a crash, minutes to hours of re-reading. So the acknowledged offsets of a
partition are de-duplicated before a commit is computed (a duplicate carries no
information). Stopping the flow around the seek instead was tried and rejected: Faust's
fetcher then seeks *every* partition, changelogs included, to the group's committed
offsets, and a standby table taken over in the next rebalance missed records.

The same race lost records after a kill -9 (issue 3). The offset trace of a failed run
(2026-12-03: the restarted worker 7 records short, every input committed to its end)
shows it: Faust's seek looks up the committed offsets one partition at a time (0.37 s for
the worker's partitions) while the fetcher already delivers, and resets its read offsets
only at the end. On heartbeats[3] (committed 816) the records up to 826 were delivered,
the read offset went back to 816, the rest of the stale batch came next, Faust recorded
817..827 as a gap and its read offset ran ahead of the records the seek brought back,
which it then dropped as already read. 824..826 had not been processed by the agent,
were no longer among Faust's unacknowledged messages (so the in-flight check below did
not hold them), and the commit 816 -> 912 passed them through the gap range; eleven more
input partitions showed the same in that run (3 records each, 6 on one). What the code
says happened to them (the trace does not show it): they were still in the stream's
queue when Faust's recovery resumed the flow right after the seek, and a stream's queue
is cleared on resume (mode's ``FlowControlQueue(clear_on_resume=True)``), unacknowledged,
on the understanding that the seek reads them again. Two fixes:

- a record of a batch fetched before a seek moved its partition's fetch position back to
  or below it is not delivered (``overtaken``): the fetcher reads it again, so the seek's
  copies arrive in order from the committed offset and none is dropped or taken for a gap;
- the topics our agents read are *guarded* (``guard``): an agent calls ``ack`` for every
  record it is done with, which records the offset as processed in the current
  generation, and a commit never passes the first offset at or after the committed one
  that was fetched and not processed (nor the highest processed offset plus one,
  ``processed_up_to``). Faust's own bookkeeping alone counts as done the gap ranges and
  the records its stream acknowledges when it skips them (flow stopped, generation
  changed: ``faust/streams.py`` ``_py_aiter``, even on a ``noack`` stream);
- when the flow resumes (and the streams' queues are cleared), each guarded partition with
  a record handed to the stream in this generation and neither processed nor in flight is
  sought back to it (``resume_flow``, ``dropped``). Seen in the rebalance test: the new
  owner of model-labels was handed 1653..1683 during the seek, its trainer never got them,
  and Faust would have committed 1873 (the guard held the commit at 1654).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Set
from typing import Any

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as driver
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from streams.runtime.offset_trace import OffsetTrace

log = logging.getLogger(__name__)


def overtaken(offset: int, position: int | None) -> bool:
    """A fetched record whose partition a seek has since moved back to or below it.

    aiokafka advances a partition's fetch position past every record it returns, so a
    record at or above the current position was fetched before a seek set the position
    back: the fetcher reads it again from there, and delivering this copy too would move
    Faust's read offset past the copies the seek brings (Faust drops those as already
    read, faust-streaming #596).

    >>> overtaken(827, 816), overtaken(827, 828), overtaken(827, None)
    (True, False, False)
    """
    return position is not None and position <= offset


def processed_up_to(committed: int | None, fetched: Set[int], processed: Set[int]) -> int | None:
    """The highest offset a commit may reach: the first offset at or after ``committed``
    that was fetched and not processed, or one past the highest processed offset.

    Offsets never fetched below a processed one are holes in the log (or below its start)
    and do not hold a commit. None: nothing processed since ``committed``.

    >>> processed_up_to(10, {10, 11, 12, 13}, {10, 11, 13})
    12
    >>> processed_up_to(10, {10, 11, 14}, {10, 11, 14})  # 12 and 13 are not in the log
    15
    >>> processed_up_to(10, {10}, set()), processed_up_to(10, set(), {7, 8})
    (10, None)
    """
    pending = [o for o in fetched if (committed is None or o >= committed) and o not in processed]
    if pending:
        return min(pending)
    done = [o for o in processed if committed is None or o >= committed]
    return max(done) + 1 if done else None


def dropped(committed: int | None, handed: Set[int], processed: Set[int], in_flight: Set[int]) -> int | None:
    """The lowest offset handed to the stream in this generation that is neither processed
    nor still in flight (at or after ``committed``): a record the stream let go of.

    >>> dropped(816, set(range(816, 827)), set(range(816, 824)), set()), dropped(816, {816, 817}, {816}, {817})
    (824, None)
    """
    lost = [o for o in handed if (committed is None or o >= committed) and o not in processed and o not in in_flight]
    return min(lost, default=None)


def guard(app: Any, topics: Iterable[str]) -> None:
    """Commit the offsets of ``topics`` only as far as our agents processed them: each
    agent reading them calls :func:`ack` (not ``stream.ack``) for every record it is done with."""
    guarded = getattr(app, "retention_guarded_topics", None)
    if guarded is None:
        guarded = app.retention_guarded_topics = set()
    guarded.update(topics)


async def ack(stream: Any, event: Any) -> None:
    """Acknowledge a record our agent has processed (a guarded topic's commit counts only these)."""
    processed = getattr(stream.app.consumer, "processed", None)
    if processed is not None:
        processed(event.message)
    await stream.ack(event)


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when it builds its fetcher at start(), after this call.
        consumer._fetch_max_wait_ms = self.app.conf.retention_fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    trace: OffsetTrace | None = None  # RETENTION_TRACE_OFFSETS (offset_trace.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.app.conf, "retention_trace_offsets", False):
            self.trace = OffsetTrace()
        self.callback = self._tracking(self.callback)
        # guarded topics (see guard): per partition, the offsets fetched since the last commit
        # and those our agents processed in the current generation (generation, offsets)
        self._fetched: dict[TP, set[int]] = {}
        self._processed: dict[TP, tuple[int, set[int]]] = {}
        self._handed: dict[TP, tuple[int, set[int]]] = {}  # handed to the stream, this generation
        self.overtaken = 0  # fetched records dropped because a seek overtook them

    def _guarded(self, topic: str) -> bool:
        return topic in getattr(self.app, "retention_guarded_topics", ())

    def processed(self, message: Any) -> None:
        """Our agent is done with ``message`` (called just before it acknowledges it).

        Only a record of the current generation counts: one delivered before the last
        rebalance is read again from the committed offset."""
        if self._guarded(message.topic):
            self._book(self._processed, message)

    def _book(self, books: dict[TP, tuple[int, set[int]]], message: Any) -> None:
        """Add the offset of a message of the current generation to its partition's book."""
        generation = self.app.consumer_generation_id
        if message.generation_id != generation:
            return
        book = books.get(message.tp)
        if book is None or book[0] != generation:
            book = books[message.tp] = (generation, set())
        book[1].add(message.offset)

    def _current(self, books: dict[TP, tuple[int, set[int]]], tp: TP) -> set[int]:
        book = books.get(tp)
        return book[1] if book is not None and book[0] == self.app.consumer_generation_id else set()

    def resume_flow(self) -> None:
        """Faust's recovery resumes the flow right after its post-assignment seek, and that
        clears the streams' queues (``clear_on_resume``): records delivered during the seek
        are let go of, unacknowledged, and the fetcher does not read them again (its position
        is past them). So each guarded partition with such a record is sought back to it."""
        super().resume_flow()
        if any(self._handed.values()):
            asyncio.ensure_future(self._redeliver_dropped())

    async def _redeliver_dropped(self) -> None:
        await asyncio.sleep(0)  # after the caller's other steps (the fetcher restarting)
        generation = self.app.consumer_generation_id
        for tp in list(self._handed):
            handed = self._current(self._handed, tp)
            if not handed:
                continue
            in_flight = self._in_flight_of_generation().get(tp, set())  # (again after each seek's await)
            first = dropped(self._committed_offset.get(tp), handed, self._current(self._processed, tp), in_flight)
            if first is None or generation != self.app.consumer_generation_id:
                continue
            if self.trace is not None:
                self.trace.event(f"records let go of by the stream: seek {tp.topic}[{tp.partition}] back to {first}")
            self._handed[tp][1].difference_update([o for o in handed if o >= first])
            try:
                await self._seek_back(tp, first)
            except Exception:  # no longer assigned: the next owner reads it from the committed offset
                log.warning("could not seek %s[%d] back to %d", tp.topic, tp.partition, first, exc_info=True)

    async def _seek_back(self, tp: TP, offset: int) -> None:
        """Seek in the consumer's own thread (Faust's ``seek`` calls aiokafka from this one,
        and aiokafka's fetcher then crashed: KeyError in its records of the partition)."""
        thread = self._thread
        consumer = thread._ensure_consumer()
        await thread.call_thread(consumer.seek, TopicPartition(tp.topic, tp.partition), offset)
        self._read_offset[tp] = offset  # as Faust's seek does: the next record read is ``offset``

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's batch of records, without those a seek has overtaken (:func:`overtaken`)."""
        async for tp, message in super().getmany(timeout):
            if overtaken(message.offset, self._position(tp)):
                self.overtaken += 1
                if self.trace is not None:
                    self.trace.event(f"overtaken by a seek: {tp.topic}[{tp.partition}]@{message.offset} "
                                     f"(position {self._position(tp)})")
                continue
            yield tp, message

    def _tracking(self, callback: Any) -> Any:
        """The consumer callback, tracking a record as unacknowledged when it is handed on.

        Faust tracks a record only once a stream takes it from its queue; a record still in
        the queue would not hold a commit back (``_not_past_in_flight``)."""
        trace = self.trace
        acks_enabled_for = self.app.topics.acks_enabled_for

        async def handed_on(message: Any) -> None:
            if not acks_enabled_for(message.topic):
                await callback(message)
                return
            if not message.tracked:
                message.tracked = True
                self.track_message(message)
            if self._guarded(message.topic):
                self._book(self._handed, message)
            if trace is None:
                await callback(message)
                return
            trace.entered[message.tp].add(message.offset)
            await callback(message)
            trace.delivered[message.tp].add(message.offset)

        return handed_on

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


    def _to_message(self, tp: TP, record: Any) -> Any:
        if self._guarded(tp.topic):
            self._fetched.setdefault(tp, set()).add(record.offset)
        if self.trace is not None and self.app.topics.acks_enabled_for(tp.topic):
            self.trace.fetched[tp].add(record.offset)
        return super()._to_message(tp, record)

    # --- the opt-in offset trace (no effect unless RETENTION_TRACE_OFFSETS) -------------

    def ack(self, message: Any) -> bool:
        done = super().ack(message)
        if self.trace is not None and self.app.topics.acks_enabled_for(message.topic):
            self.trace.acked[message.tp].add(message.offset)
        return done

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if self.trace is not None:
            self.trace.event(f"gap {tp.topic}[{tp.partition}] {offset_from}..{offset_to} "
                             f"(read_offset {self._read_offset.get(tp)}, committed {self._committed_offset.get(tp)})")
        await super()._add_gap(tp, offset_from, offset_to)

    async def perform_seek(self) -> None:
        if self.trace is not None:
            self.trace.event(f"perform_seek starts; read offsets {dict(self._read_offset)}")
        await super().perform_seek()
        if self.trace is not None:
            self.trace.event(f"perform_seek done; committed {dict(self._committed_offset)}")

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        did = await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        if did:
            for tp, offset in offsets.items():  # what is below a commit is never read again here
                if tp in self._fetched:
                    self._fetched[tp] = {o for o in self._fetched[tp] if o >= offset}
                for books in (self._processed, self._handed):
                    if tp in books:
                        generation, done = books[tp]
                        books[tp] = (generation, {o for o in done if o >= offset})
        if self.trace is not None:
            self.trace.event(f"commit {did}: {{{', '.join(f'{tp.topic}[{tp.partition}]: {o}' for tp, o in offsets.items())}}}")
        return did

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:  # the next owner (maybe us) reads them again from the committed offset
            self._fetched.pop(tp, None)
            self._processed.pop(tp, None)
            self._handed.pop(tp, None)
        if self.trace is not None:
            self.trace.event(f"revoked {sorted(revoked)}")
            for line in self.trace.report(self, self._position):
                log.warning("offset trace at revocation: %s", line)
            self.trace.forget(revoked)
        await super().on_partitions_revoked(revoked)

    def _position(self, tp: TP) -> int | None:
        try:
            state = self._thread._ensure_consumer()._fetcher._subscriptions.subscription.assignment.state_value(tp)
            return state._position if state is not None else None
        except Exception:
            return None

    def trace_report(self) -> list[str]:
        return self.trace.report(self, self._position) if self.trace is not None else []

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked.get(tp)
        if acked:
            gap = self._gap.get(tp)
            if gap:  # fold the gap ranges in first, as Faust does, so they are de-duplicated too
                top = max(acked)
                added = [o for interval in sorted(gap.overlap(0, top)) for o in range(interval.begin, interval.end)]
                if added:
                    acked.extend(added)
                    gap.chop(0, max(added[-1], top + 1))
            acked[:] = sorted(set(acked))
        done = set(acked or ())
        return self._not_past_unprocessed(tp, self._not_past_in_flight(tp, super()._new_offset(tp), done))

    def _not_past_unprocessed(self, tp: TP, offset: int | None) -> int | None:
        """Never commit a guarded partition past a record our agents have not processed in
        the current generation (:func:`processed_up_to`).

        Faust's commit counts as done whatever its list of acknowledged offsets and its gap
        ranges hold, and both can hold records no agent processed: the stream acknowledges
        the records it skips while the flow is stopped or after the generation changed
        (``faust/streams.py``, even on a ``noack`` stream), and the gap ranges of the
        recovery race (#596) cover records handed to the stream during the seek, which
        the stream lets go of when the flow resumes. The processed offsets Faust took off its list beyond the
        limit go back on it; the others are added by their own acknowledgement."""
        if offset is None or not self._guarded(tp.topic):
            return offset
        committed = self._committed_offset.get(tp)
        processed = self._current(self._processed, tp)
        limit = processed_up_to(committed, self._fetched.get(tp, set()), processed)
        if limit is None:  # nothing processed since the last commit
            return None
        if limit >= offset:
            return offset
        if self.trace is not None:
            self.trace.event(f"commit held {tp.topic}[{tp.partition}] at {limit} (Faust's offset {offset}, "
                             f"committed {committed}): not processed in this generation")
        acked, index = self._acked[tp], self._acked_index[tp]
        back = [o for o in processed if limit <= o < offset and o not in index]
        if back:
            acked.extend(back)
            acked.sort()
            index.update(back)
        return limit if committed is None or limit > committed else None

    _in_flight_index: dict[TP, set[int]] | None = None  # during one _filter_committable_offsets

    def _in_flight_of_generation(self) -> dict[TP, set[int]]:
        """Per partition, the offsets handed to a stream in the current generation and not
        acknowledged (one pass over Faust's unacknowledged messages)."""
        generation = self.app.consumer_generation_id
        index: dict[TP, set[int]] = {}
        for m in list(self._unacked_messages):
            if not m.acked and m.generation_id == generation:
                index.setdefault(m.tp, set()).add(m.offset)
        return index

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Faust's per-partition commit offsets, with the in-flight offsets of all partitions
        gathered in one pass over the unacknowledged messages (not one pass per partition:
        48 input partitions in the bench). Synchronous: nothing is acknowledged meanwhile."""
        self._in_flight_index = self._in_flight_of_generation()
        try:
            return super()._filter_committable_offsets(tps)
        finally:
            self._in_flight_index = None

    def _not_past_in_flight(self, tp: TP, offset: int | None, done: set[int]) -> int | None:
        """Never commit past a record handed to a stream and not acknowledged yet.

        Faust counts as done what its gap detection took for holes in the log, and the
        race above (#596) records as a "gap" offsets that *were* delivered: under load the
        restarted worker's records still waiting in the event-time merge were committed
        (seen with the offset trace: gap 6..10 while 8..10 waited). Faust's head-gap check
        also lets a commit pass one unacknowledged record at the committed offset
        (faust-streaming #606). Either way a second crash would lose those records. So
        the offset to commit stops at the smallest offset of this partition handed to the
        stream in the current generation and not acknowledged; what Faust took off its
        acknowledged list beyond that goes back on it (in-flight offsets excepted: their
        own acknowledgement adds them)."""
        if offset is None:
            return None
        committed = self._committed_offset.get(tp)
        index = self._in_flight_index
        unacked = index.get(tp, ()) if index is not None else self._in_flight_of_generation().get(tp, ())
        in_flight = {o for o in unacked if committed is None or o >= committed}
        first = min(in_flight, default=None)
        if first is None or first >= offset:
            return offset
        back = [o for o in done if first <= o < offset and o not in in_flight]
        if back:
            acked = self._acked[tp]
            acked.extend(back)
            acked.sort()
            self._acked_index[tp].update(back)
        return first if committed is None or first > committed else None


class _Buffer(ProducerBuffer):
    """Faust's producer buffer, counting the records put on its queue and those its sender
    task has handed to aiokafka (one sender, a FIFO queue: handed over in the order put)."""

    queued = 0
    handed = 0

    def put(self, fut: Any) -> None:
        super().put(fut)
        self.queued += 1

    async def _send_pending(self, fut: Any) -> None:
        await super()._send_pending(fut)
        self.handed += 1


class _Producer(driver.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old = self.buffer
        self.buffer = _Buffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = old.app
        if self.threaded_producer is not None:
            self.buffer.threaded_producer = self.threaded_producer

    async def flush(self) -> None:
        """Send everything buffered before returning, as a commit requires.

        Faust commits input offsets right after ``producer.flush()``. Two ways its flush let
        a commit cover table writes (changelog records) not yet handed to aiokafka, so that
        a kill -9 lost those updates (a user's state rebuilt from the changelog missed events
        whose offsets were committed):

        - the buffer's flush returns as soon as 0.1 s pass without a send, with records
          still queued (slow producer: the embedded broker, a busy cluster);
        - the buffer's sender task takes a record off the queue *before* aiokafka accepts it:
          aiokafka's ``send`` waits while the partition's previous batch is not drained
          (always so with one record per batch, ``RETENTION_PRODUCER_MAX_BATCH_SIZE=1``).
          In that window the queue is empty and aiokafka's own flush does not know the
          record, so both flushes returned at once.

        So wait until every record put before the flush started is handed to aiokafka (not
        until the queue is empty: the agent keeps writing while the flush waits, and waiting
        for an empty queue kept a worker from committing for 40 s); aiokafka's flush
        (``super().flush()``) then waits for the delivery of everything it holds."""
        if self.app.conf.producer_threaded:  # the thread's queue, not our counters
            await super().flush()
            return
        await drain(self.buffer)
        await super().flush()


async def drain(buffer: Any) -> None:
    """Until the sender of a Faust ``ProducerBuffer`` has handed aiokafka every record put
    before this call (a stopped buffer raises, as Faust's own flush does)."""
    target = buffer.queued
    while buffer.handed < target:
        if buffer.should_stop:
            raise RuntimeError("Cannot flush: producer buffer stopped with records not sent")
        buffer.message_sent.clear()  # set by the sender task after each record handed over
        if buffer.handed < target:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(buffer.message_sent.wait(), timeout=0.1)


class Transport(driver.Transport):
    Consumer = _Consumer
    Producer = _Producer
