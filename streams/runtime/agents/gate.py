"""The guard rails in the worker: every decided action passes :func:`guards.admit` first.

Each partition's daily spending is a :class:`~streams.domain.guards.BudgetState` in the
``budgets`` table (RocksDB + changelog, keyed by the partition number, written in the
context of the record being processed, so it lands on that partition's changelog and
moves with the partition). The customer's cooldown marks are in their ``UserState``
(the ``users`` table), stored by the ingest agent after the step.

A suppressed action is **not sent**: it is counted in ``retention_actions_suppressed_total``
by kind and reason and logged at debug level (with its action id and rule). Control-group
actions pass the guards like treatment ones (they are sent with ``group=control``, spend
budget and start cooldowns, so both groups see the same guard rails).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import faust

from streams.domain.actions import RetentionAction
from streams.domain.guards import (
    BudgetState, Verdict, admit, coupon_value_cents, decode_budget, encode_budget, partition_limits, remaining,
)
from streams.domain.policy_file import Policy
from streams.domain.state import UserState
from streams.runtime import metrics

log = logging.getLogger(__name__)


class ActionGate:
    """``budgets``: where each partition's budget is kept, keyed ``str(partition).encode()``
    (default: the ``budgets`` table; the batched path passes its partition stores)."""

    def __init__(self, app: faust.App, policy: Policy, partitions: int, inbound: set[str],
                 budgets: Any = None, owned: Any = None, consent_required: bool = False) -> None:
        self.app = app
        self.policy = policy
        self.inbound = inbound
        self.budgets = budgets if budgets is not None else app.Table("budgets", partitions=partitions, key_type=bytes, value_type=bytes)
        #: the partitions this worker processes (default: its Faust consumer's inbound ones)
        self.owned = owned or (lambda: {tp.partition for tp in self.app.consumer.assignment() if tp.topic in self.inbound})
        self.limits = [dataclasses.replace(partition_limits(policy.guards, p, partitions), consent_required=consent_required)
                       for p in range(partitions)]
        self.coupons = {rule.name: rule.coupon for rule in policy.rules if rule.coupon is not None}
        app.on_rebalance_complete.connect(self._on_rebalance)

    def admit(self, state: UserState, action: RetentionAction, partition: int, now_ms: int) -> Verdict:
        """Check the action against the guard rails; if allowed, record it (budget now, the
        cooldown mark in ``state``, which the caller stores)."""
        coupon = self.coupons.get(action.reason.rule) if action.kind == "coupon" else None
        value = coupon_value_cents(coupon, state) if coupon is not None else 0
        key = str(partition).encode()
        raw = self.budgets.get(key)
        budget = decode_budget(raw) if raw is not None else BudgetState()
        verdict = admit(action.kind, action.action_id, value, state, budget, now_ms, self.limits[partition])
        if verdict.allowed:
            self.budgets[key] = encode_budget(budget)
            self._export(partition, budget, now_ms)
        else:
            metrics.ACTIONS_SUPPRESSED.labels(action.kind, verdict.reason).inc()
            log.debug("suppressed %s %s of rule %s for %s: %s", action.kind, action.action_id, action.reason.rule,
                      action.user_id, verdict.reason)
        return verdict

    def _export(self, partition: int, budget: BudgetState, now_ms: int) -> None:
        for (kind, measure), left in remaining(budget, now_ms, self.limits[partition]).items():
            metrics.BUDGET_LEFT.labels(str(partition), kind, measure).set(left)

    async def _on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        """Series of partitions this worker no longer owns are removed (an owned partition's
        are set at its next decision)."""
        owned = {str(p) for p in self.owned()}
        for family in metrics.BUDGET_LEFT.collect():
            for sample in family.samples:
                if sample.labels["partition"] not in owned:
                    metrics.BUDGET_LEFT.remove(sample.labels["partition"], sample.labels["kind"], sample.labels["measure"])
