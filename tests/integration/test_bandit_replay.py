"""Replay equality of the bandit: the same events give the same bandit choices in a live
worker on the embedded broker and in the ordered offline replay of the same records.

The bandit of a decision is the one of the model snapshot its event time selects; the
trainer learns the rewards of matured treated decisions (sent on ``model-labels``) by event
time, so the worker and the replay must choose the same arm with the same posterior: the
same action ids, rules and groups, and the same ``reason.chosen`` (context, estimate,
bonus, bandit version) to the digit. As in ``test_recovery.py``, the churn and loyalty
learners keep their fixed priors (the replay has no review texts), so the bandit is the
only learned model the decisions depend on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from models.bundle import Models
from streams.domain.actions import encode_action
from streams.domain.fold import offline_training
from streams.domain.policy_file import load_policy
from streams.runtime.publish import Outgoing, simulation_records
from streams.simulation import Shop, SimulationConfig
from tests.integration.conftest import Pipeline
from tests.integration.test_recovery import STEADY, publish, read_to_end, trained, wait_committed
from tests.ordered_replay import ordered_replay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: Two lapse coupons, the bandit (linucb) chooses; a 20 % control group; default guard rails
#: (cooldowns and the checkout window are per customer; the budgets are never reached here).
LAPSE_BANDIT = Path(__file__).resolve().parents[2] / "deploy" / "policies" / "lapse-bandit.yaml"
#: 26k records; offline about 30 decisions, most of them by a bandit that has learned rewards.
SHOP = SimulationConfig(customers=60, new_customers_per_day=1.0, days=120, seed=11, duplicate_share=0.01)


def decisions(actions: list[dict[str, Any]]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Per action id: the rule fired, the group and how the bandit chose it."""
    return {a["action_id"]: (a["reason"]["rule"], a["group"], a["reason"].get("chosen")) for a in actions}


def worker_and_replay(pipeline: Pipeline, shop: SimulationConfig, records: Iterable[Outgoing], policy: Path,
                      env: dict[str, str], **fresh: Any) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """The actions a worker sends for ``records`` (of ``shop``) under ``policy``, its trainer's
    ``GET /models`` snapshot, and the actions of the ordered replay of ``shop`` (``fresh``: more
    arguments of its models)."""
    sent = publish(pipeline, records)
    worker = pipeline.worker("w1", **{**STEADY, "RETENTION_POLICY_FILE": str(policy), **env})
    worker.wait_ready()
    worker.wait_processed(sum(sent.values()), timeout=300)
    wait_committed(pipeline, sent, [worker])
    live = [json.loads(m.value()) for m in read_to_end(pipeline, pipeline.settings.topic_actions)]
    models = trained(worker)

    settings = pipeline.settings
    training = offline_training(
        lambda: Models.fresh(horizon_days=settings.engine.churn_horizon_days, min_labels=10**9, bgnbd_refit_periods=0,
                             churn_kind=settings.churn_learner, loyalty_kind=settings.loyalty_learner, **fresh),
        settings.model_period_ms, settings.model_lag_periods,
    )
    replayed = [json.loads(encode_action(a)) for a in
                ordered_replay(Shop(shop), settings.partitions, settings.engine, training, policy=load_policy(policy))]
    return live, models, replayed


def assert_same_decisions(want: dict[str, Any], got: dict[str, Any], live: list[dict[str, Any]]) -> None:
    """One send per decision, the same decisions, each alike (by the test's own view of one)."""
    assert len(live) == len(got)  # one send per decision
    assert set(got) == set(want), (sorted(set(want) - set(got)), sorted(set(got) - set(want)))
    differ = {aid: (want[aid], got[aid]) for aid in want if want[aid] != got[aid]}
    assert not differ, f"{len(differ)} of {len(want)} decisions differ (replay, worker): {differ}"


def test_the_worker_makes_the_bandit_choices_of_the_ordered_replay(pipeline: Pipeline) -> None:
    live, models, replayed = worker_and_replay(pipeline, SHOP, simulation_records(Shop(SHOP)), LAPSE_BANDIT, {})
    want, got = decisions(replayed), decisions(live)
    assert_same_decisions(want, got, live)
    # what makes this more than a tie-break by the seed: choices by a bandit that had learned
    # rewards, both arms chosen, and the worker's trainer learned rewards too
    chosen = [c for _, _, c in want.values()]
    assert all(c is not None and c["arms"] == ["lapse_coupon_10", "lapse_coupon_20"] for c in chosen)
    assert sum(not c["version"].startswith("bandit-blr+0@") for c in chosen) >= 10
    assert {rule for rule, _, _ in want.values()} == {"lapse_coupon_10", "lapse_coupon_20"}
    assert {group for _, group, _ in want.values()} == {"treatment", "control"}
    assert models["learned"].get("bandit", 0) > 0, models
