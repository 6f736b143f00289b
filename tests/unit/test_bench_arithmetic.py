"""The arithmetic of `retention bench` (streams/runtime/bench.py) on made-up samples."""

from __future__ import annotations

from streams.runtime.bench import Sample, cpu_us_between, quantile


def trace(points: list[tuple[float, float]]) -> list[Sample]:
    return [Sample(t=float(i), records=r, cpu_s=c, buckets={}) for i, (r, c) in enumerate(points)]


def test_cpu_per_record_of_a_stretch_tells_a_flat_cost_from_a_growing_one() -> None:
    # 100 µs per record for the first 500 records, then 150 µs
    run = trace([(0, 0.0), (250, 0.025), (500, 0.05), (750, 0.0875), (1000, 0.125)])
    assert round(cpu_us_between(run, 0, 500)) == 100
    assert round(cpu_us_between(run, 500, 1000)) == 150
    assert round(cpu_us_between(run, 100, 600)) == round(1e6 * (0.0875 - 0.025) / 500)  # from the first samples at or past


def test_latency_quantiles_from_cumulative_buckets() -> None:
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) <= 0.01 < quantile(0.95, buckets) <= 1.0
