"""GET /actions/stats and the attribution metrics: decisions, conversions, redemptions, outcomes and
the uplift, on the embedded broker with real workers."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import msgspec
import pytest

from streams.domain.actions import experiment_group
from streams.domain.timestamps import format_ts
from streams.domain.uplift import newcombe
from streams.runtime.kafka import read_topic
from streams.runtime.publish import Outgoing
from tests.integration.conftest import Pipeline
from tests.integration.test_pipeline import day, heartbeats, publish, purchase

pytestmark = pytest.mark.integration

LAPSE_ONLY = Path(__file__).resolve().parents[1] / "data" / "policy-lapse-only.yaml"
#: The lapse rule alone, half of the customers in the control group.
HALF_POLICY = Path(tempfile.mkdtemp(prefix="policy-")) / "lapse-only-half-control.yaml"
HALF_POLICY.write_text(LAPSE_ONLY.read_text().replace("control_share: 0\n", "control_share: 0.5\n"))
HALF = {"RETENTION_POLICY_FILE": str(HALF_POLICY), "RETENTION_METRICS_INTERVAL_S": "0.5"}


def users_in(group: str, n: int) -> list[str]:
    return [u for u in (f"cust-{i}" for i in range(100)) if experiment_group(u, 0.5) == group][:n]


def coupon_purchase(user: str, n: float, code: str | None) -> Outgoing:
    record = purchase(user, n)
    value = json.loads(record.value)
    if code is not None:
        value["coupon_code"] = code
    return Outgoing("purchases", user, msgspec.json.encode(value), record.ts_ms)


def outcome(user: str, action_id: str, n: float, kind: str) -> Outgoing:
    value = {"action_id": action_id, "user_id": user, "ts": format_ts(day(n)), "outcome": kind}
    return Outgoing("action-outcomes", user, msgspec.json.encode(value), day(n))


def wait_for(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


def test_conversions_redemptions_and_uplift_of_treatment_and_control(pipeline: Pipeline) -> None:
    treated, control = users_in("treatment", 2), users_in("control", 2)
    worker = pipeline.worker(**HALF)
    # four weekly buyers lapse: each gets a coupon decision on day 35 (21 + max(14, 2 * 7))
    events = publish(pipeline, [purchase(u, n) for u in treated + control for n in (0, 7, 14, 21)])
    worker.wait_ready()
    worker.wait_processed(events, timeout=120)
    events += publish(pipeline, heartbeats(until_day=36))
    worker.wait_processed(events, timeout=120)
    actions = {json.loads(m.value())["user_id"]: json.loads(m.value()) for m in read_topic(pipeline.settings, pipeline.settings.topic_actions, at_least=4)}
    assert {u: a["group"] for u, a in actions.items()} == {**dict.fromkeys(treated, "treatment"), **dict.fromkeys(control, "control")}
    status, early = worker.get_json("/actions/stats")
    assert status == 200 and early["complete"] and early["partitions_counted"] == [0, 1, 2, 3]
    coupon = early["by_kind"]["coupon"]
    assert (coupon["treatment"]["decisions"], coupon["treatment"]["matured"], coupon["uplift"]) == (2, 0, None)

    # the responses: a treated customer redeems the coupon, a control customer buys anyway
    first = actions[treated[0]]
    reactions = [outcome(treated[0], first["action_id"], 35.5, "delivered"), outcome(treated[0], first["action_id"], 36, "opened"),
                 outcome(treated[0], first["action_id"], 36, "opened"),  # a re-sent outcome counts once
                 coupon_purchase(treated[0], 38, first["payload"]["code"]), coupon_purchase(control[0], 40, None),
                 coupon_purchase(control[1], 49.5, None)]  # after the window (day 49): no conversion
    events += publish(pipeline, reactions)
    worker.wait_processed(events, timeout=120)
    events += publish(pipeline, [h for h in heartbeats(until_day=50) if h.ts_ms > day(36)])
    worker.wait_processed(events, timeout=120)

    status, stats = worker.get_json("/actions/stats")
    assert status == 200 and stats["complete"] and stats["errors"] == {}
    assert stats["attribution_window_days"] == 14.0 and stats["control_share"] == 0.5 and stats["control_by"] == "customer"
    coupon = stats["by_kind"]["coupon"]
    assert coupon["treatment"] == {"decisions": 2, "matured": 2, "conversions": 1, "redemptions": 1, "evicted": 0,
                                   "conversion_rate": 0.5, "redemption_rate": 0.5, "customers": 2}
    assert coupon["control"] == {"decisions": 2, "matured": 2, "conversions": 1, "redemptions": 0, "evicted": 0,
                                 "conversion_rate": 0.5, "redemption_rate": 0.0, "customers": 2}
    d, lo, hi = newcombe(1, 2, 1, 2)  # one decision per customer: the cluster interval is Newcombe's
    assert coupon["uplift"] == {"estimate": d, "low": round(lo, 6), "high": round(hi, 6), "confidence": 0.95,
                                "method": "cluster-newcombe", "design_effect": {"treatment": 1.0, "control": 1.0}}
    # intention to treat: one observation per customer from its first coupon (here each has one decision)
    itt = coupon["itt"]
    assert itt["treatment"] == {"customers": 2, "matured": 2, "conversions": 1, "conversion_rate": 0.5, "excluded": 0}
    assert itt["control"] == {"customers": 2, "matured": 2, "conversions": 1, "conversion_rate": 0.5, "excluded": 0}
    assert itt["uplift"] == {"estimate": d, "low": round(lo, 6), "high": round(hi, 6), "confidence": 0.95, "method": "newcombe"}
    assert stats["by_rule"]["coupon"]["lapsed_after_streak"] == coupon
    assert stats["outcomes"] == {"coupon": {"delivered": 1, "opened": 1}}
    status, local = worker.get_json("/actions/stats?scope=local")
    assert status == 200 and local["partitions"] == [0, 1, 2, 3]

    def attributed(group: str, result: str) -> float:
        return worker.total("retention_attributed_decisions_total", kind="coupon", rule="lapsed_after_streak", group=group, result=result)

    assert [attributed("treatment", r) for r in ("decided", "matured", "converted", "redeemed")] == [2, 2, 1, 1]
    assert [attributed("control", r) for r in ("decided", "matured", "converted", "redeemed")] == [2, 2, 1, 0]
    assert worker.total("retention_action_outcomes_total", kind="coupon", outcome="opened") == 1
    assert wait_for(lambda: worker.total("retention_uplift", kind="coupon", rule="all", bound="high") == round(hi, 6))
    assert worker.total("retention_uplift", kind="coupon", rule="lapsed_after_streak", bound="low") == round(lo, 6)
    assert worker.total("retention_uplift_itt", kind="coupon", rule="all", bound="high") == round(hi, 6)
    assert worker.total("retention_uplift_itt", kind="coupon", rule="lapsed_after_streak", bound="estimate") == d
    assert worker.total("retention_control_share", kind="coupon") == 0.5

    # the counts live in a changelogged table: a fresh worker on an empty data dir answers the same
    assert worker.stop() == 0
    second = pipeline.worker("w2", **HALF)
    second.wait_ready()
    assert wait_for(lambda: second.get_json("/actions/stats")[1].get("by_kind") == stats["by_kind"], timeout=60)


def test_any_of_two_workers_answers_for_the_whole_shop(pipeline: Pipeline) -> None:
    one, two = pipeline.worker("w1", **HALF), pipeline.worker("w2", **HALF)
    for w in (one, two):
        w.wait_ready()
    assigned = lambda w: w.total("retention_assigned_partitions", topic="heartbeats")  # noqa: E731
    assert wait_for(lambda: assigned(one) + assigned(two) == 4 and assigned(one) and assigned(two), timeout=60)
    users = users_in("treatment", 4) + users_in("control", 4)
    events = publish(pipeline, [purchase(u, n) for u in users for n in (0, 7, 14, 21)])
    events += publish(pipeline, heartbeats(until_day=50))

    def processed() -> float:
        return sum(w.total("retention_records_total") - w.total("retention_records_total", result="rekeyed") for w in (one, two))

    assert wait_for(lambda: processed() >= events, timeout=120), processed()
    local = [w.get_json("/actions/stats?scope=local")[1] for w in (one, two)]
    assert sorted(local[0]["partitions"] + local[1]["partitions"]) == [0, 1, 2, 3]
    answers = [w.get_json("/actions/stats") for w in (one, two)]
    assert answers[0] == answers[1] and answers[0][0] == 200
    stats = answers[0][1]
    assert stats["complete"] and stats["partitions_counted"] == [0, 1, 2, 3]
    coupon = stats["by_kind"]["coupon"]
    assert [(coupon[g]["decisions"], coupon[g]["matured"], coupon[g]["conversions"]) for g in ("treatment", "control")] == [(4, 4, 0), (4, 4, 0)]
    assert coupon["uplift"]["estimate"] == 0.0
    assert [(coupon["itt"][g]["customers"], coupon["itt"][g]["matured"], coupon["itt"][g]["conversions"]) for g in ("treatment", "control")] == [(4, 4, 0), (4, 4, 0)]
    assert coupon["itt"]["uplift"]["estimate"] == 0.0
