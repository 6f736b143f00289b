"""The ingest agent: every inbound record -> validated event -> user state -> actions.

One agent reads all inbound topics (they are co-partitioned by user_id), so the events
of a user are folded in one place and no repartition hop is needed. Per record:

1. decode and validate; a bad record goes to the dead-letter topic with its reason;
2. a heartbeat only advances the partition's event-time clock;
3. a record on the wrong partition for its user is re-keyed to the right one;
4. otherwise the pure engine folds it into the user's state (once per event id);
5. the clock advances, and users now due (silent customers aging) are checked, which
   can mature churn labels and emit retention actions.

The worker does not learn: matured labels, review ratings and published score rows go to
the one trainer (``model-labels``), and each record is scored by the model snapshot its
event time selects; a partition's next record waits (without holding the others) until
that snapshot is there (:mod:`streams.runtime.model_sync`, ``docs/models.md``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.streams import _current_event, current_event
from faust.types import TP

from models.bundle import Models
from models.examples import ReviewExample, SegmentExample, bandit_examples, churn_examples, uplift_examples
from streams.domain.actions import encode_action
from streams.domain.clock import InputMerge, PartitionClock, caught_up
from streams.domain.dead_letters import dead_letter, dead_letter_key
from streams.domain.engine import Step, due_at, on_due, on_event, went_out
from streams.domain.items import ItemRecommender, history
from streams.domain.rules import Decider
from models.reco import interactions
from models.score import Score
from streams.domain.events import Click, Heartbeat, Invalid, Outcome, Purchase, Review, decode
from streams.domain.loyalty import LoyaltyRanks
from streams.domain.snapshots import UserScores, describe, encode_scores, profile_of, snapshot_due
from streams.domain.timestamps import format_ts
from streams.domain.population import Population, rfm_of
from streams.domain.schedule import DueQueue
from streams.domain.state import Applied, UserState, conflict_reason, dump_state, event_digest, load_state, mark_applied, redelivered
from streams.domain.uplift import Tally, dump_tally, load_tally
from streams.runtime import metrics
from streams.runtime.agents.gate import ActionGate
from streams.runtime.faults import infrastructure_failure, operator_hint
from streams.runtime.model_sync import ModelFollower, ModelLink
from streams.runtime.partitioning import make_partitioner
from streams.runtime.settings import Settings
from streams.runtime.transport import ack, guard

log = logging.getLogger(__name__)

SOURCE_HEADER = "retention-source-topic"
USER_EVENTS = (Click, Purchase, Review, Outcome)
MERGE_TICK_S = 0.05  # how often records waiting for a fresher fetch are looked at again

#: How often idle partitions send a watermark for the others (see Ingest._vouch_for_idle_partitions).
VOUCH_EVERY_S = 1.0


def _wall_ms() -> int:
    """Wall time in the unit and clock of aiokafka's fetch timestamps."""
    return int(time.time() * 1000)


class Ingest:
    """State and I/O around the pure engine, for the partitions this worker owns."""

    def __init__(self, app: faust.App, settings: Settings, follower: ModelFollower) -> None:
        self.settings = settings
        self.cfg = settings.engine
        self.logical = settings.inbound_topics
        self.skew_ms = int(settings.max_clock_skew_s * 1000)
        self.not_before_ms = settings.min_event_time_ms
        self.dead_letter_cfg = settings.dead_letter
        self.partition_for = make_partitioner(settings.partitions)
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = app.topic(*self.logical, settings.rekey_topic, **raw)
        guard(app, self.source.topics)  # committed only as far as this agent processed them
        self.rekeyed = app.topic(settings.rekey_topic, **raw)
        self.actions = app.topic(settings.topic_actions, **raw)
        self.dead_letters = app.topic(settings.topic_dead_letters, **raw)
        self.scores = app.topic(settings.topic_scores, **raw)
        self.scores_interval_ms = int(settings.scores_interval_s * 1000)
        self.users = app.Table("users", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        # one attribution tally per partition, key b"p<partition>" (streams/runtime/action_stats.py)
        self.tallies = app.Table("attribution", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        self.models = ModelLink(app, settings, follower)
        self.follower = follower
        # current customers' latest loyalty predictions on this worker (loyalty_score)
        self.loyalty_cfg = settings.loyalty
        self.loyalty_ranks = LoyaltyRanks(capacity=self.loyalty_cfg.capacity, current_days=self.loyalty_cfg.current_days)
        self.app = app
        # The policy file's rules (a customer's row as published decides), the recommender
        # they draw items from (per worker, in memory), and the guard rails before each send.
        self.policy = settings.policy
        self.reco = ItemRecommender()
        self.decide = Decider(
            self.policy, lambda state, now, churn: self._snapshot(state, now, self.models.models_at(now), churn, learn=False)[0], self.reco,
            bandits=lambda now: self.models.models_at(now).bandits,  # the bandits of the snapshot the decision's time selects
            uplift=lambda now: self.models.models_at(now).uplift,  # and its uplift models
        )
        self.gate = ActionGate(app, self.policy, settings.partitions, set(self.logical))
        metrics.POLICY_INFO.info({"file": str(settings.policy_path), "rules": ",".join(r.name for r in self.policy.rules),
                                  "version": str(self.policy.version)})
        # Heartbeats last: at equal event times the data goes first, then the clock ticks.
        self.inputs = [t for t in self.logical if t != settings.topic_heartbeats] + [settings.rekey_topic, settings.topic_heartbeats]
        self.clocks: dict[int, PartitionClock] = defaultdict(PartitionClock)
        self.merges: dict[int, InputMerge[Any]] = {}
        self.merge_cap = settings.merge_max_records
        self.paced: dict[int, set[str]] = {}  #: per partition: inputs paused by back-pressure
        self.received: dict[TP, int] = {}  # last offset received per input partition
        self.start_offsets: dict[TP, int] = {}
        self.paused = False  # between a revocation and the end of the rebalance
        self.trigger_kafka_ts: int | None = None  # Kafka timestamp of the record being processed
        self.rewritten: set[str] = set()  # users whose state was re-sent to the changelog since the last rebalance
        self.generation = 0  # rebalances seen (a late start-offsets answer of an older one is dropped)
        self.released_at: dict[int, float] = {}  # monotonic time of each partition's last release
        self.stall_warned: dict[int, float] = {}
        self.stall_s = settings.stall_timeout_s  # a wait this long is a stall: logged, and the worker is not ready
        self.processed = 0  # records processed and acknowledged (readiness watches it move)
        self.processing: tuple[str, float] | None = None  # the record being processed, and since when
        self.held: dict[int, Any] = {}  # per partition: the next record, waiting for its model snapshot
        self.held_since: dict[int, float] = {}
        self.vouched_at = 0.0
        self.lock = asyncio.Lock()
        self.queues: dict[int, DueQueue] | None = None
        self.population = Population()  # buyers of the partitions this worker owns (RFM)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_rebalance_complete.connect(self._on_rebalance)
        app.agent(self.source, name="ingest")(self.run)
        app.timer(MERGE_TICK_S, name="ingest-merge-tick")(self._tick)
        # The learners' gauges (labels, prior, rolling AUC...) on the operations cadence, not
        # per matured label: a rolling AUC over the window is not free.
        app.timer(settings.metrics_interval_s, name="ingest-model-metrics")(self._export_models)

    async def run(self, stream: faust.StreamT[Any]) -> None:
        """Receive every record into its partition's merge; process what the merge releases.

        Records are acknowledged only once processed (``noack`` + :meth:`_release`), so a
        record still buffered in the merge is not committed and is read again after a
        crash or a rebalance."""
        self.stream = stream.noack()
        async for event in self.stream.events():
            msg = event.message
            self.received[msg.tp] = msg.offset
            decoded = self._decode(msg, event.value, dict(event.headers or {}))
            ts = self._merge_ts(msg.partition, decoded[1])
            merge = self._merge(msg.partition)
            if not merge.size:
                self.released_at[msg.partition] = time.monotonic()  # waiting starts now
            merge.push(msg.topic, ts, (event, decoded), _wall_ms())
            async with self.lock:
                await self._release(msg.partition)
                await self._pace(msg.partition)

    async def _release(self, partition: int) -> None:
        """Process the partition's records that the merge releases, in event-time order."""
        if self.paused:
            return  # a rebalance is under way: these partitions may no longer be ours
        merge = self._merge(partition)

        def caught_up_here(topic: str, since_ms: int) -> bool:
            return self._caught_up(TP(topic, partition), since_ms)

        while (item := self.held.pop(partition, None) or merge.pop(caught_up_here)) is not None:
            event, (topic, result, kafka_ts) = item
            if not await self._model_ready(partition, result):
                self.held[partition] = item  # other partitions go on; the tick looks again
                break
            self.held_since.pop(partition, None)
            self.released_at[partition] = time.monotonic()
            msg = event.message
            started = time.perf_counter()
            self.processing = (f"{msg.topic}[{msg.partition}]@{msg.offset}", time.monotonic())
            token = _current_event.set(weakref.ref(event))  # table writes go to this record's partition
            self.trigger_kafka_ts = kafka_ts  # what the actions decided while processing it were triggered by
            try:
                ts = await self.process(msg, topic, result, kafka_ts, event.key, event.value)
            except Exception as exc:  # a bug must not stop the stream: dead-letter the record
                if infrastructure_failure(exc):  # ...but a full disk is no reason to lose a valid one
                    return await self._stop_for(exc, f"{msg.topic}[{msg.partition}]@{msg.offset}")
                log.exception("processing %s[%d]@%d failed", msg.topic, msg.partition, msg.offset)
                metrics.PROCESSING_ERRORS.labels(type(exc).__name__).inc()
                await self._dead_letter(msg, topic, event.key, event.value, kafka_ts, f"processing failed: {exc!r}")
                ts = None
            finally:
                _current_event.reset(token)
            try:
                await self._advance(partition, ts, event)
            except Exception as exc:  # (each due user's failure is contained in _advance; this is the clock's)
                if infrastructure_failure(exc):
                    return await self._stop_for(exc, f"{msg.topic}[{msg.partition}]@{msg.offset}")
                log.exception("partition %d: advancing the event-time clock after %s[%d]@%d failed",
                              partition, msg.topic, msg.partition, msg.offset)
                metrics.PROCESSING_ERRORS.labels(type(exc).__name__).inc()
            await ack(self.stream, event)  # counts for the commit (transport.guard)
            self.processing = None
            self.processed += 1
            metrics.PROCESSING.observe(time.perf_counter() - started)
            if kafka_ts is not None:  # end to end when the producer stamped its send time (bench --mode live)
                metrics.RECORD_LATENCY.observe(time.time() - kafka_ts / 1000)

    async def _model_ready(self, partition: int, result: Any) -> bool:
        """The record is next in the partition's event-time order: its watermark goes to
        the trainer (every example before it was sent), and it may be processed once the
        snapshot its event time selects has been read (a record without a trusted time or
        for another partition scores nothing and never waits)."""
        ts = self._merge_ts(partition, result)
        if ts is None:
            return True
        self._queue(partition)  # after a rebalance: the table's unconfirmed labels, sent before any watermark
        if self.models.resend:
            await self.models.send_outboxes()
        t = max(self.clocks[partition].now, ts)
        await self.models.watermark(partition, t)
        if self.models.ready(t):
            return True
        self.held_since.setdefault(partition, time.monotonic())
        return False

    async def _tick(self) -> None:
        """Release what waited for a fresher fetch (no record of the partition may follow)
        or for a model snapshot."""
        async with self.lock:
            for partition, merge in list(self.merges.items()):
                if merge.size or partition in self.held:
                    await self._release(partition)
                    await self._pace(partition)
                    self._warn_if_stalled(partition, merge)
                    self._warn_if_model_late(partition)
            if time.monotonic() - self.vouched_at >= VOUCH_EVERY_S:
                self.vouched_at = time.monotonic()
                await self._vouch_for_idle_partitions()
            metrics.MODEL_WAITING.set(len(self.held))

    async def _vouch_for_idle_partitions(self) -> None:
        """Partitions of this worker with nothing to read (no records buffered, every input
        caught up by a recent fetch) send as their watermark the latest time any partition
        needs (the highest watermark the trainer has, or a record waiting here): a shop whose
        partitions are not all busy, without heartbeats, would otherwise stall the trainer.
        Their examples made later are dated no earlier (:meth:`ModelLink.at`), so none falls
        in a period already learned (a replay through busy partitions never takes this path)."""
        latest = self.follower.store.latest
        need = max((max(self.clocks[p].now, self._merge_ts(p, item[1][1]) or 0) for p, item in self.held.items()), default=0)
        need = max(need, max(latest.marks.values(), default=0) if latest else 0)
        if not need:
            return
        since = _wall_ms() - int(VOUCH_EVERY_S * 2000)
        assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic in self.inputs}
        for partition in sorted(assigned - set(self.held)):
            merge = self.merges.get(partition)
            if merge is not None and merge.size:
                continue
            if all(self._caught_up(TP(topic, partition), since) for topic in self.inputs):
                await self.models.watermark(partition, max(need, self.clocks[partition].now))

    def _warn_if_model_late(self, partition: int) -> None:
        """Say, at most every RETENTION_STALL_TIMEOUT_S, that a partition waits for its model snapshot."""
        now = time.monotonic()
        if self._model_wait(partition, self.stall_warned.get(-1 - partition, 0.0)) is None:
            return
        self.stall_warned[-1 - partition] = now
        log.warning("%s", self._model_wait(partition))

    def _model_wait(self, partition: int, since_at_least: float = 0.0) -> str | None:
        """What a partition's next record waits for, when it has waited for its model snapshot
        longer than the stall timeout (counted from ``since_at_least`` if later): the snapshot,
        what the trainer covered, and which partitions' watermarks it lacks."""
        since = self.held_since.get(partition)
        now = time.monotonic()
        if since is None or partition not in self.held or now - max(since, since_at_least) < self.stall_s:
            return None
        event, (topic, result, kafka_ts) = self.held[partition]
        store = self.follower.store
        return (
            f"partition {partition}: the record at {format_ts(self._merge_ts(partition, result) or 0)} waits {now - since:.0f} s "
            f"for the model snapshot of {format_ts(store.target(max(self.clocks[partition].now, self._merge_ts(partition, result) or 0)))}; "
            f"the trainer has covered {format_ts(store.covered) if store.covered is not None else 'nothing'}; "
            f"partitions holding it back (no watermark yet, or the lowest: send them heartbeats): {self.models.holding_back()}"
        )

    async def _export_models(self) -> None:
        metrics.export_learners(self.follower.newest_models().learners)
        metrics.MODEL_SNAPSHOT_MISSES.inc(self.follower.store.misses - self._misses)
        self._misses = self.follower.store.misses

    _misses = 0

    def _warn_if_stalled(self, partition: int, merge: InputMerge[Any]) -> None:
        """Say, at most every RETENTION_STALL_TIMEOUT_S, which inputs hold a partition's records back."""
        wait = self._merge_wait(partition, merge, self.stall_warned.get(partition, 0.0))
        if wait is not None:
            self.stall_warned[partition] = time.monotonic()
            log.warning("%s", wait)

    def _merge_wait(self, partition: int, merge: InputMerge[Any], since_at_least: float = 0.0) -> str | None:
        """Which inputs hold a partition's records back in the event-time merge, when they have
        waited longer than the stall timeout (counted from ``since_at_least`` if later)."""
        now = time.monotonic()
        if not merge.size or now - max(self.released_at.get(partition, now), since_at_least) < self.stall_s:
            return None
        waiting = {}
        for topic in self.inputs:
            if merge.buffers[topic]:
                continue
            tp = TP(topic, partition)
            state = self._tp_state(tp)
            waiting[topic] = {
                "received": self.received.get(tp),
                "committed": self.app.consumer._committed_offset.get(tp),
                "start": self.start_offsets.get(tp),
                "highwater": getattr(state, "highwater", None),
                "fetched_s_ago": round((_wall_ms() - state.timestamp) / 1000, 1) if getattr(state, "timestamp", None) else None,
            }
        return (f"partition {partition}: {merge.size} records wait in the event-time merge for more than {self.stall_s:.0f} s; "
                f"inputs neither buffered nor caught up: {waiting}")

    def waits(self) -> list[str]:
        """Why records of this worker's partitions have not been processed for longer than the
        stall timeout (the facts the stall warnings log; readiness reports them too): a record
        whose processing does not return, records held in the merge, records waiting for a
        model snapshot."""
        out = []
        if self.processing is not None and time.monotonic() - self.processing[1] >= self.stall_s:
            out.append(f"processing {self.processing[0]} has not returned for {time.monotonic() - self.processing[1]:.0f} s")
        for partition, merge in sorted(self.merges.items()):
            out += [w for w in (self._merge_wait(partition, merge), self._model_wait(partition)) if w is not None]
        return out

    def _decode(self, msg: Any, value: bytes | None, headers: dict[str, bytes]) -> tuple[str, Any, int | None]:
        topic = self.logical.get(msg.topic) or headers.get(SOURCE_HEADER, b"").decode() or msg.topic
        kafka_ts = int(msg.timestamp * 1000) if msg.timestamp else None
        latest = _wall_ms() if kafka_ts is None else min(kafka_ts, _wall_ms())  # neither clock may be outrun
        result = decode(topic, value, not_after_ms=latest + self.skew_ms, not_before_ms=self.not_before_ms,
                        max_bytes=self.settings.max_record_bytes)
        metrics.count_framing(topic, value)
        return topic, result, kafka_ts

    async def process(self, msg: Any, topic: str, result: Any, kafka_ts: int | None, key: bytes | None, value: bytes | None) -> int | None:
        """Handle one decoded record; returns its event time (None if it had none we trust)."""
        if isinstance(result, Invalid):
            await self._dead_letter(msg, topic, key, value, kafka_ts, result.error)
            return None
        if isinstance(result, Heartbeat):
            metrics.RECORDS.labels(topic, "heartbeat").inc()
            return result.ts
        user_id = result.user_id
        owner = self.partition_for(user_id)
        if owner != msg.partition:
            metrics.RECORDS.labels(topic, "rekeyed").inc()
            await self.rekeyed.send(key=user_id.encode(), value=value, partition=owner, headers={SOURCE_HEADER: topic.encode()})
            return None  # not this partition's event: its time counts where it is processed
        state = self._load(user_id) or UserState(user_id)
        if redelivered(state, msg.topic, msg.offset):  # read again after a crash or rebalance
            metrics.RECORDS.labels(topic, "redelivered").inc()
            # Write the state again, once per user and assignment: a killed worker's local
            # RocksDB can hold writes whose changelog records were never sent.
            if user_id not in self.rewritten:
                self.rewritten.add(user_id)
                self._store(state)
            return result.ts
        queue = self._queue(msg.partition)  # first: rebuilds the RFM population after a rebalance
        before = rfm_of(state)
        text = result.text if isinstance(result, Review) and result.text and not result.text.isspace() else None
        models = self.models.models_at(max(self.clocks[msg.partition].now, result.ts))
        # a re-sent review is not scored again (only a text needs the look-up before on_event)
        fresh_text = bool(text) and event_digest(result) not in state.recent_ids
        sentiment = models.sentiment.score(text) if text and fresh_text else None
        now = self.clocks[msg.partition].advance(result.ts)  # the clock reaches the record first
        touches = interactions(result)
        past = history(state) if touches else []  # the recommender learns each touch with what came before
        step = on_event(state, result, now, self.cfg, sentiment, models.churn, models.loyalty, self.decide)
        metrics.RECORDS.labels(topic, step.applied.value).inc()
        if step.applied is Applied.CONFLICT:
            await self._dead_letter(msg, topic, key, value, kafka_ts, conflict_reason(result), result=None)
        if not step.applied.counted:
            return result.ts
        for touch in touches:
            self.reco.learn(touch, past)
        mark_applied(state, msg.topic, msg.offset)
        self.population.update(before, rfm_of(state))
        if text:  # the rating is the text's weak label, learned by the trainer
            at = self.models.at(msg.partition, now)
            await self.models.send(state.user_id, ReviewExample(id=str(event_digest(result)), at=at, text=text, rating=int(result.rating)))
            metrics.NEGATIVE_REVIEWS.inc(step.negative_review)
        await self._finish(state, step, queue, now, models)
        return result.ts

    async def _advance(self, partition: int, ts: int | None, event: Any) -> None:
        """Move the partition's event-time clock to the released record's time and check
        the users now due. Runs after every record: a late event (e.g. a re-keyed one)
        can make its user due at a time the clock has already passed."""
        now = self.clocks[partition].advance(ts)  # (a user event has moved it already)
        if ts is not None:
            metrics.EVENT_TIME.labels(str(partition)).set(now / 1000)
        queue = self._queue(partition)
        due = queue.pop_due(now)
        if due:
            models = self.models.models_at(now)
            token = _current_event.set(weakref.ref(event))
            try:
                for user_id in due:
                    await self._due(user_id, now, queue, models)
            finally:
                _current_event.reset(token)
        metrics.DUE_USERS.set(sum(len(q) for q in (self.queues or {}).values()))

    async def _stop_for(self, exc: BaseException, record: str) -> None:
        """Stop the worker for a failure of the machine; the record is not acknowledged, so
        it (and everything after it) is read again after the restart."""
        metrics.PROCESSING_ERRORS.labels(type(exc).__name__).inc()
        self.paused = True  # nothing more is processed or acknowledged
        log.critical("stopping: %s (while processing %s: %s); the record is read again after the restart",
                     operator_hint(exc), record, exc)
        await self.app.crash(exc)

    async def _due(self, user_id: str, now: int, queue: DueQueue, models: Models) -> None:
        """One due user's check. A failure is this user's alone: logged, counted, and the
        user leaves the due queue until their next event (never the worker's end)."""
        try:
            state = self._load(user_id)
            if state is not None:
                step = on_due(state, now, models.churn, self.cfg, models.loyalty, self.decide)
                await self._finish(state, step, queue, now, models)
        except Exception as exc:
            if infrastructure_failure(exc):
                raise
            log.exception("due check of a user at %s failed; the user is checked again at their next event", format_ts(now))
            metrics.PROCESSING_ERRORS.labels(type(exc).__name__).inc()

    def _merge_ts(self, partition: int, result: Any) -> int | None:
        """The event time a record is merged by; None (release at once) for a record that
        does not touch this partition's state: invalid, or to be re-keyed elsewhere."""
        if isinstance(result, Heartbeat):
            return result.ts
        if isinstance(result, USER_EVENTS) and self.partition_for(result.user_id) == partition:
            return result.ts
        return None

    async def _pace(self, partition: int) -> None:
        """Back-pressure: an input holding its share of the partition's merge stops fetching
        until half of it is processed, so memory stays bounded under any backlog.

        Faust drops the rest of a fetched batch of a partition paused while the batch is
        handed on (its fetch position has already moved past them): a resumed input is
        sought back to the record after the last one received."""
        merge = self.merges.get(partition)
        if merge is None or self.paused:
            return
        pause, resume = merge.pace(self.merge_cap, self.paced.setdefault(partition, set()))
        consumer = self.app.consumer
        if pause:
            consumer.pause_partitions([TP(topic, partition) for topic in pause])
            for topic in pause:
                metrics.INPUT_PAUSES.labels(self.logical.get(topic, "rekeyed")).inc()
        for topic in resume:
            tp = TP(topic, partition)
            if tp in self.received:
                await consumer.seek(tp, self.received[tp] + 1)
            consumer.resume_partitions([tp])
        metrics.observe_merge(sum(m.size for m in self.merges.values()))

    def _merge(self, partition: int) -> InputMerge[Any]:
        merge = self.merges.get(partition)
        if merge is None:
            merge = self.merges[partition] = InputMerge(self.inputs)
        return merge

    def _caught_up(self, tp: TP, since_ms: int) -> bool:
        """Nothing left to receive on ``tp``, by a high watermark fetched after ``since_ms``
        (aiokafka keeps the high watermark and the time of the last fetch response that
        carried the partition; it is right even where ListOffsets is not, as on Tansu)."""
        received = self.received.get(tp)
        if received is not None:
            next_offset: int | None = received + 1
        else:  # nothing received since the last rebalance: where reading starts
            next_offset = self.app.consumer._committed_offset.get(tp)
            if next_offset is None:
                next_offset = self.start_offsets.get(tp)
        state = self._tp_state(tp)
        if state is None:
            return False
        return caught_up(next_offset, state.highwater, state.timestamp, since_ms)

    def _tp_state(self, tp: TP) -> Any:
        try:
            assignment = self.app.consumer._thread._ensure_consumer()._fetcher._subscriptions.subscription.assignment
            return assignment.state_value(TopicPartition(tp.topic, tp.partition)) if assignment else None
        except Exception:  # not started, or partition not assigned
            return None

    async def _finish(self, state: UserState, step: Step, queue: DueQueue, now: int, models: Models) -> None:
        at = self.models.at(self.partition_for(state.user_id), now)
        for example in churn_examples(state.user_id, step.examples, at):  # learned by the trainer
            await self.models.send(state.user_id, example)
            if example.days is not None:
                metrics.LABELS.labels(models.churn.name, str(int(example.days == 0))).inc()
                metrics.LABELS.labels(models.loyalty.name, str(example.days) if example.days < 5 else "5+").inc()
        for reward in bandit_examples(step.rewards, at):  # matured treated bandit decisions: the bandits learn them
            await self.models.send(state.user_id, reward)
        for outcome in uplift_examples(step.outcomes, at):  # matured decisions of both groups: the uplift models learn them
            await self.models.send(state.user_id, outcome)
        sent = []
        for action in step.actions:
            if not self.gate.admit(state, action, self.partition_for(state.user_id), now).allowed:
                continue  # counted by reason; not sent
            sent.append(action)
            await self.actions.send(key=state.user_id.encode(), value=encode_action(action))
            metrics.ACTIONS.labels(action.kind, action.reason.rule, action.group).inc()
            if self.trigger_kafka_ts is not None:
                metrics.ACTION_LATENCY.labels(action.kind).observe(time.time() - self.trigger_kafka_ts / 1000)
        went_out(state, step, sent, self.cfg)  # their attribution windows start (and mature at a due check)
        if step.tally:
            self._count(step.tally)
        if snapshot_due(state, now, self.scores_interval_ms, scored=step.churn is not None):
            row, x = self._snapshot(state, now, models, step.churn)
            await self.scores.send(key=state.user_id.encode(), value=encode_scores(row))
            await self.models.send(state.user_id, SegmentExample(id=f"{state.user_id}@{now}", at=at, x=x))  # the segment model learns it
            state.scores_at = now
            metrics.SNAPSHOTS.inc()
        self._store(state)
        queue.schedule(state.user_id, step.due_ms)

    def _count(self, tally: Tally) -> None:
        """Add a step's attribution counts to its partition's tally (the record being processed
        is of that partition, so the table writes there)."""
        key = f"p{current_event().message.partition}".encode()
        raw = self.tallies.get(key)
        counts = load_tally(raw) if raw is not None else Tally()
        counts.add(tally)
        self.tallies[key] = dump_tally(counts)
        metrics.count_attribution(tally)

    async def _dead_letter(
        self, msg: Any, topic: str, key: bytes | None, value: bytes | None, kafka_ts: int | None, error: str,
        result: str | None = "invalid",
    ) -> None:
        if result is not None:  # (a conflicting re-use is counted as such by the caller)
            metrics.RECORDS.labels(topic, result).inc()
        metrics.DEAD_LETTERS.labels(topic).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, error)
        cfg = self.dead_letter_cfg
        record = dead_letter(msg.topic, msg.partition, msg.offset, key, value, kafka_ts, error, _wall_ms(), cfg)
        await self.dead_letters.send(key=dead_letter_key(key, cfg), value=record)

    def _snapshot(
        self, state: UserState, now: int, models: Models, churn: Score | None = None, learn: bool = True
    ) -> tuple[UserScores, dict[str, float]]:
        """The user's row at ``now`` (features computed once, the scores and segment from
        them) and its model inputs; a published row (``learn``) enters the loyalty
        distribution, a looked-up one does not (its loyalty_score is read the same way)."""
        return describe(state, now, models, self.loyalty_ranks, self.loyalty_cfg.tiers, churn, learn,
                        self.cfg.state, self.population, self.settings.lifecycle)

    def profile(self, user_id: str) -> dict[str, Any] | None:
        """What ``GET /users/{user_id}`` shows, or None for an unknown user (on this
        worker, which must own the user's partition)."""
        state = self._load(user_id)
        if state is None:
            return None
        clock = self.clocks.get(self.partition_for(user_id))
        now = max(state.clock, clock.now if clock else 0)
        row, _ = self._snapshot(state, now, self.models.models_at(now), learn=False)
        return profile_of(row, state, self.partition_for(user_id))

    def _store(self, state: UserState) -> None:
        state.outbox = self.models.outbox(state.user_id)
        self.users[state.user_id.encode()] = dump_state(state)

    def _load(self, user_id: str) -> UserState | None:
        raw = self.users.get(user_id.encode())
        return None if raw is None else load_state(raw)

    def _queue(self, partition: int) -> DueQueue:
        """The partition's due queue, rebuilt from the table after a rebalance (one pass,
        which also rebuilds the RFM population of the partitions now owned)."""
        if self.queues is None:
            self.queues = defaultdict(DueQueue)
            self.population = Population()
            count = 0
            for raw_key, raw_state in self.users.items():
                state = load_state(raw_state)
                self.population.update(None, rfm_of(state))
                if state.outbox:
                    self.models.resend.append((state.user_id, state.outbox))
                due = due_at(state, self.cfg)
                if due is not None:
                    self.queues[self.partition_for(raw_key.decode())].schedule(state.user_id, due)
                    count += 1
            log.info("rebuilt event-time due queues: %d users due later; %d buyers for RFM", count, self.population.size)
        return self.queues[partition]

    async def _load_start_offsets(self, inputs: list[TP], generation: int) -> None:
        """Where reading starts for inputs with no committed offset (only needed until
        their first record arrives; until then such an input is not judged caught up)."""
        try:
            offsets = dict(await self.app.consumer.earliest_offsets(*inputs)) if inputs else {}
        except Exception:
            log.exception("could not read the earliest offsets of %d input partitions; "
                          "inputs without a committed offset wait for their first record", len(inputs))
            return
        if generation == self.generation:
            self.start_offsets = offsets
            log.info("earliest offsets of %d input partitions read", len(offsets))

    async def _on_revoked(self, *args: Any, **kwargs: Any) -> None:
        """Partitions are being taken away: release nothing until the rebalance is over
        (buffered records were not acknowledged, so their next owner reads them again)."""
        self.paused = True

    async def _on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        """Partitions moved: forget what was buffered (it was not acknowledged, so it is
        read again from the committed offsets) and rebuild the due queues from the table."""
        async with self.lock:
            self.queues = None
            for merge in self.merges.values():
                merge.clear()
            # Faust resumes the partitions it assigns, from their committed offsets: nothing is held back
            self.paced.clear()
            self.held.clear()  # not acknowledged either
            self.held_since.clear()
            self.processing = None
            self.models.forget()
            self.received.clear()
            self.rewritten.clear()
            inputs = [tp for tp in self.app.consumer.assignment() if tp.topic in self.inputs]
            self.start_offsets = {}
            self.generation += 1
            # Not awaited under the lock: a lookup that hangs must not stop the stream.
            asyncio.ensure_future(self._load_start_offsets(inputs, self.generation))
            self.paused = False
