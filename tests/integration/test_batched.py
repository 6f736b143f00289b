"""The batched hot path (``RETENTION_INGEST=batched``) on the real embedded broker: the same
scenario as the Faust agent's pipeline test gives the same actions, dead letters, profiles
and counts, and its state survives a restart with an empty data dir."""

from __future__ import annotations

import json
import shutil

import pytest

from streams.runtime.kafka import read_topic
from tests.contract import schema_errors
from tests.integration.conftest import Pipeline
from tests.integration.test_pipeline import BAD_CLICKS, NO_CONTROL, run_scenario

pytestmark = pytest.mark.integration

BATCHED = {"RETENTION_INGEST": "batched", **NO_CONTROL}


def test_the_batched_path_decides_as_the_faust_agent_and_restores_from_its_changelog(pipeline: Pipeline) -> None:
    worker = pipeline.worker(**BATCHED)
    run_scenario(pipeline, worker)

    actions = read_topic(pipeline.settings, pipeline.settings.topic_actions, at_least=2)
    by_user = {msg.key().decode(): json.loads(msg.value()) for msg in actions}
    assert len(actions) == 2 and set(by_user) == {"lapsed", "miskeyed"}
    lapsed = by_user["lapsed"]
    assert schema_errors("retention-actions", lapsed) == []
    assert lapsed["kind"] == "coupon" and lapsed["ts"] == "2026-02-05T00:00:00.000Z"
    assert lapsed["reason"]["model_versions"]["churn"] == "recency-prior@2026-01-30"
    assert lapsed["reason"]["features"]["purchases"] == 4.0  # the duplicate counted once
    assert by_user["miskeyed"]["reason"]["features"]["purchases"] == 4.0  # re-keyed to its owner

    dead = read_topic(pipeline.settings, pipeline.settings.topic_dead_letters, at_least=len(BAD_CLICKS))
    assert len(dead) == len(BAD_CLICKS)
    assert worker.total("retention_records_total", topic="purchases", result="duplicate") == 1
    assert worker.total("retention_records_total", topic="purchases", result="rekeyed") >= 3
    assert worker.total("retention_actions_total", kind="coupon", rule="lapsed_after_streak", group="treatment") == 2

    status, profile = worker.get_json("/users/lapsed")
    assert status == 200, profile
    assert profile["features"]["purchases"] == 4 and profile["features"]["recency_days"] == 29.0
    status, stats = worker.get_json("/actions/stats")
    assert status == 200 and stats

    # a new machine: the data dir is gone; the changelog brings every user back
    worker.stop()
    shutil.rmtree(worker.data_dir)
    again = pipeline.worker("w2", **BATCHED)
    again.wait_ready()
    deadline_profile = None
    for _ in range(240):
        status, deadline_profile = again.get_json("/users/lapsed")
        if status == 200:
            break
        import time

        time.sleep(0.25)
    assert status == 200 and deadline_profile["features"]["purchases"] == 4
    assert deadline_profile["last_purchase"] == profile["last_purchase"]
