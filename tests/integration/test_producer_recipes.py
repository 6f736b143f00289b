"""The recipes of docs/producing.md, run as written against the embedded broker: each places
every user's records on the partition the workers compute (the Java client's murmur2).

The code is read from the page itself (the fenced block after ``<!-- recipe: NAME -->``), so
the page cannot drift from what is tested. Only the topic name (each test has its own) and the
bootstrap servers (``KAFKA_BOOTSTRAP_SERVERS``) differ from what a reader copies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from streams.domain.timestamps import format_ts
from streams.runtime.kafka import read_topic
from streams.runtime.partitioning import make_partitioner
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "producing.md"
KAFKAJS = ROOT / "tests" / "data" / "kafkajs"  # package.json and package-lock.json: kafkajs pinned
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
USERS = 200


def recipe(name: str) -> str:
    """The code block of docs/producing.md marked ``<!-- recipe: name -->``."""
    found = re.findall(rf"<!-- recipe: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```\n", PAGE.read_text(), re.S)
    assert len(found) == 1, f"docs/producing.md has {len(found)} blocks marked 'recipe: {name}'"
    return found[0]


def events() -> list[tuple[str, int, str]]:
    """(user_id, event time in epoch ms, JSON line): one click per user, ``ts`` written in the
    contract's three forms (UTC with Z, with an offset, epoch milliseconds)."""
    out = []
    for i in range(USERS):
        user, ms = f"user-{i}", T0 + i * 61_001
        if i % 3 == 0:
            ts: str | int = format_ts(ms)
        elif i % 3 == 1:
            local = datetime.fromtimestamp(ms / 1000, timezone(timedelta(hours=1)))
            ts = local.isoformat(timespec="milliseconds")
        else:
            ts = ms
        value = {"event_id": f"e-{i}", "user_id": user, "ts": ts, "kind": "product_view"}
        out.append((user, ms, json.dumps(value, separators=(",", ":"))))
    return out


def write_events(path: Path) -> list[tuple[str, int, str]]:
    sent = events()
    path.write_text("".join(line + "\n" for _, _, line in sent))
    return sent


def run(args: list[str], what: str, timeout: float, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{what}: no answer in {timeout:.0f} s\nstdout: {e.stdout}\nstderr: {e.stderr}") from None
    assert done.returncode == 0, f"{what} exited with {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/install-tools (make test does)"
    return path


def env_of(pipeline: Pipeline, **extra: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": pipeline.env["KAFKA_BOOTSTRAP_SERVERS"], **extra}


def check_placement(pipeline: Pipeline, sent: list[tuple[str, int, str]], event_time: bool) -> None:
    """Every record is on the workers' partition for its key, with its value intact and (when
    the recipe sets it) the event time as its timestamp."""
    settings = pipeline.settings
    records = read_topic(settings, settings.topic_clicks, at_least=len(sent))
    partition_for = make_partitioner(settings.partitions)
    got = {m.key().decode(): (m.partition(), m.value().decode(), m.timestamp()[1]) for m in records}
    assert len(records) == len(sent) and sorted(got) == sorted(u for u, _, _ in sent)
    assert {u: p for u, (p, _, _) in got.items()} == {u: partition_for(u) for u, _, _ in sent}
    assert {u: v for u, (_, v, _) in got.items()} == {u: line for u, _, line in sent}
    assert len({p for p, _, _ in got.values()}) == settings.partitions  # every partition used
    if event_time:
        assert {u: t for u, (_, _, t) in got.items()} == {u: ms for u, ms, _ in sent}


def newer_librdkafka(tmp_path: Path) -> dict[str, str]:
    """An environment in which kcat loads the librdkafka of the confluent-kafka wheel.

    Debian 12's kcat links the system's librdkafka 2.0.2, which cannot read the embedded
    broker's (Tansu's) ApiVersions v3 answer ("Protocol read buffer underflow for ApiVersion
    v3"); the wheel's (2.16 when written) can. The library keeps its ABI, so kcat runs
    unchanged with it: the command line stays the recipe's."""
    import confluent_kafka

    libs = sorted((Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka-*.so.1"))
    assert libs, "the confluent-kafka wheel's librdkafka (confluent_kafka.libs/librdkafka-*.so.1) was not found"
    lib_dir = tmp_path / "librdkafka"
    lib_dir.mkdir()
    (lib_dir / "librdkafka.so.1").symlink_to(libs[-1])
    env = {"LD_LIBRARY_PATH": str(lib_dir)}
    version = run(["kcat", "-V"], "kcat -V", 30, env={**os.environ, **env}).stdout
    assert f"librdkafka {confluent_kafka.libversion()[0]}" in version, version
    return env


def test_kcat_recipe_places_records_like_the_workers(pipeline: Pipeline, tmp_path: Path) -> None:
    tool("kcat"), tool("jq")
    librdkafka = newer_librdkafka(tmp_path)
    sent = write_events(tmp_path / "events.jsonl")
    run(["bash", "-euo", "pipefail", "-c", recipe("kcat-input")], "the recipe's jq line", 30, cwd=tmp_path)
    command = recipe("kcat")
    assert command.count(" -t clicks ") == 1, command
    command = command.replace(" -t clicks ", f" -t {pipeline.settings.topic_clicks} ")
    run(["bash", "-euo", "pipefail", "-c", command], "the recipe's kcat command", 60, cwd=tmp_path,
        env=env_of(pipeline, **librdkafka))
    check_placement(pipeline, sent, event_time=False)  # kcat stamps the time of sending


def kafkajs_project(tmp_path: Path) -> Path:
    """A Node project with kafkajs installed from tests/data/kafkajs's lock file."""
    npm = tool("npm")
    project = tmp_path / "node"
    project.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(KAFKAJS / name, project / name)
    try:
        run([npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
            "npm ci (kafkajs from tests/data/kafkajs/package-lock.json; is the npm registry reachable?)", 180, cwd=project)
    except AssertionError as e:
        raise AssertionError(f"could not install kafkajs for the Node recipe: {e}") from None
    return project


def test_kafkajs_recipe_places_records_like_the_workers(pipeline: Pipeline, tmp_path: Path) -> None:
    node, project = tool("node"), kafkajs_project(tmp_path)
    (project / "produce-events.js").write_text(recipe("kafkajs") + "\n")
    sent = write_events(tmp_path / "events.jsonl")
    with (tmp_path / "events.jsonl").open() as stdin:
        run([node, "produce-events.js", pipeline.settings.topic_clicks], "node produce-events.js", 120, cwd=project,
            stdin=stdin, env=env_of(pipeline, KAFKAJS_NO_PARTITIONER_WARNING="1"))
    check_placement(pipeline, sent, event_time=True)


def test_python_recipe_places_records_like_the_workers(pipeline: Pipeline, tmp_path: Path) -> None:
    (tmp_path / "produce_events.py").write_text(recipe("python") + "\n")
    sent = write_events(tmp_path / "events.jsonl")
    with (tmp_path / "events.jsonl").open() as stdin:
        run([sys.executable, "produce_events.py", pipeline.settings.topic_clicks], "python produce_events.py", 60,
            cwd=tmp_path, stdin=stdin, env=env_of(pipeline))
    check_placement(pipeline, sent, event_time=True)
