"""The demo's summary (streams/runtime/demo.py): one screen of at most 80 columns by default,
every table with ``--details``; a payload shortened by whole items, never cut mid-JSON."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rich.console import Console

from streams.runtime.demo import print_summary, print_uplift


class FakeWorker:
    env: dict[str, str] = {}

    def __init__(self) -> None:
        self.counts = {("clicks", "ok"): 900.0, ("clicks", "invalid"): 3.0, ("purchases", "ok"): 90.0, ("heartbeats", "heartbeat"): 40.0}
        self.suppressed = [({"kind": "coupon", "reason": "cooldown"}, 4.0), ({"kind": "recommendation", "reason": "unsubscribed"}, 2.0)]

    def total(self, name: str, **labels: str) -> float:
        if name == "retention_records_total":
            return self.counts.get((labels.get("topic", ""), labels.get("result", "")), 0.0)
        return {"retention_model_labels_learned": 120.0}.get(name, 0.0)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.suppressed if name == "retention_actions_suppressed_total" else []

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        return 404, {"error": "unknown"}


class FakeShop:
    def state_at(self, user_id: str, ts_ms: int) -> Any:
        return type("State", (), {"value": "churned" if user_id.endswith("1") else "loyal"})()


def action(n: int, kind: str, group: str, items: int = 0) -> dict[str, Any]:
    payload: dict[str, Any] = {"items": [{"item_id": f"i{k:05d}"} for k in range(items)]} if items else {"code": "RS-X", "percent_off": 10}
    return {"user_id": f"u{n}", "kind": kind, "group": group, "ts": "2026-02-01T00:00:00.000Z", "payload": payload,
            "reason": {"rule": f"{kind}_rule", "trigger": "lapse", "scores": {"churn": 0.7}, "model_versions": {"churn": "p"}}}


ACTIONS = [action(1, "coupon", "treatment"), action(2, "coupon", "control"), action(3, "recommendation", "treatment", items=8)]
DEAD = [{"error": "Object missing required field `user_id`"}] * 3
STATS = {"by_kind": {"coupon": {
    "treatment": {"decisions": 10, "matured": 9, "redemptions": 2}, "control": {"decisions": 2, "matured": 2},
    "uplift": {"estimate": 0.1, "low": -0.1, "high": 0.3},
    "itt": {"treatment": {"matured": 9, "conversions": 4}, "control": {"matured": 2, "conversions": 0},
            "uplift": {"estimate": 0.44, "low": 0.01, "high": 0.7}}}}, "outcomes": {}}
TRUTH = {"coupon": {"true_uplift": 0.12, "expected_uplift": 0.1}}


def summary(details: bool, width: int = 80) -> str:
    console = Console(record=True, width=width, force_terminal=False)
    print_summary(console, FakeShop(), Counter({"clicks": 903, "purchases": 90, "heartbeats": 40}), FakeWorker(),  # type: ignore[arg-type]
                  ACTIONS, DEAD, details)
    print_uplift(console, STATS, TRUTH, 3, 0.95, TRUTH, details)
    return console.export_text()


def test_the_default_summary_fits_one_screen_and_names_what_matters() -> None:
    text = summary(details=False)
    lines = text.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 80, text
    assert "Retention actions: 3 on the actions topic: coupon 1 treatment / 1 control; recommendation 1 treatment / 0 control; " \
           "6 decided but suppressed by the guard rails" in " ".join(text.split())
    assert "+0.440 [+0.010, +0.700]" in text and "+0.120" in text  # measured uplift with its interval, and the truth
    flat = " ".join(text.split())
    assert "churned 50%, loyal 50%" in flat and "120 matured labels learned" in flat
    assert "coupon_rule" not in text  # the examples per rule are details


def test_details_add_the_tables_and_examples_with_payloads_cut_by_whole_items() -> None:
    text = summary(details=True, width=400)
    assert "coupon_rule" in text and "recommendation_rule" in text and "Decided but suppressed" in text
    example = next(line for line in text.splitlines() if "recommendation_rule:" in line)
    payload = example.split("recommendation ", 1)[1].split(" for u3")[0]
    assert json.loads(payload) == {"items": [{"item_id": "i00000"}, {"item_id": "i00001"}, "..."]}
