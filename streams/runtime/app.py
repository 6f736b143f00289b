"""The Faust app of a worker, built from :class:`Settings`."""

from __future__ import annotations

import logging
from typing import Any

import faust
from prometheus_client import REGISTRY, generate_latest

from streams.runtime import metrics
from streams.runtime.action_stats import ActionStats
from streams.runtime.agents.batched import BatchIngest
from streams.runtime.agents.trainer import TrainerAgent
from streams.runtime.kafka import faust_credentials
from streams.runtime.memory import heap_trimmer, warn_if_cache_outgrows_limit
from streams.runtime.faults import BROKER_DATA_LOST, broker_data_lost
from streams.runtime.model_sync import ModelFollower
from streams.runtime.ops import Operations
from streams.runtime.settings import Settings
from streams.runtime.transport import Transport
from streams.runtime.web import RetentionWeb, bounded_id, web_options

log = logging.getLogger(__name__)


class RetentionApp(faust.App):
    """faust.App whose consumer honours ``RETENTION_FETCH_MAX_WAIT_MS`` and whose web server
    serves only our pages (:mod:`streams.runtime.web`)."""

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def _new_web(self) -> RetentionWeb:
        return RetentionWeb(self)

    def _crash(self, reason: BaseException) -> None:
        """A crash whose cause an operator must act on is said once, in one line."""
        if not self._crashed.is_set() and broker_data_lost(reason):
            log.critical("stopping: %s (%s)", BROKER_DATA_LOST, str(reason).replace("\n", " "))
        super()._crash(reason)


def new_app(settings: Settings, app_id: str | None = None, **conf: Any) -> RetentionApp:
    """A Faust app with the settings every pipeline of ours shares (broker and its security,
    store, topics, group timeouts, producer batch, web server and its access check, fetch
    wait) and a ``/metrics`` page; ``app_id``: another group than the workers';  ``conf``:
    more Faust settings of one pipeline."""
    app = RetentionApp(
        app_id or settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_max_request_size=settings.model_snapshot_max_bytes,  # the trainer's snapshots
        web_host=settings.web_host,
        web_bind=settings.web_host,  # Faust listens on web_bind (default 0.0.0.0), not web_host
        web_port=settings.web_port,
        web_application_options=web_options(settings),
        web_in_thread=False,
        autodiscover=False,
        logging_config=None,
        **conf,
    )
    app.conf.retention_fetch_max_wait_ms = settings.fetch_max_wait_ms  # read by our transport
    app.conf.retention_trace_offsets = settings.trace_offsets_interval_s > 0  # read by our transport

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        """The Prometheus exposition; ``?name[]=...`` (repeatable) renders only those series,
        as prometheus_client's own exporters do (the bench's and tests' frequent reads)."""
        names = request.query.getall("name[]", [])
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        return web.bytes(generate_latest(registry), content_type="text/plain")

    return app


def create_app(settings: Settings) -> tuple[RetentionApp, BatchIngest]:
    warn_if_cache_outgrows_limit(settings)
    app = new_app(
        settings,
        canonical_url=settings.canonical_url,
        # The trainer holds label records unacknowledged until the period they belong to is
        # covered; a stop or a rebalance must not wait for them (they are read again instead).
        stream_wait_empty=False,
        # the agent that folds batches keeps its own state: Faust's tables are only the anchor of ownership
        table_standby_replicas=0,
    )
    follower = ModelFollower(app, settings, keep_state=settings.trainer == "worker")  # every worker reads every model snapshot
    ingest = BatchIngest(app, settings, follower)
    app.action_stats = ActionStats(app, settings, ingest)  # GET /actions/stats, uplift gauges
    if settings.trainer == "worker":
        app.trainer = TrainerAgent(app, settings, follower)  # runs on the worker that owns model-labels
    if settings.trace_offsets_interval_s > 0:

        @app.timer(settings.trace_offsets_interval_s, name="trace-offsets")
        async def trace_offsets() -> None:
            for line in app.consumer.trace_report():
                log.warning("offset trace: %s", line)
    trim = heap_trimmer() if settings.malloc_trim_interval_s > 0 else None
    if trim is not None:

        @app.timer(settings.malloc_trim_interval_s, name="malloc-trim")
        async def trim_heap() -> None:
            trim()
    app.operations = Operations(app, settings, ingest)  # /health/*, lag

    models_page(app, follower)

    @app.page("/users/{user_id}")
    @bounded_id("user_id")
    @app.table_route(table=ingest.owners, match_info="user_id")
    async def user_page(web: Any, request: Any, user_id: str) -> Any:
        """A user's features, scores and state, answered by the worker that owns the
        user's partition (another worker forwards the request there)."""
        profile = ingest.profile(user_id)
        if profile is None:
            metrics.USER_QUERIES.labels("404").inc()
            return web.json({"error": f"unknown user {user_id!r}"}, status=404)
        metrics.USER_QUERIES.labels("200").inc()
        return web.json(profile)

    return app, ingest


def models_page(app: faust.App, follower: ModelFollower) -> None:
    @app.page("/models")
    async def models(web: Any, request: Any) -> Any:
        """The newest model snapshot this process has read (the same on every worker): its
        version and boundary, the trainer's label counts, whether each prior still answers,
        and the prequential scores the trainer computed."""
        return web.json(follower.report())


def trainer_app_id(settings: Settings) -> str:
    return f"{settings.app_id}-trainer"


def create_trainer_app(settings: Settings) -> RetentionApp:
    """The one model trainer as a process of its own (``RETENTION_TRAINER=separate``): the
    trainer agent on ``model-labels`` in a group of its own (``<app id>-trainer``), the
    snapshot follower, ``/models``, ``/metrics`` and ``/health/live``. No worker of the app
    trains then, so the workers' CPU goes to the events alone."""
    app = new_app(settings, app_id=trainer_app_id(settings), stream_wait_empty=False)
    follower = ModelFollower(app, settings)
    app.trainer = TrainerAgent(app, settings, follower, settle_heap=True)
    models_page(app, follower)

    @app.page("/health/live")
    async def live(web: Any, request: Any) -> Any:
        """The process runs (Faust stops it on a crash)."""
        return web.json({"live": True})

    return app
