"""Publishing records to the inbound topics, as producers of event time should.

- The key is the user_id and the partitioner is murmur2 (as Java clients and Faust).
- The Kafka record timestamp is the event time (CreateTime), so replayed history keeps
  its time and the worker's clock-skew check holds.
- A heartbeat goes to every partition of the heartbeat topic: each partition has its
  own event-time clock. Every record sent before it is delivered first (a flush), so a
  heartbeat is never in the log before data of earlier event time: a worker that has
  read a heartbeat and then finds an input caught up has missed nothing earlier.
- Pacing: ``speed`` simulated seconds per wall second; ``None`` as fast as possible.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from confluent_kafka import KafkaException, Producer

from streams.domain.events import Invalid, decode
from streams.domain.privacy import decode_consent
from streams.domain.state import RECENT_IDS
from streams.runtime.kafka import producer
from streams.runtime.settings import Settings

if TYPE_CHECKING:
    from streams.simulation import Shop

_json = msgspec.json.Encoder()


@dataclass
class Outgoing:
    """One record for a logical inbound topic (``clicks``, ``purchases``, ...)."""

    topic: str
    key: str | None
    value: bytes
    ts_ms: int


@dataclass
class PublishReport:
    sent: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def encode_value(value: dict | bytes) -> bytes:
    return value if isinstance(value, bytes) else _json.encode(value)


class Publisher:
    def __init__(self, settings: Settings, client: Producer | None = None) -> None:
        self.settings = settings
        self.client = client or producer(settings, **{"message.timeout.ms": int(settings.delivery_timeout_s * 1000)})
        self.names = {logical: actual for actual, logical in settings.inbound_topics.items()}
        self.names["consents"] = settings.topic_consents  # (read by the batched path: docs/privacy.md)
        self.report = PublishReport()

    def _delivered(self, err: object, msg: object) -> None:
        if err is not None:
            self.report.failed += 1
            if len(self.report.errors) < 20:
                self.report.errors.append(str(err))

    def send(self, record: Outgoing) -> None:
        actual = self.names[record.topic]
        targets: Iterable[int | None] = (
            range(self.settings.partitions) if record.topic == "heartbeats" else (None,)
        )
        if record.topic == "heartbeats":
            self.client.flush(60)
        for partition in targets:
            kwargs = {} if partition is None else {"partition": partition}
            while True:
                try:
                    self.client.produce(
                        actual,
                        value=record.value,
                        key=None if record.key is None else record.key.encode(),
                        timestamp=record.ts_ms,
                        on_delivery=self._delivered,
                        **kwargs,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.client.poll(0.05)
                except KafkaException as exc:  # refused before sending (e.g. a partition the topic lacks,
                    self._delivered(exc.args[0], None)  # once the client knows its metadata): a delivery failure
                    break
            self.report.sent[record.topic] += 1
        self.client.poll(0)

    def publish(
        self,
        records: Iterable[Outgoing],
        speed: float | None = None,
        on_record: Callable[[Outgoing], None] | None = None,
    ) -> PublishReport:
        """Send every record, paced in event time, then wait for every delivery."""
        wall0 = time.monotonic()
        event0: int | None = None
        for record in records:
            if speed:
                event0 = record.ts_ms if event0 is None else event0
                ahead = (record.ts_ms - event0) / 1000 / speed - (time.monotonic() - wall0)
                if ahead > 0:
                    self.client.flush(ahead)
                    time.sleep(max(0.0, (record.ts_ms - event0) / 1000 / speed - (time.monotonic() - wall0)))
            self.send(record)
            if on_record is not None:
                on_record(record)
        wait = self.settings.delivery_timeout_s + 5  # past the message timeout: every record is delivered or failed
        remaining = self.client.flush(wait)
        if remaining:
            self.report.failed += remaining
            self.report.errors.append(f"{remaining} records still undelivered after {wait:.0f} s")
        return self.report

    def close(self) -> None:
        """Flush and let go of the producer (librdkafka closes it when it is collected)."""
        self.client.flush(10)
        del self.client


def read_jsonl(path: Path, topic: str, rejected: list[tuple[int, str, bytes]]) -> Iterator[Outgoing]:
    """Valid events of a JSON-lines file, lazily; each invalid line is appended to ``rejected``
    as (line number, error, raw line). Blank lines are skipped."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            event = decode_consent(raw) if topic == "consents" else decode(topic, raw)
            if isinstance(event, Invalid):
                rejected.append((number, event.error, raw))
                continue
            yield Outgoing(topic, getattr(event, "user_id", None), raw, event.ts)


def simulation_records(shop: Shop) -> Iterator[Outgoing]:
    """The simulator's records as they go on the wire (malformed ones included, on purpose)."""
    for record in shop.records():
        yield Outgoing(record.topic, record.key, encode_value(record.value), record.ts_ms)


def overlap_message(held: dict[str, tuple[int, int]], start_ms: int) -> str:
    """Why ``retention simulate`` refuses to publish over an earlier run, and what to do instead.

    ``held``: per logical topic, the records it holds and the latest record's timestamp.

    >>> print(overlap_message({"clicks": (24616, 1782777600000), "purchases": (900, 1782700000000)}, 1767225600000))
    the topics already hold events up to 2026-06-30T00:00:00.000Z (clicks 24,616 records, purchases 900), after the simulated period's start 2026-01-01T00:00:00.000Z: an earlier `retention simulate`? Sent again, every event a worker no longer remembers (it keeps each customer's latest 64 event ids) would count as a late one, in lifetime totals a second time. Simulate the next period with --start 2026-07-01 (same customer ids, new event ids), or start afresh (new topic names or a new broker, and new workers' state), or pass --force.
    """
    from streams.domain.timestamps import format_ts

    counts = ", ".join(f"{topic} {n:,}" + (" records" if i == 0 else "") for i, (topic, (n, _)) in enumerate(sorted(held.items())))
    latest = max(last for _, last in held.values())
    after = (latest // 86_400_000 + 1) * 86_400_000  # the day after the latest event
    return (f"the topics already hold events up to {format_ts(latest)} ({counts}), after the simulated period's start "
            f"{format_ts(start_ms)}: an earlier `retention simulate`? Sent again, every event a worker no longer remembers "
            f"(it keeps each customer's latest {RECENT_IDS} event ids) would count as a late one, in lifetime totals a "
            f"second time. Simulate the next period with --start {format_ts(after)[:10]} (same customer ids, new event ids), "
            "or start afresh (new topic names or a new broker, and new workers' state), or pass --force.")
