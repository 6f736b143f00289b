"""The demo's marketing system: actions the worker decides go back to the simulated shop.

While the shop is published, this reads ``retention-actions`` as the actions appear and
delivers each to the simulator ``delay`` after its decision (the customers respond with
purchases carrying the coupon code and with ``action-outcomes``; the control group's
decisions are only recorded). So that offers reach customers a little after they are
decided, as a real marketing system would, publishing waits whenever the next record is
more than ``ahead`` of event time past the worker's event-time clock (the slowest
partition's, from its metrics).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from streams.domain.timestamps import parse_ts
from streams.runtime.kafka import consumer
from streams.runtime.settings import Settings

if TYPE_CHECKING:
    from streams.runtime.processes import WorkerProcess
    from streams.runtime.publish import Outgoing
    from streams.simulation import Shop

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


class MarketingLoop:
    def __init__(self, settings: Settings, shop: Shop, worker: WorkerProcess, ahead_days: float = 3.0, delay_hours: float = 6.0) -> None:
        self.shop = shop
        self.worker = worker
        self.ahead_ms = int(ahead_days * MS_PER_DAY)
        self.delay_ms = int(delay_hours * MS_PER_HOUR)
        self.reader = consumer(settings, None)
        self.reader.subscribe([settings.topic_actions])
        self.offered: set[str] = set()
        self.worker_clock_ms = 0
        self.next_poll = 0.0
        self.waited_s = 0.0

    def poll(self) -> int:
        """Deliver the actions decided since the last poll (each once); how many were new."""
        new = 0
        for msg in self.reader.consume(num_messages=1000, timeout=0):
            if msg.error() or msg.value() is None:
                continue
            action = json.loads(msg.value())
            if action["action_id"] in self.offered:  # at least once: deduplicate on action_id
                continue
            self.offered.add(action["action_id"])
            self.shop.offer(action, parse_ts(action["ts"]) + self.delay_ms)
            new += 1
        return new

    def pace(self, record: Outgoing) -> None:
        """Before ``record`` goes out: wait until the worker's clock is within ``ahead`` of it,
        delivering the actions it decides meanwhile."""
        now = time.monotonic()
        if not self.worker_clock_ms:
            self.worker_clock_ms = record.ts_ms  # the start of the shop's history
        if record.ts_ms <= self.worker_clock_ms + self.ahead_ms:
            if now >= self.next_poll:
                self.poll()
                self.next_poll = now + 0.25
            return
        started = now
        while record.ts_ms > self.worker_clock_ms + self.ahead_ms:
            self.poll()
            clocks = [v for _, v in self.worker.samples("retention_event_time_seconds")]
            if clocks:
                self.worker_clock_ms = max(self.worker_clock_ms, int(min(clocks) * 1000))
            if record.ts_ms <= self.worker_clock_ms + self.ahead_ms:
                break
            if not self.worker.alive or time.monotonic() - started > 120:
                break  # never hang the demo; the summary shows what is missing
            time.sleep(0.25)  # the worker's metrics page is not free
        self.waited_s += time.monotonic() - started

    def close(self) -> None:
        self.poll()
        self.reader.close()

