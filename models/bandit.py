"""Contextual bandits that choose among a policy's eligible rules, learned like every model.

One bandit per group of rules (a trigger and an action kind, ``choose: by: bandit`` in
the policy file, ``docs/bandit.md``); its arms are the group's rules. Each arm has a
River :class:`~river.linear_model.BayesianLinearRegression` of the reward on the
customer's context (:func:`context_of`); the trainer learns it from reward examples
(a matured, treated decision: context, arm, reward) and ships it in the model snapshots,
so every worker and every replay chooses with the same posterior at the same event time.

Choosing reads the posterior and never changes it (a snapshot is shared by every
decision of its period), and whatever is random is drawn from a generator seeded by the
decision (``seed``: the decision's own digest), never from global or model state:

- ``linucb``: the arm with the highest ``mean + exploration * sd`` (sd: the posterior
  standard deviation of the arm's expected reward at this context);
- ``thompson``: the highest ``mean + exploration * sd * z``, ``z`` standard normal;
- ``epsilon_greedy``: with probability ``exploration`` an arm at random, else the highest mean.

Ties (every arm before it learned anything) go to an arm drawn by the seed, so an
untrained bandit spreads its first decisions over the arms.

Why not :class:`river.bandit.LinUCBDisjoint` itself: its ``pull`` breaks ties with the
policy's own ``random.Random`` (state that every pull advances, so two workers sharing a
snapshot would choose differently), its bonus is fixed at one predictive sd including the
noise term, and epsilon-greedy/Thompson in :mod:`river.bandit` are not contextual. The
per-arm learner is River's; only the choice is written here.

>>> b = Bandits()
>>> x = {"bias": 1.0, "churn": 0.8}
>>> for _ in range(30):
...     b.learn_one("lapse/coupon", "c20", x, 1.0)
...     b.learn_one("lapse/coupon", "c10", x, 0.0)
>>> b.choose("lapse/coupon", ["c10", "c20"], x, "linucb", 0.5, seed=b"d1").arm
'c20'
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from river.linear_model import BayesianLinearRegression

#: The context a bandit sees, every value of order 1 (the regression's prior is N(0, 1/PRIOR)).
#: Only what the customer's own state and the snapshot's models give: never the loyalty
#: percentile (``scores["loyalty_score"]``), which ranks the customer among the rows this
#: worker has published so far, in whatever order its partitions were processed, so a live
#: worker and a replay of the same events would see different contexts.
CONTEXT = ("bias", "churn", "log_loyalty", "recency_over_gap", "log_purchases", "log_order_value", "log_recency")
#: Prior precision of each arm's weights and the precision of a reward around its mean (a
#: conversion is 0 or 1: variance at most 1/4).
PRIOR_PRECISION = 1.0
NOISE_PRECISION = 4.0


def context_of(scores: dict[str, float], features: dict[str, float]) -> dict[str, float]:
    """The bandit's context from a customer's published row (scores and features): the
    churn score, the loyalty prediction (purchase days in the horizon, on a log scale: 30
    days give 1) and purchase features, each of order 1.

    >>> context_of({"churn": 0.7}, {"recency_over_gap": 3.0, "purchases": 4, "avg_order_value": 50.0, "recency_days": 20.0})["log_purchases"]
    0.3495
    """
    return {
        "bias": 1.0,
        "churn": round(float(scores.get("churn", 0.0)), 4),
        "log_loyalty": round(math.log1p(max(0.0, float(scores.get("loyalty", 0.0)))) / math.log(31.0), 4),
        "recency_over_gap": round(min(float(features.get("recency_over_gap", 0.0)), 10.0) / 10.0, 4),
        "log_purchases": round(math.log1p(max(0.0, float(features.get("purchases", 0.0)))) / math.log(100.0), 4),
        "log_order_value": round(math.log1p(max(0.0, float(features.get("avg_order_value", 0.0)))) / math.log(1000.0), 4),
        "log_recency": round(math.log1p(max(0.0, float(features.get("recency_days", 0.0)))) / math.log(365.0), 4),
    }


@dataclass(frozen=True)
class Choice:
    """The arm chosen, the model's estimate of its reward (posterior mean) and the bonus
    that was added to it (its exploration term), and the bandit's version."""

    arm: str
    estimate: float
    bonus: float
    version: str


def decision_seed(*parts: str) -> bytes:
    """The seed of a decision's random draws: a digest of what identifies the decision."""
    return blake2b("\x1f".join(parts).encode(), digest_size=16, person=b"bandit").digest()


class Bandits:
    """The bandits of one model snapshot: per bandit (``trigger/action``) and arm, a
    Bayesian linear regression of the reward on the context, and what it learned."""

    def __init__(self) -> None:
        self.arms: dict[str, dict[str, BayesianLinearRegression]] = {}
        self.pulls: dict[str, dict[str, int]] = {}  #: rewards learned per bandit and arm
        self.rewards: dict[str, dict[str, float]] = {}  #: their sum
        self.snapshot = "fresh"

    @property
    def learned(self) -> int:
        return sum(n for by in self.pulls.values() for n in by.values())

    @property
    def version(self) -> str:
        return f"bandit-blr+{self.learned}@{self.snapshot}"

    def learn_one(self, bandit: str, arm: str, x: dict[str, float], reward: float) -> None:
        """One matured decision of ``arm``: its context and reward."""
        arms = self.arms.setdefault(bandit, {})
        model = arms.get(arm)
        if model is None:
            model = arms[arm] = BayesianLinearRegression(alpha=PRIOR_PRECISION, beta=NOISE_PRECISION)
        model.learn_one(x, reward)
        self.pulls.setdefault(bandit, {})[arm] = self.pulls.get(bandit, {}).get(arm, 0) + 1
        self.rewards.setdefault(bandit, {})[arm] = self.rewards.get(bandit, {}).get(arm, 0.0) + reward

    def posterior(self, bandit: str, arm: str, x: dict[str, float]) -> tuple[float, float]:
        """Mean and standard deviation of the arm's expected reward at ``x`` (the prior's
        for an arm that learned nothing). Reads the model only."""
        model = self.arms.get(bandit, {}).get(arm)
        if model is None:
            return 0.0, math.sqrt(sum(v * v for v in x.values()) / PRIOR_PRECISION)
        dist = model.predict_one(x, with_dist=True)
        var = max(0.0, dist.sigma**2 - 1.0 / NOISE_PRECISION)  # the weights' uncertainty, not the reward noise
        return float(dist.mu), math.sqrt(var)

    def choose(self, bandit: str, arms: list[str], x: dict[str, float], algorithm: str, exploration: float, seed: bytes) -> Choice:
        """The arm to pull among ``arms`` (non-empty, the eligible rules in file order)."""
        rng = random.Random(seed)
        tie = {arm: rng.random() for arm in arms}  # drawn first, in arm order: the same draws whatever is chosen
        explore = rng.random()
        z = {arm: rng.gauss(0.0, 1.0) for arm in arms}
        pick = rng.choice(arms)
        post = {arm: self.posterior(bandit, arm, x) for arm in arms}
        if algorithm == "epsilon_greedy":
            if explore < exploration:
                mean, _ = post[pick]
                return Choice(pick, mean, 0.0, self.version)
            bonus = dict.fromkeys(arms, 0.0)
        elif algorithm == "thompson":
            bonus = {arm: exploration * post[arm][1] * z[arm] for arm in arms}
        else:  # linucb
            bonus = {arm: exploration * post[arm][1] for arm in arms}
        best = max(arms, key=lambda arm: (post[arm][0] + bonus[arm], tie[arm]))
        return Choice(best, post[best][0], bonus[best], self.version)

    def report(self) -> dict[str, Any]:
        """What ``GET /models`` shows: per bandit and arm, rewards learned and their mean."""
        return {
            "version": self.version,
            "bandits": {
                key: {arm: {"rewards": n, "mean_reward": round(self.rewards[key][arm] / n, 4)} for arm, n in sorted(by.items())}
                for key, by in sorted(self.pulls.items())
            },
        }
