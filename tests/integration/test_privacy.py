"""Customers' privacy through the embedded broker and real batched workers: pseudonyms at the
edge, and a right to erasure that survives a restart from the changelog, a replay of the
input topics, a kill -9 between the request and its confirmation, and two workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from models.examples import Forget, decode_example
from streams.domain.privacy import pseudonym
from streams.runtime.export import latest_scores
from streams.runtime.forget import send_requests, wait_confirmations
from streams.runtime.kafka import producer, read_to_end
from streams.runtime.partitioning import make_partitioner
from streams.runtime.processes import WorkerProcess
from streams.runtime.publish import Outgoing
from tests.contract import schema_errors
from tests.integration.conftest import Pipeline
from tests.integration.test_pipeline import NO_CONTROL, day, heartbeats, publish, purchase
from tests.integration.test_recovery import read_to_end as read_partitions_to_end

pytestmark = pytest.mark.integration

KEY = "k3y-" * 16
PSEUDO = {"RETENTION_PSEUDONYMIZE": "true", "RETENTION_PSEUDONYM_KEY": KEY, **NO_CONTROL}
PLAIN = {**NO_CONTROL}


def buys(user: str, days: tuple[float, ...] = (0, 7, 14)) -> list[Outgoing]:
    return [purchase(user, n) for n in days]


def pseudonym_of(pipe: Pipeline, user: str) -> str:
    return pseudonym(KEY.encode(), user, make_partitioner(pipe.settings.partitions))


def forget(pipe: Pipeline, *ids: str, wait: float = 120) -> list[dict[str, Any]]:
    """``retention forget`` as an operator runs it; its confirmations."""
    done = subprocess.run([sys.executable, "-m", "streams.cli", "forget", *ids, "--wait", str(wait), "--requested-by", "test"],
                          env={**os.environ, **pipe.env}, capture_output=True, text=True, timeout=wait + 60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def status_of(worker: WorkerProcess, path: str, wanted: int, timeout: float = 90) -> tuple[int, Any]:
    """GET ``path`` until it answers ``wanted`` (a restored worker answers 404 until its restore is done)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = worker.get_json(path)
        if status == wanted or time.monotonic() > deadline:
            return status, body
        time.sleep(0.25)


def until(check: Any, timeout: float = 90, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.25)


def scores_when(pipe: Pipeline, check: Any) -> dict[str, Any] | None:
    """The export's rows (latest per user) if ``check`` holds for them."""
    rows = latest_scores(pipe.settings)
    return rows if check(rows) else None


def changelog_latest(pipe: Pipeline) -> dict[bytes, bytes | None]:
    return {m.key(): m.value() for m in read_partitions_to_end(pipe, f"{pipe.settings.app_id}-user-state-changelog")}


def confirmations(pipe: Pipeline) -> list[dict[str, Any]]:
    return [json.loads(m.value()) for m in read_partitions_to_end(pipe, pipe.settings.topic_erasure_confirmations)]


def test_a_forgotten_customer_leaves_state_exports_and_trainer_and_neither_a_replay_nor_an_empty_data_dir_brings_them_back(
    pipeline: Pipeline,
) -> None:
    worker = pipeline.worker(**PSEUDO)
    total = publish(pipeline, buys("ann") + buys("bob") + heartbeats(until_day=16))
    worker.wait_ready()
    worker.wait_processed(total, timeout=120)
    ann, bob = pseudonym_of(pipeline, "ann"), pseudonym_of(pipeline, "bob")

    # pseudonyms at the edge: the state, the scores and the lookups know the pseudonym only
    status, profile = worker.get_json("/users/ann")
    assert status == 200 and profile["user_id"] == ann and profile["features"]["purchases"] == 3
    assert worker.get_json(f"/users/{ann}") == (status, profile)  # a pseudonym reaches the same owner
    rows = until(lambda: scores_when(pipeline, lambda r: {ann, bob} <= set(r)), what="score rows")
    assert "ann" not in rows and "bob" not in rows
    assert b"uann" not in changelog_latest(pipeline) and b"u" + ann.encode() in changelog_latest(pipeline)

    [confirmation] = forget(pipeline, "ann")
    assert schema_errors("erasure-confirmations", confirmation) == []
    assert confirmation["subject"] == ann and confirmation["pseudonymized"] and confirmation["found"] and not confirmation["repeated"]
    removed = confirmation["removed"]
    assert removed["state"] == 1 and removed["events"] == 3 and removed["user_scores_rows"] == 1 and removed["trainer_notified"] == 1
    assert removed["rfm_population"] == 1 and removed["due_schedule"] == 1
    assert "ann" not in json.dumps(confirmation)

    assert worker.get_json("/users/ann")[0] == 404 and worker.get_json(f"/users/{ann}")[0] == 404
    assert worker.get_json("/users/bob")[0] == 200
    rows = until(lambda: scores_when(pipeline, lambda r: ann not in r), what="ann's row tombstoned")
    assert bob in rows
    log = changelog_latest(pipeline)
    assert log[b"u" + ann.encode()] is None and log.get(b"e" + ann.encode()) and log[b"u" + bob.encode()], sorted(log)
    until(lambda: Forget(user=ann) in [decode_example(m.value()) for m in read_to_end(pipeline.settings, pipeline.settings.topic_model_labels)],
          what="the trainer told")
    until(lambda: worker.total("retention_model_trainer_records_total", result="forget") == 1, what="the trainer forgot")

    # a replay of the input topics (and a new event) is counted, not folded
    publish(pipeline, buys("ann", (0, 7, 14, 21)))
    until(lambda: worker.total("retention_records_total", topic="purchases", result="erased") == 4, what="replay refused")
    assert worker.get_json("/users/ann")[0] == 404
    assert worker.total("retention_dead_letters_total") == 0  # counted, not copied to another topic

    # a new machine: an empty data dir, the changelog restores bob and the erased-ids set, not ann
    worker.stop()
    shutil.rmtree(worker.data_dir)
    again = pipeline.worker("w2", **PSEUDO)
    again.wait_ready()
    assert status_of(again, "/users/bob", 200)[0] == 200
    assert again.get_json("/users/ann")[0] == 404
    publish(pipeline, buys("ann", (0, 7, 14, 21, 28)))
    until(lambda: again.total("retention_records_total", topic="purchases", result="erased") == 5, what="replay refused after restore")
    assert again.get_json("/users/ann")[0] == 404
    [repeat] = forget(pipeline, "ann")  # asked again: confirmed again, with what the first erasure removed
    assert repeat["repeated"] and repeat["removed"] == removed and repeat["erased_at"] == confirmation["erased_at"]


def test_two_workers_erase_the_customers_of_their_partitions_and_answer_404_for_them_from_either(pipeline: Pipeline) -> None:
    partition_for = make_partitioner(pipeline.settings.partitions)
    users: dict[int, str] = {}
    for n in range(200):
        users.setdefault(partition_for(f"c{n}"), f"c{n}")
    gone, kept = sorted(users.values()), "kept-1"
    a = pipeline.worker("a", **PLAIN)
    b = pipeline.worker("b", **PLAIN)
    total = publish(pipeline, [r for u in gone + [kept] for r in buys(u)] + heartbeats(until_day=16))
    a.wait_ready()
    b.wait_ready()
    until(lambda: a.total("retention_records_total") + b.total("retention_records_total") >= total, 180, "both workers folded")
    assert a.total("retention_records_total", result="ok") > 0 and b.total("retention_records_total", result="ok") > 0

    confirmed = forget(pipeline, *gone)
    assert sorted(c["subject"] for c in confirmed) == gone  # pseudonymisation off: the ids themselves
    assert {c["partition"] for c in confirmed} == set(range(pipeline.settings.partitions))
    assert all(c["found"] and c["removed"]["events"] == 3 and not c["pseudonymized"] for c in confirmed)
    for worker in (a, b):  # either worker: the owner answers (forwarded)
        assert [worker.get_json(f"/users/{u}")[0] for u in gone] == [404] * len(gone)
        assert worker.get_json(f"/users/{kept}")[0] == 200
    erased_before = a.total("retention_records_total", result="erased") + b.total("retention_records_total", result="erased")
    publish(pipeline, [r for u in gone for r in buys(u)])
    until(lambda: a.total("retention_records_total", result="erased") + b.total("retention_records_total", result="erased")
          == erased_before + 3 * len(gone), what="replays refused on both workers")
    assert all(a.get_json(f"/users/{u}")[0] == 404 for u in gone)

    # bad requests are dead-lettered with the reason, and the workers carry on; an unknown customer is confirmed as not found
    client = producer(pipeline.settings)
    for raw in (b"not json", b'{"request_id":"r-x","requested_at":1767225600000}'):
        client.produce(pipeline.settings.topic_erasure_requests, key=kept.encode(), value=raw)
    assert client.flush(30) == 0
    [unknown] = forget(pipeline, "never-seen")
    assert not unknown["found"] and unknown["removed"] == {"state": 0, "due_schedule": 0, "loyalty_ranking": 0}
    until(lambda: a.total("retention_records_total", topic="erasure-requests", result="invalid")
          + b.total("retention_records_total", topic="erasure-requests", result="invalid") == 2, what="bad requests counted")
    letters = until(lambda: (d := [json.loads(m.value()) for m in read_partitions_to_end(pipeline, pipeline.settings.topic_dead_letters)])
                    and len(d) == 2 and d)
    assert sorted(d["error"][:14] for d in letters) == ["name the custo", "not valid JSON"]
    assert all(d["topic"] == pipeline.settings.topic_erasure_requests and schema_errors("dead-letters", d) == [] for d in letters)
    assert a.alive and b.alive and a.get_json(f"/users/{kept}")[0] == 200


def test_an_erasure_survives_kill_9_between_request_and_confirmation_and_a_restart_on_an_empty_data_dir(pipeline: Pipeline) -> None:
    a = pipeline.worker("a", **PSEUDO)
    total = publish(pipeline, buys("ann") + buys("bob") + buys("cid") + heartbeats(until_day=16))
    a.wait_ready()
    a.wait_processed(total, timeout=120)
    ann, bob = pseudonym_of(pipeline, "ann"), pseudonym_of(pipeline, "bob")

    # ann: killed -9 as soon as the request is folded (its confirmation and commit may or may not be out)
    [ann_request] = send_requests(pipeline.settings, ["ann"])
    until(lambda: a.total("retention_records_total", topic="erasure-requests", result="ok") == 1, what="ann's request folded")
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    # bob: asked while no worker runs (a request waiting for its confirmation)
    [bob_request] = send_requests(pipeline.settings, ["bob"])

    again = pipeline.worker("a", **PSEUDO)  # the same data dir
    again.wait_ready()
    found = wait_confirmations(pipeline.settings, {ann_request, bob_request}, timeout=120)
    assert set(found) == {ann_request, bob_request}
    assert found[bob_request]["subject"] == bob and found[bob_request]["found"] and found[bob_request]["removed"]["events"] == 3
    mine = [c for c in confirmations(pipeline) if c["request_id"] == ann_request]
    first = mine[0]
    assert first["subject"] == ann and first["found"] and not first["repeated"]
    # read again after the kill: erased again and confirmed again, saying what the first erasure removed
    assert all(c["removed"] == first["removed"] and c["erased_at"] == first["erased_at"] and c["repeated"] for c in mine[1:])
    for user in ("ann", "bob"):
        assert again.get_json(f"/users/{user}")[0] == 404
    assert again.get_json("/users/cid")[0] == 200

    # then a new machine (killed -9, empty data dir): restored from the changelog, still erased
    assert again.stop(signal.SIGKILL) == -signal.SIGKILL
    shutil.rmtree(again.data_dir)
    fresh = pipeline.worker("c", **PSEUDO)
    fresh.wait_ready()
    assert status_of(fresh, "/users/cid", 200)[0] == 200
    assert [fresh.get_json(f"/users/{u}")[0] for u in ("ann", "bob")] == [404, 404]
    publish(pipeline, buys("ann") + buys("bob"))
    until(lambda: fresh.total("retention_records_total", topic="purchases", result="erased") == 6, what="replay refused")
    log = changelog_latest(pipeline)
    assert log[b"u" + ann.encode()] is None and log[b"u" + bob.encode()] is None


def test_a_refused_kind_is_suppressed_with_its_reason_and_actions_carry_the_pseudonym_and_the_shop_id_if_allowed(
    pipeline: Pipeline, tmp_path: Path,
) -> None:
    worker = pipeline.worker(**PSEUDO, RETENTION_ACTIONS_INCLUDE_USER_ID="true")
    streak = (0, 7, 14, 21)  # a weekly buyer who then lapses: the lapse coupon at day 35
    total = publish(pipeline, buys("refuser", streak) + buys("agreeer", streak))
    statements = tmp_path / "consents.jsonl"  # as the shop sends them: `retention produce --topic consents`
    statements.write_text(json.dumps({"user_id": "refuser", "ts": day(1), "allow": {"coupon": False}}) + "\n"
                          + json.dumps({"user_id": "refuser", "ts": day(1), "allow": {"sms": True}}) + "\n")
    done = subprocess.run([sys.executable, "-m", "streams.cli", "produce", str(statements), "--topic", "consents"],
                          env={**os.environ, **pipeline.env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "sent 1 records to consents; rejected 1" in done.stderr  # the unknown kind refused
    client = producer(pipeline.settings)
    worker.wait_ready()
    worker.wait_processed(total + 1, timeout=120)
    worker.wait_processed(total + 1 + publish(pipeline, heartbeats(until_day=50)), timeout=120)

    actions = until(lambda: [json.loads(m.value()) for m in read_to_end(pipeline.settings, pipeline.settings.topic_actions)],
                    what="an action")
    agreeer, refuser = pseudonym_of(pipeline, "agreeer"), pseudonym_of(pipeline, "refuser")
    coupons = [a for a in actions if a["kind"] == "coupon"]
    assert [(a["user_id"], a["shop_user_id"]) for a in coupons] == [(agreeer, "agreeer")]
    assert all(schema_errors("retention-actions", a) == [] for a in actions)
    assert all(a["user_id"] != refuser for a in coupons)
    assert worker.total("retention_actions_suppressed_total", kind="coupon", reason="no_consent") == 1
    assert worker.total("retention_records_total", topic="consents", result="ok") == 1
    status, profile = worker.get_json("/users/refuser")
    assert status == 200 and profile["user_id"] == refuser and profile["features"]["purchases"] == 4

    # the marketing system reports an outcome with the pseudonym it got (key and user_id): it reaches the customer's state
    [coupon] = coupons
    client.produce(pipeline.settings.topic_outcomes, key=agreeer.encode(), timestamp=day(50), value=json.dumps(
        {"action_id": coupon["action_id"], "user_id": agreeer, "ts": day(50), "outcome": "unsubscribed"}).encode())
    assert client.flush(30) == 0
    until(lambda: worker.get_json("/users/agreeer")[1].get("unsubscribed"), what="the outcome folded into agreeer's state")
    assert worker.get_json("/users/agreeer")[1]["features"]["purchases"] == 4  # the same state, not a new one
    assert worker.total("retention_records_total", topic="action-outcomes", result="rekeyed") == 0  # keyed by the pseudonym: its owner


def test_a_rotated_pseudonym_key_keeps_each_customers_history_and_an_erasure_covers_both_keys(pipeline: Pipeline) -> None:
    old_key, new_key = KEY, "n3w-" * 16
    first = pipeline.worker("a", **PSEUDO)
    total = publish(pipeline, buys("ann") + buys("bob") + heartbeats(until_day=16))
    first.wait_ready()
    first.wait_processed(total, timeout=120)
    old = pseudonym_of(pipeline, "ann")
    assert first.get_json("/users/ann")[1]["user_id"] == old
    first.stop()

    rotated = {**PSEUDO, "RETENTION_PSEUDONYM_KEY": new_key, "RETENTION_PSEUDONYM_KEYS_PREVIOUS": old_key}
    second = pipeline.worker("a", **rotated)  # the same data dir
    second.wait_ready()
    publish(pipeline, buys("ann", (17,)))
    until(lambda: second.total("retention_pseudonym_rotations_total") == 1, what="ann's state moved")
    new = pseudonym(new_key.encode(), "ann", make_partitioner(pipeline.settings.partitions))
    status, profile = second.get_json("/users/ann")
    assert status == 200 and profile["user_id"] == new != old and profile["features"]["purchases"] == 4  # 3 before, 1 after
    assert second.get_json(f"/users/{old}")[0] == 404
    assert second.get_json("/users/bob")[1]["user_id"] == pseudonym_of(pipeline, "bob")  # not seen since: still the old key's
    log = changelog_latest(pipeline)
    assert log[b"u" + old.encode()] is None and log[b"u" + new.encode()]

    [confirmation] = forget(pipeline, "bob")  # bob's state is under the old key's pseudonym: found through the previous key
    assert confirmation["found"] and confirmation["subject"] == pseudonym(new_key.encode(), "bob", make_partitioner(pipeline.settings.partitions))
    log = changelog_latest(pipeline)
    bob_old = pseudonym_of(pipeline, "bob")
    assert log[b"u" + bob_old.encode()] is None and log[b"e" + bob_old.encode()] and log[b"e" + confirmation["subject"].encode()]
    assert second.get_json("/users/bob")[0] == 404
