"""``retention heartbeat``: event-time heartbeats for a shop whose producers send live events.

A partition's event-time clock moves only with its records, so a partition whose customers
fall silent would never see them lapse. This small publisher writes ``{"ts": ..., "source":
...}`` to every partition of the heartbeats topic every few seconds or minutes, ``ts`` being
the wall clock minus a lag: the most a producer's events may trail their own event time
before they arrive behind the clock (late ones still count within RETENTION_ALLOWED_LATENESS_S).
Its event time never goes back, even when the wall clock is stepped back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import msgspec

from streams.domain.timestamps import format_ts
from streams.runtime.publish import Outgoing, Publisher

log = logging.getLogger(__name__)


def beat_ts(now_ms: int, lag_ms: int, previous_ms: int | None) -> int:
    """Event time of the next heartbeat: the wall clock minus the lag, never before the previous.

    >>> beat_ts(10_000, 3_000, None), beat_ts(10_000, 3_000, 9_000)
    (7000, 9000)
    """
    ts = now_ms - lag_ms
    return ts if previous_ms is None else max(ts, previous_ms)


def heartbeat_record(ts_ms: int, source: str) -> Outgoing:
    """The record as it goes on the wire (the publisher copies it to every partition)."""
    return Outgoing("heartbeats", None, msgspec.json.encode({"ts": format_ts(ts_ms), "source": source}), ts_ms)


def run(
    publisher: Publisher, every_s: float, lag_s: float, source: str, stop: threading.Event,
    count: int = 0, clock: Callable[[], float] = time.time,
) -> int:
    """Send a heartbeat to every partition, wait for its deliveries, then ``every_s``; until
    ``stop`` is set or ``count`` heartbeats were sent (0: no limit). Returns how many heartbeats
    were not delivered to every partition (each is logged)."""
    previous: int | None = None
    sent = incomplete = 0
    partitions = publisher.settings.partitions
    log.info("a heartbeat to each of the %d partitions of %s every %g s, event time = wall clock - %g s",
             partitions, publisher.settings.topic_heartbeats, every_s, lag_s)
    while not stop.is_set():
        ts = beat_ts(int(clock() * 1000), int(lag_s * 1000), previous)
        failed_before, errors_before = publisher.report.failed, len(publisher.report.errors)
        publisher.publish([heartbeat_record(ts, source)])
        failed = publisher.report.failed - failed_before
        if failed:
            incomplete += 1
            log.error("heartbeat %s: %d of %d partitions not delivered (%s)", format_ts(ts), failed, partitions,
                      "; ".join(publisher.report.errors[errors_before:][:3]) or "no reason given")
        else:
            log.debug("heartbeat %s delivered to %d partitions", format_ts(ts), partitions)
        previous, sent = ts, sent + 1
        if count and sent >= count:
            break
        stop.wait(every_s)
    return incomplete
