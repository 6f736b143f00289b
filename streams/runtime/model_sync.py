"""Every worker's view of the one model: it follows ``model-snapshots`` and sends what the
models should learn to ``model-labels`` (the trainer's topic; :mod:`models.trainer`).

:class:`ModelFollower` is a group-less consumer of the snapshot topic (every worker reads
all of it from the beginning, in the app's event loop), keeping the last snapshots in a
:class:`~models.trainer.SnapshotStore`. A record whose signature does not check out (or
whose models do not load) is refused: logged with its offset and the reason, counted in
``retention_model_snapshots_refused_total{reason}``, and the worker goes on with the
models it had. The agent that folds batches sends the examples and, at every model-period
boundary a partition's clock crosses, its watermark (:mod:`streams.runtime.agents.batched`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.bundle import Models
from models.signing import REASONS, Refused
from models.trainer import Snapshot, SnapshotStore, decode_snapshot, load_models, version_of
from streams.runtime import metrics
from streams.runtime.kafka import aiokafka_security
from streams.runtime.settings import Settings

log = logging.getLogger(__name__)


def snapshot_topic(app: faust.App, settings: Settings) -> Any:
    return app.topic(
        settings.topic_model_snapshots, partitions=1, key_serializer="raw", value_serializer="raw",
        config=settings.topic_config(settings.topic_model_snapshots),
    )


class ModelFollower:
    """Reads every snapshot the trainer publishes; ``store`` answers which models score an event time."""

    def __init__(self, app: faust.App, settings: Settings, keep_state: bool = True) -> None:
        """``keep_state``: keep the trainer's state of the newest snapshot (only a process that
        may take the trainer over needs it: not a worker with ``RETENTION_TRAINER=separate``)."""
        self.settings = settings
        self.keys = settings.snapshot_keys  # (MissingSnapshotKey: the worker does not start)
        self.topic = snapshot_topic(app, settings)
        self.store: SnapshotStore[Models] = SnapshotStore(
            settings.fresh_models, load_models, settings.model_period_ms, settings.model_lag_periods,
            keep=settings.model_snapshots_kept, on_refused=self._refused_models, keep_state=keep_state,
        )
        self.offsets: dict[int, int] = {}  #: boundary -> offset of the kept snapshots' records
        self.refusals: Counter[str] = Counter()  #: snapshots refused, by reason
        for reason in REASONS:  # every reason at 0 on /metrics, so an alert sees the first one
            metrics.MODEL_SNAPSHOTS_REFUSED.labels(reason)
        self.tp = TopicPartition(settings.topic_model_snapshots, 0)
        self.position = 0  #: the next offset to read
        self.consumer: AIOKafkaConsumer | None = None
        self.started = asyncio.Event()
        self.progress = asyncio.Condition()
        app.task(self.run)

    async def run(self, app: Any = None) -> None:
        await self.topic.maybe_declare()
        consumer = self.new_consumer()
        await consumer.start()
        try:
            consumer.assign([self.tp])
            await consumer.seek_to_beginning(self.tp)
            self.consumer = consumer
            self.started.set()
            while True:
                batch = await consumer.getmany(self.tp, timeout_ms=500)
                for msg in batch.get(self.tp, []):
                    self._read(msg.offset, msg.value)
                async with self.progress:
                    self.position = await consumer.position(self.tp)
                    self.progress.notify_all()
        finally:
            await consumer.stop()

    def new_consumer(self) -> AIOKafkaConsumer:
        """A group-less reader of the snapshot topic, connecting as the app's clients do."""
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers.split(","), group_id=None, enable_auto_commit=False,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms, max_partition_fetch_bytes=self.settings.model_snapshot_max_bytes,
            fetch_max_bytes=self.settings.model_snapshot_max_bytes, **aiokafka_security(self.settings),
        )

    def _read(self, offset: int, value: bytes | None) -> None:
        try:
            snapshot = decode_snapshot(value or b"", self.keys)
        except Refused as refusal:
            self._refuse(offset, refusal)
            return
        self.store.add(snapshot)
        if snapshot.models is not None:
            self.offsets[snapshot.boundary] = offset
            self.offsets = {b: o for b, o in self.offsets.items() if b in self.store.kept}
            metrics.MODEL_SNAPSHOT_BOUNDARY.labels("newest").set(snapshot.boundary / 1000)
        metrics.MODEL_SNAPSHOT_BOUNDARY.labels("covered").set(snapshot.boundary / 1000)

    def _refuse(self, offset: int | None, refusal: Refused, version: str = "") -> None:
        """A snapshot not loaded: one line naming the record and why, and the counter."""
        where = f"{self.tp.topic}[{self.tp.partition}]@{'?' if offset is None else offset}"
        log.error("model snapshot %s%s refused, %s; the worker goes on with the models it had", where,
                  f" ({version})" if version else "", refusal,
                  extra={"topic": self.tp.topic, "partition": self.tp.partition, "offset": offset, "reason": refusal.reason})
        metrics.MODEL_SNAPSHOTS_REFUSED.labels(refusal.reason).inc()
        self.refusals[refusal.reason] += 1

    def _refused_models(self, boundary: int, refusal: Refused) -> None:
        self._refuse(self.offsets.pop(boundary, None), refusal, version_of(boundary))

    async def sync(self) -> None:
        """Until every snapshot published before this call has been read (a trainer that
        takes over must resume from the latest one)."""
        await self.started.wait()
        assert self.consumer is not None
        end = (await self.consumer.end_offsets([self.tp]))[self.tp]
        async with self.progress:
            await self.progress.wait_for(lambda: self.position >= end)

    def latest(self) -> tuple[Snapshot | None, bytes | None, bytes | None]:
        """The newest snapshot record, the model bytes it refers to (None: priors) and the
        trainer's state published with them."""
        latest = self.store.latest
        if latest is None or latest.model_boundary is None:
            return latest, None, None
        models = self.store.kept.get(latest.model_boundary)
        return latest, models, self.store.state if models is not None else None

    def report(self) -> dict[str, Any]:
        """What ``GET /models`` shows: the newest snapshot with models (the same on every
        worker that has read the topic as far), the trainer's counts, and how scoring
        picks a snapshot."""
        store = self.store
        latest = store.latest
        newest = max(store.kept, default=None)
        models = self.newest_models()
        return {
            "snapshot": {
                "version": None if newest is None else version_of(newest),
                "boundary": newest,
                "covered": store.covered,
                "learned": latest.learned if latest else {},
                "dropped": latest.dropped if latest else {},
                "watermarks": {str(p): ms for p, ms in sorted(latest.marks.items())} if latest else {},
                "period_days": self.settings.model_period_days,
                "lag_periods": store.lag,
                "kept": sorted(store.kept),
                "misses": store.misses,
            },
            **models.report(),
        }

    def newest_models(self) -> Models:
        newest = max(self.store.kept, default=None)
        if newest is None:
            return self.store.priors
        return self.store.models_at(newest + self.store.lag * self.store.period_ms)[0]

    def holding_back(self) -> list[int]:
        """Partitions the trainer waits for (no watermark, or the lowest), by the newest marker."""
        latest = self.store.latest
        if latest is None:
            return []
        marks = latest.marks
        partitions = range(self.settings.partitions)
        absent = [p for p in partitions if p not in marks]
        if absent:
            return absent
        low = min(marks.values())
        return [p for p in partitions if marks[p] == low]
