"""A policy against another on the same simulated customers, judged by the known truth.

:func:`compare` runs the closed loop (:func:`~streams.simulation.loop.closed_loop`) once
per policy file on the same shop (same seed, same customers, same natural behaviour) and
reports per rule (arm) of the compared group: treated and control decisions, the
*measured* conversions of the treated ones (the attribution counts, what
``GET /actions/stats`` reports), and from the simulator's potential outcomes the *true
expected* conversions ``E[Y1 | Y0]`` and the true expected uplift ``E[Y1 - Y0 | Y0]`` of
the same treated decisions, and the true expected reward by the policy's reward
definition (``gain * E[Y1] - cost * E[redeemed]``; a treated coupon is redeemed when it
works, or, with probability ``carry``, by a natural purchase in the window).

>>> from streams.simulation import SimulationConfig
>>> sim = SimulationConfig(customers=40, new_customers_per_day=0, days=40, seed=3)
>>> run = compare(sim, OfferEffects(), {"built-in": None})["built-in"]
>>> sorted(run.arms) == sorted({a.reason.rule for a in run.result.actions})
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from streams.domain.actions import RetentionAction
from streams.domain.engine import EngineConfig
from streams.domain.policy_file import Policy
from streams.domain.policy import PolicyConfig

from .loop import LoopResult, closed_loop
from .offers import OfferEffects, OfferTruth
from .shop import Shop, SimulationConfig


@dataclass
class Arm:
    """One rule's decisions in a run (matured by the end of the run)."""

    treated: int = 0
    control: int = 0
    #: Treated decisions a bandit chose (the others: by the first eligible rule).
    by_bandit: int = 0
    measured_conversions: int = 0
    true_conversions: float = 0.0  #: sum of E[Y1 | Y0] over the treated decisions
    true_uplift: float = 0.0  #: sum of E[Y1 - Y0 | Y0] over them
    true_reward: float = 0.0  #: sum of the expected reward over them

    def rate(self, total: float) -> float | None:
        return None if not self.treated else total / self.treated


@dataclass
class Run:
    result: LoopResult
    arms: dict[str, Arm] = field(default_factory=dict)

    @property
    def true_reward(self) -> float:
        return sum(a.true_reward for a in self.arms.values())

    @property
    def true_uplift(self) -> float:
        return sum(a.true_uplift for a in self.arms.values())

    @property
    def treated(self) -> int:
        return sum(a.treated for a in self.arms.values())


def _reward_terms(action: RetentionAction | None) -> tuple[float, float]:
    chosen = action.reason.chosen if action is not None else msgspec.UNSET
    return (1.0, 0.0) if chosen is msgspec.UNSET else (chosen.gain, chosen.cost)


def judge(result: LoopResult, truths: list[OfferTruth], carry: float, kind: str = "coupon") -> Run:
    """Per rule of ``kind``: the run's matured decisions, measured and true."""
    run = Run(result)
    by_id = {a.action_id: a for a in result.actions}
    for key, counts in result.tally.decisions.items():
        k, rule, group = key.split("|")
        if k == kind and group == "treatment":
            run.arms.setdefault(rule, Arm()).measured_conversions += counts.converted
    for o in truths:
        if o.offer.kind != kind:
            continue
        arm = run.arms.setdefault(o.offer.rule, Arm())
        if o.offer.group != "treatment":
            arm.control += 1
            continue
        action = by_id.get(o.offer.action_id)
        gain, cost = _reward_terms(action)
        arm.treated += 1
        arm.by_bandit += action is not None and action.reason.chosen is not msgspec.UNSET
        y1 = 1.0 if o.y0 else o.p_effect
        redeemed = o.p_effect + (1 - o.p_effect) * carry if o.y0 else o.p_effect
        arm.true_conversions += y1
        arm.true_uplift += o.expected
        arm.true_reward += gain * y1 - cost * redeemed
    return run


def compare(sim: SimulationConfig, effects: OfferEffects, policies: dict[str, Policy | None], kind: str = "coupon") -> dict[str, Run]:
    """Each policy (None: the built-in lapse rule) through the closed loop on the same shop."""
    runs = {}
    for name, policy in policies.items():
        shop = Shop(sim, effects)
        lapse = policy.lapse_config() if policy is not None else PolicyConfig()
        cfg = EngineConfig(policy=lapse)
        result = closed_loop(shop, cfg, policy=policy)
        truths = shop.offers(result.now_ms - cfg.attribution.lateness_ms)
        runs[name] = judge(result, truths, effects.carry, kind)
    return runs
