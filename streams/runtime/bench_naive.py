"""The naive reference pipeline of ``retention bench``: what a first Faust app would do.

One agent over the same inbound topics as the worker; per record: ``json.loads`` (stdlib),
then +1 on the user's counter in a RocksDB table with its changelog. Nothing else is
written: no validation, no event-time merge, no features, no model, no actions. It runs
with the worker's settings (broker, partitions, fetch wait, producer batch, session
timeouts) and counts records and observes their latency in the worker's own metrics
(``retention_records_total``, ``retention_record_latency_seconds``), so the bench reads
both pipelines the same way.

Run as ``python -m streams.runtime.bench_naive`` with the worker's environment; nothing
happens at import.
"""

from __future__ import annotations

import json
import time
from typing import Any

import faust

from streams.runtime import metrics
from streams.runtime.app import new_app
from streams.runtime.settings import Settings


def create_naive_app(settings: Settings) -> faust.App:
    app = new_app(settings)
    logical = settings.inbound_topics
    source = app.topic(*logical, key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=settings.partitions, key_type=bytes, value_type=int)

    @app.agent(source, name="naive")
    async def count(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            msg = event.message
            try:
                user_id = json.loads(event.value).get("user_id")
            except (ValueError, AttributeError):
                user_id = None
            if user_id:
                counts[user_id.encode()] += 1
            metrics.RECORDS.labels(logical[msg.topic], "ok" if user_id else "heartbeat").inc()
            if msg.timestamp:
                metrics.RECORD_LATENCY.observe(time.time() - msg.timestamp)

    return app


def main() -> None:
    from streams.runtime.logs import configure, worker_logging_config

    settings = Settings()
    configure(settings.log_format, settings.log_level)
    app = create_naive_app(settings)
    logging_config = worker_logging_config(settings.log_format, settings.log_level)
    faust.Worker(app, loglevel=settings.log_level.upper(), logging_config=logging_config, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
