"""What an operator needs from a worker: health endpoints and operational metrics.

- ``GET /health/live``: 200 while the event loop runs (the answer comes from it).
- ``GET /health/ready``: 200 once the worker owns inbound partitions and its tables are
  restored from their changelogs, while it is neither crashed nor stopping nor stalled; else
  503 with the reason, as JSON. Stalled: records to read (consumer lag) and none processed or
  committed for ``RETENTION_STALL_TIMEOUT_S``; the reason says which partition waits for what
  (the facts of the batch agent's stall warnings), and the stall is logged once.
- Every ``RETENTION_METRICS_INTERVAL_S``: consumer lag per
  assigned inbound partition, assigned partitions, recovery progress, table keys and bytes,
  readiness. Series of partitions the worker no longer owns are removed.

Consumer lag is the high watermark of the last fetch minus the committed offset: brokers
such as the embedded one under-report the end of a partition in ListOffsets, while fetch
responses carry the true high watermark. Labels are bounded: the logical topic (as in
``retention_records_total``; ``rekeyed`` for the internal re-key topic), the partition
number, the table name.
"""

from __future__ import annotations

import logging
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import faust
from faust.types import TP

from streams.runtime import metrics
from streams.runtime.settings import Settings

log = logging.getLogger(__name__)

REKEYED = "rekeyed"  # logical name of the internal re-key topic in labels


class Progress(Protocol):
    """What readiness and the lag gauges read from the agent that folds the inbound topics
    (:class:`streams.runtime.agents.batched.BatchIngest`): the records it processed, why
    records have waited too long, its committed offsets, lag and partitions."""

    processed: int
    committed: dict[tuple[str, int], int]

    def waits(self) -> list[str]: ...

    def lag_of(self) -> dict[tuple[str, int], int]: ...

    def owned_partitions(self) -> set[int]: ...

    def assigned_partitions(self) -> set[int]: ...

    def store_size(self) -> tuple[int, int]: ...


class Operations:
    """Health endpoints and operational metrics of one worker's Faust app."""

    def __init__(self, app: faust.App, settings: Settings, progress: Progress) -> None:
        self.app = app
        self.progress = progress  #: the agent that folds batches: it reads the inbound topics, not Faust's consumer
        self.stall_s = settings.stall_timeout_s
        self.stopping: str | None = None  # the stop signal received (set by streams.runtime.worker)
        self._moved: tuple[int, int] | None = None  # (records processed, sum of committed offsets) last seen
        self._still_since: float | None = None  # since when there is lag and nothing moved
        self._stall_logged = False
        self.logical = {**settings.inbound_topics, settings.rekey_topic: REKEYED,
                        settings.topic_erasure_requests: "erasure-requests",
                        settings.topic_consents: "consents"}
        self._lag_series: set[tuple[str, str]] = set()
        self._assigned_series: set[str] = set()
        metrics.BUILD.info({"version": _version("retention-streams"), "faust": _version("faust-streaming"),
                            "python": platform.python_version()})
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        app.timer(settings.metrics_interval_s, name="retention-ops-metrics")(self.refresh)

        @app.page("/health/live")
        async def live(web: Any, request: Any) -> Any:  # answered by the event loop, so it runs
            return web.json({"live": True})

        @app.page("/health/ready")
        async def ready(web: Any, request: Any) -> Any:
            reason = self.not_ready_reason()
            metrics.WORKER_READY.set(0 if reason else 1)
            if reason:
                return web.json({"ready": False, "reason": reason}, status=503)
            return web.json({"ready": True, "partitions": len(self._inbound())})

    # ------------------------------------------------------------------ health

    def not_ready_reason(self) -> str | None:
        """Why the worker is not ready, or None when it is."""
        if self.app.crashed:
            return f"crashed: {self.app.crash_reason!r}"
        if self.stopping or self.app.should_stop:
            return f"stopping ({self.stopping or 'the app stops'})"
        inbound = self._inbound()
        if self.app.rebalancing:
            return "rebalancing"
        taking = self.progress.assigned_partitions() - self.progress.owned_partitions()
        if taking:  # the fold thread restores them from the changelog before it reads their inputs
            return f"restoring partitions {sorted(taking)} from the changelog"
        if not inbound:
            return "no partitions assigned"
        recovery = self.app.tables.recovery
        if recovery.in_recovery or not recovery.completed.is_set():
            return "table recovery in progress"
        return self.stalled(inbound)

    def stalled(self, inbound: set[TP]) -> str | None:
        """Why the worker is stalled (records to read, and none processed or committed for
        ``stall_s``), or None. Logged once when the stall is seen, and when it ends."""
        lag = sum(self._lags(inbound).values())
        committed = self.progress.committed
        moved = (self.progress.processed, sum(committed.get((tp.topic, tp.partition)) or 0 for tp in inbound))
        now = time.monotonic()
        if not lag or moved != self._moved:
            self._moved, self._still_since = moved, (now if lag else None)
            if self._stall_logged:
                log.info("no longer stalled: records are processed again")
                self._stall_logged = False
            return None
        if self._still_since is None:  # lag appeared with nothing moved since the last look
            self._still_since = now
        waited = now - self._still_since
        if waited < self.stall_s:
            return None
        waits = self.progress.waits()
        reason = (f"stalled: {lag} records to read and none processed or committed for {waited:.0f} s (RETENTION_STALL_TIMEOUT_S "
                  f"{self.stall_s:.0f} s); " + ("; ".join(waits) if waits else
                  "no record waits in the agent's merge or for a model snapshot: the consumer fetches nothing (paused partitions, broker)"))
        if not self._stall_logged:
            log.warning("worker %s", reason)
            self._stall_logged = True
        return reason

    # ------------------------------------------------------------------ metrics

    async def refresh(self) -> None:
        """Update the operational gauges from the consumer, the recovery and the stores."""
        inbound = self._inbound()
        recovery = self.app.tables.recovery
        metrics.RECOVERY_IN_PROGRESS.set(1 if recovery.in_recovery else 0)
        metrics.RECOVERY_REMAINING.set(recovery.active_remaining_total() if recovery.in_recovery else 0)
        metrics.WORKER_READY.set(0 if self.not_ready_reason() else 1)
        self._refresh_tables()
        if self.app.rebalancing:  # the assignment is in flux: keep the last series until it settles
            return
        self._set_lag({(self.logical[tp.topic], str(tp.partition)): lag for tp, lag in self._lags(inbound).items()})
        self._refresh_assignment(inbound)

    def _set_lag(self, series: dict[tuple[str, str], int]) -> None:
        for labels, lag in series.items():
            metrics.CONSUMER_LAG.labels(*labels).set(lag)
        for labels in self._lag_series - set(series):
            metrics.CONSUMER_LAG.remove(*labels)
        self._lag_series = set(series)

    def _lags(self, inbound: set[TP]) -> dict[TP, int]:
        """Per inbound partition fetched at least once: its fetch high watermark minus the
        committed offset (or the first offset read, while nothing is committed)."""
        return {TP(t, p): lag for (t, p), lag in self.progress.lag_of().items() if TP(t, p) in inbound}

    def _refresh_assignment(self, inbound: set[TP]) -> None:
        counts: dict[str, int] = {}
        for tp in inbound:
            counts[self.logical[tp.topic]] = counts.get(self.logical[tp.topic], 0) + 1
        for topic, count in counts.items():
            metrics.ASSIGNED_PARTITIONS.labels(topic).set(count)
        for topic in self._assigned_series - set(counts):
            metrics.ASSIGNED_PARTITIONS.remove(topic)
        self._assigned_series = set(counts)
        owned = {str(tp.partition) for tp in inbound}
        for family in metrics.EVENT_TIME.collect():  # set by the ingest agent as clocks move
            for sample in family.samples:
                if sample.labels["partition"] not in owned:
                    metrics.EVENT_TIME.remove(sample.labels["partition"])

    def _refresh_tables(self) -> None:
        keys, size = self.progress.store_size()  # the users' states, in the batch agent's own stores
        metrics.TABLE_KEYS.labels("users").set(keys)
        metrics.TABLE_BYTES.labels("users").set(size)
        for name, table in self.app.tables.items():
            dbs = list(getattr(table.data, "_dbs", {}).values())  # faust's rocksdb store: one DB per partition
            if not all(hasattr(db, "property_int_value") for db in dbs):
                continue  # not rocksdict
            keys = sum(db.property_int_value("rocksdb.estimate-num-keys") or 0 for db in dbs)
            size = sum((db.property_int_value("rocksdb.total-sst-files-size") or 0)
                       + (db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0) for db in dbs)
            metrics.TABLE_KEYS.labels(name).set(keys)
            metrics.TABLE_BYTES.labels(name).set(size)

    async def _on_rebalance_complete(self, *args: Any, **kwargs: Any) -> None:
        metrics.REBALANCES.inc()
        assigned = {TP(topic, p) for p in self.progress.assigned_partitions() for topic in self.logical}
        log.info("rebalance complete: %d inbound partitions assigned", len(assigned),
                 extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)})

    def _inbound(self) -> set[TP]:
        """Partitions of the topics the worker reads (not changelogs) that it owns."""
        return {TP(topic, p) for p in self.progress.owned_partitions() for topic in self.logical}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
