"""Prometheus metrics of a worker. Labels are bounded sets: never a user or item id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter(
    "retention_records",
    "Inbound records by logical topic and result (ok, late, invalid, duplicate, redelivered, rekeyed, heartbeat).",
    ["topic", "result"],
)
DEAD_LETTERS = Counter("retention_dead_letters", "Records sent to the dead-letter topic, by source topic.", ["topic"])
PROCESSING_ERRORS = Counter(
    "retention_processing_errors", "Records whose processing raised (dead-lettered), by exception type.", ["error"]
)
ACTIONS = Counter("retention_actions", "Retention actions emitted, by kind, rule and experiment group.", ["kind", "rule", "group"])
LABELS = Counter("retention_labels", "Matured labels learned, by model and label.", ["model", "label"])
MODEL_LABELS = Gauge("retention_model_labels_learned", "Labels the model has learned from on this worker.", ["model"])
MODEL_PRIOR = Gauge("retention_model_prior_active", "1 while the model still answers with its prior.", ["model"])
EVENT_TIME = Gauge("retention_event_time_seconds", "Event-time clock of the partition (Unix seconds).", ["partition"])
DUE_USERS = Gauge("retention_due_users", "Users waiting for an event-time check, on this worker.")
PROCESSING = Histogram(
    "retention_processing_seconds",
    "Wall time to process one inbound record, including due checks it triggers.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
