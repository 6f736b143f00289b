"""The recipes of docs/consuming.md, run as written against the embedded broker: each delivers
every treatment action that has not expired once (a redelivered copy, a control action and an
expired one skipped) and reports it ``delivered`` on the outcomes topic, on the partition the
workers compute for its ``user_id``.

The code is read from the page itself (the fenced block after ``<!-- recipe: NAME -->``), so
the page cannot drift from what is tested. Only the topic names and the consumer group (each
test has its own: the embedded broker is shared, and a group's members must agree on their
assignment protocol, which kafkajs and librdkafka name differently) and the bootstrap servers
(``KAFKA_BOOTSTRAP_SERVERS``) differ from what a reader copies; on the embedded broker, also the
group's session timeout and fetch wait (as for every client of ours there, ``EMBEDDED_LIBRDKAFKA``:
it holds a group join for half the session timeout, 22 s with librdkafka's default, and lets a
fetch wait long).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from streams.runtime.kafka import producer, read_topic
from streams.runtime.partitioning import make_partitioner
from streams.runtime.settings import EMBEDDED_LIBRDKAFKA
from tests.integration.conftest import Pipeline
from tests.integration.test_producer_recipes import env_of, kafkajs_project, newer_librdkafka, run, tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "consuming.md"
SCHEMAS = ROOT / "schemas"
USERS = 12


def recipe(name: str) -> str:
    """The code block of docs/consuming.md marked ``<!-- recipe: name -->``."""
    found = re.findall(rf"<!-- recipe: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```\n", PAGE.read_text(), re.S)
    assert len(found) == 1, f"docs/consuming.md has {len(found)} blocks marked 'recipe: {name}'"
    return found[0]


def action(i: int, group: str = "treatment", expires_at: str = "2099-01-01T00:00:00.000Z") -> dict:
    kind = ("coupon", "recommendation", "care_outreach")[i % 3]
    payload = {"coupon": {"code": f"RS-{i:04d}", "percent_off": 10},
               "recommendation": {"items": [{"item_id": "i-1", "score": 0.9}, {"item_id": "i-2", "score": 0.5}]},
               "care_outreach": {"priority": "high", "topic": "a 1-star review"}}[kind]
    return {"action_id": f"act-{i:04d}-{group}", "user_id": f"user-{i}", "ts": "2026-01-05T12:00:00.000Z", "kind": kind,
            "payload": payload, "reason": {"rule": "a_rule", "trigger": "lapse", "scores": {"churn": 0.8},
                                           "model_versions": {"churn": "recency-prior@2026-01-05"}},
            "group": group, "expires_at": expires_at}


def publish_actions(pipeline: Pipeline) -> list[dict]:
    """Publish the actions (keyed and placed as the workers do); return the deliverable ones."""
    deliverable = [action(i) for i in range(USERS)]
    others = [action(0, group="control"), {**action(1), "action_id": "act-expired", "expires_at": "2026-01-19T12:00:00.000Z"}]
    schema = json.loads((SCHEMAS / "retention-actions.v1.schema.json").read_text())
    sent = [*deliverable, deliverable[4], *others]  # deliverable[4] twice: a redelivery
    for a in sent:
        jsonschema.validate(a, schema)
    out = producer(pipeline.settings)
    partition_for = make_partitioner(pipeline.settings.partitions)
    for a in sent:
        out.produce(pipeline.settings.topic_actions, key=a["user_id"].encode(), value=json.dumps(a).encode(),
                    partition=partition_for(a["user_id"]))
    assert out.flush(30) == 0
    return deliverable


def check_outcomes(pipeline: Pipeline, deliverable: list[dict], idle_s: float = 1.0) -> None:
    """One valid ``delivered`` outcome per deliverable action, on its user's partition."""
    settings = pipeline.settings
    schema = json.loads((SCHEMAS / "action-outcomes.v1.schema.json").read_text())
    records = read_topic(settings, settings.topic_outcomes, at_least=len(deliverable), idle_s=idle_s, timeout=120)
    partition_for = make_partitioner(settings.partitions)
    outcomes = [json.loads(m.value()) for m in records]
    for o in outcomes:
        jsonschema.validate(o, schema)
    assert sorted((o["action_id"], o["user_id"], o["outcome"]) for o in outcomes) == \
        sorted((a["action_id"], a["user_id"], "delivered") for a in deliverable)
    assert all(m.key().decode() == json.loads(m.value())["user_id"] for m in records)
    assert all(m.partition() == partition_for(m.key().decode()) for m in records)


def delivered_lines(deliverable: list[dict]) -> list[str]:
    return sorted(f"deliver {a['kind']} to {a['user_id']} ({a['action_id']})" for a in deliverable)


def run_until_outcomes(args: list[str], pipeline: Pipeline, deliverable: list[dict], **kwargs) -> str:  # type: ignore[no-untyped-def]
    """Start a long-running consumer, wait for its outcomes, stop it with SIGTERM: exit code 0."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        check_outcomes(pipeline, deliverable, idle_s=3.0)
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    except BaseException:
        if process.poll() is None:
            process.kill()
        out, err = process.communicate()
        print(f"{args}: stdout\n{out}\nstderr\n{err}")  # shown with the failure
        raise
    assert process.returncode == 0, f"exit {process.returncode}\nstdout: {out}\nstderr: {err}"
    return out


def own_group(code: str, pipeline: Pipeline) -> str:
    """The recipe with the test's own consumer group in place of ``marketing-mailer``; on the
    embedded broker, with the short session timeout and fetch wait of its other clients."""
    assert code.count("'marketing-mailer'") + code.count('"marketing-mailer"') == 1, code
    group = f"marketing-mailer-{pipeline.settings.app_id}"
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):  # a real cluster: the recipe's own timeouts
        return code.replace("'marketing-mailer'", f"'{group}'").replace('"marketing-mailer"', f'"{group}"')
    quick = EMBEDDED_LIBRDKAFKA
    python = ", ".join(f'"{k}": {int(v)}' for k, v in quick.items())  # (the librdkafka names)
    js = (f"sessionTimeout: {quick['session.timeout.ms']}, heartbeatInterval: {quick['heartbeat.interval.ms']}, "
          f"maxWaitTimeInMs: {quick['fetch.wait.max.ms']}")  # (kafkajs's names for the same)
    quicker = (code.replace('"group.id": "marketing-mailer",', f'"group.id": "{group}", {python},')
                   .replace("{ groupId: 'marketing-mailer' }", f"{{ groupId: '{group}', {js} }}"))
    assert group in quicker, f"the recipe names its group otherwise: {code}"
    return quicker


def recipe_env(pipeline: Pipeline) -> dict[str, str]:
    s = pipeline.settings
    return env_of(pipeline, RETENTION_TOPIC_ACTIONS=s.topic_actions, RETENTION_TOPIC_OUTCOMES=s.topic_outcomes)


def test_kcat_recipes_list_the_deliverable_actions_once_and_report_them(pipeline: Pipeline, tmp_path: Path) -> None:
    tool("kcat"), tool("jq")
    librdkafka = newer_librdkafka(tmp_path)
    deliverable = publish_actions(pipeline)
    s = pipeline.settings
    actions = recipe("kcat-actions")
    assert actions.count(" -t retention-actions ") == 1, actions
    run(["bash", "-euo", "pipefail", "-c", actions.replace(" -t retention-actions ", f" -t {s.topic_actions} ")],
        "the recipe's kcat | jq line", 60, cwd=tmp_path, env=env_of(pipeline, **librdkafka))
    listed = [json.loads(line) for line in (tmp_path / "deliverable.jsonl").read_text().splitlines()]
    assert sorted(listed, key=lambda a: a["action_id"]) == sorted(deliverable, key=lambda a: a["action_id"])

    outcomes = recipe("kcat-outcomes")
    assert outcomes.count(" -t action-outcomes ") == 1, outcomes
    run(["bash", "-euo", "pipefail", "-c", outcomes.replace(" -t action-outcomes ", f" -t {s.topic_outcomes} ")],
        "the recipe's outcome line", 60, cwd=tmp_path, env=env_of(pipeline, **librdkafka))
    check_outcomes(pipeline, deliverable)


def test_kafkajs_recipe_delivers_each_action_once_and_reports_it(pipeline: Pipeline, tmp_path: Path) -> None:
    node, project = tool("node"), kafkajs_project(tmp_path)
    (project / "deliver-actions.js").write_text(own_group(recipe("kafkajs-actions"), pipeline) + "\n")
    deliverable = publish_actions(pipeline)
    out = run_until_outcomes([node, "deliver-actions.js"], pipeline, deliverable, cwd=project,
                             env={**recipe_env(pipeline), "KAFKAJS_NO_PARTITIONER_WARNING": "1"})
    assert sorted(line for line in out.splitlines() if line.startswith("deliver ")) == delivered_lines(deliverable), out


def test_python_recipe_delivers_each_action_once_and_reports_it(pipeline: Pipeline, tmp_path: Path) -> None:
    (tmp_path / "deliver_actions.py").write_text(own_group(recipe("python-actions"), pipeline) + "\n")
    deliverable = publish_actions(pipeline)
    out = run_until_outcomes([sys.executable, "deliver_actions.py"], pipeline, deliverable, cwd=tmp_path,
                             env=recipe_env(pipeline))
    assert sorted(out.splitlines()) == delivered_lines(deliverable), out
