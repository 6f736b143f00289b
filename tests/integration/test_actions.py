"""The policy file in the worker: all three action kinds on retention-actions with their
reasons, and the guard rails (cooldown, daily budget, unsubscribe) holding, also across a
kill -9 with every input read again (redelivery) and state rebuilt from the changelogs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from streams.domain.actions import action_id
from streams.domain.guards import decode_budget
from streams.domain.guards import BudgetState
from streams.domain.timestamps import MS_PER_DAY, format_ts
from streams.runtime.kafka import producer
from streams.runtime.partitioning import make_partitioner
from streams.runtime.publish import Outgoing
from tests.contract import schema_errors
from tests.integration.conftest import NO_CONTROL_EDIT, Pipeline, policy_env
from tests.integration.test_pipeline import day, heartbeats, publish
from tests.integration.test_recovery import read_to_end, settled
from tests.integration.test_recovery import publish as publish_counted

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

NEGATIVE = "Terrible. It arrived broken and support was useless. Awful, a waste of money."
#: One lapse coupon per partition per day (4 partitions), so two lapsing customers of one
#: partition on one day: one coupon, one suppressed.
ONE_COUPON_A_DAY = ("      coupon:\n        count: 2000", "      coupon:\n        count: 4")


def buy(user: str, n: float, item: str = "i-1", total: float = 40.0) -> Outgoing:
    value = {"event_id": f"{user}-p{n}", "user_id": user, "ts": format_ts(day(n)), "order_id": f"o-{user}-{n}",
             "items": [{"item_id": item, "quantity": 1, "unit_price": total}], "total": total, "currency": "EUR", "channel": "web"}
    return Outgoing("purchases", user, msgspec.json.encode(value), day(n))


def review(user: str, n: float, text: str = NEGATIVE, rating: int = 1) -> Outgoing:
    value = {"event_id": f"{user}-r{n}", "user_id": user, "ts": day(n), "item_id": "i-1", "rating": rating, "text": text}
    return Outgoing("reviews", user, msgspec.json.encode(value), day(n))


def outcome(user: str, action: str, n: float, kind: str = "unsubscribed") -> Outgoing:
    value = {"action_id": action, "user_id": user, "ts": day(n), "outcome": kind}
    return Outgoing("action-outcomes", user, msgspec.json.encode(value), day(n))


def same_partition(prefix: str, count: int, partitions: int) -> list[str]:
    partition_for = make_partitioner(partitions)
    names = [f"{prefix}-{i}" for i in range(200)]
    first = partition_for(names[0])
    return [n for n in names if partition_for(n) == first][:count]


def care_id(user: str, n: float) -> str:
    return action_id(user, "care_after_negative_review", day(n))


def actions_of(pipe: Pipeline) -> list[dict]:
    return [json.loads(m.value()) for m in read_to_end(pipe, pipe.settings.topic_actions)]


def test_all_three_kinds_go_out_with_reasons_and_cooldown_budget_and_unsubscribe_hold(pipeline: Pipeline, tmp_path: Path) -> None:
    worker = pipeline.worker(**policy_env(tmp_path / "policy.yaml", NO_CONTROL_EDIT, ONE_COUPON_A_DAY))
    lapsers = same_partition("lapser", 2, pipeline.settings.partitions)
    records = [buy("critic", 0), review("critic", 1), review("critic", 3)]  # the second within the 14-day cooldown
    records += [review("quitter", 1), outcome("quitter", care_id("quitter", 1), 2), review("quitter", 20)]  # after unsubscribing
    records += [buy(user, n) for user in lapsers for n in (0, 7, 14, 21)]  # both lapse on day 35, one partition
    events = publish(pipeline, records)
    worker.wait_ready()
    worker.wait_processed(events, timeout=120)
    # a first purchase once the others are learned (the recommender is per worker, and the
    # partitions' records are processed in no order across partitions): what others bought
    events += publish(pipeline, [buy("newbie", 22, item="i-2")])
    worker.wait_processed(events, timeout=120)
    worker.wait_processed(events + publish(pipeline, heartbeats(until_day=40)), timeout=120)

    actions = actions_of(pipeline)
    assert all(schema_errors("retention-actions", a) == [] for a in actions)
    assert len({a["action_id"] for a in actions}) == len(actions)  # one send per decision
    by_kind = Counter(a["kind"] for a in actions)
    assert set(by_kind) == {"coupon", "recommendation", "care_outreach"}, by_kind
    for a in actions:  # every action says why
        reason = a["reason"]
        assert reason["rule"] and reason["trigger"] and 0 <= reason["scores"]["churn"] <= 1
        assert {"churn", "loyalty", "sentiment", "segment"} <= set(reason["model_versions"]) and reason["features"]

    care = {a["action_id"]: a for a in actions if a["kind"] == "care_outreach"}
    assert set(care) == {care_id("critic", 1), care_id("quitter", 1)}  # not critic's day 3 (cooldown), not quitter's day 20
    assert care[care_id("critic", 1)]["payload"] == {"priority": "high", "topic": "negative review"}
    assert care[care_id("critic", 1)]["reason"]["trigger"] == "negative_review"

    coupons = [a for a in actions if a["kind"] == "coupon"]
    assert [(c["reason"]["rule"], c["ts"]) for c in coupons] == [("lapsed_after_streak", format_ts(day(35)))]
    assert coupons[0]["user_id"] in lapsers and coupons[0]["payload"]["percent_off"] == 10

    newbie = [a for a in actions if a["user_id"] == "newbie"]
    assert [(a["kind"], a["reason"]["rule"]) for a in newbie] == [("recommendation", "recommend_after_first_purchase")]
    items = [entry["item_id"] for entry in newbie[0]["payload"]["items"]]
    assert "i-1" in items and "i-2" not in items  # popular, never what the customer bought
    assert newbie[0]["reason"]["model_versions"]["reco"].startswith("cooccurrence+")

    suppressed = {(lab["kind"], lab["reason"]): v for lab, v in worker.samples("retention_actions_suppressed_total")}
    assert suppressed.get(("care_outreach", "cooldown")) == 1
    assert suppressed.get(("care_outreach", "unsubscribed")) == 1
    assert suppressed.get(("coupon", "budget_count")) == 1
    partition = str(make_partitioner(pipeline.settings.partitions)(lapsers[0]))
    assert worker.total("retention_budget_left", partition=partition, kind="coupon", measure="count") == 0
    assert worker.total("retention_actions_total", kind="care_outreach", rule="care_after_negative_review", group="treatment") == 2

    # the example marketing consumer: delivers each action once (a redelivered copy is skipped),
    # skips the expired ones, and commits its progress (a second run has nothing left)
    coupon = next(m for m in read_to_end(pipeline, pipeline.settings.topic_actions) if json.loads(m.value())["kind"] == "coupon")
    copier = producer(pipeline.settings)
    copier.produce(pipeline.settings.topic_actions, key=coupon.key(), value=coupon.value())  # as a re-send would
    assert copier.flush(30) == 0
    example = [sys.executable, str(Path(__file__).resolve().parents[2] / "examples" / "actions_consumer.py"), "--group", "mailer",
               "--idle-timeout", "4", "--now", "2026-02-06T00:00:00Z", "--topic", pipeline.settings.topic_actions]
    run = subprocess.run(example, env=worker.env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    delivered = run.stdout.splitlines()
    assert delivered == [f"deliver coupon to {coupons[0]['user_id']}: coupon {coupons[0]['payload']['code']} (10% off) until "
                         f"{coupons[0]['expires_at']} [lapsed_after_streak; {coupons[0]['action_id']}]"], run.stdout
    skipped = Counter(line.split(": ")[-1] for line in run.stderr.splitlines() if line.startswith("skip "))
    assert skipped["duplicate"] == 1 and skipped["expired"] == len(actions) - 1, run.stderr
    again = subprocess.run(example, env=worker.env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == "" and "skip" not in again.stderr


def budgets(pipe: Pipeline) -> dict[int, BudgetState]:
    """Each partition's latest budget (key ``pbudget``, in the user-state changelog's
    partition of its partition)."""
    latest = {m.partition(): m.value() for m in read_to_end(pipe, f"{pipe.settings.app_id}-user-state-changelog")
              if m.key() == b"pbudget"}
    return {p: decode_budget(v) for p, v in latest.items()}


def test_kill_9_mid_commit_and_re_sent_records_neither_make_a_second_decision_nor_spend_twice(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Worker a decides the coupon of day 35 in partition P (its budget: one coupon a day)
    and the care of a customer who then unsubscribes, and is killed -9 as soon as it has
    processed everything (what it had not committed is read again). Worker b, on an empty
    data dir (users and budgets from the changelogs), also gets every event re-sent by a
    producer. The second lapsing customer of P (due 12 hours later, the same day) must find
    P's budget spent, the unsubscribed one gets nothing more, and no decision gets a second
    action id or a second count in the budget (a re-send of the same id is allowed: at
    least once)."""
    env = policy_env(tmp_path / "policy.yaml", NO_CONTROL_EDIT, ONE_COUPON_A_DAY)
    first, second = same_partition("lapser", 2, pipeline.settings.partitions)
    records = [buy(first, n) for n in (0, 7, 14, 21)] + [buy(second, n + 0.5) for n in (0, 7, 14, 21)]
    records += [review("quitter", 1), outcome("quitter", care_id("quitter", 1), 2)]
    a = pipeline.worker("a", **env)
    total = sum(publish_counted(pipeline, sorted(records + heartbeats(until_day=35.25, every_hours=6), key=lambda r: r.ts_ms)).values())
    a.wait_ready()
    a.wait_processed(total, timeout=120)
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    resumed_from = settled(pipeline).total()

    b = pipeline.worker("b", **env)  # an empty data dir: users and budgets come from the changelogs
    b.wait_ready()
    later = records + [review("quitter", 20)] + [h for h in heartbeats(until_day=37, every_hours=6) if h.ts_ms > day(35.25)]
    more = sum(publish_counted(pipeline, later).values())
    b.wait_processed(total - resumed_from + more, timeout=180)
    time.sleep(1.0)  # the last sends of b reach the topic

    after = actions_of(pipeline)
    decided = {x["action_id"] for x in after if x["kind"] != "recommendation"}
    assert decided == {care_id("quitter", 1), action_id(first, "lapsed_after_streak", day(21))}
    assert b.total("retention_records_total", result="duplicate") >= len(records)  # the re-sent copies, once each
    suppressed = {(lab["kind"], lab["reason"]): v for lab, v in b.samples("retention_actions_suppressed_total")}
    assert suppressed.get(("coupon", "budget_count")) == 1  # the second customer: P's budget was spent before the kill
    assert suppressed.get(("care_outreach", "unsubscribed")) == 1
    partition = make_partitioner(pipeline.settings.partitions)(first)
    spent = budgets(pipeline)[partition]  # counted once, however often the decision was made
    assert spent.day == day(35) // MS_PER_DAY and spent.per_kind["coupon"].count == 1
    results: Counter[str] = Counter()
    for lab, v in b.samples("retention_records_total"):
        results[lab["result"]] += int(v)
    print(f"killed after {total} records, last commit at {resumed_from}; worker b {dict(results)}; "
          f"actions sent {len(after)}, distinct {len({x['action_id'] for x in after})}")
