"""The fold thread's per-record metrics: the same series as prometheus_client's own, for less."""

from __future__ import annotations

import random

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from streams.runtime import metrics
from streams.runtime.metrics import RecordHistogram


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


def test_record_histogram_exports_what_a_prometheus_histogram_exports() -> None:
    buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 3600.0)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = RecordHistogram("h_seconds", "a histogram", buckets, registry=ours)
    reference = Histogram("h_seconds", "a histogram", buckets=buckets, registry=theirs)
    rng = random.Random(3)
    values = [rng.choice(buckets) for _ in range(200)]  # on the bounds: le is inclusive
    values += [rng.expovariate(20.0) for _ in range(2_000)] + [0.0, 7_200.0, -1.0]
    for v in values:
        fast.observe(v)
        reference.observe(v)
    assert samples(ours) == samples(theirs)
    text = generate_latest(ours).decode()
    assert 'h_seconds_bucket{le="+Inf"} 2203.0' in text and "# TYPE h_seconds histogram" in text


def test_a_restricted_scrape_finds_a_record_histogram() -> None:
    registry = CollectorRegistry()
    fast = RecordHistogram("lat_seconds", "latency", (0.1, 1.0), registry=registry)
    fast.observe(0.5)
    text = generate_latest(registry.restricted_registry(["lat_seconds_bucket"])).decode()
    assert 'lat_seconds_bucket{le="1.0"} 1.0' in text and 'lat_seconds_bucket{le="0.1"} 0.0' in text


def test_record_counts_reach_the_counter_when_flushed() -> None:
    def value() -> float:
        return REGISTRY.get_sample_value("retention_records_total", {"topic": "unit-topic", "result": "ok"}) or 0.0

    before = value()
    for _ in range(5):
        metrics.count_record("unit-topic", "ok")
    assert value() == before  # counted once per micro-batch, not per record
    metrics.flush_record_counts()
    assert value() == before + 5
    metrics.flush_record_counts()  # nothing new: nothing added twice
    assert value() == before + 5
    assert metrics.records_by_topic()["unit-topic"] == before + 5
