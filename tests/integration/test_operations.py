"""What an operator relies on, on real worker processes and the embedded broker: health
endpoints, operational metrics (lag, assignment, rebalances, recovery, tables), a real
Prometheus server scraping a worker and running every dashboard query, JSON logs, series
removed when partitions move, and a graceful SIGTERM."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import TopicPartition

from streams.runtime.broker import free_port
from streams.runtime.kafka import consumer, read_topic
from streams.runtime.partitioning import make_partitioner
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing
from tests.integration.conftest import Pipeline
from tests.promql import exported_names, families, metric_names
from tests.integration.test_pipeline import NO_CONTROL, T0, heartbeats, publish, purchase

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "retention.json"

FAST = {"RETENTION_METRICS_INTERVAL_S": "0.5"}
LOGICAL = {"clicks", "purchases", "reviews", "action-outcomes", "heartbeats", "rekeyed", "erasure-requests", "consents"}


def clicks(users: range) -> list[Outgoing]:
    return [Outgoing("clicks", f"u{i}", msgspec.json.encode({"event_id": f"c{i}", "user_id": f"u{i}", "ts": T0 + i,
                                                              "kind": "page_view"}), T0 + i) for i in users]


def get(worker: WorkerProcess, path: str) -> tuple[int, dict]:
    """(status, JSON body) of a health endpoint; (0, {}) while the web server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        assert worker.alive, f"worker exited; see {worker.log_file}"
        return 0, {}


def eventually(check, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(0.2)


@contextmanager
def prometheus_server(tmp: Path, target_port: int) -> Iterator[Callable[[str], float | None]]:
    """Debian's Prometheus scraping ``127.0.0.1:target_port`` every second, on a free port
    with its own storage; yields a function answering an instant PromQL query (None: no
    data yet). Stopped by its PID."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is needed (scripts/install-tools installs it)"
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: retention-workers\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )

    def query(promql: str) -> float | None:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:  # a bad query: 400 with the reason
            raise AssertionError(f"{promql}: {error.read().decode()}") from None
        except OSError:
            return None
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    with (tmp / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield query
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def check_dashboard(exposition: str, query: Callable[[str], float | None]) -> None:
    """The dashboard asks only for metrics the worker exports, shows every one of them, and
    each of its queries runs on a real Prometheus."""
    exported, ours = exported_names(exposition) | {"up"}, families(exposition)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= exported, f"the dashboard asks for metrics no worker exports: {used - exported}"
    assert not [f for f, names in ours.items() if not names & used], "metrics without a panel"
    for expr in exprs:
        query(expr.replace("$instance", ".*").replace("$__rate_interval", "1m"))  # raises on invalid PromQL


def lag_series(worker: WorkerProcess) -> dict[tuple[str, str], float]:
    return {(lab["topic"], lab["partition"]): v for lab, v in worker.samples("retention_consumer_lag_records")}


def test_an_operators_view_health_metrics_prometheus_dashboard_logs_and_partitions_moving(pipeline: Pipeline, tmp_path: Path) -> None:
    sent = publish(pipeline, clicks(range(200)) + [Outgoing("clicks", "u-bad", b"not json", T0)])
    worker = pipeline.worker(RETENTION_LOG_FORMAT="json", RETENTION_DEAD_LETTER_LOG_INTERVAL_S="1", **FAST)
    with prometheus_server(tmp_path, worker.web_port) as query:
        check_operations(pipeline, worker, sent, query)


def check_operations(pipeline: Pipeline, worker: WorkerProcess, sent: int, query: Callable[[str], float | None]) -> None:
    """Readiness, the operational metrics, Prometheus and the dashboard on one worker; then a
    second worker joins and takes half of the partitions; then the first worker's JSON log."""
    parts = pipeline.settings.partitions
    reasons = set()
    while True:  # not ready until partitions are assigned and the tables are recovered
        status, body = get(worker, "/health/ready")
        if status == 200:
            break
        if status:
            assert status == 503 and body["ready"] is False, body
            reasons.add(body["reason"])
        time.sleep(0.1)
    assert body == {"ready": True, "partitions": len(LOGICAL) * parts}
    starting = {"no partitions assigned", "rebalancing", "table recovery in progress"}
    assert {r for r in reasons if not r.startswith("restoring partitions ")} <= starting, reasons
    assert get(worker, "/health/live") == (200, {"live": True})
    worker.wait_processed(sent)

    # lag is counted per assigned inbound partition and reaches 0 once every record is committed
    lag = eventually(lambda: (s := lag_series(worker)) and len(s) == len(LOGICAL) * parts and sum(s.values()) == 0 and s,
                     what="all lag series at 0")
    assert set(lag) == {(topic, str(p)) for topic in LOGICAL for p in range(parts)}
    assert {lab["topic"]: v for lab, v in worker.samples("retention_assigned_partitions")} == dict.fromkeys(LOGICAL, parts)
    assert worker.total("retention_rebalances_total") == 1
    assert worker.total("retention_recovery_in_progress") == 0
    assert worker.total("retention_recovery_remaining_records") == 0
    assert worker.total("retention_worker_ready") == 1
    assert worker.total("retention_table_keys", table="users") >= 200  # RocksDB's estimate: overwrites count until compaction
    assert worker.total("retention_table_bytes", table="users") > 0
    [(build, one)] = worker.samples("retention_build_info")
    assert one == 1 and build["version"] == "0.1.0" and build["faust"].startswith("0.15.")

    # a real Prometheus scrapes the worker and answers PromQL about what it processed
    eventually(lambda: query("sum(retention_records_total)") == sent, timeout=60, what="Prometheus sees every record")
    assert query('sum(retention_records_total{topic="clicks", result="ok"})') == sent - 1
    assert query('sum(retention_dead_letters_total{topic="clicks"})') == 1
    assert query('up{job="retention-workers"}') == 1
    check_dashboard(worker.metrics_text(), query)
    # ?name[]= renders only the series asked for (the bench's and the tests' frequent reads)
    asked = worker.metrics_text("retention_records_total", "retention_worker_ready")
    assert {line.split("{")[0].split(" ")[0] for line in asked.splitlines() if not line.startswith("#")} == {
        "retention_records_total", "retention_worker_ready"}
    assert sum(v for _, v in worker.samples("retention_records_total")) == sent

    # a second worker joins: the first gives up half of the partitions and their series
    second = pipeline.worker("w2", **FAST)
    eventually(lambda: get(second, "/health/ready")[0] == 200, timeout=60, what="second worker ready")
    eventually(lambda: worker.total("retention_rebalances_total") == 2 and len(lag_series(worker)) == len(LOGICAL) * parts // 2,
               timeout=30, what="first worker's series of revoked partitions removed")
    mine = {p for _, p in lag_series(worker)}
    theirs = {p for _, p in eventually(lambda: lag_series(second), what="second worker's lag series")}
    assert mine.isdisjoint(theirs) and mine | theirs == {str(p) for p in range(parts)}
    eventually(lambda: {lab["partition"] for lab, _ in worker.samples("retention_event_time_seconds")} <= mine,
               what="event-time series of revoked partitions removed")
    assert {lab["topic"]: v for lab, v in worker.samples("retention_assigned_partitions")} == dict.fromkeys(LOGICAL, parts // 2)

    # every log line is one JSON object; the dead letter and the rebalance are there with their fields
    lines = [json.loads(line) for line in worker.log_file.read_text().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    # the dead letter in the summary of its interval (not a line per record): counted with its
    # reason and position
    dead = [line for line in lines if line["message"].startswith("dead-lettered")]
    assert len(dead) == 1 and dead[0]["logger"] == "streams.runtime.dead_letters", dead
    assert dead[0]["topic"] == "clicks" and dead[0]["dead_letters"] == 1 and dead[0]["records"] >= 1
    assert [(reason.startswith("not valid JSON"), n) for reason, n in dead[0]["reasons"].items()] == [(True, 1)], dead
    assert dead[0]["level"] == "INFO"  # one stray record (a WARNING takes 10 and more than 1 %)
    assert f"first {pipeline.settings.topic_clicks}[" in dead[0]["message"] and "@" in dead[0]["message"]
    rebalances = [line for line in lines if line["logger"] == "streams.runtime.ops" and "rebalance complete" in line["message"]]
    assert [len(line["partitions"]) for line in rebalances] == [len(LOGICAL) * parts, len(LOGICAL) * parts // 2]


def committed_offsets(pipeline: Pipeline, topics: list[str]) -> dict[tuple[str, int], int]:
    """The inbound topics' committed offsets (OffsetFetch by a consumer that joins nothing)."""
    reader = consumer(pipeline.settings, pipeline.settings.ingest_group, **{"enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(pipeline.settings.partitions)]
        return {(tp.topic, tp.partition): tp.offset for tp in reader.committed(tps, timeout=30) if tp.offset >= 0}
    finally:
        reader.close()


def test_sigterm_flushes_the_producer_and_commits_so_a_restart_redoes_nothing(pipeline: Pipeline) -> None:
    s = pipeline.settings
    beats = heartbeats(until_day=50)
    sent = publish(pipeline, [purchase("lapsed", n) for n in (0, 7, 14, 21)] + beats)
    first = pipeline.worker(**NO_CONTROL)
    first.wait_ready()
    first.wait_processed(sent)
    assert first.stop() == 0  # SIGTERM right after the last record: a graceful stop

    # the action emitted by the last heartbeats was flushed before the process ended
    [action] = read_topic(s, s.topic_actions, at_least=1)
    assert json.loads(action.value())["user_id"] == "lapsed"
    # the committed offsets are the ends of the partitions (fresh topics): every processed record is committed
    ends = {(s.topic_heartbeats, p): len(beats) for p in range(s.partitions)}  # a heartbeat goes to every partition
    ends[(s.topic_purchases, make_partitioner(s.partitions)("lapsed"))] = 4
    assert committed_offsets(pipeline, [s.topic_purchases, s.topic_heartbeats]) == ends

    # the same worker again (same group, same RocksDB dir): only the new records are processed
    again = pipeline.worker(**NO_CONTROL)  # "w1": the same data dir
    again.wait_ready()
    more = publish(pipeline, [h for h in heartbeats(until_day=60) if h.ts_ms > beats[-1].ts_ms])
    assert again.wait_processed(more) == more
    assert again.total("retention_records_total") == more  # old records would have come first
    assert again.total("retention_records_total", result="heartbeat") == more
    assert again.total("retention_actions_total") == 0  # nothing re-emitted


def test_commit_interval_gathers_what_is_folded_and_a_graceful_stop_commits_it(pipeline: Pipeline) -> None:
    """``RETENTION_COMMIT_INTERVAL_MS``: records are folded (their outputs go out) as they
    arrive, while their states and offsets wait for the batch to close; a SIGTERM closes it,
    so everything folded is committed and a restart redoes nothing."""
    s = pipeline.settings
    beats = heartbeats(until_day=50)
    sent = publish(pipeline, [purchase("lapsed", n) for n in (0, 7, 14, 21)] + beats)
    first = pipeline.worker(RETENTION_COMMIT_INTERVAL_MS="600000", **NO_CONTROL)  # ten minutes: never within this test
    first.wait_ready()
    first.wait_processed(sent)
    # folded: the lapse action is out; nothing is committed while the batch stays open
    [action] = read_topic(s, s.topic_actions, at_least=1)
    assert json.loads(action.value())["user_id"] == "lapsed"
    time.sleep(1.0)  # (room for a commit that must not come)
    assert committed_offsets(pipeline, [s.topic_purchases, s.topic_heartbeats]) == {}
    assert first.stop() == 0

    ends = {(s.topic_heartbeats, p): len(beats) for p in range(s.partitions)}
    ends[(s.topic_purchases, make_partitioner(s.partitions)("lapsed"))] = 4
    assert committed_offsets(pipeline, [s.topic_purchases, s.topic_heartbeats]) == ends
    again = pipeline.worker(**NO_CONTROL)  # the same data dir and group
    again.wait_ready()
    more = publish(pipeline, [h for h in heartbeats(until_day=60) if h.ts_ms > beats[-1].ts_ms])
    assert again.wait_processed(more) == more
    assert again.total("retention_actions_total") == 0  # nothing folded again


def test_a_batch_closes_at_its_record_limit_whatever_the_interval(pipeline: Pipeline) -> None:
    """``RETENTION_BATCH_MAX_RECORDS`` bounds a batch when the commit interval would not:
    offsets are committed as the batches fill, with no stop."""
    s = pipeline.settings
    beats = heartbeats(until_day=50)
    sent = publish(pipeline, beats)
    worker = pipeline.worker(RETENTION_COMMIT_INTERVAL_MS="600000", RETENTION_BATCH_MAX_RECORDS="8", **NO_CONTROL)
    worker.wait_ready()
    worker.wait_processed(sent)
    # batches of 8 records or more are committed as they fill: all but the last fewer than 8
    done = eventually(lambda: sum(committed_offsets(pipeline, [s.topic_heartbeats]).values()) >= sent - 7 or None,
                      timeout=30, what="the full batches committed")
    assert done and sum(committed_offsets(pipeline, [s.topic_heartbeats]).values()) <= sent
