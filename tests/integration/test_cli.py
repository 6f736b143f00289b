"""The command line as users run it: `retention produce` and `retention demo`."""

from __future__ import annotations

import json
from collections import Counter
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streams.runtime.kafka import read_topic
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration


def retention(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_produce_sends_valid_lines_keyed_by_user_and_reports_the_rejected(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "reviews.jsonl"
    source.write_text(
        '{"event_id":"r1","user_id":"u1","ts":"2026-01-05T13:04:05.120Z","item_id":"i1","rating":5,"text":"很好"}\n'
        '{"event_id":"r2","user_id":"u2","ts":"2026-01-05T13:04:05Z","item_id":"i1","rating":9}\n'
        '{"event_id":"r3","user_id":"u3","ts":1767618245120,"item_id":"i2","rating":1,"text":"Broke at once."}\n',
        encoding="utf-8",
    )
    rejects = tmp_path / "rejects.jsonl"
    env = {**os.environ, **pipeline.env}
    result = retention("produce", str(source), "--topic", "reviews", "--rejects", str(rejects), env=env)
    assert result.returncode == 0, result.stderr
    assert "sent 2 records to reviews; rejected 1" in result.stderr
    assert "line 2" in result.stderr
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["line"] == 2 and "$.rating" in reject["error"]

    sent = read_topic(pipeline.settings, pipeline.settings.topic_reviews, at_least=2)
    assert sorted((m.key().decode(), m.timestamp()[1]) for m in sent) == [("u1", 1767618245120), ("u3", 1767618245120)]
    assert json.loads(next(m.value() for m in sent if m.key() == b"u1"))["text"] == "很好"

    unknown = retention("produce", str(source), "--topic", "orders", env=env)
    assert unknown.returncode == 2 and "unknown topic 'orders'" in unknown.stderr


def test_demo_runs_the_whole_path_on_its_own_embedded_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    result = retention("demo", "--customers", "80", "--days", "75", env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Dead letters:" in out and "Retention actions:" in out and "lapsed_after_streak" in out
    assert "ground truth of the customers at the moment of their coupon" in out
    # the closed loop: actions went back to the shop, measured uplift beside the true one
    assert "What the actions achieved" in out
    uplift = json.loads((next(tmp_path.glob("var/demo/*")) / "uplift.json").read_text())
    coupon = uplift["measured"]["by_kind"]["coupon"]
    assert uplift["measured"]["complete"] and coupon["treatment"]["decisions"] + coupon["control"]["decisions"] > 0
    if coupon["treatment"]["decisions"]:  # treated customers heard of their coupon
        assert uplift["measured"]["outcomes"]["coupon"]["delivered"] > 0
    # everything it started is gone: the broker and the worker were stopped by PID
    pids = [int(re.search(pattern, out).group(1)) for pattern in (r"embedded broker at \S+ \(pid (\d+)\)", r"worker pid (\d+)")]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_simulate_publishes_the_shop_with_heartbeats_on_every_partition(pipeline: Pipeline) -> None:
    from streams.simulation import Shop, SimulationConfig

    env = {**os.environ, **pipeline.env}
    result = retention("simulate", "--customers", "15", "--days", "4", "--seed", "3", env=env)
    assert result.returncode == 0, result.stderr
    expected = Counter(r.topic for r in Shop(SimulationConfig(customers=15, days=4, seed=3)).records())
    s = pipeline.settings
    for logical, actual in (("clicks", s.topic_clicks), ("purchases", s.topic_purchases), ("reviews", s.topic_reviews)):
        assert len(read_topic(s, actual, at_least=expected[logical], idle_s=1)) == expected[logical]
    beats = read_topic(s, s.topic_heartbeats, at_least=expected["heartbeats"] * s.partitions, idle_s=1)
    assert Counter(m.partition() for m in beats) == {p: expected["heartbeats"] for p in range(s.partitions)}, result.stderr
