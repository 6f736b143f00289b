"""The user-state changelog: one record per touched user per batch out, a whole partition back in.

Each partition's :class:`~streams.runtime.user_store.PartitionStore` is backed by the same
partition of ``<app id>-user-state-changelog`` (key: user id; value: the encoded state, or
none for a forgotten user). A worker that gets a partition with no local state (a new
machine, an empty data dir) restores it from the changelog, reading to the high watermark
that **fetch responses** report (librdkafka's partition EOF): some brokers, the embedded one
among them, under-report it in ListOffsets, which would stop a restore early.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from streams.domain.timestamps import MS_PER_DAY
from streams.runtime.faults import BrokerDataLost
from streams.runtime.kafka import admin, consumer, create_new_topics
from streams.runtime.settings import Settings
from streams.runtime.user_store import PartitionStore

log = logging.getLogger(__name__)

#: Records fetched per call while restoring.
RESTORE_BATCH = 10_000


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-user-state-changelog"


def create_changelog(settings: Settings, timeout: float = 30.0) -> bool:
    """Create the changelog topic (compacted, one partition per input partition) unless it
    exists; True if it was created."""
    name = changelog_topic(settings)
    client = admin(settings)
    if name in client.list_topics(timeout=timeout).topics:
        return False
    # compacted within max.compaction.lag.ms of a tombstone: an erased customer's states leave the log
    lag = str(int(settings.changelog_max_compaction_lag_days * MS_PER_DAY))
    topic = NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication_factor,
                     config={"cleanup.policy": "compact", "max.compaction.lag.ms": lag})
    return name in create_new_topics(client, [topic], timeout)


@dataclass(frozen=True)
class Restored:
    records: dict[int, int]  #: per partition: changelog records applied
    start: dict[int, int]  #: per partition: the changelog offset its restore started from
    end: dict[int, int]  #: per partition: the changelog offset after the last record applied
    seconds: float


def restore(settings: Settings, stores: dict[int, PartitionStore], timeout: float = 600.0) -> Restored:
    """Bring each partition's store up to the end of its changelog partition, from where it
    last stopped (all partitions through one consumer, so they are fetched together)."""
    topic = changelog_topic(settings)
    started = time.monotonic()
    start = {p: store.changelog_next() for p, store in stores.items()}
    end = {p: offset or 0 for p, offset in start.items()}
    counts = dict.fromkeys(stores, 0)
    pending: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in stores}
    # "error": a store that applied more of its changelog than the broker has is not silently
    # restored from the start of the log (the broker lost its data)
    reader = consumer(settings, None, **{"enable.partition.eof": True, "enable.auto.commit": False, "auto.offset.reset": "error"})
    try:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING if start[p] is None else start[p]) for p in stores])
        for p, store in stores.items():
            store.cache.clear()
        todo = set(stores)
        deadline = started + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic} partitions {sorted(todo)}: their end was not reached in {timeout:.0f} s")
            for msg in reader.consume(RESTORE_BATCH, 0.5):
                error = msg.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition())
                elif error is not None and error.code() == KafkaError._AUTO_OFFSET_RESET:
                    raise BrokerDataLost(f"{topic}[{msg.partition()}] ends before offset {start[msg.partition()]}, "
                                         f"which this worker's store had applied ({error.str()})")
                elif error is not None:
                    raise KafkaException(error)
                else:
                    pending[msg.partition()].append((msg.key() or b"", msg.value()))
                    end[msg.partition()] = msg.offset() + 1
            for p, records in pending.items():
                if records:
                    counts[p] += stores[p].restore(records)
                    records.clear()
        for p, store in stores.items():
            store.restored_to(end[p])
    finally:
        reader.close()
    return Restored(counts, {p: s or 0 for p, s in start.items()}, end, time.monotonic() - started)


class ChangelogWriter:
    """Produces a batch's changelog records to the partition of its input; ``on_delivery``
    hears of every acknowledgement (with the error, if any) and the offset it got."""

    def __init__(self, settings: Settings, client: Producer) -> None:
        self.topic = changelog_topic(settings)
        self.client = client

    def send(self, partition: int, records: list[tuple[bytes, bytes | None]],
             on_delivery: Callable[[KafkaError | None, Message], None]) -> int:
        for key, value in records:
            while True:
                try:
                    self.client.produce(self.topic, value=value, key=key, partition=partition, on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: serve acknowledgements, then retry
                    self.client.poll(0.05)
        return len(records)
