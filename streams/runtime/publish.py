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
