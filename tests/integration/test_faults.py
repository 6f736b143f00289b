"""Faults of the machine and of the broker, on real worker processes (issue 17): a broker
that is not there yet, a disk that fills up, a broker that comes back empty, and stop
signals that must end a worker whatever it is doing. Each test starts its own broker
where it breaks one, and stops every process it started by PID."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from streams.domain.timestamps import MS_PER_DAY
from streams.runtime.broker import EmbeddedBroker, free_port
from streams.runtime.kafka import create_topics, read_topic
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing, Publisher
from streams.runtime.settings import Settings, embedded_overrides
from tests.integration.conftest import Pipeline, fresh_env, new_pipeline, settings_of
from tests.integration.test_operations import eventually, get
from tests.integration.test_pipeline import T0

pytestmark = pytest.mark.integration


def purchases(users: int, per_user: int = 1) -> list[Outgoing]:
    """``per_user`` purchases of each of ``users`` users, a day apart, in event-time order."""
    out = []
    for n in range(per_user):
        for i in range(users):
            ts = T0 + n * MS_PER_DAY + i
            value = {"event_id": f"p{i}-{n}", "user_id": f"u{i}", "ts": ts, "order_id": f"o{i}-{n}",
                     "items": [{"item_id": "i-1", "quantity": 1, "unit_price": 12.5}], "total": 12.5,
                     "currency": "EUR", "channel": "web"}
            out.append(Outgoing("purchases", f"u{i}", msgspec.json.encode(value), ts))
    return out


def send(settings: Settings, records: list[Outgoing]) -> int:
    publisher = Publisher(settings)
    report = publisher.publish(records)
    publisher.close()
    assert report.failed == 0, report.errors
    return report.total


def log_lines(worker: WorkerProcess) -> list[dict]:
    return [json.loads(line) for line in worker.log_file.read_text().splitlines() if line.startswith("{")]


def exited(worker: WorkerProcess, timeout: float) -> int:
    """The worker's exit code, once it has exited on its own within ``timeout`` seconds."""
    assert worker.process is not None
    try:
        return worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running after {timeout:.0f} s; see {worker.log_file}") from None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test alone (it is stopped or restarted by the test), on a free port."""
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log")
    yield broker
    broker.stop()


def test_a_worker_started_before_its_broker_waits_for_it_and_then_processes(own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    env = fresh_env(embedded_overrides(own_broker.bootstrap_servers), RETENTION_LOG_FORMAT="json",
                    RETENTION_BROKER_RETRY_MAX_S="2")
    worker = WorkerProcess(env, tmp_path / "w1" / "data", tmp_path / "w1" / "worker.log").start()
    try:
        def attempts() -> list[dict]:
            assert worker.alive, f"worker exited with {worker.process.returncode}; see {worker.log_file}"
            return [line for line in log_lines(worker) if line["message"].startswith("no broker answers")]

        eventually(lambda: len(attempts()) >= 4, timeout=30, what="four attempts to reach the broker")  # ~0.5+1+2 s apart, then 2 s
        own_broker.start()
        settings = settings_of(env)
        create_topics(settings)
        sent = send(settings, purchases(40))
        worker.wait_ready(timeout=60)
        worker.wait_processed(sent, timeout=90)
        assert eventually(lambda: get(worker, "/health/ready")[0] == 200, what="ready")

        lines = log_lines(worker)
        waits = attempts()
        assert [int(re.search(r"attempt (\d+)", w["message"]).group(1)) for w in waits] == list(range(1, len(waits) + 1))
        assert all(w["level"] == "WARNING" and w["logger"] == "streams.runtime.worker" for w in waits)
        before = lines.index(waits[-1])
        assert [line["message"] for line in lines[:before] if line not in waits] == []  # nothing but one line per attempt
        assert not [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]
    finally:
        worker.stop()
