"""The agent that folds batches: the inbound topics in micro-batches, outside Faust's per-event machinery.

Faust's stream machinery costs 70-105 CPU µs per event before any work is done, and a table
write through its producer another ~100 µs (docs/benchmarks.md, ``../shared/perf-ceiling``):
more than a 20,000 events/s budget. So the inbound topics (clicks, purchases, reviews,
action outcomes, heartbeats, re-keys) are read by a confluent-kafka consumer on a thread of
its own, in micro-batches, and each partition's records are folded in event-time order
through the pure engine (:mod:`streams.domain.engine`).
Faust keeps the app: its lifecycle, web server, metrics, the trainer and the model snapshots.

One cycle: receive a micro-batch -> decode -> merge each partition's inputs by event time
(:class:`~streams.domain.clock.InputMerge`) -> fold the released records (the snapshot their
time selects must be read first) -> send the outputs as they are made -> take the touched
users' states once -> once the outputs are acknowledged, write them in one WriteBatch and
to the changelog -> once that is acknowledged, commit the input offsets
(:mod:`streams.runtime.deliveries`, at least once, nothing lost).

Who owns a partition is Faust's group's decision: partition p of the (never written)
``owners`` table is assigned to one worker, which then reads partition p of every inbound
topic (``assign``, offsets committed under the group ``<app id>-ingest``), restores its
users from the changelog first, and gives it back at a rebalance after its batches are
stored and committed. ``GET /users/{id}`` is routed by that table, so it reaches the owner.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import faust
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from models.bundle import Models
from models.examples import Forget, ReviewExample, SegmentExample, Watermark, bandit_examples, churn_examples, uplift_examples, encode_example, pack
from models.reco import interactions
from streams.domain.clock import InputMerge, PartitionClock, caught_up
from streams.domain.dead_letters import dead_letter, dead_letter_key
from streams.domain.engine import Step, Unknown, due_at, on_due, on_event, went_out
from streams.domain.events import Click, Heartbeat, Invalid, Outcome, Purchase, Review, decode
from streams.domain.items import ItemRecommender, history
from streams.domain.loyalty import LoyaltyRanks
from streams.domain.population import Population, rfm_of
from streams.domain.privacy import ConsentChange, ErasureRequest
from streams.domain.rules import Decider
from streams.domain.schedule import DueQueue
from streams.domain.snapshots import StepRows, UserScores, describe, encode_scores, profile_of, snapshot_due
from streams.domain.state import Applied, UserState, conflict_reason, event_digest, mark_applied, redelivered
from streams.domain.timestamps import format_ts
from streams.domain.uplift import Tally, dump_tally, load_tally
from streams.runtime import heap, metrics
from streams.runtime.agents.gate import ActionGate
from streams.runtime.changelog import ChangelogWriter, changelog_topic, create_changelog, restore
from streams.runtime.dead_letter_log import DeadLetterSummary
from streams.runtime.deliveries import Batch, Ledger, seal_now
from streams.runtime.faults import BrokerDataLost, broker_data_lost, infrastructure_failure, operator_hint
from streams.runtime.kafka import consumer as new_consumer
from streams.runtime.kafka import producer as new_producer
from streams.runtime.model_sync import ModelFollower
from streams.runtime.partitioning import make_partitioner
from streams.runtime.privacy import CONSENTS, ERASURE_REQUESTS, Privacy, create_privacy_topics
from streams.runtime.settings import Settings
from streams.runtime.user_store import PartitionStore, StoreOptions

log = logging.getLogger(__name__)

#: The header of a re-keyed record that names the topic it came from.
SOURCE_HEADER = "retention-source-topic"
#: The events that belong to a user (re-keyed when their key is not the user's partition).
USER_EVENTS = (Click, Purchase, Review, Outcome)
#: How long a receive waits for a first record when there is nothing to fold (the cycle then
#: releases what waited in the merges); it returns as soon as one arrives.
RECEIVE_WAIT_S = 0.05
#: A receive takes records from librdkafka this many at a time, and pauses the inputs that fill
#: their share of the merge between two (as Kafka's ``max.poll.records`` bounds what a paused
#: partition's buffer can outgrow its limit by in Kafka Streams).
RECEIVE_CHUNK = 500
#: A micro-batch folding longer than this is named in the stall reason.
FOLD_WATCH_S = 10.0
#: How often idle partitions send a watermark for the others (see BatchIngest._vouch_for_idle_partitions).
VOUCH_EVERY_S = 1.0
BUDGET, TALLY = "budget", "tally"
#: A pack of examples is sent once its review texts reach this many characters.
LABELS_TEXT_MAX = 200_000
#: ... and split when its record would be larger (librdkafka's message.max.bytes is 1,000,000).
LABELS_MAX_BYTES = 512 * 1024


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _wall_ms_exact() -> float:
    """Wall time in ms, not rounded: the merge compares a receive's start with the arrival of
    records received a few µs before (rounded, both fall in one millisecond and prove nothing)."""
    return time.time() * 1000


@dataclass
class PartitionWork:
    """What a worker keeps for one partition it owns."""

    partition: int
    store: PartitionStore
    merge: InputMerge[Any]
    clock: PartitionClock = field(default_factory=PartitionClock)
    queue: DueQueue = field(default_factory=DueQueue)
    held: Any = None  #: the next record, waiting for its model snapshot
    held_since: float | None = None
    released: dict[str, int] = field(default_factory=dict)  #: actual topic -> next offset after the last record folded
    received: dict[str, int] = field(default_factory=dict)  #: actual topic -> next offset after the last record received
    start: dict[str, int] = field(default_factory=dict)  #: actual topic -> where reading started
    paused: set[str] = field(default_factory=set)  #: inputs whose fetching is paused (back-pressure)
    rewritten: set[str] = field(default_factory=set)
    marked: int | None = None  #: the last watermark sent to the trainer
    #: Before this event time a record's model snapshot is known ready and its watermark sent
    #: (both hold to the end of a period: :meth:`BatchIngest._model_ready`)
    settled_until: int = 0
    changelog_next: int = 0


class BatchIngest:
    """The agent that folds batches: the inbound topics of one worker."""

    def __init__(self, app: faust.App, settings: Settings, follower: ModelFollower) -> None:
        self.app = app
        self.settings = settings
        self.cfg = settings.engine
        self.follower = follower
        self.logical = {**settings.inbound_topics, settings.rekey_topic: "rekeyed", settings.topic_erasure_requests: ERASURE_REQUESTS,
                        settings.topic_consents: CONSENTS}
        data = [t for t in settings.inbound_topics if t != settings.topic_heartbeats] + [settings.topic_consents]
        # heartbeats last at equal times; erasure requests have no event time: released as they arrive
        self.inputs = [settings.topic_erasure_requests] + data + [settings.rekey_topic, settings.topic_heartbeats]
        self.partition_for = make_partitioner(settings.partitions)
        self.skew_ms = int(settings.max_clock_skew_s * 1000)
        self.min_event_ms = settings.min_event_time_ms  #: (a property that parses: read once)
        self.dead_letter_cfg = settings.dead_letter
        self.dead_letter_log = DeadLetterSummary(settings.dead_letter_log_interval_s)  #: a summary per topic and interval, not a line per record
        self.scores_interval_ms = int(settings.scores_interval_s * 1000)
        self.period_ms = settings.model_period_ms
        self.labels: list[Any] = []  #: examples made in this micro-batch, not yet sent (packed)
        self.labels_text = 0  #: review characters among them
        self.options = StoreOptions.sharing(settings.rocksdb_memtables_mb, cache_users=settings.state_cache_users,
                                            block_cache_mb=settings.rocksdb_block_cache_mb,
                                            write_buffer_mb=settings.rocksdb_write_buffer_mb)
        self.max_batch = settings.batch_max_records
        self.commit_interval_s = settings.commit_interval_ms / 1000
        self.merge_margin = settings.merge_margin  #: ms (a property that computes: read once)
        self.merge_cap = settings.merge_max_records
        # the anchor of ownership and of GET /users/{id} routing: never written
        self.owners = app.Table("owners", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        self.policy = settings.policy
        self.reco = ItemRecommender()
        self.population = Population()
        self.loyalty_cfg = settings.loyalty
        self.lifecycle_cfg = settings.lifecycle  # (a property that builds it: read once, not per row)
        self.loyalty_ranks = LoyaltyRanks(capacity=self.loyalty_cfg.capacity, current_days=self.loyalty_cfg.current_days)
        self.privacy = Privacy(self)  # pseudonyms, erasures, the erased-ids set (streams/runtime/privacy.py)
        self.decide = Decider(
            self.policy, lambda state, now, churn: self._snapshot(state, now, self.models_at(now), churn, learn=False)[0],
            self.reco, bandits=lambda now: self.models_at(now).bandits, uplift=lambda now: self.models_at(now).uplift,
        )
        # the guard rails, with each partition's budget in its store
        self.gate = ActionGate(app, self.policy, settings.partitions, set(self.logical), budgets=_Budgets(self),
                               owned=self.owned_partitions, consent_required=settings.consent_required)
        metrics.POLICY_INFO.info({"file": str(settings.policy_path), "rules": ",".join(r.name for r in self.policy.rules),
                                  "version": str(self.policy.version)})
        self.works: dict[int, PartitionWork] = {}
        self.lock = threading.RLock()  # held by the fold thread while it folds; web look-ups take it too
        self.requests: queue.Queue[tuple[str, set[int], threading.Event]] = queue.Queue()
        self.suspended = False  #: between a revocation and the next assignment: nothing is folded
        self.finished = threading.Event()
        self.running = threading.Event()
        self.vouched_at = 0.0
        self.lag_at = 0.0
        self.processed = 0  #: records folded (readiness: progress)
        self.misses = 0  #: model snapshot misses counted so far
        self.rows = StepRows()  #: cleared when a step starts
        state_cfg = self.cfg.state
        #: the engine's model vectors from the step's features, which its rows read too
        self.vector = lambda state, now: self.rows.vector(state, now, state_cfg, self.population)
        self.folding: tuple[float, int] | None = None  #: (since, records) of the micro-batch being folded
        self.in_use: int | None | bool = False  #: the boundary of the models last in use (False: none yet)
        self.lag: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.ledger = Ledger()
        self.batch: Batch | None = None  #: the batch being folded (None: the last one is sealed)
        self.batch_opened = 0.0  #: when it was opened (monotonic s)
        self.batch_from = 0  #: records folded before it (``processed`` when it was opened)
        self.acked_cb: tuple[int | None, Callable[[Any, Any], None] | None] = (None, None)
        self.trigger_kafka_ts: int | None = None
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.polled_ms = 0
        self.arrived_ms = 0.0  #: wall time (exact ms) the last receive returned: its records' arrival in the merge
        self.drained_ms = 0.0  #: wall time (exact ms) of the last receive that found librdkafka's queue dry
        self.undrained = False  #: the last receive returned records: no dry receive after them yet
        self.consumer: Any = None
        self.producer: Any = None
        self.changelog: ChangelogWriter | None = None
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_before_shutdown.connect(self._on_shutdown)
        app.task(self._run)
        app.timer(settings.metrics_interval_s, name="ingest-model-metrics")(self._export_models)

    # ------------------------------------------------------------------ ownership (Faust's event loop)

    def _owned_of(self, tps: Any) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.owners.changelog_topic.get_topic_name()}

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        await self._request("assign", self._owned_of(assigned))

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        """Partitions may be taken away: every batch is stored and committed, and nothing is
        folded until the assignment is known, before Faust rejoins the group."""
        await self._request("revoke", self._owned_of(revoked))

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """The worker stops: every batch stored and committed before Faust's consumer leaves
        the group. (Faust sends no revocation once it is stopping; without this wait the next
        owner could restore the changelog before this worker's last records reached it.)"""
        self.stopping.set()
        if self.running.is_set():
            await asyncio.to_thread(self.finished.wait, 20.0)

    async def _request(self, op: str, partitions: set[int]) -> None:
        done = threading.Event()
        self.requests.put((op, partitions, done))
        # (before the fold thread runs, it owns nothing: it serves the request when it starts)
        while self.running.is_set() and not done.is_set() and not self.finished.is_set():
            await asyncio.sleep(0.02)

    def waits(self) -> list[str]:
        """Why records of owned partitions wait (for readiness: which partition waits for what)."""
        out = []
        for work in list(self.works.values()):
            if work.held is not None:
                waited = time.monotonic() - (work.held_since or time.monotonic())
                store = self.follower.store
                out.append(f"partition {work.partition}: a record waits {waited:.0f} s for its model snapshot (the trainer has covered "
                           f"{format_ts(store.covered) if store.covered is not None else 'nothing'}; partitions holding it back "
                           f"(no watermark yet, or the lowest: send them heartbeats): {self.follower.holding_back()})")
            elif work.merge.size:
                holding = [f"{self.logical[t]} (received to {work.received.get(t, work.start.get(t))}, committed "
                           f"{self.committed.get((t, work.partition))}, high watermark {self._high(t, work.partition)})"
                           for t, buffer in work.merge.buffers.items() if not buffer]
                out.append(f"partition {work.partition}: {work.merge.size} records wait in the event-time merge for "
                           f"inputs neither buffered nor caught up: {', '.join(holding) or 'none'}")
        folding = self.folding
        if folding is not None and time.monotonic() - folding[0] >= FOLD_WATCH_S:
            out.append(f"a micro-batch of {folding[1]} records has been folding for {time.monotonic() - folding[0]:.0f} s "
                       "(the fold thread has not returned: `py-spy dump --pid` shows where)")
        return out

    def _high(self, topic: str, partition: int) -> int | None:
        """The high watermark librdkafka last fetched for an input partition (None: not fetched)."""
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except Exception:  # the consumer is closed or not created yet (a look from the event loop)
            return None
        return high if high is not None and high >= 0 else None

    def owned_partitions(self) -> set[int]:
        """The partitions whose inputs this worker reads now."""
        return set(self.works)

    def assigned_partitions(self) -> set[int]:
        """The partitions Faust's group assigned to this worker (it reads their inputs once the
        fold thread has stored what it gave back and restored what it took)."""
        try:
            return self._owned_of(self.app.consumer.assignment())
        except Exception:  # the consumer has not started
            return set()

    async def _run(self) -> None:
        await self.owners.changelog_topic.maybe_declare()
        await asyncio.to_thread(create_changelog, self.settings)
        await asyncio.to_thread(create_privacy_topics, self.settings)
        try:
            await asyncio.to_thread(self._loop)
        finally:
            self.stopping.set()  # (cancelled at shutdown: the thread stores and commits what it can, then ends)
            await asyncio.to_thread(self.finished.wait, 20.0)
        if self.failure is not None:
            await self.app.crash(self.failure)

    # ------------------------------------------------------------------ the fold thread

    def _loop(self) -> None:
        self.producer = new_producer(self.settings, **{"linger.ms": 5, "acks": "all"})
        # "error": a position outside the log is judged by _out_of_range, never silently reset
        self.consumer = new_consumer(self.settings, self.settings.ingest_group,
                                     **{"enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "error"})
        self.changelog = ChangelogWriter(self.settings, self.producer)
        heap.settle()  # the start-up heap frozen, collections spaced out (streams/runtime/heap.py)
        self.running.set()
        try:
            while not self.stopping.is_set() and self.app.should_stop is False:
                self._serve_requests()
                self._cycle()
        except BaseException as exc:  # the fold thread's end is the worker's: Faust is told
            self.failure = exc
            if broker_data_lost(exc):
                pass  # said once, with what to do, by the app's crash (streams.runtime.app)
            elif infrastructure_failure(exc):
                log.critical("stopping: %s: %s", operator_hint(exc), exc)
            else:
                log.exception("the batched ingest stopped")
        finally:
            metrics.flush_record_counts()
            self.dead_letter_log.flush(time.monotonic(), metrics.records_by_topic, force=True)
            with self.lock:
                if self.failure is None:
                    self._drain(timeout=10.0)
                for work in self.works.values():
                    work.store.close()
                self.works.clear()
            self.consumer.close()
            self.finished.set()

    def _serve_requests(self) -> None:
        while True:
            try:
                op, partitions, done = self.requests.get_nowait()
            except queue.Empty:
                return
            with self.lock:
                self._drain(timeout=60.0)  # every batch stored and committed first
                if op == "revoke":
                    self.suspended = True
                    self.revoked = partitions
                else:
                    self._reassign((set(self.works) - getattr(self, "revoked", set())) | partitions)
                    self.suspended = False
                    self.revoked = set()
            done.set()

    def _reassign(self, wanted: set[int]) -> None:
        gone = set(self.works) - wanted
        new = wanted - set(self.works)
        if gone:
            self.ledger.drop(gone)
            self._unassign(gone)
            for p in gone:
                self.works.pop(p).store.close()
        for work in self.works.values():  # kept: the rebalance forgot nothing of them, but the merge is read again
            work.marked = None
            work.settled_until = 0
        self._verify_kept(set(self.works))
        if new:
            # The committed offsets first, the changelog after: every record before an offset
            # read here had its states acknowledged on the changelog before that offset was
            # committed, so the restore holds them, whatever the previous owner commits later.
            starts = self._start_offsets([TopicPartition(t, p) for p in new for t in self.inputs])
            stores = {p: PartitionStore(self.settings.data_dir / "hotpath" / str(p), self.options) for p in new}
            done = restore(self.settings, stores)
            log.info("restored %d changelog records of partitions %s in %.1f s", sum(done.records.values()), sorted(new), done.seconds)
            for p, store in stores.items():
                self.works[p] = PartitionWork(p, store, InputMerge(self.inputs), changelog_next=done.end[p],
                                              start={t: o for (t, q), o in starts.items() if q == p})
            self.committed.update(starts)
            self.consumer.incremental_assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
            self._rebuild(new)
        if gone or new:
            log.info("batched ingest owns partitions %s", sorted(self.works))

    def _verify_kept(self, partitions: set[int]) -> None:
        """The logs of partitions kept across a rebalance still hold what this worker read
        and stored. A broker that restarted without its data (memory storage) or topics
        deleted and re-created make a group rebalance, and answer an empty log: a log this
        worker read or wrote past offset 0 that now ends at 0 means the broker lost its data
        (BrokerDataLost). (Only an empty log is judged: some brokers under-report the end of a
        log in ListOffsets; a log cut shorter is caught by the consumer's out-of-range error.)"""
        changelog = changelog_topic(self.settings)
        for p in sorted(partitions):
            work = self.works[p]
            read = [(t, work.received.get(t, work.start.get(t)) or 0) for t in self.inputs] + [(changelog, work.changelog_next)]
            for topic, position in read:
                if position > 0:
                    try:
                        _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                    except KafkaException as exc:
                        if exc.args[0].code() not in (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART):
                            raise
                        raise BrokerDataLost(f"{topic}[{p}] no longer exists, and this worker had read or written it "
                                             f"up to offset {position}") from exc
                    if high == 0:
                        raise BrokerDataLost(f"{topic}[{p}] is empty, and this worker had read or written it up to offset {position}")

    def _unassign(self, gone: set[int]) -> None:
        """Stop reading partitions given back. Inputs paused by back-pressure are resumed first:
        librdkafka keeps a partition's pause across its unassignment, so a partition given back
        while paused and taken again later would never fetch (its new merge pauses nothing)."""
        paused = [TopicPartition(t, p) for p in sorted(gone) for t in sorted(self.works[p].paused)]
        if paused:
            self.consumer.resume(paused)
        self.consumer.incremental_unassign([TopicPartition(t, p) for p in gone for t in self.inputs])

    def _start_offsets(self, tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """Where reading starts on each input just taken: its committed offset, or the start
        of the log (what the merge judges an input without records by)."""
        out = {}
        for tp in self.consumer.committed(tps, timeout=30):
            offset = tp.offset
            if offset < 0:
                offset, _ = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=30, cached=False)
            out[(tp.topic, tp.partition)] = offset
        return out

    def _rebuild(self, partitions: set[int]) -> None:
        """Due queues and the RFM population of the partitions just taken (one pass over their users)."""
        for p in partitions:
            work = self.works[p]
            self.privacy.purge(work)
            for state in work.store.users():
                self.population.update(None, rfm_of(state))
                work.queue.schedule(state.user_id, due_at(state, self.cfg))

    def _cycle(self) -> None:
        if self.suspended or not self.works:
            self.producer.poll(RECEIVE_WAIT_S)
            self._store_and_commit()
            return
        messages = self._poll()
        self.folding = (time.monotonic(), len(messages))
        with self.lock:
            batch = self._open_batch()
            for msg in messages:
                self._receive(msg)
            for work in list(self.works.values()):
                self._release(work)
                self._pace(work)
            if time.monotonic() - self.vouched_at >= VOUCH_EVERY_S:
                self.vouched_at = time.monotonic()
                self._vouch_for_idle_partitions()
            if seal_now(time.monotonic() - self.batch_opened, self.processed - self.batch_from,
                        sum(len(w.store.dirty) for w in self.works.values()), self.commit_interval_s, self.max_batch):
                self._seal(batch)
        self.folding = None
        self.producer.poll(0)
        self._store_and_commit()
        self._export()

    def _poll(self) -> list[Message]:
        """What librdkafka holds, as soon as there is a record (as Kafka's ``poll()`` returns:
        a record waits for no fuller batch). Records just received are released only after
        a later receive finds the queue dry (``_caught_up``): that receive does not wait.

        Up to ``RETENTION_BATCH_MAX_RECORDS`` are taken in chunks of ``RECEIVE_CHUNK``; an input
        whose share of its merge fills meanwhile is paused before the next chunk (librdkafka
        then drops what it had fetched of it, and fetches it again on resume), so a merge
        outgrows its share by one chunk at most, not by a whole batch."""
        chunk = min(RECEIVE_CHUNK, self.max_batch)
        if self.undrained:
            asked_ms = _wall_ms_exact()
            messages = self.consumer.consume(chunk, 0)
        else:
            first = self.consumer.poll(RECEIVE_WAIT_S)
            messages = []
            asked_ms = _wall_ms_exact()  # (nothing came: the queue was dry at the end of the wait)
            if first is not None:
                messages = [first, *(self.consumer.consume(chunk - 1, 0) if chunk > 1 else [])]
        dry = len(messages) < chunk
        incoming: dict[int, Counter[str]] = {}
        counted = 0
        while not dry and len(messages) < self.max_batch:
            counted = self._pace_incoming(messages, counted, incoming)
            asked = min(chunk, self.max_batch - len(messages))
            asked_ms = _wall_ms_exact()
            more = self.consumer.consume(asked, 0)
            messages += more
            dry = len(more) < asked
        self.arrived_ms = _wall_ms_exact()
        self.polled_ms = int(self.arrived_ms)
        if dry:  # librdkafka's queue ran dry: its fetches are current
            self.drained_ms = asked_ms
        self.undrained = bool(messages)
        return messages

    def _pace_incoming(self, messages: list[Message], counted: int, incoming: dict[int, Counter[str]]) -> int:
        """Pause the inputs that ``messages`` (the receive so far; those from ``counted`` on not
        yet counted in ``incoming``) fill to their share; returns how many are counted now."""
        touched = set()
        for msg in messages[counted:]:
            if msg.error() is None:
                partition = msg.partition()
                incoming.setdefault(partition, Counter())[msg.topic()] += 1
                touched.add(partition)
        for partition in touched:
            work = self.works.get(partition)
            if work is not None:  # (None: given back by a rebalance during this receive)
                self._pace(work, incoming[partition])
        return len(messages)

    def _receive(self, msg: Message) -> None:
        error = msg.error()
        if error is not None:
            if error.code() == KafkaError._AUTO_OFFSET_RESET:
                self._out_of_range(msg.topic(), msg.partition(), error.str())
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", error)
            return
        work = self.works.get(msg.partition())
        if work is None:  # a record of a partition given back in this batch
            return
        topic = msg.topic()
        work.received[topic] = msg.offset() + 1
        logical = self.logical[topic]
        if logical == "rekeyed":
            headers = dict(msg.headers() or [])
            logical = (headers.get(SOURCE_HEADER) or b"").decode() or logical
        _, ts_ms = msg.timestamp()
        kafka_ts = ts_ms if ts_ms > 0 else None
        latest = self.polled_ms if kafka_ts is None else min(kafka_ts, self.polled_ms)
        own_decoder = self.privacy.decoder(logical)  # erasure requests, consents
        if own_decoder is not None:
            result = own_decoder(msg.value(), latest + self.skew_ms)
        else:
            result = decode(logical, msg.value(), not_after_ms=latest + self.skew_ms, not_before_ms=self.min_event_ms,
                            max_bytes=self.settings.max_record_bytes)
        metrics.count_framing(logical, msg.value())
        work.merge.push(topic, self._merge_ts(work.partition, result), (msg, logical, result, kafka_ts), self.arrived_ms)

    def _out_of_range(self, topic: str, partition: int, reason: str) -> None:
        """An input's position is outside its log (the consumer resets nothing by itself).
        Before the log's start: retention deleted records before they were read; said with
        their number, and reading goes on from the start. Otherwise the log ends before what
        this worker read: the broker lost its data, and the worker stops (BrokerDataLost)."""
        work = self.works.get(partition)
        position = work.received.get(topic, work.start.get(topic)) if work is not None else None
        low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
        if position is not None and position < low:
            metrics.RECORDS_EXPIRED.labels(self.logical[topic]).inc(low - position)
            log.error("%s[%d]: %d records were deleted by the topic's retention before this worker read them "
                      "(offsets %d to %d): they are lost to the features; reading goes on at %d (raise the topic's retention.ms "
                      "or add workers if this repeats)", self.logical[topic], partition, low - position, position, low - 1, low)
            self.consumer.seek(TopicPartition(topic, partition, low))
            if work is not None:
                work.received[topic] = low
            return
        raise BrokerDataLost(f"{topic}[{partition}] ends at {high} (log start {low}) before offset {position}, which this "
                             f"worker had read ({reason})")

    def _merge_ts(self, partition: int, result: Any) -> int | None:
        if isinstance(result, Heartbeat):
            return result.ts
        if isinstance(result, (*USER_EVENTS, ConsentChange)) and self.partition_for(result.user_id) == partition:
            return result.ts
        return None

    def _caught_up(self, work: PartitionWork, topic: str, since_ms: float, highs: dict[str, int] | None = None) -> bool:
        """Nothing of ``topic`` left to receive, by the high watermark of the fetches (not
        ListOffsets, which some brokers under-report). The watermark librdkafka caches is
        only trusted as of a receive that found its queue dry (no partition's fetching held
        back by a full queue), less two fetch waits and 100 ms (``RETENTION_MERGE_MARGIN_MS``):
        fresher than a record that arrived before that, it proves nothing earlier is still on
        the broker.

        ``highs``: the watermarks read so far in this release, reused (the merge asks for
        every input without a buffered record at every record it releases). One read earlier
        in the same release is as fresh as that bound requires: the answer is the one a
        release started at that read would have had."""
        high = highs.get(topic) if highs is not None else None
        if high is None:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, work.partition), cached=True)
            if highs is not None and high is not None and high >= 0:
                highs[topic] = high
        if high is None or high < 0:
            return False
        position = work.received.get(topic, work.start.get(topic))
        fetched = self.drained_ms - self.merge_margin
        return caught_up(position, high, fetched, since_ms)

    def _release(self, work: PartitionWork) -> None:
        highs: dict[str, int] = {}

        def caught_up_here(topic: str, since_ms: float) -> bool:
            return self._caught_up(work, topic, since_ms, highs)

        clock = work.clock.now
        while (item := work.held or work.merge.pop(caught_up_here)) is not None:
            work.held = None
            msg, logical, result, kafka_ts = item
            ts = self._merge_ts(work.partition, result)
            if ts is not None and not self._model_ready(work, ts):
                work.held = item
                work.held_since = work.held_since or time.monotonic()
                break
            work.held_since = None
            started = time.perf_counter()
            self.trigger_kafka_ts = kafka_ts
            try:
                ts = self._process(work, msg, logical, result, kafka_ts)
            except Exception as exc:
                if infrastructure_failure(exc):
                    raise
                log.exception("processing %s[%d]@%d failed", msg.topic(), msg.partition(), msg.offset())
                metrics.PROCESSING_ERRORS.labels(type(exc).__name__).inc()
                self._dead_letter(msg, logical, kafka_ts, f"processing failed: {exc!r}")
                ts = None
            self._advance(work, ts)
            work.released[msg.topic()] = msg.offset() + 1
            self.processed += 1
            metrics.PROCESSING.observe(time.perf_counter() - started)
            if kafka_ts is not None:
                metrics.RECORD_LATENCY.observe(time.time() - kafka_ts / 1000)
        if work.clock.now != clock:
            metrics.EVENT_TIME.labels(str(work.partition)).set(work.clock.now / 1000)

    def _pace(self, work: PartitionWork, incoming: Counter[str] | None = None) -> None:
        """Back-pressure: an input whose records fill its share of the partition's merge stops
        fetching until half of them are folded. Only inputs with records buffered are paused:
        the merge can only be waiting for an input with none, which keeps fetching.
        ``incoming``: records received and not yet in the merge, per input."""
        pause, resume = work.merge.pace(self.merge_cap, work.paused, incoming)
        if pause:
            self.consumer.pause([TopicPartition(topic, work.partition) for topic in pause])
            for topic in pause:
                metrics.INPUT_PAUSES.labels(self.logical[topic]).inc()
        if resume:
            self.consumer.resume([TopicPartition(topic, work.partition) for topic in resume])

    # ------------------------------------------------------------------ the trainer's side

    def models_at(self, t: int) -> Models:
        models, boundary = self.follower.store.models_at(t)
        if boundary != self.in_use:  # (asked several times per record; the gauge moves once a period)
            self.in_use = boundary
            metrics.MODEL_SNAPSHOT_BOUNDARY.labels("in_use").set((boundary or 0) / 1000)
        return models

    def _model_ready(self, work: PartitionWork, ts: int) -> bool:
        now = work.clock.now
        t = now if now > ts else ts
        if t < work.settled_until:  # (asked for every record; the answer moves once a period)
            return True
        self._watermark(work, t)
        if not self.follower.store.ready(t):
            return False
        # the snapshot's readiness and the watermark's period hold to the end of t's period
        work.settled_until = (t // self.period_ms + 1) * self.period_ms
        return True

    def _watermark(self, work: PartitionWork, clock_ms: int) -> None:
        clock_ms = int(clock_ms)
        if work.marked is None or clock_ms // self.period_ms > work.marked // self.period_ms:
            self._send_labels()  # a watermark vouches for the examples sent before it
            self._emit(self.settings.topic_model_labels, None, encode_example(Watermark(partition=work.partition, clock_ms=clock_ms)), partition=0)
            work.marked = clock_ms

    def _vouch_for_idle_partitions(self) -> None:
        """Partitions with nothing to read (no record buffered or waiting, every input caught
        up) send as their watermark the latest time any partition needs, so that a shop
        whose partitions are not all busy does not stall the trainer (as the Faust agent does).

        A worker that knows of no such time (it holds no record, and the trainer has published
        no marker yet) still vouches, at its partitions' own clocks: the trainer needs a
        watermark of every partition before it covers anything, and its first marker then
        carries the other partitions' marks, from which this worker learns the time to vouch
        for. (Otherwise a worker owning only idle partitions from the start would leave the
        trainer, and every record waiting for a snapshot, waiting for good.)"""
        latest = self.follower.store.latest
        need = max((max(w.clock.now, self._merge_ts(w.partition, w.held[2]) or 0) for w in self.works.values() if w.held), default=0)
        need = max(need, max(latest.marks.values(), default=0) if latest else 0)
        since = self.polled_ms - int(VOUCH_EVERY_S * 2000)
        for work in self.works.values():
            if work.held is None and not work.merge.size and all(self._caught_up(work, t, since) for t in self.inputs):
                self._watermark(work, max(need, work.clock.now))

    def _at(self, work: PartitionWork, now: int) -> int:
        return int(max(now, work.marked if work.marked is not None else now))

    def _label(self, example: Any) -> None:
        """Send ``example`` to the trainer: packed with the micro-batch's others (one record for
        many, :class:`~models.examples.Examples`) unless the pack is 1; a forget goes alone,
        after what was made before it."""
        if isinstance(example, Forget) or self.settings.model_labels_pack == 1:
            self._send_labels()
            self._emit(self.settings.topic_model_labels, None, encode_example(example), partition=0)
            return
        self.labels.append(example)
        if isinstance(example, ReviewExample):
            self.labels_text += len(example.text)
        if len(self.labels) >= self.settings.model_labels_pack or self.labels_text >= LABELS_TEXT_MAX:
            self._send_labels()

    def _send_labels(self) -> None:
        if self.labels:
            self._send_pack(self.labels)
            self.labels, self.labels_text = [], 0

    def _send_pack(self, examples: list[Any]) -> None:
        """One record for ``examples`` (one example alone as itself), halved until each record
        is below LABELS_MAX_BYTES: librdkafka refuses a larger one at produce(), and the same
        records would make it again after a restart."""
        raw = encode_example(pack(examples) if len(examples) > 1 else examples[0])
        if len(raw) > LABELS_MAX_BYTES and len(examples) > 1:
            half = len(examples) // 2
            self._send_pack(examples[:half])
            self._send_pack(examples[half:])
            return
        self._emit(self.settings.topic_model_labels, None, raw, partition=0)

    # ------------------------------------------------------------------ one record

    def _process(self, work: PartitionWork, msg: Message, topic: str, result: Any, kafka_ts: int | None) -> int | None:
        self.rows.clear()
        if isinstance(result, Invalid):
            self._dead_letter(msg, topic, kafka_ts, result.error)
            return None
        if isinstance(result, Heartbeat):
            metrics.count_record(topic, "heartbeat")
            return result.ts
        if isinstance(result, ErasureRequest):
            self.privacy.erase(work, msg, result)
            return None
        user_id = result.user_id
        owner = self.partition_for(user_id)
        if owner != work.partition:
            metrics.count_record(topic, "rekeyed")
            self._emit(self.settings.rekey_topic, user_id.encode(), msg.value(), partition=owner,
                       headers={SOURCE_HEADER: topic.encode()})
            return None
        folded = self.privacy.edge(work, topic, result)  # the pseudonym; None: an erased customer (counted)
        if folded is None:
            return result.ts
        result, user_id = folded, folded.user_id
        if isinstance(result, ConsentChange):
            self.privacy.consent(work, result)
            return result.ts
        store = work.store
        state = store.get(user_id)
        # the due time the user's last step left (every stored user is in the queue: _finish
        # and _rebuild schedule them), so a click's step need not compute it again
        due: int | None | Unknown = Unknown.DUE if state is None else work.queue.due(user_id)
        state = state or UserState(user_id)
        if redelivered(state, msg.topic(), msg.offset()):
            metrics.count_record(topic, "redelivered")
            if user_id not in work.rewritten:  # its changelog record may not have been acknowledged
                work.rewritten.add(user_id)
                store.put(state)
            return result.ts
        purchase = isinstance(result, Purchase)  # (only a purchase moves a customer's RFM values)
        before = rfm_of(state) if purchase else None
        text = result.text if isinstance(result, Review) and result.text and not result.text.isspace() else None
        models = self.models_at(max(work.clock.now, result.ts))
        fresh_text = bool(text) and event_digest(result) not in state.recent_ids
        sentiment = models.sentiment.score(text) if text and fresh_text else None
        now = work.clock.advance(result.ts)
        touches = interactions(result)
        past = history(state) if touches else []
        step = on_event(state, result, now, self.cfg, sentiment, models.churn, models.loyalty, self.decide, due, self.vector)
        metrics.count_record(topic, step.applied.value)
        if step.applied is Applied.CONFLICT:
            self._dead_letter(msg, topic, kafka_ts, conflict_reason(result), result=None)
        if not step.applied.counted:
            return result.ts
        for touch in touches:
            self.reco.learn(touch, past)
        mark_applied(state, msg.topic(), msg.offset())
        if purchase:
            self.population.update(before, rfm_of(state))
        if text:
            self._label(ReviewExample(id=str(event_digest(result)), at=self._at(work, now), text=text, rating=int(result.rating)))
            metrics.NEGATIVE_REVIEWS.inc(step.negative_review)
        self._finish(work, state, step, now, models)
        return result.ts

    def _advance(self, work: PartitionWork, ts: int | None) -> None:
        now = work.clock.advance(ts)  # (the partition's EVENT_TIME gauge is set once per release, not per record)
        due = work.queue.pop_due(now)
        if not due:
            return
        models = self.models_at(now)  # (a new period's snapshot is loaded here: not the checks' cost)
        started, checked = time.thread_time(), 0
        for user_id in due:
            self.rows.clear()
            try:
                state = work.store.get(user_id)
                if state is not None:
                    checked += 1
                    self._finish(work, state, on_due(state, now, models.churn, self.cfg, models.loyalty, self.decide, self.vector),
                                 now, models)
            except Exception as exc:
                if infrastructure_failure(exc):
                    raise
                log.exception("due check of a user at %s failed; the user is checked again at their next event", format_ts(now))
                metrics.PROCESSING_ERRORS.labels(type(exc).__name__).inc()
        metrics.DUE_CHECKS.inc(checked)
        metrics.DUE_CHECK_SECONDS.inc(time.thread_time() - started)

    def _finish(self, work: PartitionWork, state: UserState, step: Step, now: int, models: Models) -> None:
        # (each part only when the step has any: most steps are clicks, which have none)
        at = self._at(work, now)
        if step.examples:
            for example in churn_examples(state.user_id, step.examples, at):
                self._label(example)
                if example.days is not None:
                    metrics.LABELS.labels(models.churn.name, str(int(example.days == 0))).inc()
                    metrics.LABELS.labels(models.loyalty.name, str(example.days) if example.days < 5 else "5+").inc()
        if step.rewards:
            for reward in bandit_examples(step.rewards, at, state.user_id):
                self._label(reward)
        if step.outcomes:
            for outcome in uplift_examples(step.outcomes, at, state.user_id):
                self._label(outcome)
        sent = []
        for action in step.actions:
            if not self.gate.admit(state, action, work.partition, now).allowed:
                continue  # counted by reason; not sent
            sent.append(action)
            self._emit(self.settings.topic_actions, state.user_id.encode(), self.privacy.action_value(work, action))
            metrics.ACTIONS.labels(action.kind, action.reason.rule, action.group).inc()
            if self.trigger_kafka_ts is not None:
                metrics.ACTION_LATENCY.labels(action.kind).observe(time.time() - self.trigger_kafka_ts / 1000)
        went_out(state, step, sent, self.cfg)  # their attribution windows start (and the due time moves)
        if step.tally:
            raw = work.store.value(TALLY)
            counts = load_tally(raw) if raw is not None else Tally()
            counts.add(step.tally)
            work.store.set_value(TALLY, dump_tally(counts))
            metrics.count_attribution(step.tally)
        if snapshot_due(state, now, self.scores_interval_ms, scored=step.churn is not None):
            row, x = self._snapshot(state, now, models, step.churn)
            self._emit(self.settings.topic_scores, state.user_id.encode(), encode_scores(row))
            self._label(SegmentExample(id=f"{state.user_id}@{now}", at=at, x=x))
            state.scores_at = now
            metrics.SNAPSHOTS.inc()
        work.store.put(state)
        work.queue.schedule(state.user_id, step.due_ms)

    def _snapshot(self, state: UserState, now: int, models: Models, churn: Any = None, learn: bool = True) -> tuple[UserScores, dict[str, float]]:
        """The user's row (the rules' and the published row of one step: computed once)."""
        scored = self.rows.scored(state, now, models, churn, self.cfg.state, self.population)
        return describe(state, now, models, self.loyalty_ranks, self.loyalty_cfg.tiers, churn, learn,
                        self.cfg.state, self.population, self.lifecycle_cfg, scored)

    def _dead_letter(self, msg: Message, topic: str, kafka_ts: int | None, error: str, result: str | None = "invalid") -> None:
        if result is not None:  # (a conflicting re-use is counted as such by the caller)
            metrics.count_record(topic, result)
        metrics.DEAD_LETTERS.labels(topic).inc()
        position = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        log.debug("dead-lettered %s: %s", position, error)
        self.dead_letter_log.add(topic, position, error, time.monotonic())
        cfg = self.dead_letter_cfg
        value = dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), kafka_ts, error, _wall_ms(), cfg)
        self._emit(self.settings.topic_dead_letters, dead_letter_key(msg.key(), cfg), value)

    # ------------------------------------------------------------------ outputs, storage, commits

    def _emit(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
              headers: dict[str, bytes] | None = None) -> None:
        batch = self._open_batch()
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        if headers:
            kwargs["headers"] = headers
        if self.acked_cb[0] != batch.id:  # one callback per batch, not a closure per record
            self.acked_cb = (batch.id, self._acked(batch.id))
        callback = self.acked_cb[1]
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=callback, **kwargs)
                break
            except BufferError:  # the local queue is full: serve acknowledgements, then retry
                self.producer.poll(0.05)
                metrics.BATCHES_UNACKNOWLEDGED.set(self.ledger.waiting)  # (stuck here, they must still show it)
                metrics.RECORDS_UNACKNOWLEDGED.set(self.ledger.in_flight)
        self.ledger.sent(batch)

    def _acked(self, batch_id: int) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                log.error("delivery failed (%s): nothing from this batch on is stored or committed; "
                          "its records are read again after a restart", err)
            self.ledger.acked(batch_id, None if err is None else str(err))
        return done

    def _changelog_acked(self, batch_id: int, partition: int) -> Callable[[Any, Any], None]:
        def done(err: Any, msg: Any) -> None:
            if err is None:
                work = self.works.get(partition)
                if work is not None:
                    work.changelog_next = max(work.changelog_next, msg.offset() + 1)
            else:
                log.error("changelog delivery failed (%s): offsets are no longer committed", err)
            self.ledger.acked(batch_id, None if err is None else str(err))
        return done

    def _open_batch(self) -> Batch:
        """The batch being folded: the outputs produced now count in it (a new one after a seal)."""
        if self.batch is None:
            self.batch = self.ledger.open()
            self.batch_opened, self.batch_from = time.monotonic(), self.processed
        return self.batch

    def _seal(self, batch: Batch) -> None:
        self._send_labels()
        offsets = {(t, w.partition): o for w in self.works.values() for t, o in w.released.items()}
        changes = {p: w.store.changes() for p, w in self.works.items()}
        for work in self.works.values():
            work.released = {}
        self.ledger.seal(batch, offsets, changes)
        self.batch = None

    def _store_and_commit(self) -> None:
        if self.ledger.error is not None:
            raise RuntimeError(f"a record could not be delivered ({self.ledger.error}); stopping so that the "
                               "uncommitted records are read again")
        with self.lock:
            for batch in self.ledger.to_store():
                sent = 0
                for p, records in batch.changes.items():
                    work = self.works.get(p)
                    if work is None:
                        continue
                    offsets = {t: o for (t, q), o in batch.offsets.items() if q == p}
                    work.store.persist(records, offsets, work.changelog_next)
                    assert self.changelog is not None
                    sent += self.changelog.send(p, records, self._changelog_acked(batch.id, p))
                self.ledger.stored(batch, sent)
        self._commit(asynchronous=True)

    def _commit(self, asynchronous: bool) -> None:
        offsets = self.ledger.committable()
        if offsets:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=asynchronous)
            self.committed.update(offsets)

    def _drain(self, timeout: float) -> None:
        """Until every batch so far is stored and committed (before partitions move, or at the end)."""
        if self.batch is not None:  # what was folded since the last seal goes first
            self._seal(self.batch)
        deadline = time.monotonic() + timeout
        while self.ledger.batches and time.monotonic() < deadline and self.ledger.error is None:
            self.producer.poll(0.05)
            self._store_and_commit()
        self._commit(asynchronous=False)
        if self.ledger.batches:
            log.warning("%d batches not stored and committed within %.0f s (%d records unacknowledged): their records "
                        "are read again by the partitions' next owner", len(self.ledger.batches), timeout, self.ledger.in_flight)

    def _export(self) -> None:
        metrics.flush_record_counts()
        metrics.DUE_USERS.set(sum(len(w.queue) for w in self.works.values()))
        metrics.observe_merge(sum(w.merge.size for w in self.works.values()))
        metrics.MODEL_WAITING.set(sum(1 for w in self.works.values() if w.held is not None))
        metrics.BATCHES_UNACKNOWLEDGED.set(self.ledger.waiting)
        metrics.RECORDS_UNACKNOWLEDGED.set(self.ledger.in_flight)
        self.dead_letter_log.flush(time.monotonic(), metrics.records_by_topic)
        if time.monotonic() - self.lag_at >= self.settings.metrics_interval_s:
            self.lag_at = time.monotonic()
            lag = {}
            for work in self.works.values():
                for topic in self.inputs:
                    _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, work.partition), cached=True)
                    position = self.committed.get((topic, work.partition), work.start.get(topic))
                    if high is not None and high >= 0 and position is not None:
                        lag[(topic, work.partition)] = max(high - position, 0)
            self.lag = lag

    async def _export_models(self) -> None:
        """The newest models' label counts, blend weights and quality; snapshot misses."""
        metrics.export_learners(self.follower.newest_models().learners)
        misses = self.follower.store.misses
        metrics.MODEL_SNAPSHOT_MISSES.inc(misses - self.misses)
        self.misses = misses

    def store_size(self) -> tuple[int, int]:
        """Keys and bytes of the owned partitions' stores (the ``users`` series of the table gauges)."""
        with self.lock:
            sizes = [w.store.size() for w in self.works.values()]
        return sum(k for k, _ in sizes), sum(b for _, b in sizes)

    def lag_of(self) -> dict[tuple[str, int], int]:
        """Consumer lag per owned input partition (fetch high watermark minus committed offset)."""
        return dict(self.lag)

    # ------------------------------------------------------------------ queries (Faust's event loop)

    def profile(self, user_id: str) -> dict[str, Any] | None:
        partition = self.partition_for(user_id)
        with self.lock:
            work = self.works.get(partition)
            state = work.store.get(self.privacy.key_of(user_id, work.store)) if work is not None else None
            if state is None:
                return None
            now = max(state.clock, work.clock.now)
            self.rows.clear()  # (a look-up is no step of the fold's)
            row, _ = self._snapshot(state, now, self.models_at(now), learn=False)
        return profile_of(row, state, partition)

    def tallies(self) -> list[Tally]:
        with self.lock:
            return [load_tally(raw) for w in self.works.values() if (raw := w.store.value(TALLY)) is not None]



class _Budgets:
    """The guard rails' budgets (keyed like the ``budgets`` table: the partition number) in
    the batched path's partition stores, so they travel with the users' states."""

    def __init__(self, ingest: BatchIngest) -> None:
        self.ingest = ingest

    def get(self, key: bytes) -> bytes | None:
        return self.ingest.works[int(key)].store.value(BUDGET)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.ingest.works[int(key)].store.set_value(BUDGET, value)
