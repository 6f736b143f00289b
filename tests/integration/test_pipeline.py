"""Events in, retention actions and dead letters out: the embedded broker and a real worker."""

from __future__ import annotations

import csv
import json
import time
import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from streams.domain.loyalty import DEFAULT_TIERS, parse_tiers, tier_of
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, format_ts
from streams.runtime.kafka import producer, read_topic
from streams.runtime.partitioning import make_partitioner
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing, Publisher
from tests.contract import schema_errors
from tests.integration.conftest import NO_CONTROL_EDIT, Pipeline, new_pipeline, policy_env

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NO_CONTROL = policy_env(Path(tempfile.mkdtemp(prefix="policy-")) / "no-control.yaml", NO_CONTROL_EDIT)


def day(n: float) -> int:
    return T0 + int(n * MS_PER_DAY)


def purchase(user: str, n: float, eid: str | None = None, key: str | None = "user") -> Outgoing:
    value = {"event_id": eid or f"{user}-p{n}", "user_id": user, "ts": format_ts(day(n)), "order_id": f"o-{user}-{n}",
             "items": [{"item_id": "i-1", "category": "outdoor", "quantity": 1, "unit_price": 40.0}],
             "total": 40.0, "currency": "EUR", "channel": "web"}
    return Outgoing("purchases", user if key == "user" else key, msgspec.json.encode(value), day(n))


def heartbeats(until_day: float, every_hours: float = 12) -> list[Outgoing]:
    step = int(every_hours * MS_PER_HOUR)
    return [Outgoing("heartbeats", None, msgspec.json.encode({"ts": t, "source": "test"}), t)
            for t in range(T0, day(until_day) + 1, step)]


def wrong_key_for(user: str, partitions: int) -> str:
    partition_for = make_partitioner(partitions)
    return next(k for k in (f"wrong-{i}" for i in range(100)) if partition_for(k) != partition_for(user))


def has_loyalty(row: dict) -> bool:
    """A user-scores row (or profile) carries the loyalty figures, in range, the tier the score's."""
    tiers = parse_tiers(DEFAULT_TIERS)
    loyalty, score = row["scores"]["loyalty"], row["scores"]["loyalty_score"]
    return 0 <= loyalty <= 30 and 0 < score < 1 and row["loyalty_tier"] == tier_of(score, tiers) and "loyalty" in row["model_versions"]


def publish(pipe: Pipeline, records: list[Outgoing]) -> int:
    publisher = pipe.publisher()
    report = publisher.publish(sorted(records, key=lambda r: r.ts_ms))
    publisher.close()
    assert report.failed == 0, report.errors
    return report.total


BAD_CLICKS = [
    (b"not json at all", "not valid JSON"),
    (b'{"event_id":"b1","ts":1767225600000,"kind":"search"}', "missing required field `user_id`"),
    (b'{"event_id":"b2","user_id":"u-bad","ts":1767225600,"kind":"search"}', "epoch seconds"),
    (b'{"event_id":"b3","user_id":"u-bad","ts":1767225600000,"kind":"teleport"}', "Invalid enum value 'teleport'"),
    (b'{"event_id":"b4","user_id":"u-bad","ts":"2026-01-09T00:00:00Z","kind":"search"}', "clock skew"),
    (b'{"event_id":"b5","user_id":"\xff\xfe","ts":1767225600000,"kind":"search"}', "not valid UTF-8"),
]


def scenario(pipe: Pipeline) -> list[Outgoing]:
    """A lapsing weekly buyer, the same buyer mis-keyed, a loyal buyer, a duplicate, bad records.

    Heartbeats are not included: re-keyed records take an extra hop, so tests publish the
    heartbeats only once the events are processed, to make the order deterministic.
    """
    wrong = wrong_key_for("miskeyed", pipe.settings.partitions)
    records = [purchase("lapsed", n) for n in (0, 7, 14, 21)]
    records.append(purchase("lapsed", 7))  # the same event_id again: must count once
    records += [purchase("miskeyed", n, key=wrong) for n in (0, 7, 14)] + [purchase("miskeyed", 21, key=None)]
    records += [purchase("loyal", n) for n in range(0, 43, 7)]
    return records + [Outgoing("clicks", "u-bad", raw, T0) for raw, _ in BAD_CLICKS]  # Kafka timestamp T0


def run_scenario(pipe: Pipeline, worker: WorkerProcess) -> None:
    events = publish(pipe, scenario(pipe))
    worker.wait_ready()
    worker.wait_processed(events, timeout=120)
    worker.wait_processed(events + publish(pipe, heartbeats(until_day=50)), timeout=120)


def test_lapsed_streak_customers_get_one_coupon_and_bad_records_are_dead_lettered(pipeline: Pipeline) -> None:
    worker = pipeline.worker(**NO_CONTROL)
    run_scenario(pipeline, worker)

    actions = read_topic(pipeline.settings, pipeline.settings.topic_actions, at_least=2)
    by_user = {msg.key().decode(): json.loads(msg.value()) for msg in actions}
    assert len(actions) == 2 and set(by_user) == {"lapsed", "miskeyed"}, (worker.get_json("/users/miskeyed"), [l for l in worker.metrics_text().splitlines() if "event_time" in l or "records_total" in l])
    lapsed = by_user["lapsed"]
    assert schema_errors("retention-actions", lapsed) == []
    assert lapsed["kind"] == "coupon" and lapsed["group"] == "treatment"
    assert lapsed["ts"] == "2026-02-05T00:00:00.000Z"  # last purchase day 21 + max(14, 2 * 7) days
    assert lapsed["expires_at"] == "2026-02-19T00:00:00.000Z"
    assert lapsed["reason"]["rule"] == "lapsed_after_streak"
    # scored by the snapshot of 2026-02-04 (a period before the decision's day): the newest
    # with models by then is that of 2026-01-30 (nothing was learned in between)
    assert lapsed["reason"]["model_versions"]["churn"] == "recency-prior@2026-01-30"  # and every model of the row
    assert set(lapsed["reason"]["model_versions"]) == {"churn", "loyalty", "sentiment", "segment"}
    assert lapsed["reason"]["trigger"] == "lapse" and lapsed["reason"]["lifecycle_stage"] == "at_risk"
    assert lapsed["reason"]["scores"]["churn"] == pytest.approx(0.6321, abs=1e-4)
    assert lapsed["reason"]["features"]["purchases"] == 4.0  # the duplicate counted once
    assert by_user["miskeyed"]["reason"]["features"]["purchases"] == 4.0  # re-keyed to its owner

    messages = read_topic(pipeline.settings, pipeline.settings.topic_dead_letters, at_least=len(BAD_CLICKS))
    dead = sorted((json.loads(msg.value()) for msg in messages), key=lambda d: d["offset"])  # one source partition (key u-bad)
    assert len(dead) == len(BAD_CLICKS) and len({d["partition"] for d in dead}) == 1
    for (raw, reason), letter, msg in zip(BAD_CLICKS, dead, messages):
        assert reason in letter["error"], letter["error"]
        assert letter["topic"] == pipeline.settings.topic_clicks and letter["value_size"] == len(raw)
        # redacted by default: no raw copy, no user id (the key is one), not even as the record's key
        assert letter["value"] is letter["value_base64"] is letter["key"] is None and letter["value_omitted"] == "redacted"
        assert b"u-bad" not in msg.value() and msg.key() is None
        assert schema_errors("dead-letters", letter) == []
    assert json.loads(dead[3]["value_redacted"]) == {"event_id": "b3", "user_id": "***", "ts": 1767225600000, "kind": "teleport"}
    assert dead[3]["paths"] == ["$.kind"]

    assert worker.total("retention_records_total", topic="purchases", result="duplicate") == 1
    assert worker.total("retention_records_total", topic="purchases", result="rekeyed") >= 3
    assert worker.total("retention_dead_letters_total", topic="clicks") == len(BAD_CLICKS)
    assert worker.total("retention_actions_total", kind="coupon", rule="lapsed_after_streak", group="treatment") == 2
    assert worker.total("retention_action_latency_seconds_count", kind="coupon") == 2  # one latency per action sent
    # both coupons came from lapse checks, users checked at their due time, and those checks took CPU
    assert worker.total("retention_due_checks_total") >= 2 and worker.total("retention_due_check_cpu_seconds_total") > 0

    # any user's features and scores, at the partition's event-time clock (day 50)
    status, profile = worker.get_json("/users/lapsed")
    assert status == 200, profile
    assert profile["features"]["purchases"] == 4 and profile["features"]["recency_days"] == 29.0
    assert profile["features"]["gap_mean_days"] == 7.0 and profile["features"]["spend_30d"] == 40.0 and profile["features"]["spend_7d"] == 0.0
    assert profile["scores"]["churn"] == pytest.approx(1 - math.exp(-29 / 14), abs=1e-6)
    assert has_loyalty(profile)
    segment_model = profile["model_versions"].pop("segment")
    loyalty_model = profile["model_versions"].pop("loyalty")  # recency-prior(+labels): too few labels to learn
    status, models = worker.get_json("/models")  # the newest snapshot this worker has read
    assert status == 200 and models["snapshot"]["covered"] >= models["snapshot"]["boundary"] >= T0 + 40 * MS_PER_DAY, models["snapshot"]
    version, learned = models["snapshot"]["version"], models["snapshot"]["learned"]
    assert learned["churn"] >= 9 and learned["segment"] >= 10 and models["snapshot"]["dropped"] == {}
    assert models["churn"]["version"] == f"recency-prior@{version}" and models["churn"]["prior"]
    # the prior answers alone: too few labels, and too few repeat buyers for a BG/NBD fit
    churn_blend = models["churn"]["blend"]
    assert {k: churn_blend[k] for k in ("weight", "answers", "prior_model")} == {"weight": 0.0, "answers": "prior", "prior_model": "recency-prior"}
    assert churn_blend["gate"]["weight"] == 0.0 and churn_blend["gate"]["max_step"] == 0.1  # below its minimum labels: no step yet
    assert models["loyalty"]["blend"]["weight"] == 0.0 and models["loyalty"]["blend"]["answers"] == "prior"
    assert models["loyalty"]["blend"]["prior_model"].startswith("recency-prior") and models["loyalty"]["blend"]["scale"] > 0
    assert set(models["loyalty"]["blend"]["gate"]) == {"labels", "periods", "learner_loss", "prior_loss", "target", "weight", "change", "max_step"}
    assert models["loyalty"]["blend"]["gate"]["labels"] < models["loyalty"]["labels"]  # the first label has no learner prediction to judge
    assert sorted((lab["model"], v) for lab, v in worker.samples("retention_model_blend_weight")) == [("churn", 0.0), ("loyalty", 0.0)]
    assert models["segments"]["version"] == f"segments-kmeans4+{learned['segment']}@{version}"
    # Day 50 (2026-02-20) is scored by the newest snapshot with a boundary at or before
    # 2026-02-19 (one period of lag); the trainer may already have covered later periods
    # (it vouches for idle partitions), so that is the newest one or an older one.
    used = profile["model_versions"]["churn"].rsplit("@", 1)[1]
    assert used <= "2026-02-19" and used <= version
    assert profile["model_versions"] == {"churn": f"recency-prior@{used}", "sentiment": f"sentiment-lex+nb+0@{used}"}
    assert profile["priors"] == ["churn", "loyalty"]
    assert loyalty_model.startswith("recency-prior") and loyalty_model.endswith(f"@{used}")
    assert segment_model.startswith("segments-kmeans4+") and segment_model.endswith(f"@{used}") and profile["segment"] in range(4)
    if used == version:
        assert segment_model == models["segments"]["version"]
    assert profile["lifecycle_stage"] == "at_risk"  # 29 days since the last purchase >= max(14, 2 * 7)
    assert profile["ts"] == "2026-02-20T00:00:00.000Z" and profile["last_purchase"] == "2026-01-22T00:00:00.000Z"
    assert worker.get_json("/users/nobody")[0] == 404

    # the latest snapshot per user on user-scores, valid against its schema
    rows = read_topic(pipeline.settings, pipeline.settings.topic_scores, at_least=3)
    latest = {msg.key().decode(): json.loads(msg.value()) for msg in rows}
    assert set(latest) == {"lapsed", "miskeyed", "loyal"}
    assert all(schema_errors("user-scores", row) == [] for row in latest.values())
    assert all(has_loyalty(row) for row in latest.values())
    assert latest["lapsed"]["features"]["purchases"] == 4 and latest["lapsed"]["scores"]["churn"] > 0.5

    # ... exported for analysts as CSV and Parquet, one row per user; and the marketing side:
    # `retention actions tail` prints the same actions as JSON lines (the three commands at once)
    def retention(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=worker.env, capture_output=True, timeout=60, check=True)

    with ThreadPoolExecutor(3) as pool:
        exports = [pool.submit(retention, "scores", "export", "--output", str(pipeline.tmp / name)) for name in ("scores.csv", "scores.parquet")]
        tailed = pool.submit(retention, "actions", "tail", "--from-beginning", "--kind", "coupon", "--max", "2")
        for export in exports:
            export.result()
    with (pipeline.tmp / "scores.csv").open() as handle:
        table = {row["user_id"]: row for row in csv.DictReader(handle)}
    assert set(table) == {"lapsed", "miskeyed", "loyal"}
    assert float(table["lapsed"]["purchases"]) == 4 and float(table["lapsed"]["churn"]) == latest["lapsed"]["scores"]["churn"]
    assert table["lapsed"]["churn_model"].startswith("recency-prior@") and table["lapsed"]["churn_prior"] == "True"
    assert float(table["lapsed"]["loyalty_score"]) == latest["lapsed"]["scores"]["loyalty_score"]
    assert table["lapsed"]["loyalty_tier"] == latest["lapsed"]["loyalty_tier"] and table["lapsed"]["loyalty_prior"] == "True"
    import pyarrow.parquet as pq

    parquet = pq.read_table(pipeline.tmp / "scores.parquet").to_pylist()
    assert [r["user_id"] for r in parquet] == sorted(table) and parquet[0]["purchases"] == float(table[parquet[0]["user_id"]]["purchases"])

    tail = tailed.result()
    assert sorted(json.loads(line)["user_id"] for line in tail.stdout.decode().splitlines()) == ["lapsed", "miskeyed"]


def test_state_is_restored_from_the_changelog_on_a_fresh_worker(pipeline: Pipeline) -> None:
    first = pipeline.worker(**NO_CONTROL)
    run_scenario(pipeline, first)
    assert first.stop() == 0  # SIGTERM: a graceful stop

    # a new worker on another (empty) data dir must rebuild every user's state from the changelog
    second = pipeline.worker("w2", **NO_CONTROL)
    second.wait_ready()
    more = publish(pipeline, [h for h in heartbeats(until_day=60) if h.ts_ms > day(50)])
    second.wait_processed(more, timeout=120)

    actions = [json.loads(msg.value()) for msg in read_topic(pipeline.settings, pipeline.settings.topic_actions, at_least=3)]
    users = sorted(a["user_id"] for a in actions)
    assert users == ["lapsed", "loyal", "miskeyed"]  # no second coupon for the same lapse
    loyal = next(a for a in actions if a["user_id"] == "loyal")
    assert loyal["ts"] == format_ts(day(56))  # last purchase day 42 + 14 days
    assert loyal["reason"]["features"]["purchases"] == 7.0  # history from before the restart


def test_our_producers_partition_like_the_worker(pipeline: Pipeline) -> None:
    users = [f"user-{i}" for i in range(200)]
    publish(pipeline, [Outgoing("clicks", u, b"{}", T0) for u in users])
    partition_for = make_partitioner(pipeline.settings.partitions)
    placed = {m.key().decode(): m.partition() for m in read_topic(pipeline.settings, pipeline.settings.topic_clicks, at_least=len(users))}
    assert placed == {u: partition_for(u) for u in users}


def test_replayed_backlog_gives_the_answers_of_live_traffic(pipeline: Pipeline) -> None:
    """History published before the worker starts: heartbeats must not run ahead of purchases.

    Faust reads a backlog round-robin over topics. Here the purchases topic is dense (daily
    buyers) and heartbeats sparse, so heartbeats would reach day 90 while purchases are
    read up to about day 35, and the loyal weekly buyer would look lapsed. The watermark
    clock holds the clock at the purchases' progress until they are read.
    """
    daily = [purchase(f"daily-{i}", n) for i in range(40) for n in range(91)]
    records = [purchase("loyal", n) for n in range(0, 85, 7)] + [purchase("lapsed", n) for n in (0, 7, 14, 21)] + daily
    beats = heartbeats(until_day=90, every_hours=6)
    publish(pipeline, records + beats)
    worker = pipeline.worker(**NO_CONTROL)
    worker.wait_ready()
    worker.wait_processed(len(records) + len(beats) * pipeline.settings.partitions, timeout=180)
    actions = [json.loads(m.value()) for m in read_topic(pipeline.settings, pipeline.settings.topic_actions, at_least=1)]
    assert [(a["user_id"], a["ts"]) for a in actions] == [("lapsed", "2026-02-05T00:00:00.000Z")]


def test_any_worker_answers_for_any_user_by_forwarding_to_the_owner(pipeline: Pipeline) -> None:
    one, two = pipeline.worker("w1", **NO_CONTROL), pipeline.worker("w2", **NO_CONTROL)
    events = publish(pipeline, scenario(pipeline))
    deadline = time.monotonic() + 120
    while sum(w.total("retention_records_total") - w.total("retention_records_total", result="rekeyed") for w in (one, two)) < events:
        assert time.monotonic() < deadline, "workers did not process the scenario"
        time.sleep(0.25)
    owners = {w: {p for labels, _ in w.samples("retention_event_time_seconds") for p in [labels["partition"]]} for w in (one, two)}
    assert owners[one] and owners[two], f"both workers should own partitions: {owners}"
    for user in ("lapsed", "miskeyed", "loyal"):
        answers = [w.get_json(f"/users/{user}") for w in (one, two)]
        assert answers[0] == answers[1] and answers[0][0] == 200, answers
        assert answers[0][1]["features"]["purchases"] == (4 if user != "loyal" else 7)
    assert one.get_json("/users/nobody")[0] == two.get_json("/users/nobody")[0] == 404
    # one model: both workers serve the same snapshot (the one trainer's), once both have read it
    deadline = time.monotonic() + 30
    while (reports := [w.get_json("/models")[1]["snapshot"] for w in (one, two)])[0] != reports[1]:
        assert time.monotonic() < deadline, reports
        time.sleep(0.25)
    assert reports[0]["version"] is not None and reports[0]["learned"]["churn"] > 0


def test_a_worker_with_only_idle_partitions_still_lets_the_trainer_hear_from_each(pipeline: Pipeline) -> None:
    """A worker that holds no record and knows of no marker still vouches for its idle
    partitions (at their own clocks), so the trainer hears from every partition and publishes
    a marker, whose watermarks then tell every worker what time to vouch for. Without it, a
    second worker that owned only idle partitions from its start (the first worker's fold
    thread had not started before the rebalance) left the trainer, and the first worker's
    records waiting for a snapshot, waiting for good (seen in the forwarding test above)."""
    worker = pipeline.worker(**NO_CONTROL)
    worker.wait_ready()
    deadline = time.monotonic() + 30
    while (snapshot := worker.get_json("/models")[1]["snapshot"])["covered"] is None:
        assert time.monotonic() < deadline, snapshot
        time.sleep(0.25)
    assert snapshot["covered"] == 0 and snapshot["boundary"] is None, snapshot  # a marker: nothing to learn yet
    assert sorted(snapshot["watermarks"]) == [str(p) for p in range(pipeline.settings.partitions)], snapshot


def test_a_backlog_is_merged_in_event_time_so_a_returning_buyer_still_gets_the_lapse_coupon(pipeline: Pipeline) -> None:
    """The sparse purchases topic is read far ahead of the dense clicks. If the buyer's
    return on day 45 were folded in before the clock reached day 35, the lapse between
    would never be seen (what the sorted stream decides: a coupon on day 35)."""
    clicks = [Outgoing("clicks", f"browser-{i}", msgspec.json.encode(
        {"event_id": f"c{i}-{n}", "user_id": f"browser-{i}", "ts": day(n / 4), "kind": "page_view"}), day(n / 4))
        for i in range(30) for n in range(4 * 60)]
    records = [purchase("returning", n) for n in (0, 7, 14, 21, 45)] + clicks
    beats = heartbeats(until_day=60, every_hours=6)
    publish(pipeline, records + beats)
    worker = pipeline.worker(**NO_CONTROL)
    worker.wait_ready()
    worker.wait_processed(len(records) + len(beats) * pipeline.settings.partitions, timeout=180)
    actions = [json.loads(m.value()) for m in read_topic(pipeline.settings, pipeline.settings.topic_actions, at_least=1)]
    assert [(a["user_id"], a["ts"]) for a in actions] == [("returning", "2026-02-05T00:00:00.000Z")]


@pytest.fixture(scope="module")
def reader(broker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, WorkerProcess]]:
    """One worker for the compression tests (each sends its own clicks and counts what they
    add): a worker start costs seconds, and what differs is only the producer's codec. (The
    module's last tests: the worker stops with the module.)"""
    with new_pipeline(broker_env, tmp_path_factory.mktemp("codecs")) as pipe:
        worker = pipe.worker()
        worker.wait_ready()
        yield pipe, worker


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_records_from_any_producer_are_read(reader: tuple[Pipeline, WorkerProcess], codec: str) -> None:
    pipe, worker = reader
    before = worker.wait_processed(0)  # the records it has processed so far (the other codecs')
    ok = worker.total("retention_records_total", topic="clicks", result="ok")
    publisher = Publisher(pipe.settings, producer(pipe.settings, **{"compression.type": codec}))
    clicks = [Outgoing("clicks", f"{codec}-u{i}", msgspec.json.encode(
        {"event_id": f"{codec}-c{i}", "user_id": f"{codec}-u{i}", "ts": T0 + i, "kind": "page_view"}), T0 + i) for i in range(50)]
    report = publisher.publish(clicks)
    publisher.close()
    worker.wait_processed(before + report.total, timeout=60)
    assert worker.total("retention_records_total", topic="clicks", result="ok") - ok == 50
