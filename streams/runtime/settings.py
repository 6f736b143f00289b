"""Every setting, in one typed place, read from environment variables.

``KAFKA_BOOTSTRAP_SERVERS`` keeps its usual name; everything else is ``RETENTION_*``.
The README's settings table is generated from this class (``retention settings``).
Defaults are production defaults: the embedded broker's short timeouts are applied only
by :func:`embedded_overrides`, in processes the demo and the tests start.
"""

from __future__ import annotations

import os
import secrets
import socket
import typing
from functools import lru_cache

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.domain.dead_letters import DEFAULT_REDACT, DeadLetterConfig
from models.signing import KEY_MIN_CHARS, SnapshotKeys
from streams.domain.lifecycle import LifecycleConfig
from streams.domain.loyalty import DEFAULT_TIERS, LoyaltyConfig, parse_tiers
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, TimestampError, parse_ts
from streams.domain.policy_file import DEFAULT_POLICY, Policy, load_policy

if typing.TYPE_CHECKING:  # (imported where used: a command that only publishes or reads loads no model library)
    from models.bundle import Models
    from streams.domain.engine import EngineConfig

#: SASL mechanisms both of our Kafka clients (aiokafka in the worker, librdkafka in the tools) take a password for.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Shortest API token accepted: a guessable token would make the bearer check decoration.
API_TOKEN_MIN_LENGTH = 16

#: Settings the policy file replaced (issue 5): a worker refuses to start while one is set,
#: naming where the value lives now, rather than silently ignoring it.
MOVED_TO_POLICY_FILE = {
    "RETENTION_CHURN_THRESHOLD": "rules[lapsed_after_streak].when.churn_at_least",
    "RETENTION_STREAK_MIN_PURCHASES": "lapse.min_purchases",
    "RETENTION_LAPSE_MIN_DAYS": "lapse.min_days",
    "RETENTION_LAPSE_GAP_FACTOR": "lapse.gap_factor",
    "RETENTION_LAPSE_RECHECK_DAYS": "lapse.recheck_days",
    "RETENTION_LAPSE_GIVE_UP_DAYS": "lapse.give_up_days",
    "RETENTION_COUPON_PERCENT": "rules[lapsed_after_streak].coupon.percent",
    "RETENTION_COUPON_TTL_DAYS": "rules[lapsed_after_streak].coupon.valid_days",
    "RETENTION_CONTROL_SHARE": "control_share",
}


#: How to make a snapshot key, in every message that asks for one.
MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_hex(32))'"


class MissingSnapshotKey(ValueError):
    """A worker without a snapshot key: it would have to read model snapshots unsigned."""


class Settings(BaseSettings):
    # (inputs hidden in errors: a rejected key or token must not end up in a log)
    model_config = SettingsConfigDict(env_prefix="RETENTION_", frozen=True, extra="ignore", hide_input_in_errors=True)

    bootstrap_servers: str = Field(
        "localhost:9092",
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Kafka bootstrap servers, comma separated (host:port).",
    )
    app_id: str = Field("retention-streams", description="Faust app id: the consumer group and the prefix of internal topics.")
    partitions: int = Field(8, ge=1, description="Partitions of every topic we create. Inputs must all have this many (co-partitioned by user_id).")
    replication_factor: int = Field(1, ge=1, description="Replication factor of topics we create.")

    topic_clicks: str = Field("clicks", description="Topic of click events (in).")
    topic_purchases: str = Field("purchases", description="Topic of purchase events (in).")
    topic_reviews: str = Field("reviews", description="Topic of review events (in).")
    topic_outcomes: str = Field("action-outcomes", description="Topic of action outcomes from marketing systems (in).")
    topic_heartbeats: str = Field("heartbeats", description="Topic of event-time heartbeats (in), one per partition.")
    topic_actions: str = Field("retention-actions", description="Topic of retention actions (out).")
    topic_dead_letters: str = Field("dead-letters", description="Topic of records that broke the contract (out).")
    topic_scores: str = Field("user-scores", description="Topic of each user's latest features and scores (out, compacted).")
    topic_model_labels: str = Field("model-labels", description="Internal, one partition: the examples the workers send the model trainer, and each partition's event-time watermarks (docs/models.md).")
    topic_model_snapshots: str = Field("model-snapshots", description="Internal, one partition, compacted: the trainer's versioned model snapshots, read by every worker (docs/models.md).")
    topic_erasure_requests: str = Field("erasure-requests", description="Topic of requests to forget a customer (in; `retention forget`; schemas/erasure-requests.v1), keyed by the user id (or pseudonym) they name; kept RETENTION_ERASURE_REQUESTS_RETENTION_DAYS (they hold shop ids).")
    topic_consents: str = Field("consents", description="Topic of customers' marketing permissions per action kind (in; schemas/consents.v1), keyed by user_id; the guard rails honour them (batched hot path).")
    topic_erasure_confirmations: str = Field("erasure-confirmations", description="Topic of erasure confirmations (out; schemas/erasure-confirmations.v1), keyed by request_id: what was removed.")

    data_dir: Path = Field(Path("var/data"), description="Where the workers keep RocksDB state.")
    state_cache_users: int = Field(100_000, ge=100, description="Decoded user states kept in memory per partition (least recently used evicted once persisted).")
    rocksdb_block_cache_mb: int = Field(16, ge=1, description="RocksDB block cache per partition store, MB.")
    rocksdb_write_buffer_mb: int = Field(16, ge=1, description="RocksDB memtable size per partition store, MB (two at most).")
    rocksdb_memtables_mb: int = Field(64, ge=0, description="RocksDB memtables of all the partition stores of one worker together, MB (a soft bound: once their sum nears it, the store being written flushes its memtable), so a worker's memtables do not grow with the partitions it owns (each store still flushes at RETENTION_ROCKSDB_WRITE_BUFFER_MB); 0: no shared budget (up to partitions owned x 2 x RETENTION_ROCKSDB_WRITE_BUFFER_MB).")
    malloc_trim_interval_s: float = Field(5.0, ge=0, description="Seconds between two returns of the C heap's free memory to the system (glibc's malloc_trim, on the worker's event loop; a few ms each): glibc keeps what is freed (RocksDB's flushed memtables, records folded), so without it a worker's RSS stays at its heap's high-water mark. 0: never; nothing where the C library is not glibc.")
    batch_max_records: int = Field(5_000, ge=1, description="Most records received at once; a batch of state writes and commits is also sealed once it has folded this many records or changed this many users' states.")
    commit_interval_ms: int = Field(
        100, ge=0,
        description="How long the records folded since the last batch are gathered before their users' states are written "
        "(one RocksDB WriteBatch and one changelog record per user) and, once every output is acknowledged, their input "
        "offsets committed: Kafka Streams' commit.interval.ms. Folding, actions and score rows do not wait for it (model-labels "
        "packs go out with it, or when full). Larger: fewer changelog records for busy users and fewer commits; more records "
        "folded again after a crash. 0: a batch per receive.")
    merge_max_records: int = Field(20_000, ge=100, description="Records a partition may hold in its event-time merge (both ingest paths); an input holding its share stops fetching until half of them are folded (back-pressure: memory stays bounded under any backlog; a receive takes its records in chunks of 500 and pauses between two, so an input outgrows its share by one chunk at most).")
    web_host: str = Field("127.0.0.1", description="Address the worker's web server listens on (the only one: 127.0.0.1 accepts no connection from other hosts); 0.0.0.0 in containers.")
    web_port: int = Field(6066, description="Port of the worker's web server.")
    api_token: SecretStr | None = Field(
        None,
        description="Secret bearer token of the HTTP API: every page but /metrics and /health/* answers 401 without "
        "`Authorization: Bearer <token>`, and 403 to everyone while no token is set (README, \"Access to the HTTP API\"). "
        f"At least {API_TOKEN_MIN_LENGTH} characters; every worker of an app needs the same one (they forward requests to each other).",
    )
    api_token_file: Path | None = Field(
        None,
        description="File holding the API token (a mounted secret; surrounding whitespace ignored), instead of RETENTION_API_TOKEN. Read at start.",
    )
    advertised_url: str = Field("", description="URL other workers use to reach this one (GET /users/{id} is forwarded to the owner of the user's partition); default http://<web host, or the hostname when listening on 0.0.0.0>:<web port>.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines: text for terminals, or json (one object per line: ts, level, logger, message, "
        "and extras such as topic, partition, offset); the container image sets json.",
    )
    metrics_interval_s: float = Field(
        5.0, gt=0, description="Seconds between refreshes of the consumer lag, assignment, recovery and table size metrics."
    )

    max_clock_skew_s: float = Field(86_400.0, gt=0, description="How far an event's ts may be ahead of its record's Kafka timestamp, or of the worker's clock, before it is dead-lettered.")
    min_event_time: str = Field("1990-01-01T00:00:00Z", description="The earliest plausible event time (RFC 3339): an event before it is dead-lettered (year 0001 is valid RFC 3339, not a plausible purchase).")
    max_record_bytes: int = Field(1_048_576, ge=1024, description="Inbound records larger than this are dead-lettered (by reference: position, size, and a bounded copy) without being parsed.")
    dead_letter_raw: bool = Field(False, description="Dead letters copy the raw key and value (personal data, on a topic many teams read); false: a redacted copy, the position on the source topic and the fields that failed.")
    dead_letter_redact_fields: str = Field(",".join(sorted(DEFAULT_REDACT)), description="Comma-separated JSON field names masked (at any depth) in the dead letters' redacted copy; `user_id` in it also omits the record's key.")
    dead_letter_max_copy_bytes: int = Field(16_384, ge=256, le=262_144, description="The largest key or value a dead letter copies; a larger raw value is referenced with its size and a prefix, so a dead letter always fits the broker's record size limit.")
    dead_letter_log_interval_s: float = Field(60.0, gt=0, description="Seconds between the worker log's summaries of dead letters (one line per source topic: counts by reason, the first position; WARNING for 10 or more and above 1 % of the topic's records, else INFO); each dead letter alone is logged at DEBUG.")
    allowed_lateness_s: float = Field(3600.0, ge=0, description="How late (behind the partition's event-time clock) an event may arrive and still count in its windows; later ones update lifetime figures only and are counted as `late`.")
    cart_timeout_hours: float = Field(24.0, gt=0, description="A cart (add_to_cart or checkout_start) with no purchase within this time is abandoned.")
    session_gap_minutes: float = Field(30.0, gt=0, description="Clicks without a session_id form one session per channel and bucket of this many minutes.")
    scores_interval_s: float = Field(86_400.0, gt=0, description="Event time between two user-scores snapshots of a user whose state changed (a scoring always publishes one).")
    churn_horizon_days: float = Field(30.0, gt=0, description="H: churn at t means no purchase in (t, t + H]; loyalty at t is the number of purchase days in (t, t + H].")
    churn_min_labels: int = Field(50, ge=1, description="Matured labels (of both classes for churn) before the learned churn and loyalty models replace their recency priors.")
    uplift_min_decisions: int = Field(30, ge=1, description="Matured decisions of each group (treatment and control) before the uplift model of an action kind answers (docs/uplift.md); until then an uplift-targeted rule decides by its exploration share alone.")
    model_period_days: float = Field(1.0, gt=0, description="Models learn by periods of event time this long: a period's examples are learned once every partition's event-time clock has passed its end, and give the snapshot versioned by that boundary.")
    model_lag_periods: int = Field(1, ge=0, description="A record at event time t is scored by the snapshot of boundary (floor(t / period) - lag) * period, and waits until the trainer has covered it: a larger lag lets partitions drift further apart without waiting.")
    trainer: Literal["worker", "separate"] = Field("worker", description="Where the one model trainer runs. worker: on whichever worker owns model-labels (its learning, ~40-140 CPU µs per event of the shop, then weighs on that worker). separate: on a `retention trainer` process of its own (one per app, group `<app id>-trainer`), and no worker trains; set it for the workers and the trainer alike (docs/architecture.md).")
    model_labels_pack: int = Field(512, ge=1, description="Most examples a worker packs into one model-labels record (a micro-batch's, in order; the trainer reads one record instead of one per example). 1: one example per record, the format of 0.1 workers: set it while a rolling upgrade from such a version runs, since their trainers skip packed records (CHANGELOG.md).")
    model_snapshot_max_bytes: int = Field(64 * 1024 * 1024, ge=1_048_576, description="Largest model snapshot record: max.message.bytes of the model-snapshots topic we create, the Faust producer's largest request and the workers' fetch size. A snapshot grows with the customers the trainer's BG/NBD fit keeps (35-70 bytes each in the record, RETENTION_BGNBD_CUSTOMERS) and the sentiment vocabulary: Kafka's default of 1 MB holds 15,000-30,000 customers (docs/upgrading.md for a topic created before); a larger snapshot stops the trainer with one line saying so.")
    model_snapshots_kept: int = Field(32, ge=1, description="Snapshots with models each worker keeps (bytes) to score re-processed records after a restart with the models they had.")
    churn_prior_learns: bool = Field(False, description="Until the churn learner takes over, its prior answers with the churn rate of the matured labels in the same recency bin (calibrated as labels accumulate, but from a few labels at first, and learned by each worker); false: the fixed recency formula, so the lapse rule's early decisions depend on the records alone.")
    loyalty_prior_learns: bool = Field(True, description="Until the loyalty learner takes over, its prior answers with the mean purchase days of the matured labels in the same recency bin (measured better than the formula: docs/evaluation.md); false: the fixed formula.")
    bgnbd_refit_periods: int = Field(7, ge=0, description="The trainer refits BG/NBD on the customers' latest purchase histories (from the examples it learns) every this many model periods, first as soon as 20 customers (5 of them repeat buyers) are known, a fit whose purchase rates hardly vary across customers (Gamma shape r > 100) set aside; its P(no purchase in H) and expected purchases are the churn and loyalty priors and inputs of the learners (models/bgnbd_prior.py). 0: no BG/NBD (the recency priors).")
    bgnbd_customers: int = Field(1_000_000, ge=20, description="Most customer histories the trainer keeps for the BG/NBD fit (each is three numbers, its sufficient statistics x, t_x, T): every customer up to this many, a fixed hash sample of the user ids beyond it (bounds the fit's cost and the snapshot's size).")
    churn_learner: Literal["logreg", "logreg-raw", "arf", "amf", "hat"] = Field("logreg", description="Online churn learner (models/churn.py; chosen by measurement in docs/evaluation.md).")
    loyalty_learner: Literal["poisson", "linear", "log-linear", "arf", "amf", "hat", "residual"] = Field("residual", description="Online loyalty learner: purchase days in the horizon (models/churn.py; chosen by measurement in docs/evaluation.md).")
    sweep_days: float = Field(1.0, ge=0, description="Known customers (with a purchase) are re-scored on this grid of event time, a scoring point stored when the last is horizon/4 old (0: scoring points at purchases only).")
    sweep_silence_days: float = Field(365.0, gt=0, description="Sweeps of a customer stop this many days after their last purchase.")
    policy_file: Path | None = Field(
        None,
        description="The retention policy (YAML, docs/policy.md): rules, coupons, control share, lapse timing and guard rails. "
        "Read when the worker starts (a changed file takes effect on restart); an invalid file stops the worker with "
        "`file:line: key: problem`. Default: the shipped deploy/policy.yaml (in the container image /etc/retention/policy.yaml).",
    )
    attribution_window_days: float = Field(14.0, gt=0, description="A purchase within this many days (event time) after a retention decision is a conversion of it, in the treatment and the control group alike; the decision counts in the rates of GET /actions/stats once the window (and the allowed lateness) is over. The intention-to-treat uplift counts a customer's purchase in the same window after its first decision of a kind. Default: the coupon's validity.")
    uplift_confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the uplift intervals in GET /actions/stats and the uplift gauges: intention to treat (Newcombe's hybrid score interval, one observation per customer) and per decision (Newcombe's on Rao-Scott effective counts).")

    # Lifecycle stages (docs/segments.md): defaults are LifecycleConfig's.
    lifecycle_new_days: float = Field(LifecycleConfig.new_days, ge=0, description="Lifecycle: a customer first seen fewer days ago than this is `new`.")
    lifecycle_default_gap_days: float = Field(LifecycleConfig.default_gap_days, gt=0, description="Lifecycle: the usual gap between purchases assumed for a customer with fewer than two purchases, days.")
    lifecycle_at_risk_min_days: float = Field(LifecycleConfig.at_risk_min_days, ge=0, description="Lifecycle: `at_risk` once the days without a purchase reach the larger of this and RETENTION_LIFECYCLE_AT_RISK_GAP_FACTOR usual gaps.")
    lifecycle_at_risk_gap_factor: float = Field(LifecycleConfig.at_risk_gap_factor, gt=0, description="Lifecycle: usual gaps without a purchase that make a customer `at_risk` (and at least RETENTION_LIFECYCLE_AT_RISK_MIN_DAYS).")
    lifecycle_at_risk_churn: float = Field(LifecycleConfig.at_risk_churn, ge=0, le=1, description="Lifecycle: also `at_risk` when the churn score is at least this.")
    lifecycle_churned_min_days: float = Field(LifecycleConfig.churned_min_days, ge=0, description="Lifecycle: `churned` once the days without a purchase reach the larger of this and RETENTION_LIFECYCLE_CHURNED_GAP_FACTOR usual gaps (and no event for RETENTION_LIFECYCLE_CHURNED_IDLE_DAYS).")
    lifecycle_churned_gap_factor: float = Field(LifecycleConfig.churned_gap_factor, gt=0, description="Lifecycle: usual gaps without a purchase that make a customer `churned` (and at least RETENTION_LIFECYCLE_CHURNED_MIN_DAYS).")
    lifecycle_churned_idle_days: float = Field(LifecycleConfig.churned_idle_days, ge=0, description="Lifecycle: days without any event that a `churned` customer also needs (one still browsing is `at_risk`).")
    lifecycle_reactivated_days: float = Field(LifecycleConfig.reactivated_days, ge=0, description="Lifecycle: days a customer stays `reactivated` after a purchase that ended an at-risk gap.")
    lifecycle_loyal_min_purchases_90d: int = Field(LifecycleConfig.loyal_min_purchases_90d, ge=1, description="Lifecycle: purchases in 90 days that make a customer (past the rules above) `loyal`.")
    segment_clusters: int = Field(4, ge=1, description="Behavioural segments: k of the online k-means (models/segments.py); segment ids are 0 to k-1.")
    loyalty_tiers: str = Field(
        DEFAULT_TIERS,
        description="Loyalty tiers: `name:cut-point,...`, a customer's tier being the last whose cut-point is at most their "
        "loyalty_score (0 to 1); cut-points increase from 0; names are lower-case letters, digits, `_` and `-`, starting with a letter.",
    )
    loyalty_current_days: float = Field(LoyaltyConfig.current_days, gt=0, description="Loyalty score: customers whose last purchase is at most this many days before the event-time clock are the current customers a prediction is ranked among.")
    loyalty_population_size: int = Field(LoyaltyConfig.capacity, ge=1, description="Loyalty score: current customers' latest predictions a worker keeps at most (the least recently published are dropped first).")
    segment_halflife: float = Field(0.05, gt=0, le=1, description="Behavioural segments: how far a centre moves towards each snapshot it is assigned.")

    session_timeout_s: float = Field(45.0, gt=0, description="Consumer group session timeout (Kafka's default 45 s; the embedded broker uses 2 s).")
    heartbeat_interval_s: float = Field(3.0, gt=0, description="Consumer group heartbeat interval (the embedded broker uses 0.5 s).")
    fetch_max_wait_ms: int = Field(500, ge=0, description="How long a fetch waits for data (Kafka's default 500 ms; the embedded broker uses 100 ms).")
    merge_margin_ms: int | None = Field(
        None, ge=0,
        description="The event-time merge releases a record once every other input of its partition is proven caught up by a "
        "high watermark from the fetches; this is how much older than the last receive that found the queue dry that "
        "watermark is taken to be. Unset: two fetch waits plus 100 ms, which folds the inputs in the order a replay does. "
        "0 trusts it as of that receive, as Kafka Streams' max.task.idle.ms=0 does: a lower latency, and records of "
        "different inputs a few ms apart may be folded out of order (within RETENTION_ALLOWED_LATENESS_S the features "
        "are the same; a decision made at that instant may differ).")
    trace_offsets_interval_s: float = Field(
        0.0, ge=0,
        description="Diagnostic, off at 0: every this many seconds the worker logs, per partition Faust's consumer reads "
        "(model-labels), the offsets it fetched, handed to the stream, acknowledged and committed, its gap ranges, "
        "and seeks and commits as they happen (docs/operations.md: \"Tracing Faust's offsets\").",
    )
    snapshot_key: SecretStr | None = Field(
        None,
        description="Secret the trainer signs model snapshots with (HMAC-SHA256) and every worker checks before it loads one "
        f"(snapshots are pickles): at least {KEY_MIN_CHARS} characters, the same on every worker; make one with "
        f"`{MAKE_A_KEY}`. A worker without a key (nor RETENTION_SNAPSHOT_KEY_FILE) does not start "
        "(docs/operations.md: \"The model snapshot key\").",
    )
    snapshot_key_file: Path | None = Field(
        None,
        description="File holding the snapshot key (surrounding whitespace stripped), e.g. a mounted Kubernetes Secret; "
        "instead of RETENTION_SNAPSHOT_KEY.",
    )
    snapshot_keys_previous: SecretStr | None = Field(
        None,
        description="Keys, comma separated, whose snapshots are still accepted (never signed with): set the old key here "
        "while the fleet moves to a new RETENTION_SNAPSHOT_KEY, so a key is rotated without downtime.",
    )
    stall_timeout_s: float = Field(
        60.0, gt=0,
        description="A worker with consumer lag that processes no record (and commits nothing) for this long is stalled: "
        "/health/ready answers 503 with which partition waits for what, retention_worker_ready is 0, and the stall is "
        "logged once.",
    )
    shutdown_timeout_s: float = Field(
        25.0, gt=0,
        description="After SIGTERM (or SIGINT), a worker whose graceful stop has not finished in this many seconds logs what "
        "it was waiting for and exits with code 3 (records not committed are read again after the restart); keep it below "
        "the orchestrator's grace period (compose 30 s, Kubernetes 60 s).",
    )
    broker_wait_s: float = Field(
        0.0, ge=0,
        description="At start, how long a worker waits for the brokers to answer (one log line per attempt, with back-off "
        "up to RETENTION_BROKER_RETRY_MAX_S) before it exits with code 2; 0: wait as long as it takes.",
    )
    connect_timeout_s: float = Field(
        8.0, gt=0,
        description="How long a command (`topics create`, `produce`, `simulate`, `heartbeat`, `actions tail`, `scores export`, "
        "and `demo`, `bench`, `evaluate --workers` on a cluster) waits for the brokers to answer before it says so in one line "
        "and exits with code 2 (a refused connection or an unknown host gives up after 3 s).",
    )
    delivery_timeout_s: float = Field(
        60.0, gt=0,
        description="How long `produce`, `simulate` and `heartbeat` wait for the brokers to acknowledge a record (librdkafka's "
        "message.timeout.ms) before they count it as a delivery failure (and exit with code 1).",
    )
    broker_retry_max_s: float = Field(10.0, gt=0, description="Longest pause between two attempts to reach the brokers at start (the pauses double from 0.5 s).")
    producer_max_batch_size: int = Field(
        16_384, ge=1,
        description="Worker producer's batch size per partition, bytes (Kafka's default; the embedded broker uses 1: "
        "it reports the end of a topic as the start of its last batch, which would cut table recovery short).",
    )

    pseudonymize: bool = Field(
        False,
        description="Replace every event's user_id by a keyed HMAC-SHA256 pseudonym (`ps_` + 40 hex digits) on ingest: state, "
        "learning, actions, user-scores and exports carry the pseudonym only (docs/privacy.md). Off in code so "
        "that existing deployments keep their state's keys; on in the shipped docker-compose and Kubernetes files. Producers "
        "that already send pseudonyms leave it off.",
    )
    pseudonym_key: SecretStr | None = Field(
        None, description=f"Secret key of the pseudonyms (at least {KEY_MIN_CHARS} characters, the same on every worker; make one "
        f"with `{MAKE_A_KEY}`); needed with RETENTION_PSEUDONYMIZE.",
    )
    pseudonym_key_file: Path | None = Field(
        None, description="File holding the pseudonym key (surrounding whitespace stripped), e.g. a mounted secret; instead of RETENTION_PSEUDONYM_KEY.",
    )
    pseudonym_keys_previous: SecretStr | None = Field(
        None, description="Previous pseudonym keys, comma separated, while a key is rotated: a customer's state kept under an "
        "old key's pseudonym moves to the new one at their next event, and erasures and the erased-ids set cover every key "
        "(docs/privacy.md: rotating the key).",
    )
    actions_include_user_id: bool = Field(
        False,
        description="With RETENTION_PSEUDONYMIZE: retention actions also carry the shop's own id (`shop_user_id`), which the "
        "worker then keeps beside the customer's state (and erases with it); false: the pseudonym only.",
    )
    consent_required: bool = Field(
        False,
        description="Opt-in: an action of a kind the customer never allowed on the consents topic is suppressed "
        "(`no_consent`); false: allowed until the customer refuses it (opt-out).",
    )
    erased_ids_retention_days: float = Field(
        400.0, gt=0,
        description="How long (wall clock) an erased customer's pseudonym stays in the erased-ids set, which refuses their "
        "events (counted as `erased`, not folded): at least as long as the input topics keep records a replay could "
        "bring back.",
    )
    erasure_requests_retention_days: float = Field(
        30.0, gt=0, description="retention.ms of the erasure-requests topic we create (its records name customers by their shop id).",
    )
    changelog_max_compaction_lag_days: float = Field(
        7.0, gt=0,
        description="max.compaction.lag.ms of the compacted topics we create (state changelog, user-scores): an erased "
        "customer's old records are compacted away within this time after the tombstone (where the broker supports it, "
        "Kafka 2.3+, KIP-354).",
    )

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client of ours connects (Kafka's security.protocol): PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (README, \"Connecting to a managed Kafka\")."
    )
    kafka_ssl_cafile: Path | None = Field(None, description="PEM file of the CA certificates that sign the brokers' certificates (SSL, SASL_SSL); default: the system's CA store.")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM file of this client's certificate for TLS client authentication (mutual TLS); needs RETENTION_KAFKA_SSL_KEYFILE.")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM file of the private key of RETENTION_KAFKA_SSL_CERTFILE.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of RETENTION_KAFKA_SSL_KEYFILE, if it is encrypted (secret).")
    kafka_sasl_mechanism: str | None = Field(
        None, description=f"SASL mechanism (SASL_PLAINTEXT, SASL_SSL): {', '.join(SASL_MECHANISMS)}. OAUTHBEARER and GSSAPI are not supported."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name (e.g. a Confluent Cloud API key).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (e.g. a Confluent Cloud API secret; secret).")

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> "Settings":
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError("RETENTION_HEARTBEAT_INTERVAL_S must be below RETENTION_SESSION_TIMEOUT_S")
        return self

    @model_validator(mode="after")
    def _no_moved_settings(self) -> "Settings":
        moved = [f"{env} (now `{key}` in the policy file {self.policy_path})" for env, key in MOVED_TO_POLICY_FILE.items() if env in os.environ]
        if moved:
            raise ValueError("these settings moved to the policy file (RETENTION_POLICY_FILE); unset them: " + "; ".join(moved))
        return self

    @field_validator("min_event_time")
    @classmethod
    def _valid_min_event_time(cls, value: str) -> str:
        try:
            parse_ts(value)
        except TimestampError as exc:
            raise ValueError(f"RETENTION_MIN_EVENT_TIME: {exc}") from None
        return value

    @property
    def min_event_time_ms(self) -> int:
        return parse_ts(self.min_event_time)

    @property
    def dead_letter(self) -> DeadLetterConfig:
        fields = frozenset(f.strip() for f in self.dead_letter_redact_fields.split(",") if f.strip())
        return DeadLetterConfig(raw=self.dead_letter_raw, max_copy_bytes=self.dead_letter_max_copy_bytes, redact=fields)

    @model_validator(mode="after")
    def _api_token_readable(self) -> "Settings":
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set RETENTION_API_TOKEN or RETENTION_API_TOKEN_FILE, not both")
        token = self.bearer_token
        if token is not None and len(token) < API_TOKEN_MIN_LENGTH:
            source = "RETENTION_API_TOKEN_FILE" if self.api_token_file else "RETENTION_API_TOKEN"
            raise ValueError(f"{source}: the token must have at least {API_TOKEN_MIN_LENGTH} characters (e.g. `openssl rand -hex 32`)")
        return self

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> "Settings":
        problems = kafka_security_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("api_token", "kafka_ssl_key_password", "kafka_sasl_password", "pseudonym_key", "pseudonym_keys_previous", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_token_file", "pseudonym_key_file", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_sasl_mechanism", "kafka_sasl_username", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def bearer_token(self) -> str | None:
        """The API token (from RETENTION_API_TOKEN or the file of RETENTION_API_TOKEN_FILE), or None."""
        if self.api_token is not None:
            return self.api_token.get_secret_value()
        if self.api_token_file is None:
            return None
        try:
            return self.api_token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"RETENTION_API_TOKEN_FILE: cannot read {self.api_token_file}: {exc.strerror}") from exc

    _keys: SnapshotKeys | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _snapshot_keys(self) -> "Settings":
        """Read the key (and its file) once, and refuse one too short to be a secret."""
        if self.snapshot_key is not None and self.snapshot_key_file is not None:
            raise ValueError("set RETENTION_SNAPSHOT_KEY or RETENTION_SNAPSHOT_KEY_FILE, not both")
        key = None
        if self.snapshot_key is not None:
            key = _long_enough(self.snapshot_key.get_secret_value(), "RETENTION_SNAPSHOT_KEY")
        elif self.snapshot_key_file is not None:
            try:
                text = self.snapshot_key_file.read_text()
            except OSError as exc:
                raise ValueError(f"RETENTION_SNAPSHOT_KEY_FILE: cannot read the key ({exc})") from None
            key = _long_enough(text.strip(), f"the key in RETENTION_SNAPSHOT_KEY_FILE ({self.snapshot_key_file})")
        previous = [] if self.snapshot_keys_previous is None else [
            _long_enough(k.strip(), "every key of RETENTION_SNAPSHOT_KEYS_PREVIOUS")
            for k in self.snapshot_keys_previous.get_secret_value().split(",") if k.strip()
        ]
        if key is not None:
            self._keys = SnapshotKeys(sign=key, accept=(key, *previous))
        elif previous:
            raise ValueError("RETENTION_SNAPSHOT_KEYS_PREVIOUS is set but RETENTION_SNAPSHOT_KEY is not: set the current key too")
        return self

    _pseudonym_keys: tuple[bytes, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _pseudonym_keys_read(self) -> "Settings":
        """Read the pseudonym key (and its file) once; pseudonymisation without one does not start."""
        if self.pseudonym_key is not None and self.pseudonym_key_file is not None:
            raise ValueError("set RETENTION_PSEUDONYM_KEY or RETENTION_PSEUDONYM_KEY_FILE, not both")
        key = None
        if self.pseudonym_key is not None:
            key = _long_enough(self.pseudonym_key.get_secret_value(), "RETENTION_PSEUDONYM_KEY")
        elif self.pseudonym_key_file is not None:
            try:
                text = self.pseudonym_key_file.read_text()
            except OSError as exc:
                raise ValueError(f"RETENTION_PSEUDONYM_KEY_FILE: cannot read the key ({exc})") from None
            key = _long_enough(text.strip(), f"the key in RETENTION_PSEUDONYM_KEY_FILE ({self.pseudonym_key_file})")
        previous = [] if self.pseudonym_keys_previous is None else [
            _long_enough(k.strip(), "every key of RETENTION_PSEUDONYM_KEYS_PREVIOUS")
            for k in self.pseudonym_keys_previous.get_secret_value().split(",") if k.strip()
        ]
        if self.pseudonymize and key is None:
            raise ValueError(f"RETENTION_PSEUDONYMIZE is on but no key is set: set RETENTION_PSEUDONYM_KEY (or "
                             f"RETENTION_PSEUDONYM_KEY_FILE) to the same secret on every worker; make one with: {MAKE_A_KEY}")
        if previous and key is None:
            raise ValueError("RETENTION_PSEUDONYM_KEYS_PREVIOUS is set but RETENTION_PSEUDONYM_KEY is not: set the current key too")
        self._pseudonym_keys = () if key is None else (key, *previous)
        return self

    @property
    def pseudonym_keys(self) -> tuple[bytes, ...]:
        """With pseudonymisation on: the current key, then the previous ones; else ()."""
        return self._pseudonym_keys if self.pseudonymize else ()

    def topic_config(self, name: str) -> dict[str, str]:
        """The configuration of a topic we create (retention where we know what it holds)."""
        lag = str(int(self.changelog_max_compaction_lag_days * MS_PER_DAY))
        if name == self.topic_scores:
            return {"cleanup.policy": "compact", "max.compaction.lag.ms": lag}
        if name == self.topic_erasure_requests:
            return {"retention.ms": str(int(self.erasure_requests_retention_days * MS_PER_DAY))}
        if name == self.topic_model_snapshots:  # (records larger than Kafka's default 1 MB)
            return {"cleanup.policy": "compact", "max.message.bytes": str(self.model_snapshot_max_bytes)}
        return {}

    @property
    def snapshot_keys(self) -> SnapshotKeys:
        """The key to sign model snapshots with and the keys to accept; MissingSnapshotKey
        (one line saying what to do) when none is set: no worker runs unsigned."""
        if self._keys is None:
            raise MissingSnapshotKey(
                "no model snapshot key: set RETENTION_SNAPSHOT_KEY (or RETENTION_SNAPSHOT_KEY_FILE) to the same secret on "
                f"every worker; make one with: {MAKE_A_KEY}"
            )
        return self._keys

    @field_validator("loyalty_tiers")
    @classmethod
    def _valid_tiers(cls, value: str) -> str:
        parse_tiers(value)  # raises ValueError with the reason
        return value

    @property
    def loyalty(self) -> LoyaltyConfig:
        return LoyaltyConfig(
            tiers=parse_tiers(self.loyalty_tiers),
            current_days=self.loyalty_current_days,
            capacity=self.loyalty_population_size,
        )

    @property
    def inbound_topics(self) -> dict[str, str]:
        """Actual topic name -> logical (contract) name, for every topic the worker reads."""
        return {
            self.topic_clicks: "clicks",
            self.topic_purchases: "purchases",
            self.topic_reviews: "reviews",
            self.topic_outcomes: "action-outcomes",
            self.topic_heartbeats: "heartbeats",
        }

    @property
    def all_topics(self) -> list[str]:
        return [*self.inbound_topics, self.topic_actions, self.topic_dead_letters, self.topic_scores, self.rekey_topic,
                self.topic_consents, self.topic_erasure_requests, self.topic_erasure_confirmations]

    @property
    def canonical_url(self) -> str:
        if self.advertised_url:
            return self.advertised_url
        host = socket.gethostname() if self.web_host in ("0.0.0.0", "::", "") else self.web_host
        return f"http://{host}:{self.web_port}"

    @property
    def rekey_topic(self) -> str:
        """Internal: records that arrived on the wrong partition for their user_id, re-keyed."""
        return f"{self.app_id}-rekeyed"

    @property
    def ingest_group(self) -> str:
        """The consumer group under which the agent that folds batches commits the inbound
        topics' offsets (Faust's own group, the app id, holds the low-rate agents' topics)."""
        return f"{self.app_id}-ingest"

    @property
    def lifecycle(self) -> LifecycleConfig:
        return LifecycleConfig(
            new_days=self.lifecycle_new_days,
            default_gap_days=self.lifecycle_default_gap_days,
            at_risk_min_days=self.lifecycle_at_risk_min_days,
            at_risk_gap_factor=self.lifecycle_at_risk_gap_factor,
            at_risk_churn=self.lifecycle_at_risk_churn,
            churned_min_days=self.lifecycle_churned_min_days,
            churned_gap_factor=self.lifecycle_churned_gap_factor,
            churned_idle_days=self.lifecycle_churned_idle_days,
            reactivated_days=self.lifecycle_reactivated_days,
            loyal_min_purchases_90d=self.lifecycle_loyal_min_purchases_90d,
        )

    @property
    def policy(self) -> Policy:
        """The policy file, validated (raises PolicyFileError), its tiers checked against
        RETENTION_LOYALTY_TIERS; read once per path and modification time."""
        return _policy(str(self.policy_path), _mtime(self.policy_path), self.loyalty_tiers)

    @property
    def policy_path(self) -> Path:
        return self.policy_file if self.policy_file is not None else DEFAULT_POLICY

    @property
    def model_period_ms(self) -> int:
        return int(self.model_period_days * MS_PER_DAY)

    def fresh_models(self) -> Models:
        """Models that learned nothing, configured by these settings (their priors answer)."""
        from models.bundle import Models

        return Models.fresh(
            horizon_days=self.churn_horizon_days, min_labels=self.churn_min_labels, churn_kind=self.churn_learner,
            loyalty_kind=self.loyalty_learner, churn_prior_learns=self.churn_prior_learns,
            loyalty_prior_learns=self.loyalty_prior_learns, segment_clusters=self.segment_clusters,
            segment_halflife=self.segment_halflife, bgnbd_refit_periods=self.bgnbd_refit_periods,
            bgnbd_customers=self.bgnbd_customers, uplift_min_decisions=self.uplift_min_decisions,
        )

    @property
    def merge_margin(self) -> int:
        """Milliseconds (:attr:`merge_margin_ms`, by default two fetch waits plus 100 ms)."""
        return 2 * self.fetch_max_wait_ms + 100 if self.merge_margin_ms is None else self.merge_margin_ms

    @property
    def engine(self) -> EngineConfig:
        from streams.domain.attribution import AttributionConfig
        from streams.domain.engine import EngineConfig
        from streams.domain.state import StateConfig

        return EngineConfig(
            churn_horizon_days=self.churn_horizon_days,
            sweep_days=self.sweep_days,
            sweep_silence_days=self.sweep_silence_days,
            state=StateConfig(
                allowed_lateness_ms=int(self.allowed_lateness_s * 1000),
                cart_timeout_ms=int(self.cart_timeout_hours * MS_PER_HOUR),
                session_gap_ms=int(self.session_gap_minutes * 60_000),
            ),
            policy=self.policy.lapse_config(),
            attribution=AttributionConfig(
                window_ms=int(self.attribution_window_days * MS_PER_DAY),
                lateness_ms=int(self.allowed_lateness_s * 1000),
            ),
        )


def env_name(field: str) -> str:
    """The environment variable of a setting (``partitions`` -> ``RETENTION_PARTITIONS``)."""
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"RETENTION_{field.upper()}" if info is not None else field


def configuration_errors(exc: ValidationError) -> list[str]:
    """One line per problem of a refused configuration, each naming its environment variable
    and, unless the setting is a secret, the value it had: what an operator can act on.

    >>> import os
    >>> os.environ["RETENTION_PARTITIONS"] = "abc"
    >>> try:
    ...     Settings()
    ... except ValidationError as exc:
    ...     print(configuration_errors(exc))
    ["RETENTION_PARTITIONS='abc': Input should be a valid integer, unable to parse string as an integer"]
    >>> del os.environ["RETENTION_PARTITIONS"]
    """
    lines = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across settings: its message names the variables
            lines.append(message)
            continue
        field = str(error["loc"][0])
        name = env_name(field)
        info = Settings.model_fields.get(field)
        secret = info is not None and SecretStr in typing.get_args(info.annotation) + (info.annotation,)
        value = os.environ.get(name)
        lines.append(f"{name}={value!r}: {message}" if value is not None and not secret else f"{name}: {message}")
    return lines


def kafka_security_problems(settings: Settings) -> list[str]:
    """What is inconsistent in the Kafka security settings, each naming its variable (so a
    worker that cannot reach its cluster says why before it tries)."""
    protocol = settings.kafka_security_protocol
    problems: list[str] = []
    sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
    mechanism = settings.kafka_sasl_mechanism
    if not sasl:
        given = [f"RETENTION_KAFKA_SASL_{n.upper()}" for n in ("mechanism", "username", "password") if getattr(settings, f"kafka_sasl_{n}") is not None]
        if given:
            problems.append(f"{', '.join(given)} set but RETENTION_KAFKA_SECURITY_PROTOCOL is {protocol} (SASL_PLAINTEXT or SASL_SSL use SASL)")
    elif mechanism is None:
        problems.append(f"RETENTION_KAFKA_SECURITY_PROTOCOL is {protocol}: set RETENTION_KAFKA_SASL_MECHANISM ({', '.join(SASL_MECHANISMS)})")
    elif mechanism not in SASL_MECHANISMS:
        problems.append(f"RETENTION_KAFKA_SASL_MECHANISM {mechanism!r} is not supported: use {', '.join(SASL_MECHANISMS)} "
                        "(OAUTHBEARER would need a token provider in aiokafka, GSSAPI a Kerberos setup)")
    elif settings.kafka_sasl_username is None or settings.kafka_sasl_password is None:
        problems.append(f"RETENTION_KAFKA_SASL_MECHANISM {mechanism} needs RETENTION_KAFKA_SASL_USERNAME and RETENTION_KAFKA_SASL_PASSWORD")
    files = {"RETENTION_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile, "RETENTION_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
             "RETENTION_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile}
    if not tls:
        given = [name for name, path in files.items() if path is not None] + (["RETENTION_KAFKA_SSL_KEY_PASSWORD"] if settings.kafka_ssl_key_password else [])
        if given:
            problems.append(f"{', '.join(given)} set but RETENTION_KAFKA_SECURITY_PROTOCOL is {protocol} (SSL or SASL_SSL use TLS)")
        return problems
    if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
        problems.append("RETENTION_KAFKA_SSL_CERTFILE and RETENTION_KAFKA_SSL_KEYFILE go together (a client certificate and its key)")
    if settings.kafka_ssl_key_password is not None and settings.kafka_ssl_keyfile is None:
        problems.append("RETENTION_KAFKA_SSL_KEY_PASSWORD set without RETENTION_KAFKA_SSL_KEYFILE")
    problems += [f"{name}: no readable file {path}" for name, path in files.items() if path is not None and not (path.is_file() and os.access(path, os.R_OK))]
    return problems


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0  # load_policy says the file cannot be read


@lru_cache(maxsize=8)
def _policy(path: str, mtime: float, tiers: str) -> Policy:
    policy = load_policy(path)
    policy.check_tiers(tuple(name for name, _ in parse_tiers(tiers)))
    return policy


def _long_enough(key: str, name: str) -> bytes:
    if len(key) < KEY_MIN_CHARS:
        raise ValueError(f"{name} must be at least {KEY_MIN_CHARS} characters (it has {len(key)}); make one with: {MAKE_A_KEY}")
    return key.encode()


def run_snapshot_key() -> dict[str, str]:
    """The snapshot key of the processes one run starts (demo, bench, tests): the
    operator's when set, else a new random one, given to all of them."""
    if os.environ.get("RETENTION_SNAPSHOT_KEY") or os.environ.get("RETENTION_SNAPSHOT_KEY_FILE"):
        return {}
    return {"RETENTION_SNAPSHOT_KEY": secrets.token_hex(32)}


def embedded_overrides(bootstrap_servers: str) -> dict[str, str]:
    """Environment for processes run against the embedded broker (demo, tests, bench).

    Tansu holds a group join for half the session timeout and waits long on empty
    fetches; short timeouts make a worker ready in ~2.5 s instead of ~30 s. It also
    answers ListOffsets(latest) with the first offset of the last write batch plus one,
    so Faust's changelog recovery would stop before the last batch: one record per batch
    keeps that answer right. The run's processes share a snapshot key (:func:`run_snapshot_key`).
    """
    return {**run_snapshot_key(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers, **EMBEDDED_SETTINGS}


#: The settings every process of ours needs against the embedded broker (see :func:`embedded_overrides`).
EMBEDDED_SETTINGS = {
    "RETENTION_SESSION_TIMEOUT_S": "2.0",
    "RETENTION_HEARTBEAT_INTERVAL_S": "0.5",
    "RETENTION_FETCH_MAX_WAIT_MS": "100",
    "RETENTION_PRODUCER_MAX_BATCH_SIZE": "1",
}
#: The same for other clients of the embedded broker: librdkafka's names (aiokafka's in the comments).
EMBEDDED_LIBRDKAFKA = {
    "session.timeout.ms": "2000",  # aiokafka session_timeout_ms
    "heartbeat.interval.ms": "500",  # heartbeat_interval_ms
    "fetch.wait.max.ms": "100",  # fetch_max_wait_ms
}


def settings_markdown() -> str:
    """The settings table of the README: environment variable, default, meaning."""
    rows = ["| Environment variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        env = field.validation_alias if isinstance(field.validation_alias, str) else f"RETENTION_{name.upper()}"
        rows.append(f"| `{env}` | `{field.default}` | {field.description} |")
    return "\n".join(rows) + "\n"
