"""The command line as users run it: `retention produce` and `retention demo`."""

from __future__ import annotations

import json
from collections import Counter
import os
import re
import subprocess
import sys
import time
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
    assert result.returncode == 1, result.stderr  # the valid lines are sent; the rejected one makes the exit non-zero
    assert "sent 2 records to reviews; rejected 1; delivery failures 0" in result.stderr
    assert "line 2" in result.stderr
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["line"] == 2 and "$.rating" in reject["error"]

    sent = read_topic(pipeline.settings, pipeline.settings.topic_reviews, at_least=2)
    assert sorted((m.key().decode(), m.timestamp()[1]) for m in sent) == [("u1", 1767618245120), ("u3", 1767618245120)]
    assert json.loads(next(m.value() for m in sent if m.key() == b"u1"))["text"] == "很好"

    unknown = retention("produce", str(source), "--topic", "orders", env=env)
    assert unknown.returncode == 2 and "unknown topic 'orders'" in unknown.stderr


def test_produce_exits_0_only_when_every_line_is_sent_and_1_when_every_line_is_rejected(pipeline: Pipeline, tmp_path: Path) -> None:
    env = {**os.environ, **pipeline.env}
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"event_id":"r1","user_id":"u1","ts":"2026-01-05T13:04:05Z","item_id":"i1","rating":4}\n')
    bad.write_text('{"event_id":"r2","user_id":"u2","ts":"2026-01-05T13:04:05Z","item_id":"i1","rating":9}\nnot json\n')
    sent = retention("produce", str(good), "--topic", "reviews", env=env)
    assert sent.returncode == 0 and "sent 1 records to reviews; rejected 0; delivery failures 0" in sent.stderr
    rejected = retention("produce", str(bad), "--topic", "reviews", env=env)
    assert rejected.returncode == 1 and "sent 0 records to reviews; rejected 2; delivery failures 0" in rejected.stderr
    assert [m.key() for m in read_topic(pipeline.settings, pipeline.settings.topic_reviews, at_least=1, idle_s=1)] == [b"u1"]


def test_produce_reports_records_the_broker_refused_and_exits_1(pipeline: Pipeline, tmp_path: Path) -> None:
    # RETENTION_PARTITIONS says 6 where the topic has 4: the heartbeat's copies for partitions 4 and 5 are refused
    env = {**os.environ, **pipeline.env, "RETENTION_PARTITIONS": "6", "RETENTION_DELIVERY_TIMEOUT_S": "5"}
    source = tmp_path / "heartbeats.jsonl"
    source.write_text('{"ts":"2026-01-05T13:00:00Z"}\n')
    result = retention("produce", str(source), "--topic", "heartbeats", env=env)
    assert result.returncode == 1, result.stderr
    assert "sent 4 records to heartbeats; rejected 0; delivery failures 2" in result.stderr
    assert "not delivered" in result.stderr
    assert len(read_topic(pipeline.settings, pipeline.settings.topic_heartbeats, at_least=4, idle_s=1)) == 4


def test_actions_tail_prints_an_action_sent_right_after_it_started_with_kafka_default_timeouts(pipeline: Pipeline) -> None:
    """Group joins on the embedded broker take half the session timeout (~22 s with Kafka's
    45 s): the tail reads its partitions without a group, so its idle time counts from there."""
    from streams.runtime.kafka import producer

    env = {**os.environ, **pipeline.env, "RETENTION_SESSION_TIMEOUT_S": "45", "RETENTION_HEARTBEAT_INTERVAL_S": "3"}
    tail = subprocess.Popen([sys.executable, "-m", "streams.cli", "actions", "tail", "--idle-timeout", "8", "--max", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6)  # the command is up and its partitions assigned
        client = producer(pipeline.settings)
        client.produce(pipeline.settings.topic_actions, key=b"u1", value=b'{"action_id":"a1","kind":"coupon"}')
        assert client.flush(10) == 0
        out, errors = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 0, errors
    assert out == '{"action_id":"a1","kind":"coupon"}\n'


def test_heartbeat_publishes_the_lagged_wall_clock_to_every_partition(pipeline: Pipeline) -> None:
    from streams.domain.timestamps import parse_ts

    env = {**os.environ, **pipeline.env}
    before = time.time()
    result = retention("heartbeat", "--count", "2", "--every", "0.5", "--lag", "120", "--source", "hb-it", env=env)
    after = time.time()
    assert result.returncode == 0, result.stderr
    records = read_topic(pipeline.settings, pipeline.settings.topic_heartbeats, at_least=8, idle_s=1)
    assert sorted(m.partition() for m in records) == [0, 0, 1, 1, 2, 2, 3, 3]
    values = [json.loads(m.value()) for m in records]
    assert {v["source"] for v in values} == {"hb-it"} and all(m.key() is None for m in records)
    for message, value in zip(records, values):
        ts = parse_ts(value["ts"])
        assert message.timestamp()[1] == ts and (before - 120) * 1000 - 1 <= ts <= (after - 120) * 1000


def test_demo_runs_the_whole_path_on_its_own_embedded_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    result = retention("demo", "--customers", "80", "--days", "75", "--details", env=env, cwd=tmp_path, timeout=600)
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


def test_simulate_twice_refuses_to_resend_the_period_and_continues_with_a_later_start(pipeline: Pipeline) -> None:
    """A second identical run would make the workers count every event they no longer remember
    (each customer's latest 64 ids) as late, in lifetime totals again: refused, nothing sent;
    the period after it is simulated with ids of its own; --force sends anyway."""
    from datetime import datetime, timezone

    from streams.simulation import Shop, SimulationConfig

    env = {**os.environ, **pipeline.env}
    s = pipeline.settings
    args = ("simulate", "--customers", "15", "--days", "4", "--seed", "3")
    first = sum(r.topic == "clicks" for r in Shop(SimulationConfig(customers=15, days=4, seed=3)).records())
    later_start = datetime(2026, 1, 5, tzinfo=timezone.utc)
    later = sum(r.topic == "clicks" for r in Shop(SimulationConfig(customers=15, days=4, seed=3, start=later_start)).records())
    assert retention(*args, env=env).returncode == 0
    assert len(read_topic(s, s.topic_clicks, at_least=first, idle_s=1)) == first

    again = retention(*args, env=env)
    assert again.returncode == 2, again.stderr
    message = " ".join(again.stderr.split())
    # (counts from the watermarks: exact on Kafka; the embedded broker's ListOffsets under-reports
    # a partition's end, so it may count fewer, and date the latest event from an earlier record)
    counted = int(re.search(r"\(clicks ([\d,]+) records", message).group(1).replace(",", ""))
    assert 0 < counted <= first and "up to 2026-01-04T" in message, message
    assert "after the simulated period's start 2026-01-01T00:00:00.000Z" in message, message
    assert "--start 2026-01-05" in message and "--force" in message, message  # the day after the latest event
    assert len(read_topic(s, s.topic_clicks, at_least=first, idle_s=2)) == first  # nothing sent

    done = retention(*args, "--start", "2026-01-05", env=env)
    assert done.returncode == 0, done.stderr
    clicks = [json.loads(m.value()) | {"kafka_ts": m.timestamp()[1]}
              for m in read_topic(s, s.topic_clicks, at_least=first + later, idle_s=1)]
    assert len(clicks) == first + later and len({c["event_id"] for c in clicks}) == first + later  # ids of its own
    new = [c for c in clicks if c["event_id"].startswith("e-3-20260105T000000-")]
    assert len(new) == later and min(c["kafka_ts"] for c in new) >= int(later_start.timestamp() * 1000)

    forced = retention(*args, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert len(read_topic(s, s.topic_clicks, at_least=2 * first + later, idle_s=1)) == 2 * first + later
