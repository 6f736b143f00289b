"""The ingest agent: every inbound record -> validated event -> user state -> actions.

One agent reads all inbound topics (they are co-partitioned by user_id), so the events
of a user are folded in one place and no repartition hop is needed. Per record:

1. decode and validate; a bad record goes to the dead-letter topic with its reason;
2. a heartbeat only advances the partition's event-time clock;
3. a record on the wrong partition for its user is re-keyed to the right one;
4. otherwise the pure engine folds it into the user's state (once per event id);
5. the clock advances, and users now due (silent customers aging) are checked, which
   can mature churn labels and emit retention actions.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import faust
from faust.types import TP

from models.churn import ChurnModel
from streams.domain.actions import encode_action
from streams.domain.clock import PartitionClock
from streams.domain.dead_letters import dead_letter
from streams.domain.engine import Step, due_at, on_due, on_event
from streams.domain.events import Heartbeat, Invalid, decode
from streams.domain.features import as_dict
from streams.domain.schedule import DueQueue
from streams.domain.state import Applied, UserState, dump_state, load_state, mark_applied, redelivered
from streams.runtime import metrics
from streams.runtime.partitioning import make_partitioner
from streams.runtime.settings import Settings

log = logging.getLogger(__name__)

SOURCE_HEADER = "retention-source-topic"


class Ingest:
    """State and I/O around the pure engine, for the partitions this worker owns."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.engine
        self.logical = settings.inbound_topics
        self.skew_ms = int(settings.max_clock_skew_s * 1000)
        self.partition_for = make_partitioner(settings.partitions)
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.source = app.topic(*self.logical, settings.rekey_topic, **raw)
        self.rekeyed = app.topic(settings.rekey_topic, **raw)
        self.actions = app.topic(settings.topic_actions, **raw)
        self.dead_letters = app.topic(settings.topic_dead_letters, **raw)
        self.users = app.Table("users", partitions=settings.partitions, key_type=bytes, value_type=bytes)
        self.churn = ChurnModel(min_labels=settings.churn_min_labels)
        self.app = app
        self.inputs = [*self.logical, settings.rekey_topic]
        self.clocks: dict[int, PartitionClock] = defaultdict(PartitionClock)
        self.offsets: dict[TP, int] = {}  # last processed offset per input partition
        self.queues: dict[int, DueQueue] | None = None
        app.on_rebalance_complete.connect(self._on_rebalance)
        app.agent(self.source, name="ingest")(self.run)

    async def run(self, stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            msg = event.message
            try:
                ts = await self.process(msg, event.key, event.value, dict(event.headers or {}))
            except Exception as exc:  # a bug must not stop the stream: dead-letter the record
                log.exception("processing %s[%d]@%d failed", msg.topic, msg.partition, msg.offset)
                metrics.PROCESSING_ERRORS.labels(type(exc).__name__).inc()
                topic = self.logical.get(msg.topic, msg.topic)
                kafka_ts = int(msg.timestamp * 1000) if msg.timestamp else None
                await self._dead_letter(msg, topic, event.key, event.value, kafka_ts, f"processing failed: {exc!r}")
                ts = None
            self.offsets[msg.tp] = msg.offset
            await self._advance(msg.partition, msg.topic, ts)
            metrics.PROCESSING.observe(time.perf_counter() - started)

    async def process(self, msg: Any, key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> int | None:
        """Handle one record; returns its event time (None if it had none we trust)."""
        topic = self.logical.get(msg.topic) or headers.get(SOURCE_HEADER, b"").decode() or msg.topic
        kafka_ts = int(msg.timestamp * 1000) if msg.timestamp else None
        result = decode(topic, value, not_after_ms=None if kafka_ts is None else kafka_ts + self.skew_ms)
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
            return result.ts
        state = self._load(user_id) or UserState(user_id)
        if redelivered(state, msg.topic, msg.offset):  # read again after a crash or rebalance
            metrics.RECORDS.labels(topic, "redelivered").inc()
            # Write the state again: a killed worker's local RocksDB can hold writes whose
            # changelog records were never sent, and the changelog must catch up with them.
            self.users[user_id.encode()] = dump_state(state)
            return result.ts
        step = on_event(state, result, self.clocks[msg.partition].now, self.cfg)
        mark_applied(state, msg.topic, msg.offset)
        metrics.RECORDS.labels(topic, step.applied.value).inc()
        if step.applied is Applied.DUPLICATE:
            return result.ts
        await self._finish(state, step, self._queue(msg.partition))
        return result.ts

    async def _advance(self, partition: int, topic: str, ts: int | None) -> None:
        """Move the partition's event-time clock (a watermark over its inputs) and check
        the users now due. Runs after every record: a late event (e.g. a re-keyed one)
        can make its user due at a time the clock has already passed."""
        clock = self.clocks[partition]
        if ts is not None:
            clock.observe(topic, ts)
        before = clock.now
        now = clock.advance(self._lagging(partition))
        if now != before:
            metrics.EVENT_TIME.labels(str(partition)).set(now / 1000)
        queue = self._queue(partition)
        for user_id in queue.pop_due(now):
            state = self._load(user_id)
            if state is not None:
                await self._finish(state, on_due(state, now, self.churn, self.cfg), queue)
        metrics.DUE_USERS.set(sum(len(q) for q in (self.queues or {}).values()))

    def _lagging(self, partition: int) -> list[str]:
        """Inputs of this partition with records not yet processed, judged by the high
        watermark of the last fetch (right even where ListOffsets is not, as on Tansu).
        An input not read since the worker started is not judged: its position is unknown."""
        lagging = []
        for topic in self.inputs:
            tp = TP(topic, partition)
            last = self.offsets.get(tp)
            if last is not None:
                highwater = self.app.consumer.highwater(tp)
                if highwater is not None and highwater > last + 1:
                    lagging.append(topic)
        return lagging

    async def _finish(self, state: UserState, step: Step, queue: DueQueue) -> None:
        for features, label in step.examples:
            self.churn.learn(as_dict(features), bool(label))
            metrics.LABELS.labels(ChurnModel.name, str(label)).inc()
        if step.examples:
            metrics.MODEL_LABELS.labels(ChurnModel.name).set(self.churn.labels)
            metrics.MODEL_PRIOR.labels(ChurnModel.name).set(0 if self.churn.warm else 1)
        for action in step.actions:
            await self.actions.send(key=state.user_id.encode(), value=encode_action(action))
            metrics.ACTIONS.labels(action.kind, action.reason.rule, action.group).inc()
        self.users[state.user_id.encode()] = dump_state(state)
        queue.schedule(state.user_id, step.due_ms)

    async def _dead_letter(
        self, msg: Any, topic: str, key: bytes | None, value: bytes | None, kafka_ts: int | None, error: str
    ) -> None:
        metrics.RECORDS.labels(topic, "invalid").inc()
        metrics.DEAD_LETTERS.labels(topic).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, error)
        record = dead_letter(msg.topic, msg.partition, msg.offset, key, value, kafka_ts, error, int(time.time() * 1000))
        await self.dead_letters.send(key=key, value=record)

    def _load(self, user_id: str) -> UserState | None:
        raw = self.users.get(user_id.encode())
        return None if raw is None else load_state(raw)

    def _queue(self, partition: int) -> DueQueue:
        """The partition's due queue, rebuilt from the table after a rebalance (one pass)."""
        if self.queues is None:
            self.queues = defaultdict(DueQueue)
            count = 0
            for raw_key, raw_state in self.users.items():
                state = load_state(raw_state)
                due = due_at(state, self.cfg)
                if due is not None:
                    self.queues[self.partition_for(raw_key.decode())].schedule(state.user_id, due)
                    count += 1
            log.info("rebuilt event-time due queues: %d users due later", count)
        return self.queues[partition]

    async def _on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        self.queues = None  # partitions moved: rebuild from the recovered table on next use
