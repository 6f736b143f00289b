"""Faust's aiokafka transport with a configurable fetch wait.

Faust creates its consumer with ``fetch_max_wait_ms=1500`` hard-coded. On the embedded
broker every hop then waits up to ~0.75 s; ``RETENTION_FETCH_MAX_WAIT_MS`` sets it.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when it builds its fetcher at start(), after this call.
        consumer._fetch_max_wait_ms = self.app.conf.retention_fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = _Consumer
