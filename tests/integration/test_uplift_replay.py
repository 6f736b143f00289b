"""Replay equality of targeting by uplift: a live worker on the embedded broker makes
exactly the ordered offline replay's uplift decisions.

The uplift model of a decision is the one of the model snapshot its event time selects; the
trainer learns the outcomes of matured decisions of both groups (sent on ``model-labels``)
by event time, and ranks the explored candidates when it stamps a snapshot, so the worker
and the replay must pick the same customers with the same prediction, cut-off and model
version: the same action ids, rules and groups, and the same ``reason.uplift`` to the digit.
As in ``test_bandit_replay.py``, the churn and loyalty learners keep their fixed priors (the
replay has no review texts), so the uplift model is the only learned model the decisions
depend on; it answers after 5 decisions of each group (``RETENTION_UPLIFT_MIN_DECISIONS``).
The reviews go to the worker without their texts: the uplift model's inputs are the churn
model's, ``sentiment_mean`` among them, which the ordered replay (no text model) cannot
compute (with the texts, 10 of 24 decisions had other inputs, hence other predictions).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from streams.runtime.publish import Outgoing, simulation_records
from streams.simulation import Shop, SimulationConfig
from tests.integration.conftest import Pipeline
from tests.integration.test_bandit_replay import assert_same_decisions, worker_and_replay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LAPSE_UPLIFT = Path(__file__).resolve().parents[1] / "data" / "policy-lapse-uplift.yaml"
SHOP = SimulationConfig(customers=60, new_customers_per_day=1.0, days=120, seed=11, duplicate_share=0.01)
MIN_DECISIONS = 5


def without_texts(records: Iterable[Outgoing]) -> Iterator[Outgoing]:
    """The records, each review without its text (what the ordered replay reads of it)."""
    for r in records:
        if r.topic == "reviews":
            try:
                value = json.loads(r.value)
            except ValueError:
                yield r  # a malformed record stays as it is
                continue
            if isinstance(value, dict) and value.pop("text", None) is not None:
                r = replace(r, value=json.dumps(value).encode())
        yield r


def decisions(actions: list[dict[str, Any]]) -> dict[str, tuple[str, str, str, dict[str, Any]]]:
    """Per action id: the rule fired, the group, when, and what the uplift model said."""
    return {a["action_id"]: (a["reason"]["rule"], a["group"], a["ts"], a["reason"].get("uplift")) for a in actions}


def test_the_worker_makes_the_uplift_decisions_of_the_ordered_replay(pipeline: Pipeline) -> None:
    live, models, replayed = worker_and_replay(pipeline, SHOP, without_texts(simulation_records(Shop(SHOP))), LAPSE_UPLIFT,
                                               {"RETENTION_UPLIFT_MIN_DECISIONS": str(MIN_DECISIONS)},
                                               uplift_min_decisions=MIN_DECISIONS)
    want, got = decisions(replayed), decisions(live)
    assert_same_decisions(want, got, live)
    # more than exploration: decisions by a model that had learned outcomes of both groups,
    # some picked by it (not explored), and the worker's trainer learned uplift examples too
    said = [u for _, _, _, u in want.values()]
    assert all(u is not None and u["target"] == "uplift" for u in said)
    answered = [u for u in said if u["predicted"] is not None]
    assert len(answered) >= 5, said
    assert any(not u.get("explored", False) for u in answered) and any(u.get("explored", False) for u in said)
    assert any("cutoff" in u for u in answered)
    assert {group for _, group, _, _ in want.values()} == {"treatment", "control"}
    assert models["learned"].get("uplift", 0) >= 2 * MIN_DECISIONS, models
