"""`retention bench` as users run it, with a tiny load: the figures are printed for both
pipelines and everything it started is gone afterwards. No timing is asserted (the
machine is shared and noisy): only that the figures are there and make sense."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.integration.test_cli import retention

pytestmark = pytest.mark.integration


def test_bench_prints_both_pipelines_side_by_side_and_stops_what_it_started(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    result = retention("bench", "--mode", "live", "--events", "2000", "--rate", "1000", "--customers", "40",
                       "--partitions", "2", "--trainer", "separate", env=env, cwd=tmp_path, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    for column in ("events/s per worker", "CPU µs/event", "peak RSS MB", "p99 ms"):
        assert column in out
    assert re.search(r"│ full/naive\s+│", out)

    [results_file] = tmp_path.glob("var/bench/*/results.json")
    results = {r["pipeline"]: r for r in json.loads(results_file.read_text())}
    # --trainer separate: the full pipeline's trainer is a process of its own, in a row of its own
    trainer = results.pop("full: its trainer")
    assert trainer["records"] == results["full"]["records"] and trainer["cpu_s"] > 0 and trainer["peak_rss_mb"] > 50
    # the embedded broker's CPU over each pipeline's window, in a row of its own
    for name in ("full", "naive"):
        broker = results.pop(f"{name}: the broker")
        assert broker["records"] == results[name]["records"] and broker["cpu_s"] > 0 and broker["latency_ms"] is None
    assert results.keys() == {"full", "naive"}
    for r in results.values():
        assert r["records"] > 0 and r["per_worker"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 50
        p50, p95, p99 = r["latency_ms"]
        assert 0 < p50 <= p95 <= p99

    pids = [int(p) for p in re.findall(r"(?:embedded broker at \S+ \(pid|worker pid|trainer pid) (\d+)", out)]
    assert len(pids) == 4  # the broker, one worker per pipeline and the trainer, each stopped by its PID
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_backlog_run_splits_the_cpu_into_records_and_due_checks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    result = retention("bench", "--events", "30000", "--customers", "40", "--partitions", "2", "--skip-naive",
                       "--trainer", "separate", "--warm-records", "10000", env=env, cwd=tmp_path, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    [results_file] = tmp_path.glob("var/bench/*/results.json")
    full = next(r for r in json.loads(results_file.read_text()) if r["pipeline"] == "full")
    total = int(re.search(r"([\d,]+) records \(", out)[1].replace(",", ""))
    # the first 10,000 records are processed, not measured: the window is 90 % of the other ~20,000
    assert "measured after the first 10,000" in out and 0 < full["records"] <= total - 10_000
    fifths, dues, nets = full["fifths_us"], full["fifths_dues"], full["fifths_net_us"]
    assert len(fifths) == len(dues) == len(nets) == 5  # the window's five fifths
    first, last, dues_last = fifths[0], fifths[-1], dues[-1]
    assert dues_last > 0 and full["due_check_us"] > 0  # 40 customers over months: sweeps and labels maturing
    assert all(0 < net <= cpu for net, cpu in zip(nets, fifths))  # without the due checks' CPU, never more
    line = re.search(r"full: due checks per record first→last fifth ([\d.]+)→([\d.]+), ([\d,]+) CPU µs each", out)
    assert line is not None, out[-2000:]
    assert float(line[2]) == pytest.approx(dues_last, abs=5e-4)
    by_fifth = re.search(r"full: by fifth, due checks per record ((?:[\d.]+, ){4}[\d.]+); CPU µs per record without them", out)
    assert by_fifth is not None, out[-2000:]
    assert [float(d) for d in by_fifth[1].split(", ")] == pytest.approx(dues, abs=5e-4)
    # what the machine's cores, less the broker's share of them, give at most at the CPU per record of the worker and the trainer
    rows = {r["pipeline"]: r for r in json.loads(results_file.read_text())}
    parts = [rows[p]["cpu_us_per_record"] for p in ("full", "full: its trainer")]
    broker = rows["full: the broker"]["cpu_s"] / rows["full: the broker"]["wall_s"]
    ceiling = re.search(r"full: (\d+) cores, less the broker's ([\d.]+), at ([\d,]+) CPU µs per record \(workers ([\d,]+), "
                        r"trainer ([\d,]+)\) give at most ([\d,]+) records/s; this run reached ([\d,]+)", out)
    assert ceiling is not None, out[-2000:]
    assert float(ceiling[2]) == pytest.approx(broker, abs=0.005) and 0 < broker < 2
    cores, total, *shown, most, reached = (int(v.replace(",", "")) for v in ceiling.groups()[:1] + ceiling.groups()[2:])
    assert cores == os.cpu_count() and shown == [round(p) for p in parts] and total == round(sum(parts))
    assert most == pytest.approx((cores - broker) * 1e6 / sum(parts), abs=2) and reached == round(full["per_worker"])
    assert reached < most  # one worker cannot use every core
