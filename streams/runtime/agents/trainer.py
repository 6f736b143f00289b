"""The trainer agent: the one worker that owns ``model-labels`` (one partition) learns for all.

Examples and watermarks go to the pure :class:`~models.trainer.Trainer`; every snapshot it
makes is published to ``model-snapshots`` and flushed before the label records it covers
are acknowledged (``noack``), so after a kill -9 the records not yet covered are read
again, and the trainer resumed from the latest snapshot drops those it had learned: no
label is lost or learned twice. A watermark record is acknowledged once a snapshot (or a
marker) carrying it is published (and every record before it is). After a rebalance the trainer is rebuilt the same way
(the follower first reads every snapshot published so far).
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from models.bundle import Models
from models.examples import Examples, Forget, Watermark, decode_example, unpack
from models.trainer import Snapshot, Trainer, dump_models, encode_snapshot, load_models, version_of
from streams.runtime import heap, metrics
from streams.runtime.model_sync import ModelFollower
from streams.runtime.settings import Settings
from streams.runtime.transport import ack, guard

log = logging.getLogger(__name__)

#: Marks an unacknowledged forget record (with the model boundary of its time) in TrainerAgent.unacked.
FORGET = "forget"

MARKER_KEY = b"covered"


def snapshot_key(snapshot: Snapshot, period_ms: int, kept: int) -> bytes:
    """Keys of a compacted topic that keep the newest ``kept`` snapshots with models (a ring
    of keys ``models/0`` ..) and the newest marker (``covered``).

    >>> snapshot_key(Snapshot(5, "x", 5, {}, {}, {}, models=b"m"), period_ms=1, kept=4)
    b'models/1'
    """
    if snapshot.models is None:
        return MARKER_KEY
    return f"models/{snapshot.boundary // period_ms % kept}".encode()


class TrainerAgent:
    def __init__(self, app: faust.App, settings: Settings, follower: ModelFollower, settle_heap: bool = False) -> None:
        """``settle_heap``: the trainer is the process's hot loop (``retention trainer``): the
        start-up heap is frozen and the collections spaced out once it has resumed, as a
        worker does when it starts folding (:mod:`streams.runtime.heap`)."""
        self.app = app
        self.settings = settings
        self.follower = follower
        self.settle_heap = settle_heap
        self.labels = app.topic(settings.topic_model_labels, partitions=1, key_serializer="raw", value_serializer="raw")
        guard(app, self.labels.topics)  # committed only as far as the trainer acknowledged them
        self.trainer: Trainer[Models] | None = None
        # (example time, or None for a watermark, or (FORGET, model boundary); event)
        self.unacked: list[tuple[int | tuple[str, int] | None, Any]] = []
        app.on_rebalance_complete.connect(self._on_rebalance)
        app.agent(self.labels, name="model-trainer")(self.run)

    async def run(self, stream: faust.StreamT[Any]) -> None:
        self.stream = stream.noack()
        async for event in self.stream.events():
            trainer = await self._trainer()
            try:
                record = decode_example(event.value)
            except Exception as exc:  # internal topic: skipped loudly (no contract, no dead letter)
                log.error("model-labels@%d unreadable, skipped: %r", event.message.offset, exc)
                metrics.MODEL_TRAINER_RECORDS.labels("invalid").inc()
                await ack(self.stream, event)
                continue
            if isinstance(record, Forget):  # an erased customer: nothing to learn
                metrics.MODEL_TRAINER_RECORDS.labels("forget").inc()
                trainer.forget(record.user)
                # what the models held of them (BG/NBD) is gone for good once a snapshot with models
                # follows: acknowledged then (read again after a crash before it), else like a watermark
                self.unacked.append(((FORGET, trainer.model_boundary or -1) if trainer.forgot_in_models else None, event))
                continue
            if isinstance(record, Watermark):
                metrics.MODEL_TRAINER_RECORDS.labels("watermark").inc()
                self.unacked.append((None, event))
                published = trainer.watermark(record.partition, record.clock_ms)
                if not published and (marker := trainer.marker()) is not None:
                    published = [marker]  # the watermark survives a restart
                if published:
                    await self._publish(published)
                    await self._ack_covered(trainer)
            elif isinstance(record, Examples):  # a worker's pack: acknowledged once all of it is learned
                examples, skipped = unpack(record)
                if skipped:  # (a newer worker's kind or version: skipped loudly, the rest learned)
                    log.error("model-labels@%d: %d of %d examples unreadable, skipped: %s", event.message.offset,
                              len(skipped), len(record.items), skipped[0])
                    metrics.MODEL_TRAINER_RECORDS.labels("invalid").inc(len(skipped))
                metrics.MODEL_TRAINER_RECORDS.labels("buffered").inc(len(examples))
                for example in examples:
                    trainer.add(example)
                self.unacked.append((max((e.at for e in examples), default=None), event))
            else:
                metrics.MODEL_TRAINER_RECORDS.labels("buffered").inc()
                trainer.add(record)
                self.unacked.append((record.at, event))

    async def _trainer(self) -> Trainer[Models]:
        if self.trainer is None:
            await self.follower.sync()  # every snapshot published before, by us or a previous owner
            latest, models, state = self.follower.latest()
            self.trainer = Trainer.resume_from(
                latest, models, load_models, self.settings.fresh_models(), self.settings.model_period_ms,
                self.settings.partitions, dumps=dump_models, state=state,
            )
            refused = self.follower.refusals
            if self.trainer.refused is not None:
                metrics.MODEL_SNAPSHOTS_REFUSED.labels(self.trainer.refused.reason).inc()
                log.error("model trainer: the models of snapshot %s refused (%s); it resumes from fresh models, which "
                          "learn again from the examples to come", version_of(latest.model_boundary or 0) if latest else "-",
                          self.trainer.refused)
            elif latest is None and refused:
                log.warning("model trainer: no valid snapshot (%d records refused: %s); it starts from fresh models and "
                            "republishes signed snapshots", sum(refused.values()), dict(refused))
            log.info("model trainer resumed at %s (covered %s; learned %s)",
                     latest.version if latest else "the priors", self.trainer.covered, dict(self.trainer.learned))
            if self.settle_heap:
                heap.settle()  # (the first time: what is alive then, the models among it, is frozen)
                self.settle_heap = False
        return self.trainer

    async def _publish(self, snapshots: list[Snapshot]) -> None:
        for s in snapshots:
            key = snapshot_key(s, self.settings.model_period_ms, self.settings.model_snapshots_kept)
            value = encode_snapshot(s, self.follower.keys.sign)
            if len(value) > self.settings.model_snapshot_max_bytes:
                raise RuntimeError(
                    f"model snapshot {s.version} is {len(value):,} bytes, more than RETENTION_MODEL_SNAPSHOT_MAX_BYTES "
                    f"({self.settings.model_snapshot_max_bytes:,}): raise it (and max.message.bytes of {self.settings.topic_model_snapshots}, "
                    "docs/upgrading.md) or lower RETENTION_BGNBD_CUSTOMERS")
            await self.follower.topic.send(key=key, value=value, partition=0)
            metrics.MODEL_SNAPSHOTS.labels("models" if s.models is not None else "marker").inc()
            if s.models is not None:
                log.info("model snapshot %s published (%d bytes; learned %s)", s.version, len(s.models), s.learned)
        await self.app.producer.flush()

    async def _ack_covered(self, trainer: Trainer[Models]) -> None:
        """Acknowledge, in offset order, the records a published snapshot now covers, up to
        the first it does not: Faust commits the run of consecutive acknowledged offsets
        that starts at the lowest one, so acknowledging a later record first would commit
        past a label still waiting (lost after a crash). Covered records after it are read
        again after a crash, and dropped (their period was learned)."""
        covered = trainer.covered
        done = 0
        for at, event in self.unacked:
            if isinstance(at, tuple):  # a forget: once the models were published after it
                if (trainer.model_boundary or -1) <= at[1]:
                    break
            elif at is not None and (covered is None or at >= covered):
                break
            await ack(self.stream, event)
            done += 1
        del self.unacked[:done]

    async def _on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        """Whoever owns model-labels now reads the unacknowledged records again: rebuild."""
        self.trainer = None
        self.unacked = []
