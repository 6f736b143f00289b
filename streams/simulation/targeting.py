"""Whom to treat, judged by the truth: targeting by uplift against targeting by churn risk.

The simulator knows what an offer would do to every customer (common random numbers,
:mod:`streams.simulation.offers`), so a targeting rule can be scored exactly. One run per
seed and world:

1. The closed loop (:func:`~streams.simulation.loop.closed_loop`) runs a policy whose coupon
   rule is targeted by uplift (``deploy/policies/lapse-uplift.yaml``): the trainer learns the
   coupon's uplift model online from the matured treatment and control decisions, as on a
   worker, and every customer the rule looks at (a *candidate*: a lapsed streak customer at
   its daily check) is logged with its churn score and the uplift the model of that
   moment's snapshot predicts (``streams.domain.rules.Candidate``).
2. Each candidate of the evaluation days (after the first ``learn_days``, whose window
   ended by the end of the run) gets its **true individual effect**: the expected change in
   purchase probability within the window if treated at that moment, given the world
   without the offer (``Y0``: a natural purchase in the window, known to the simulator),
   ``tau = (1 - Y0) * P(works in the window) - Y0 * P(backfires)`` by the customer's latent
   state then.
3. Four ways to spend the same coupons, each day on that day's candidates: the top
   ``share`` by churn score (**risk**), by predicted uplift (**uplift**), at random
   (**random**), and by the true effect (**oracle**, which knows ``Y0``: more than any
   model can); and two references: **latent**, by the mean true effect of the customer's latent
   state (drifting, churned...), about the best a model of observable behaviour could do, and
   **inputs**, by a linear function of the uplift model's inputs fitted to the true effects of
   the other half of the customers (:func:`cross_fitted`): whether the inputs carry the
   effect's differences at all. A method earns the sum of the true
   effects of the candidates it picks: its *true incremental conversions*; the margin
   after the coupon's cost is ``AOV * (MARGIN * tau - percent / 100 * P(redeemed))``.
4. The Qini curve of each ranking over all evaluation candidates (incremental conversions
   when the top fraction is treated) and its area (AUUC).

All methods rank the same logged candidates: what treating them would have changed in the
candidates of later days (a treated customer's episode ends) is not re-simulated per method.

>>> tau_of(y0=False, p_works=0.3, p_backfire=0.0), tau_of(y0=True, p_works=0.3, p_backfire=0.5)
(0.3, -0.5)
>>> pick([0.1, 0.9, 0.5, 0.7], 0.5)
[1, 3]
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from pathlib import Path
from typing import Any

from models.churn import log_features
from streams.domain.attribution import AttributionConfig
from streams.domain.engine import EngineConfig
from streams.domain.features import BEHAVIOUR
from streams.domain.policy_file import Policy, Rule
from streams.domain.rules import Candidate

from .loop import LoopResult, closed_loop
from .offers import DAY_MS, OfferEffects, _per_state, p_in_window
from .shop import Shop, SimulationConfig

#: Gross margin of an order (the share of its value the shop keeps before any coupon).
MARGIN = 0.3
METHODS = ("risk", "uplift", "uplift>0", "random", "latent", "inputs", "oracle")
#: The methods with a ranking of their own (``uplift>0`` ranks as ``uplift``): Qini curves, AUUC.
RANKINGS = tuple(m for m in METHODS if m != "uplift>0")
#: Budgets: the share of each day's candidates a method may treat.
SHARES = (0.1, 0.2, 0.3, 0.5)
#: Points of the Qini curve (fractions of the candidates treated).
GRID = 50
DELIVERY_MS = 6 * 3_600_000


@dataclass(frozen=True)
class World:
    """How the simulated customers behave and respond to a coupon: the offer effects (their
    ``window_days`` is the outcome horizon, the worker's attribution window too) and the
    mean days a churned customer stays away before coming back on its own."""

    effects: OfferEffects = field(default_factory=OfferEffects)
    reactivation_mean_days: float = 2500.0

    def simulation(self, sim: SimulationConfig) -> SimulationConfig:
        return replace(sim, reactivation_mean_days=self.reactivation_mean_days)


#: The backfire world's outcome horizon (days): a coupon's harm comes after the usual 14-day window.
BACKFIRE_HORIZON_DAYS = 60.0


def backfire_world() -> World:
    """Sleeping dogs (Ascarza, Iyengar & Schleicher 2016; Ascarza 2018): the customers at the
    highest risk are *dormant*, not gone (a churned customer comes back on its own after 180
    days on average instead of 2,500), a coupon does not win them back, and it wakes half of
    them up to leave for good: they make none of their natural purchases from then on
    (``backfire_days``), so the comeback they would have made is lost. A coupon still works
    as by default for the customers still around (new 10 %, loyal 8 %, drifting 30 %). The
    harm lands after the usual 14-day window, so outcomes are counted over
    :data:`BACKFIRE_HORIZON_DAYS` (the truth and the worker's attribution window alike).
    Targeting by risk treats the dormant first: it must lose."""
    base = OfferEffects()
    works = {**base.works, "coupon": _per_state(0.10, 0.08, 0.30, 0.0)}
    effects = replace(base, window_days=BACKFIRE_HORIZON_DAYS, works=works,
                      backfire={"coupon": _per_state(0.0, 0.0, 0.0, 0.5)}, backfire_days=10_000.0)
    return World(effects, reactivation_mean_days=180.0)


WORLDS: dict[str, Callable[[], World]] = {"default": World, "backfire": backfire_world}


def tau_of(y0: bool, p_works: float, p_backfire: float) -> float:
    """E[Y1 - Y0 | Y0] of one offer: it brings a purchase the customer would not have made, or
    (backfiring) takes away one it would have made."""
    return -p_backfire if y0 else p_works


@dataclass(frozen=True)
class Judged:
    """A candidate with its true effect and what a coupon would cost and earn."""

    day: int
    user_id: str
    churn: float
    predicted: float | None
    tau: float
    margin: float  #: AOV * (MARGIN * tau - share off * P(redeemed)), currency units
    #: The customer's latent state at the decision (what the ``latent`` reference ranks by).
    state: str = ""
    #: The uplift model's inputs at the decision (what the ``inputs`` reference is fitted on).
    inputs: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    #: The ``inputs`` reference's ranking key (:func:`cross_fitted`).
    fitted: float = 0.0
    #: The browsing candidates at the decision (``streams.domain.features.BEHAVIOUR``).
    behaviour: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    #: Days the customer had been in ``state``, and the state before it ("" for none): a
    #: customer back to loyal for a few days still looks drifting (:func:`observable`).
    since_days: float = 0.0
    previous: str = ""


def judge_candidates(shop: Shop, candidates: list[Candidate], effects: OfferEffects, from_ms: int, until_ms: int,
                     percent: float) -> list[Judged]:
    """The candidates decided in ``[from_ms, until_ms - window]`` with their true effects."""
    truth = shop.truth()
    out = []
    for c in candidates:
        end = c.at + effects.window_ms
        if c.at < from_ms or end > until_ms:
            continue
        natural = truth[c.user_id].natural
        i = bisect_right(natural, c.at)
        y0 = i < len(natural) and natural[i] <= end
        state = shop.state_at(c.user_id, c.at).value
        p_works = effects.p_works(c.kind, c.rule, state) * p_in_window(effects, c.at + DELIVERY_MS, end)
        p_backfire = effects.p_backfire(c.kind, state)
        tau = tau_of(y0, p_works, p_backfire)
        redeemed = p_works + (effects.carry * max(0.0, 1.0 - p_works - p_backfire) if y0 else 0.0)
        aov = c.features.get("avg_order_value", 0.0)
        path = [(t, s.value) for t, s in truth[c.user_id].transitions if t <= c.at]
        since, previous = ((c.at - path[-1][0]) / DAY_MS, path[-2][1] if len(path) > 1 else "") if path else (0.0, "")
        out.append(Judged(c.at // DAY_MS, c.user_id, c.churn, c.predicted, tau, aov * (MARGIN * tau - percent / 100 * redeemed),
                          state, c.features, behaviour=c.behaviour, since_days=since, previous=previous))
    return out


def _design(judged: list[Judged], extra: Sequence[str] = ()) -> Any:
    """The uplift model's inputs (and the ``extra`` browsing candidates) on the log scale."""
    import numpy as np

    names = sorted({k for j in judged for k in j.inputs})
    rows = [[log_features(j.inputs).get(n, 0.0) for n in names] + [math.log1p(max(0.0, j.behaviour.get(n, 0.0))) for n in extra]
            for j in judged]
    return np.array(rows, dtype=float).reshape(len(judged), len(names) + len(extra))


def _folds(judged: list[Judged]) -> Any:
    import numpy as np

    return np.array([_noise(j.user_id, 0, "fold") < 0.5 for j in judged])


def cross_fitted(judged: list[Judged], ridge: float = 1.0, extra: Sequence[str] = ()) -> list[Judged]:
    """The candidates with ``fitted``: the **true** effect as a linear function of the uplift
    model's inputs (on the same log scale, standardised; ridge regression), fitted on the
    other half of the customers (two folds by a hash of the user id) and applied to this
    half. What the ``inputs`` reference ranks by: the best a linear model of these inputs
    could learn if it were taught every other customer's true effect, noise-free, on
    thousands of candidates, where the uplift model learns a few hundred decisions' noisy
    outcomes. When it earns little more than risk, the inputs do not carry the effect's
    differences between customers, and no learner of them can."""
    import numpy as np

    if not judged:
        return judged
    x = _design(judged, extra)
    tau = np.array([j.tau for j in judged])
    fold = _folds(judged)
    fitted = np.zeros(len(judged))
    for side in (True, False):
        train, test = fold == side, fold != side
        if train.sum() < 2 or not test.any():
            continue
        fitted[test] = _ridge(x[train], tau[train], ridge)(x[test])
    return [replace(j, fitted=float(f)) for j, f in zip(judged, fitted)]


def _standardised(x: Any) -> Callable[[Any], Any]:
    import numpy as np

    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    return lambda z: np.column_stack([np.ones(len(z)), (z - mu) / sd])


def _ridge(x: Any, y: Any, ridge: float = 1.0) -> Callable[[Any], Any]:
    """``y`` as a linear function of standardised ``x`` (ridge regression)."""
    import numpy as np

    design = _standardised(x)
    a = design(x)
    coef = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y)
    return lambda z: design(z) @ coef


def _logistic(x: Any, y: Any, l2: float = 1.0) -> Callable[[Any], Any]:
    """P(y | x) by a logistic regression on standardised ``x`` (Newton's method, L2)."""
    import numpy as np

    design = _standardised(x)
    a, w = design(x), np.zeros(x.shape[1] + 1)
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-a @ w))
        step = np.linalg.solve(a.T @ (a * (p * (1 - p))[:, None]) + l2 * np.eye(len(w)), a.T @ (p - y) + l2 * w)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return lambda z: 1.0 / (1.0 + np.exp(-design(z) @ w))


def _by_states(x: Any, states: list[str], tau: Any) -> Callable[[Any], Any]:
    """``sum_s P(s | x) * mean tau of s``: one logistic regression per latent state, normalised."""
    import numpy as np

    fits, means = [], []
    for state in sorted(set(states)):
        y = np.array([s == state for s in states], dtype=float)
        fits.append(_logistic(x, y) if y.sum() < len(y) else (lambda z: np.ones(len(z))))
        means.append(float(tau[y == 1].mean()))

    def key(z: Any) -> Any:
        p = np.array([f(z) for f in fits])
        return (p / p.sum(0)).T @ np.array(means)

    return key


def state_fitted(judged: list[Judged], extra: Sequence[str] = (), train: list[Judged] | None = None) -> list[float]:
    """A ranking key per candidate: ``sum_s P(state s | x) * mean tau of s``, with ``P`` one
    logistic regression per latent state on the inputs (and ``extra``), fitted on ``train``
    (other seeds' candidates) or else on the other half of the customers (the folds of
    :func:`cross_fitted`). Taught the latent states themselves, which no model is: how well
    the inputs tell the states apart, where the effect's differences lie (a drifting customer
    gains from a coupon, a loyal one in a long gap buys anyway), not how well a learner finds
    it from outcomes."""
    import numpy as np

    if not judged:
        return []
    x = _design(judged, extra)
    if train is not None:
        return [float(k) for k in _by_states(_design(train, extra), [j.state for j in train], np.array([j.tau for j in train]))(x)]
    fold, states, tau = _folds(judged), [j.state for j in judged], np.array([j.tau for j in judged])
    key = np.zeros(len(judged))
    for side in (True, False):
        fit, apply = fold == side, fold != side
        if fit.any() and apply.any():
            key[apply] = _by_states(x[fit], [s for s, f in zip(states, fit) if f], tau[fit])(x[apply])
    return [float(k) for k in key]


def linear_fitted(judged: list[Judged], train: list[Judged], extra: Sequence[str] = ()) -> list[float]:
    """:func:`cross_fitted`'s key, fitted on ``train`` (other seeds' candidates) instead."""
    import numpy as np

    if not judged:
        return []
    return [float(k) for k in _ridge(_design(train, extra), np.array([j.tau for j in train]))(_design(judged, extra))]


def observable(judged: list[Judged], days: float) -> dict[str, float]:
    """As :func:`by_state`, but a customer back to ``loyal`` from drifting or churned for less
    than ``days`` counts as drifting: its behaviour has not changed yet, no feature can tell
    it apart. The group means per candidate key (``recovered`` merged into ``drifting``)."""
    return by_state([replace(j, state=_seen_state(j, days)) for j in judged])


def _seen_state(j: Judged, days: float) -> str:
    recovered = j.state == "loyal" and j.previous in ("drifting", "churned") and j.since_days < days
    return "drifting" if recovered else j.state


def by_state(judged: list[Judged]) -> dict[str, float]:
    """The mean true effect of the candidates in each latent state: the best ranking a model
    of the customer's observable behaviour could hope for (it cannot know ``Y0``)."""
    sums: dict[str, list[float]] = {}
    for j in judged:
        sums.setdefault(j.state, []).append(j.tau)
    return {state: statistics.fmean(taus) for state, taus in sums.items()}


def _noise(user_id: str, day: int, salt: str) -> float:
    digest = blake2b(f"{salt}\x1f{user_id}\x1f{day}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def score(j: Judged, method: str, states: dict[str, float] | None = None) -> float:
    """The ranking key of a method (higher: treated first); ``latent`` needs ``states``
    (:func:`by_state`)."""
    if method == "latent":
        return states[j.state] if states is not None else 0.0
    if method == "risk":
        return j.churn
    if method in ("uplift", "uplift>0"):
        return j.predicted if j.predicted is not None else -1.0
    if method == "oracle":
        return j.tau
    if method == "inputs":
        return j.fitted
    return _noise(j.user_id, j.day, "random")


def pick(scores: Sequence[float], share: float, ties: Sequence[float] | None = None) -> list[int]:
    """Indices of the top ``share`` of ``scores`` (rounded to the nearest count), best first;
    equal scores in the order of ``ties``."""
    k = math.floor(share * len(scores) + 0.5)
    return sorted(range(len(scores)), key=lambda i: (-scores[i], ties[i] if ties is not None else i))[:k]


@dataclass
class Spend:
    """What a method earned with a budget: coupons, true incremental conversions, margin."""

    coupons: int = 0
    incremental: float = 0.0
    margin: float = 0.0

    @property
    def per_coupon(self) -> float:
        return self.incremental / self.coupons if self.coupons else 0.0


def spend(judged: list[Judged], method: str, share: float, threshold: float = 0.0) -> Spend:
    """Each day, the top ``share`` of that day's candidates by ``method``; ``uplift>0`` as
    ``uplift``, but only the candidates whose predicted uplift exceeds the rule's ``threshold``
    (as the policy decides: a budget it need not spend)."""
    days: dict[int, list[Judged]] = {}
    for j in judged:
        days.setdefault(j.day, []).append(j)
    out = Spend()
    states = by_state(judged)
    for members in days.values():
        scores = [score(j, method, states) for j in members]
        for i in pick(scores, share, [_noise(j.user_id, j.day, "tie") for j in members]):
            if method == "uplift>0" and not (members[i].predicted is not None and members[i].predicted > threshold):
                continue
            out.coupons += 1
            out.incremental += members[i].tau
            out.margin += members[i].margin
    return out


def qini(judged: list[Judged], method: str, points: int = GRID) -> list[tuple[float, float]]:
    """(fraction treated, true incremental conversions per candidate) when the top fraction of
    all candidates by ``method`` is treated."""
    states = by_state(judged)
    ranked = sorted(judged, key=lambda j: (-score(j, method, states), _noise(j.user_id, j.day, "tie")))
    n = len(ranked)
    cum = [0.0]
    for j in ranked:
        cum.append(cum[-1] + j.tau)
    return [(k / points, cum[round(k / points * n)] / n if n else 0.0) for k in range(points + 1)]


def auuc(curve: list[tuple[float, float]]) -> float:
    """The area under a Qini curve (trapezoids)."""
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(curve, curve[1:]))


@dataclass
class SeedResult:
    seed: int
    candidates: int
    decisions: int
    uplift_learned: int
    spends: dict[str, dict[float, Spend]] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: Evaluation candidates the uplift model answered for (the others: not learned enough
    #: yet, ranked last, at random among themselves).
    answered: int = 0

    def auuc(self, method: str) -> float:
        return auuc(self.curves[method])


def judged_run(sim: SimulationConfig, world: World, policy: Policy,
               learn_days: float) -> tuple[list[Judged], list[Judged], LoopResult, Rule]:
    """One closed-loop run under ``policy`` in ``world`` (the worker's attribution window is
    the world's outcome horizon): its evaluation candidates judged, every candidate judged
    (the learning days' too), the loop's result, the uplift-targeted rule."""
    effects = world.effects
    shop = Shop(world.simulation(sim), effects)
    cfg = EngineConfig(policy=policy.lapse_config(), attribution=AttributionConfig(window_ms=effects.window_ms))
    logged: list[Candidate] = []
    result = closed_loop(shop, cfg, policy=policy, on_candidate=logged.append)
    start = min((c.at for c in logged), default=0)
    rule = next(r for r in policy.rules if r.target == "uplift")
    percent = rule.coupon.percent if rule.coupon is not None and rule.coupon.percent is not None else 0.0
    end = result.now_ms - cfg.attribution.lateness_ms
    judged = judge_candidates(shop, logged, effects, start + int(learn_days * DAY_MS), end, percent)
    return judged, judge_candidates(shop, logged, effects, start, end, percent), result, rule


def run_seed(sim: SimulationConfig, world: World, policy: Policy, learn_days: float) -> SeedResult:
    """One closed-loop run under ``policy`` in ``world`` and the targetings of its candidates."""
    judged, _, result, rule = judged_run(sim, world, policy, learn_days)
    judged = cross_fitted(judged)
    models = result.models
    out = SeedResult(sim.seed, len(judged), len(result.actions), models.uplift.learned if models is not None else 0,
                     answered=sum(j.predicted is not None for j in judged))
    threshold = rule.uplift.threshold if rule.uplift is not None and rule.uplift.threshold is not None else 0.0
    for method in METHODS:
        out.spends[method] = {share: spend(judged, method, share, threshold) for share in SHARES}
    for method in RANKINGS:
        out.curves[method] = qini(judged, method)
    return out


#: The browsing candidates the features measurement adds to the inputs.
BEHAVIOUR_NAMES = tuple(f.name for f in BEHAVIOUR)


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """P(a positive's score > a negative's), ties counting half (0.5 without both kinds).

    >>> auc([0.9, 0.2, 0.5, 0.5], [True, False, True, False])
    0.875
    """
    pos = [s for s, p in zip(scores, positive) if p]
    neg = sorted(s for s, p in zip(scores, positive) if not p)
    if not pos or not neg:
        return 0.5
    wins = sum(bisect_left(neg, s) + (bisect_right(neg, s) - bisect_left(neg, s)) / 2 for s in pos)
    return wins / (len(pos) * len(neg))


def feature_references(judged: list[Judged], extra: Sequence[str] = BEHAVIOUR_NAMES, train: list[Judged] | None = None) -> dict[str, Any]:
    """What the inputs, and the inputs with ``extra``, could earn, against risk, the model and
    the latent state; per ranking and budget the true incremental conversions per coupon.
    ``observable N d``: by latent state, a customer back to loyal for under N days counted as
    drifting (:func:`observable`). ``linear``: :func:`cross_fitted`; ``states``:
    :func:`state_fitted`; fitted on ``train`` (other seeds' candidates: more to learn the
    few loyal ones from) or else on the other half of the customers. And how well each
    ``states`` key tells a drifting candidate from a loyal one (AUC), and from one back to
    loyal for under 7 days."""
    keys: dict[str, list[float]] = {
        "risk": [j.churn for j in judged],
        "uplift": [j.predicted if j.predicted is not None else -1.0 for j in judged],
    }
    for name, days in (("latent", 0.0), ("observable 3 d", 3.0), ("observable 7 d", 7.0)):
        means = observable(judged, days)
        keys[name] = [means[_seen_state(j, days)] for j in judged]
    for name, names in (("inputs", ()), ("inputs + browsing", tuple(extra))):
        linear = linear_fitted(judged, train, names) if train is not None else [j.fitted for j in cross_fitted(judged, extra=names)]
        keys[f"{name}, linear"] = linear
        keys[f"{name}, states"] = state_fitted(judged, names, train)
    per_coupon = {name: {share: spend([replace(j, fitted=k) for j, k in zip(judged, key)], "inputs", share).per_coupon
                         for share in SHARES} for name, key in keys.items()}
    drifting = [j.state == "drifting" for j in judged]
    loyal = [j.state == "loyal" for j in judged]
    recovered = [j.state == "loyal" and _seen_state(j, 7.0) == "drifting" for j in judged]
    separation = {}
    for name in ("inputs, states", "inputs + browsing, states"):
        key = keys[name]
        separation[name] = {
            "drifting vs loyal": auc([k for k, d, l in zip(key, drifting, loyal) if d or l], [d for d, l in zip(drifting, loyal) if d or l]),
            "drifting vs back to loyal < 7 d": auc([k for k, d, r in zip(key, drifting, recovered) if d or r],
                                                    [d for d, r in zip(drifting, recovered) if d or r]),
        }
    counts = {state: sum(j.state == state for j in judged) for state in sorted({j.state for j in judged})}
    return {"candidates": len(judged), "states": counts, "recovered_7d": sum(recovered), "per_coupon": per_coupon,
            "separation": separation}


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean over seeds."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, mean, mean
    half = t.ppf((1 + confidence) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def summary(results: list[SeedResult]) -> dict[str, Any]:
    """Per budget and method: per coupon and total true incremental conversions and margin
    (mean and interval over seeds); uplift against risk, paired by seed; AUUC per method."""
    out: dict[str, Any] = {"seeds": [r.seed for r in results], "candidates": [r.candidates for r in results],
                           "decisions": [r.decisions for r in results], "uplift_learned": [r.uplift_learned for r in results],
                           "answered": [r.answered for r in results],
                           "budgets": {}, "auuc": {}, "qini": {}}
    for share in SHARES:
        row: dict[str, Any] = {}
        for method in METHODS:
            spends = [r.spends[method][share] for r in results]
            row[method] = {"coupons": statistics.fmean(s.coupons for s in spends),
                           "incremental": interval([s.incremental for s in spends]),
                           "per_coupon": interval([s.per_coupon for s in spends]),
                           "margin": interval([s.margin for s in spends])}
        diff = [r.spends["uplift"][share].per_coupon - r.spends["risk"][share].per_coupon for r in results]
        ratio = [r.spends["uplift"][share].incremental / r.spends["risk"][share].incremental - 1
                 for r in results if r.spends["risk"][share].per_coupon >= 0.01]  # (a ratio to about nothing says nothing)
        row["uplift_minus_risk_per_coupon"] = interval(diff)
        for a, b in (("risk", "random"), ("uplift", "random")):  # (no treatment earns 0)
            row[f"{a}_minus_{b}_per_coupon"] = interval([r.spends[a][share].per_coupon - r.spends[b][share].per_coupon
                                                         for r in results])
        row["uplift_over_risk"] = interval(ratio) if len(ratio) == len(results) else None
        out["budgets"][share] = row
    for method in RANKINGS:
        out["auuc"][method] = interval([r.auuc(method) for r in results])
        out["qini"][method] = [(x, statistics.fmean(r.curves[method][i][1] for r in results))
                               for i, (x, _) in enumerate(results[0].curves[method])]
    return out


def _fmt(iv: tuple[float, float, float], digits: int = 3, sign: bool = True) -> str:
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(iv[0])} [{f.format(iv[1])}, {f.format(iv[2])}]"


def markdown(world: str, s: dict[str, Any]) -> str:
    """The world's tables: per budget, per coupon and total incremental conversions and
    margin per method; uplift against risk; AUUC."""
    lines = [f"**{world}** ({len(s['seeds'])} seeds; evaluation candidates per seed: "
             f"{', '.join(str(n) for n in s['candidates'])}; of them with a prediction of the uplift model: "
             f"{', '.join(str(n) for n in s.get('answered', []))}; uplift examples learned: "
             f"{', '.join(str(n) for n in s['uplift_learned'])})", "",
             "| budget (share of each day's candidates) | method | coupons | true incremental conversions | per coupon | margin after coupon cost (EUR) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for share, row in s["budgets"].items():
        for method in METHODS:
            m = row[method]
            lines.append(f"| {share:.0%} | {method} | {m['coupons']:.0f} | {_fmt(m['incremental'], 1)} | "
                         f"{_fmt(m['per_coupon'])} | {_fmt(m['margin'], 0)} |")
    lines += ["", "| budget | uplift - risk, per coupon [95 %] | uplift / risk - 1, total [95 %] | risk - random, per coupon | "
              "uplift - random, per coupon |", "| --- | --- | --- | --- | --- |"]
    for share, row in s["budgets"].items():
        ratio = row["uplift_over_risk"]
        lines.append(f"| {share:.0%} | {_fmt(row['uplift_minus_risk_per_coupon'])} | "
                     f"{_fmt(ratio, 2) if ratio is not None else 'n/a (risk earned under 0.01 per coupon in a seed)'} | "
                     f"{_fmt(row['risk_minus_random_per_coupon'])} | {_fmt(row['uplift_minus_random_per_coupon'])} |")
    lines += ["", "| method | AUUC (incremental conversions per candidate, area under the Qini curve) [95 %] |", "| --- | --- |"]
    for method in RANKINGS:
        lines.append(f"| {method} | {_fmt(s['auuc'][method], 4)} |")
    return "\n".join(lines)


_COLOURS = {"risk": "#d62728", "uplift": "#1f77b4", "random": "#7f7f7f", "latent": "#9467bd", "inputs": "#ff7f0e",
            "oracle": "#2ca02c"}


def qini_svg(curves: dict[str, list[tuple[float, float]]], title: str) -> str:
    """The Qini curves as an SVG picture (no plotting library needed)."""
    w, h, left, right, top, bottom = 560, 380, 70, 120, 60, 50
    ys = [y for c in curves.values() for _, y in c] + [0.0]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        return left + x * (w - left - right), top + (hi - y) / span * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">{title}</text>']
    x0, y0 = px(0, lo)
    x1, _ = px(1, lo)
    _, yt = px(0, hi)
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{yt}" stroke="black"/>')
    zx0, zy = px(0, 0.0)
    zx1, _ = px(1, 0.0)
    parts.append(f'<line x1="{zx0}" y1="{zy}" x2="{zx1}" y2="{zy}" stroke="#bbb" stroke-dasharray="4 3"/>')
    for k in range(6):
        x, y = px(k / 5, lo)
        parts.append(f'<text x="{x - 10}" y="{y + 16}">{k / 5:.1f}</text>')
        v = lo + span * k / 5
        x, y = px(0, v)
        parts.append(f'<text x="{x - 55}" y="{y + 4}">{v:+.3f}</text>')
    parts.append(f'<text x="{w / 2 - 110}" y="{h - 12}">share of the candidates treated (best first)</text>')
    parts.append(f'<text x="14" y="{top - 8}">incremental conversions per candidate</text>')
    for i, (name, curve) in enumerate(curves.items()):
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in curve))
        colour = _COLOURS.get(name, "black")
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        lx, ly = w - right + 12, top + 20 + 18 * i
        parts.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 20}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
                     f'<text x="{lx + 26}" y="{ly}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_svg(path: Path, curves: dict[str, list[tuple[float, float]]], title: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(qini_svg(curves, title), encoding="utf-8")
