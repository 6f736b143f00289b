"""Prometheus metrics of a worker. Labels are bounded sets: never a user or item id."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from streams.domain.events import SCHEMA_REGISTRY_MAGIC

RECORDS_EXPIRED = Counter(
    "retention_records_expired",
    "Inbound records deleted by the topic's retention before this worker read them (never processed), by logical topic.",
    ["topic"],
)
RECORDS = Counter(
    "retention_records",
    "Inbound records by logical topic and result: ok; late (beyond the allowed lateness: lifetime figures only); "
    "invalid (dead-lettered); duplicate (an event id already applied, same content); conflict (an event id "
    "already applied with other content: a producer re-used it; dead-lettered, the first event stands); redelivered (read again after a crash or "
    "rebalance, already applied); rekeyed (sent on to its user's partition); heartbeat; erased (an event of a customer "
    "in the erased-ids set: counted, not folded, not dead-lettered); on erasure-requests: ok (a customer erased), "
    "repeated (already erased: confirmed again), invalid, rekeyed. Added to once per micro-batch, after its records are folded.",
    ["topic", "result"],
)
PSEUDONYMS_ROTATED = Counter(
    "retention_pseudonym_rotations",
    "Customer states moved from a previous pseudonym key's pseudonym to the current key's at their first event after a "
    "key rotation (RETENTION_PSEUDONYM_KEYS_PREVIOUS).",
)
SCHEMA_REGISTRY_RECORDS = Counter(
    "retention_schema_registry_records",
    "Inbound records framed by a Schema Registry serializer (magic byte 0 and a 4-byte schema id, stripped), by logical topic.",
    ["topic"],
)
SCHEMA_REGISTRY_ID = Gauge(
    "retention_schema_registry_schema_id", "Schema id of the last framed record read, by logical topic (which schema version producers write).", ["topic"]
)
DEAD_LETTERS = Counter("retention_dead_letters", "Records sent to the dead-letter topic, by source topic.", ["topic"])
PROCESSING_ERRORS = Counter(
    "retention_processing_errors", "Records whose processing raised (dead-lettered), and due checks of a user or clock advances that raised (logged), by exception type.", ["error"]
)
ACTIONS = Counter("retention_actions", "Retention actions emitted, by kind, rule and experiment group.", ["kind", "rule", "group"])
ACTIONS_SUPPRESSED = Counter(
    "retention_actions_suppressed",
    "Retention actions a rule decided that the guard rails stopped (not sent), by kind and reason: unsubscribed, no_consent (the customer did not allow the kind: consents topic), "
    "checking_out, cooldown, budget_count, budget_value.",
    ["kind", "reason"],
)
BUDGET_LEFT = Gauge(
    "retention_budget_left",
    "What a partition may still spend on its current UTC day of event time (its share of the policy file's daily "
    "budgets): kind all/coupon/recommendation/care_outreach; measure count (actions) or value (coupon value, "
    "currency units). Kinds without a budget of their own have no series.",
    ["partition", "kind", "measure"],
)
POLICY_INFO = Info("retention_policy", "The policy file this worker runs: its path, rules and version.")
LABELS = Counter(
    "retention_labels",
    "Matured labels learned, by model and label (churn: 0/1; loyalty: purchase days in the horizon, 5+ for five or more).",
    ["model", "label"],
)
MODEL_LABELS = Gauge("retention_model_labels_learned", "Labels the model in the newest snapshot this worker read has learned from (the same on every worker).", ["model"])
MODEL_PRIOR = Gauge("retention_model_prior_active", "1 while the model still answers with its prior.", ["model"])
MODEL_BLEND_WEIGHT = Gauge(
    "retention_model_blend_weight",
    "The learner's share w of the answer prior + w (learner - prior), in the newest snapshot this worker read: "
    "0 while the prior answers alone, 1 when the learner does (GET /models: blend). model = churn, loyalty.",
    ["model"],
)
EVENT_TIME = Gauge("retention_event_time_seconds", "Event-time clock of the partition (Unix seconds).", ["partition"])
MERGE_RECORDS = Gauge("retention_merge_records", "Records held in this worker's event-time merges (decoded, waiting for their turn).")
MERGE_RECORDS_MAX = Gauge(
    "retention_merge_records_max",
    "The most records this worker's event-time merges held at once since it started (bounded by "
    "RETENTION_MERGE_MAX_RECORDS per partition, plus one receive chunk of 500 records per input).",
)
INPUT_PAUSES = Counter(
    "retention_input_pauses",
    "Times an input partition stopped fetching because its records filled its share of the event-time merge "
    "(back-pressure), by logical topic.",
    ["topic"],
)


_merge_max = [0]


def observe_merge(size: int) -> None:
    """The merges' size now, and the most since the start."""
    MERGE_RECORDS.set(size)
    if size > _merge_max[0]:
        _merge_max[0] = size
        MERGE_RECORDS_MAX.set(size)


DUE_USERS = Gauge("retention_due_users", "Users waiting for an event-time check, on this worker.")
DUE_CHECKS = Counter(
    "retention_due_checks",
    "Users checked when the event-time clock reached their due time (labels maturing, scoring sweeps, lapse checks, "
    "attribution windows ending; a check that failed included): with the records, what a worker's CPU goes to "
    "(docs/scaling.md).",
)
DUE_CHECK_SECONDS = Counter(
    "retention_due_check_cpu_seconds",
    "CPU time the fold thread spent on those checks (their rows, points, rules and actions; not the records' own).",
)
BATCHES_UNACKNOWLEDGED = Gauge(
    "retention_batches_unacknowledged",
    "Folded micro-batches whose outputs or changelog records the broker has not all acknowledged (their input offsets "
    "are not committed yet); one or two is normal, a growing number means deliveries are stuck.",
)
RECORDS_UNACKNOWLEDGED = Gauge(
    "retention_records_unacknowledged", "Records those micro-batches sent that the broker has not acknowledged yet."
)
class RecordHistogram:
    """A histogram observed once per inbound record by one thread (the fold thread; the naive
    bench agent): a bucket's count is a plain integer, exported by this collector, because
    ``prometheus_client.Histogram.observe`` takes a lock per bucket and costs ~3 µs, a few per
    cent of a worker's CPU at two observations a record. One writer only: a scrape reads the
    counts as they are (its sum may be one observation off its counts, as Prometheus allows).
    Values are durations: a NaN would count in the first bucket (prometheus_client's in none)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = [float(b) for b in buckets] + [float("inf")]
        self.labels_le = [floatToGoString(b) for b in self.bounds]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: the first bound >= value
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = list(self.counts), self.sum
        cumulative = list(accumulate(counts))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=list(zip(self.labels_le, cumulative)),
                                    sum_value=total)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, buckets=[("+Inf", 0)], sum_value=0.0)


PROCESSING = RecordHistogram(
    "retention_processing_seconds",
    "Wall time to process one inbound record, including due checks it triggers.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
RECORD_LATENCY = RecordHistogram(
    "retention_record_latency_seconds",
    "Wall time from an inbound record's Kafka timestamp to the end of its processing. End-to-end latency "
    "when producers stamp records with their send time (CreateTime = now, as `retention bench --mode live`); "
    "for history published with its event time (replays, the simulator) it is the event's age.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
ACTION_LATENCY = Histogram(
    "retention_action_latency_seconds",
    "Wall time from the Kafka timestamp of the record that triggered a decision (an event, or the heartbeat "
    "that moved the event-time clock past a due time) to the send of the retention action. End-to-end, "
    "event in to action out, when producers stamp records with their send time; the event's age for history.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
SNAPSHOTS = Counter("retention_user_scores", "Snapshots of users' features and scores published on user-scores.")
USER_QUERIES = Counter("retention_user_queries", "GET /users/{user_id} answered here, by status.", ["status"])
HTTP_REFUSED = Counter(
    "retention_http_refused",
    "HTTP requests the worker refused before answering, by reason: unauthorized (no or a wrong bearer token: 401), "
    "disabled (no RETENTION_API_TOKEN set: 403), too_large (body over the limit: 413), bad_id (a path id outside 1 to 128 "
    "characters: 400). A climbing unauthorized count is someone guessing.",
    ["reason"],
)
ATTRIBUTED = Counter(
    "retention_attributed_decisions",
    "Retention decisions in attribution, by kind, rule, experiment group and result: decided (its window opened); "
    "matured (its window and the allowed lateness are over: the denominator of the rates); converted (matured, with a "
    "purchase in the window); redeemed (matured, a purchase carried its coupon code or action id); evicted (dropped "
    "early: too many open for one user).",
    ["kind", "rule", "group", "result"],
)
ACTION_OUTCOMES = Counter(
    "retention_action_outcomes", "Outcomes on action-outcomes, by the kind of the decision they name (unknown: not waiting).",
    ["kind", "outcome"],
)
UPLIFT = Gauge(
    "retention_uplift",
    "Conversion rate of treatment minus control over the matured decisions of this worker's partitions (the whole "
    "shop with one worker; GET /actions/stats sums every worker), and its confidence interval: bound = estimate, low, "
    "high. rule = all for the kind as a whole.",
    ["kind", "rule", "bound"],
)
UPLIFT_ITT = Gauge(
    "retention_uplift_itt",
    "Intention-to-treat uplift over this worker's partitions: conversion (a purchase within the attribution window "
    "after a customer's first decision of the kind, or of the rule) of treatment customers minus control customers, "
    "one observation per customer, with Newcombe's interval: bound = estimate, low, high. rule = all for the kind.",
    ["kind", "rule", "bound"],
)
CONTROL_SHARE = Gauge(
    "retention_control_share", "Share of the decisions (of this worker's partitions) made for the control group, by kind.", ["kind"]
)
NEGATIVE_REVIEWS = Counter("retention_negative_reviews", "Reviews whose text the sentiment model reads as negative.")

# Operations (streams/runtime/ops.py): refreshed every RETENTION_METRICS_INTERVAL_S. Series of
# partitions this worker no longer owns are removed.
CONSUMER_LAG = Gauge(
    "retention_consumer_lag_records",
    "Records of an assigned inbound partition not yet processed and committed: the high watermark of the "
    "last fetch minus the committed offset (the log start before the first commit).",
    ["topic", "partition"],
)
ASSIGNED_PARTITIONS = Gauge("retention_assigned_partitions", "Inbound partitions assigned to this worker, by logical topic.", ["topic"])
REBALANCES = Counter("retention_rebalances", "Consumer group rebalances completed by this worker (the first assignment included).")
RECOVERY_IN_PROGRESS = Gauge("retention_recovery_in_progress", "1 while tables are being restored from their changelogs.")
RECOVERY_REMAINING = Gauge(
    "retention_recovery_remaining_records", "Changelog records still to restore for this worker's active table partitions."
)
TABLE_KEYS = Gauge("retention_table_keys", "Estimated keys in the table's RocksDB partitions held by this worker.", ["table"])
TABLE_BYTES = Gauge(
    "retention_table_bytes", "Bytes of the table's RocksDB partitions held by this worker: SST files plus memtables.", ["table"]
)
WORKER_READY = Gauge("retention_worker_ready", "1 while /health/ready answers 200 (partitions assigned, recovery done, not stalled, crashed or stopping).")
BUILD = Info("retention_build", "Versions of this worker: the package, Faust and Python.")
MODEL_QUALITY = Gauge(
    "retention_model_quality",
    "Prequential score of the model's predictions over its latest matured labels (GET /models gives the window): "
    "churn auc, log_loss, brier, ece; loyalty mae, rmse.",
    ["model", "metric"],
)


MODEL_SNAPSHOT_BOUNDARY = Gauge(
    "retention_model_snapshot_boundary_seconds",
    "Event time (epoch seconds) of model snapshot boundaries on this worker: kind=newest (newest snapshot with models read), "
    "covered (the trainer covered up to it), in_use (the snapshot scoring this worker's latest record).",
    ["kind"],
)
MODEL_WAITING = Gauge(
    "retention_model_waiting_partitions", "Input partitions of this worker whose next record waits for the model snapshot its event time needs."
)
MODEL_SNAPSHOT_MISSES = Counter(
    "retention_model_snapshot_misses",
    "Records scored by the oldest kept snapshot because theirs was no longer kept (raise RETENTION_MODEL_SNAPSHOTS_KEPT).",
)
MODEL_TRAINER_RECORDS = Counter(
    "retention_model_trainer_records", "model-labels records the trainer read, by result: buffered (examples: a pack counts each), watermark, forget (an erased customer: their examples not learned yet dropped), invalid.", ["result"]
)
MODEL_SNAPSHOTS = Counter("retention_model_snapshots", "Snapshots the trainer published, by kind: models, marker.", ["kind"])
MODEL_SNAPSHOTS_REFUSED = Counter(
    "retention_model_snapshots_refused",
    "model-snapshots records this worker refused to load, by reason: unsigned, bad_signature, malformed, newer_format, "
    "forbidden_global (docs/operations.md: \"The model snapshot key\").",
    ["reason"],
)


_record_counters: dict[tuple[str, str], Any] = {}


def records_by_topic() -> dict[str, float]:
    """Inbound records counted so far per logical topic, whatever their result (all of ``RECORDS``)."""
    totals: dict[str, float] = {}
    for metric in RECORDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                topic = sample.labels["topic"]
                totals[topic] = totals.get(topic, 0.0) + sample.value
    return totals


#: Records counted by the fold thread since its last :func:`flush_record_counts`.
_record_counts: dict[tuple[str, str], int] = {}


def count_record(topic: str, result: str) -> None:
    """Count a record in ``RECORDS`` at the fold thread's next :func:`flush_record_counts` (once
    per micro-batch): it runs once per record, and an increment of a labelled Prometheus
    counter (a lock, a check) costs ~10 times this."""
    key = (topic, result)
    _record_counts[key] = _record_counts.get(key, 0) + 1


def flush_record_counts() -> None:
    """Add the records counted since the last flush to ``RECORDS`` (the fold thread, after
    each micro-batch and at its end)."""
    for (topic, result), n in _record_counts.items():
        child = _record_counters.get((topic, result))
        if child is None:  # (the labelled child kept: ``labels()`` costs more than the increment)
            child = _record_counters[(topic, result)] = RECORDS.labels(topic, result)
        child.inc(n)
    _record_counts.clear()


def count_framing(topic: str, value: bytes | None) -> None:
    """Record the Schema Registry schema id of an inbound value, if it is framed (the label is a
    contract topic or ``other``: bounded)."""
    if value and value[0] == SCHEMA_REGISTRY_MAGIC:  # (per record: most values are plain JSON)
        from streams.domain.events import EVENT_TYPES, unframe

        schema_id = unframe(value)[1]
        if schema_id is not None:
            label = topic if topic in EVENT_TYPES else "other"
            SCHEMA_REGISTRY_RECORDS.labels(label).inc()
            SCHEMA_REGISTRY_ID.labels(label).set(schema_id)


def export_learners(learners: Any) -> None:
    """Set the learners' label counts, prior flags, blend weights and prequential scores (models.online.OnlineLearners)."""
    report = learners.report()
    for part in ("churn", "loyalty"):
        model = report[part]["model"]
        MODEL_LABELS.labels(model).set(report[part]["labels"])
        MODEL_PRIOR.labels(model).set(1 if report[part]["prior"] else 0)
        MODEL_BLEND_WEIGHT.labels(part).set(report[part]["blend"]["weight"])
        for metric, value in report[part]["metrics"].items():
            if metric in ("auc", "log_loss", "brier", "ece", "mae", "rmse") and value is not None:
                MODEL_QUALITY.labels(model, metric).set(value)


def count_attribution(tally: Any) -> None:
    """Add one step's attribution counts (streams.domain.uplift.Tally) to the counters."""
    for key, c in tally.decisions.items():
        kind, rule, group = key.split("|")
        for result in ("decided", "matured", "converted", "redeemed", "evicted"):
            n = getattr(c, result)
            if n:
                ATTRIBUTED.labels(kind, rule, group, result).inc(n)
    for key, n in tally.outcomes.items():
        ACTION_OUTCOMES.labels(*key.split("|")).inc(n)


def export_uplift(stats: dict[str, Any]) -> None:
    """Set the uplift and control-share gauges from a report (streams.domain.uplift.report)."""
    for kind, arms in stats["by_kind"].items():
        decided = arms["treatment"]["decisions"] + arms["control"]["decisions"]
        if decided:
            CONTROL_SHARE.labels(kind).set(arms["control"]["decisions"] / decided)
        for rule, compared in [("all", arms), *stats["by_rule"].get(kind, {}).items()]:
            for gauge, uplift in ((UPLIFT, compared["uplift"]), (UPLIFT_ITT, compared["itt"]["uplift"])):
                if uplift is not None:
                    for bound in ("estimate", "low", "high"):
                        gauge.labels(kind, rule, bound).set(uplift[bound])


def metrics_markdown() -> str:
    """The README's table of every metric a worker exports (``python -m streams.readme``)."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for collector in globals().values():
        if isinstance(collector, RecordHistogram):
            rows.append(f"| `{collector.name}` | histogram |  | {collector.documentation} |")
            continue
        if not isinstance(collector, (Counter, Gauge, Histogram, Info)):
            continue
        kind = type(collector).__name__.lower()
        name = collector._name + {"counter": "_total", "info": "_info"}.get(kind, "")
        labels = ", ".join(f"`{label}`" for label in collector._labelnames)
        rows.append(f"| `{name}` | {kind} | {labels} | {collector._documentation} |")
    return "\n".join(rows) + "\n"
