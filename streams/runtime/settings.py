"""Every setting, in one typed place, read from environment variables.

``KAFKA_BOOTSTRAP_SERVERS`` keeps its usual name; everything else is ``RETENTION_*``.
The README's settings table is generated from this class (``retention settings``).
Defaults are production defaults: the embedded broker's short timeouts are applied only
by :func:`embedded_overrides`, in processes the demo and the tests start.
"""

from __future__ import annotations

import socket

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.bundle import Models
from streams.domain.engine import EngineConfig
from streams.domain.lifecycle import LifecycleConfig
from streams.domain.loyalty import DEFAULT_TIERS, LoyaltyConfig, parse_tiers
from streams.domain.state import StateConfig
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR
from streams.domain.policy import PolicyConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETENTION_", frozen=True, extra="ignore")

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

    data_dir: Path = Field(Path("var/data"), description="Where the workers keep RocksDB state.")
    web_host: str = Field("127.0.0.1", description="Interface of the worker's web server (/metrics); 0.0.0.0 in containers.")
    web_port: int = Field(6066, description="Port of the worker's web server.")
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

    max_clock_skew_s: float = Field(86_400.0, gt=0, description="How far an event's ts may be ahead of its record's Kafka timestamp before it is dead-lettered.")
    allowed_lateness_s: float = Field(3600.0, ge=0, description="How late (behind the partition's event-time clock) an event may arrive and still count in its windows; later ones update lifetime figures only and are counted as `late`.")
    cart_timeout_hours: float = Field(24.0, gt=0, description="A cart (add_to_cart or checkout_start) with no purchase within this time is abandoned.")
    session_gap_minutes: float = Field(30.0, gt=0, description="Clicks without a session_id form one session per channel and bucket of this many minutes.")
    scores_interval_s: float = Field(86_400.0, gt=0, description="Event time between two user-scores snapshots of a user whose state changed (a scoring always publishes one).")
    churn_horizon_days: float = Field(30.0, gt=0, description="H: churn at t means no purchase in (t, t + H]; loyalty at t is the number of purchase days in (t, t + H].")
    churn_min_labels: int = Field(50, ge=1, description="Matured labels (of both classes for churn) before the learned churn and loyalty models replace their recency priors.")
    model_period_days: float = Field(1.0, gt=0, description="Models learn by periods of event time this long: a period's examples are learned once every partition's event-time clock has passed its end, and give the snapshot versioned by that boundary.")
    model_lag_periods: int = Field(1, ge=0, description="A record at event time t is scored by the snapshot of boundary (floor(t / period) - lag) * period, and waits until the trainer has covered it: a larger lag lets partitions drift further apart without waiting.")
    model_snapshots_kept: int = Field(32, ge=1, description="Snapshots with models each worker keeps (bytes) to score re-processed records after a restart with the models they had.")
    churn_prior_learns: bool = Field(False, description="Until the churn learner takes over, its prior answers with the churn rate of the matured labels in the same recency bin (calibrated as labels accumulate, but from a few labels at first, and learned by each worker); false: the fixed recency formula, so the lapse rule's early decisions depend on the records alone.")
    loyalty_prior_learns: bool = Field(True, description="Until the loyalty learner takes over, its prior answers with the mean purchase days of the matured labels in the same recency bin (measured better than the formula: docs/evaluation.md); false: the fixed formula.")
    churn_learner: Literal["logreg", "logreg-raw", "arf", "amf", "hat"] = Field("logreg", description="Online churn learner (models/churn.py; chosen by measurement in docs/evaluation.md).")
    loyalty_learner: Literal["poisson", "linear", "log-linear", "arf", "amf", "hat"] = Field("log-linear", description="Online loyalty learner: purchase days in the horizon (models/churn.py; chosen by measurement in docs/evaluation.md).")
    sweep_days: float = Field(1.0, ge=0, description="Known customers (with a purchase) are re-scored on this grid of event time, a scoring point stored when the last is horizon/4 old (0: scoring points at purchases only).")
    sweep_silence_days: float = Field(365.0, gt=0, description="Sweeps of a customer stop this many days after their last purchase.")
    churn_threshold: float = Field(0.5, ge=0, le=1, description="Churn probability at which a lapsed customer gets a coupon.")
    streak_min_purchases: int = Field(3, ge=1, description="Purchases that make a buying streak.")
    lapse_min_days: float = Field(14.0, gt=0, description="Minimum days without a purchase before a streak customer counts as lapsed.")
    lapse_gap_factor: float = Field(2.0, gt=0, description="Lapsed after this many times the customer's mean gap between purchases.")
    lapse_recheck_days: float = Field(1.0, gt=0, description="Days between checks of a lapsed customer whose churn score is below the threshold.")
    lapse_give_up_days: float = Field(120.0, gt=0, description="Days after the last purchase when a lapse episode stops being checked.")
    coupon_percent: float = Field(10.0, gt=0, le=100, description="Discount of the lapse coupon, percent.")
    coupon_ttl_days: float = Field(14.0, gt=0, description="Days a coupon action stays valid (expires_at).")
    control_share: float = Field(0.1, ge=0, le=1, description="Share of customers in the control group (stable per customer, by hash).")

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
    producer_max_batch_size: int = Field(
        16_384, ge=1,
        description="Worker producer's batch size per partition, bytes (Kafka's default; the embedded broker uses 1: "
        "it reports the end of a topic as the start of its last batch, which would cut table recovery short).",
    )

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> "Settings":
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError("RETENTION_HEARTBEAT_INTERVAL_S must be below RETENTION_SESSION_TIMEOUT_S")
        return self

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
        return [*self.inbound_topics, self.topic_actions, self.topic_dead_letters, self.topic_scores, self.rekey_topic]

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
    def model_period_ms(self) -> int:
        return int(self.model_period_days * MS_PER_DAY)

    def fresh_models(self) -> Models:
        """Models that learned nothing, configured by these settings (their priors answer)."""
        return Models.fresh(
            horizon_days=self.churn_horizon_days, min_labels=self.churn_min_labels, churn_kind=self.churn_learner,
            loyalty_kind=self.loyalty_learner, churn_prior_learns=self.churn_prior_learns,
            loyalty_prior_learns=self.loyalty_prior_learns, segment_clusters=self.segment_clusters,
            segment_halflife=self.segment_halflife,
        )

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(
            churn_horizon_days=self.churn_horizon_days,
            sweep_days=self.sweep_days,
            sweep_silence_days=self.sweep_silence_days,
            state=StateConfig(
                allowed_lateness_ms=int(self.allowed_lateness_s * 1000),
                cart_timeout_ms=int(self.cart_timeout_hours * MS_PER_HOUR),
                session_gap_ms=int(self.session_gap_minutes * 60_000),
            ),
            policy=PolicyConfig(
                streak_min_purchases=self.streak_min_purchases,
                lapse_min_days=self.lapse_min_days,
                lapse_gap_factor=self.lapse_gap_factor,
                recheck_days=self.lapse_recheck_days,
                give_up_days=self.lapse_give_up_days,
                churn_threshold=self.churn_threshold,
                coupon_percent=self.coupon_percent,
                coupon_ttl_days=self.coupon_ttl_days,
                control_share=self.control_share,
            ),
        )


def embedded_overrides(bootstrap_servers: str) -> dict[str, str]:
    """Environment for processes run against the embedded broker (demo, tests, bench).

    Tansu holds a group join for half the session timeout and waits long on empty
    fetches; short timeouts make a worker ready in ~2.5 s instead of ~30 s. It also
    answers ListOffsets(latest) with the first offset of the last write batch plus one,
    so Faust's changelog recovery would stop before the last batch: one record per batch
    keeps that answer right.
    """
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "RETENTION_SESSION_TIMEOUT_S": "2.0",
        "RETENTION_HEARTBEAT_INTERVAL_S": "0.5",
        "RETENTION_FETCH_MAX_WAIT_MS": "100",
        "RETENTION_PRODUCER_MAX_BATCH_SIZE": "1",
    }


def settings_markdown() -> str:
    """The settings table of the README: environment variable, default, meaning."""
    rows = ["| Environment variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        env = field.validation_alias if isinstance(field.validation_alias, str) else f"RETENTION_{name.upper()}"
        rows.append(f"| `{env}` | `{field.default}` | {field.description} |")
    return "\n".join(rows) + "\n"
