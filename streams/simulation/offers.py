"""How the simulated customers respond to retention actions, with known effects.

Why: to check that the measured uplift (treatment minus control conversion, with its
interval) finds the true one, the simulator must know both potential outcomes of every
decision, treatment and control alike:

- ``Y0``: the customer buys within the attribution window without the offer: a
  *natural* purchase of the simulation in ``(decided, decided + window]`` (or one that
  another offer to the same customer brought);
- ``Y1 = Y0 or W``: with the offer, ``W`` being "the offer works": with probability
  ``works[kind][latent state]`` (or ``works_by_rule[rule][latent state]`` for a rule given
  there: offers of one kind that work differently, the arms of a bandit) the customer makes an extra purchase (carrying the coupon
  code and the action id) a few days after delivery, inside the window.

Common random numbers: ``W`` and its timing are drawn from a generator seeded by the
action id alone, for control decisions too (they are simply not applied), and an offer
never draws from the simulation's own generator before its window ends, so the natural
purchases (``Y0``) are the same with or without it. The true uplift of a set of
decisions is then ``mean(W and not Y0)`` over them; its expectation given ``Y0`` follows
from the effect parameters (:attr:`OfferTruth.expected`).

Other responses, for realism: a treated coupon customer's natural purchase in the
window carries the code with probability ``carry`` (a redemption that is no uplift);
delivered/opened/clicked/unsubscribed outcomes on ``action-outcomes``; and a drifting or
churned customer whose offer worked comes back (``loyal``) with probability
``reactivate`` when the window ends (after it, so ``Y0`` is untouched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

DAY_MS = 86_400_000


def _per_state(new: float, loyal: float, drifting: float, churned: float) -> dict[str, float]:
    """Probabilities by latent state (the values of :class:`~streams.simulation.LatentState`)."""
    return {"new": new, "loyal": loyal, "drifting": drifting, "churned": churned}


def _default_works() -> dict[str, dict[str, float]]:
    return {
        "coupon": _per_state(0.10, 0.08, 0.30, 0.15),
        "recommendation": _per_state(0.06, 0.05, 0.08, 0.03),
        "care_outreach": _per_state(0.05, 0.05, 0.20, 0.08),
    }


@dataclass(frozen=True)
class OfferEffects:
    """The known response of customers to actions (probabilities; times in days)."""

    #: The attribution window the truth is computed for (the worker's setting).
    window_days: float = 14.0
    #: P(the offer brings an extra purchase within the window), by action kind and latent state.
    works: dict[str, dict[str, float]] = field(default_factory=_default_works)
    #: The same, for the decisions of the rules named here (overrides ``works`` for them;
    #: empty by default: every rule of a kind works alike).
    works_by_rule: dict[str, dict[str, float]] = field(default_factory=dict)
    #: P(the offer *backfires*), by action kind and latent state (empty by default: no offer
    #: does harm): the treated customer, annoyed, makes none of its natural purchases in the
    #: window (Ascarza, Iyengar & Schleicher 2016: contact raised churn for some customers).
    #: Drawn with the same number as ``works`` (the next ``backfire`` of its range), so an
    #: offer works or backfires, never both, and the draws of other worlds do not move.
    backfire: dict[str, dict[str, float]] = field(default_factory=dict)
    #: How long a backfired customer makes none of its natural purchases, in days from when
    #: it learnt of the offer (None: to the window's end). Longer than the window: the offer
    #: drives the customer away (it leaves), and only an outcome horizon as long shows it.
    backfire_days: float | None = None
    #: Mean days from delivery to the extra purchase (exponential; none if past the window).
    delay_days: float = 3.0
    #: P(a treated coupon customer's natural purchase in the window carries the code).
    carry: float = 0.5
    #: P(a drifting or churned customer whose offer worked becomes loyal at the window's end).
    reactivate: float = 0.5
    #: P(delivered); P(opened | delivered); P(clicked | opened); P(unsubscribed | opened, not
    #: clicked). An offer that works is always opened and clicked.
    delivered: float = 0.97
    opened: float = 0.45
    clicked: float = 0.35
    unsubscribed: float = 0.1

    def scaled(self, factor: float) -> OfferEffects:
        """The same effects, every ``works`` probability times ``factor`` (capped at 1)."""
        works = {k: {s: min(1.0, p * factor) for s, p in by.items()} for k, by in self.works.items()}
        by_rule = {k: {s: min(1.0, p * factor) for s, p in by.items()} for k, by in self.works_by_rule.items()}
        return replace(self, works=works, works_by_rule=by_rule)

    def p_works(self, kind: str, rule: str, state: str) -> float:
        """P(a decision of ``rule``, an action of ``kind``, works for a customer in latent ``state``).

        >>> fx = OfferEffects(works_by_rule={"c20": _per_state(0.1, 0.1, 0.6, 0.3)})
        >>> fx.p_works("coupon", "c20", "drifting"), fx.p_works("coupon", "c10", "drifting")
        (0.6, 0.3)
        """
        by_state = self.works_by_rule.get(rule)
        if by_state is None:
            by_state = self.works.get(kind, {})
        return by_state.get(state, 0.0)

    def p_backfire(self, kind: str, state: str) -> float:
        """P(an action of ``kind`` backfires for a customer in latent ``state``)."""
        return self.backfire.get(kind, {}).get(state, 0.0)

    @property
    def window_ms(self) -> int:
        return int(self.window_days * DAY_MS)


@dataclass(frozen=True)
class Offered:
    """What the simulator needs of a retention action (from a RetentionAction or its JSON)."""

    action_id: str
    user_id: str
    kind: str
    rule: str
    group: str
    decided_ms: int
    code: str | None

    @classmethod
    def of(cls, action: Any) -> Offered:
        from streams.domain.timestamps import parse_ts

        get = action.get if isinstance(action, dict) else lambda name: getattr(action, name)
        reason, payload = get("reason"), get("payload") or {}
        rule = reason["rule"] if isinstance(reason, dict) else reason.rule
        code = payload.get("code") if get("kind") == "coupon" else None
        return cls(get("action_id"), get("user_id"), get("kind"), rule, get("group"), parse_ts(get("ts")),
                   code if isinstance(code, str) else None)


@dataclass
class OfferTruth:
    """One decision as the simulator saw it, with both potential outcomes."""

    offer: Offered
    window_end_ms: int
    #: Latent state of the customer when the offer was delivered (a LatentState value).
    state: str
    #: P(W) for this decision: works[kind][state] times P(the extra purchase fits in the window).
    p_effect: float
    #: W: the offer works (drawn for control decisions too, applied to treatment only).
    works: bool
    #: Y0: a natural purchase within the window (None until the window is over).
    y0: bool | None = None
    #: When the customer learnt of it (delivery, or the first day not yet generated), P(it
    #: works) in that state before the window cut, and the time of the extra purchase it
    #: brought or would have brought (None: it does not work), for the intention-to-treat truth.
    start_ms: int = 0
    p_works: float = 0.0
    extra_ms: int | None = None
    #: The offer backfires (drawn for control decisions too): the customer's natural
    #: purchases in the window do not happen if treated; and P(it backfires).
    backfires: bool = False
    p_backfire: float = 0.0

    @property
    def y1(self) -> bool | None:
        return None if self.y0 is None else (self.y0 and not self.backfires) or self.works

    @property
    def effect(self) -> int:
        """Y1 - Y0 of this decision (-1, 0 or 1; -1 only in a world where offers backfire)."""
        return int(self.works and not self.y0) - int(self.backfires and bool(self.y0))

    @property
    def expected(self) -> float:
        """E[Y1 - Y0 | Y0] from the effect parameters."""
        return -self.p_backfire if self.y0 else self.p_effect


def p_in_window(effects: OfferEffects, start_ms: int, window_end_ms: int) -> float:
    """P(an exponential delay from ``start_ms`` ends by ``window_end_ms``)."""
    room = (window_end_ms - start_ms) / DAY_MS
    return 0.0 if room <= 0 else 1.0 - math.exp(-room / effects.delay_days)


def truth_report(offers: list[OfferTruth]) -> dict[str, dict[str, Any]]:
    """True uplift per kind and per ``kind/rule`` over the decisions given (mature ones)."""
    groups: dict[str, list[OfferTruth]] = {}
    for o in offers:
        groups.setdefault(o.offer.kind, []).append(o)
        groups.setdefault(f"{o.offer.kind}/{o.offer.rule}", []).append(o)
    out: dict[str, dict[str, Any]] = {}
    for key, members in sorted(groups.items()):
        n = len(members)
        out[key] = {
            "decisions": n,
            "treatment": sum(o.offer.group == "treatment" for o in members),
            "control": sum(o.offer.group == "control" for o in members),
            "true_uplift": sum(o.effect for o in members) / n,
            "expected_uplift": sum(o.expected for o in members) / n,
            "y0_rate": sum(bool(o.y0) for o in members) / n,
        }
    return out


def itt_truth_report(
    offers: list[OfferTruth], natural: dict[str, list[int]], extra: dict[str, list[tuple[int, str]]], effects: OfferEffects,
    until_ms: int, control_by: str = "customer",
) -> dict[str, dict[str, Any]]:
    """The true intention-to-treat uplift per kind and per ``kind/rule``: the effect of being
    assigned to treatment on a customer's purchase in the window after its first decision
    of the kind (rule), over the customers whose window ended by ``until_ms``.

    A customer ``i`` entered at ``t1`` (its first decision of the kind, treatment or control
    alike); its window is ``(t1, t1 + window]``. ``Y0``: a natural purchase in the window (or
    one an offer decided before ``t1`` brought: that was before the experiment of this kind
    began). ``Y1 = Y0`` or any offer decided in ``[t1, t1 + window)`` (of any kind: being
    assigned to treatment means receiving all of them) works with its extra purchase by
    ``t1 + window``. ``W`` is drawn for control decisions too (common random numbers), so
    ``Y1 - Y0`` is known for every entrant of either arm; the true uplift is its mean. Exact
    as long as the decisions before the first offer that works are the same in both worlds
    (an unsubscribe outcome, sent to treated customers only, stops later ones).
    ``expected``: ``(1 - Y0) * (1 - prod_o (1 - P(o works by t1 + window)))`` from the effect
    parameters; ``own_kind``: the true uplift counting only offers of the kind itself.

    ``control_by`` is the policy's (:func:`~streams.domain.actions.experiment_group`): with
    ``customer`` the assignment is the customer's, for all kinds, as above; with ``kind`` it is
    the customer's for this kind only, so only the kind's own offers are in ``Y1`` and the
    purchases the other kinds' offers actually brought in the window (as their own groups
    have it, the same in both worlds) are part of ``Y0``.
    """
    if control_by not in ("customer", "kind"):
        raise ValueError(f"unknown control_by {control_by!r}; expected customer or kind")
    kind_of = {o.offer.action_id: o.offer.kind for o in offers}
    by_user: dict[str, list[OfferTruth]] = {}
    for o in sorted(offers, key=lambda o: (o.offer.decided_ms, o.offer.action_id)):
        by_user.setdefault(o.offer.user_id, []).append(o)
    groups: dict[str, list[tuple[str, float, int, int, int]]] = {}
    for user, mine in by_user.items():
        firsts: dict[str, OfferTruth] = {}
        for o in mine:
            firsts.setdefault(o.offer.kind, o)
            firsts.setdefault(f"{o.offer.kind}/{o.offer.rule}", o)
        for key, first in firsts.items():
            t1 = first.offer.decided_ms
            end = t1 + effects.window_ms
            if end > until_ms:
                continue
            kind = first.offer.kind
            y0 = any(t1 < t <= end for t in natural.get(user, ())) or any(
                t1 < t <= end for t, aid in extra.get(user, ())
                if _decided_before(mine, aid, t1) or (control_by == "kind" and kind_of.get(aid) != kind)
            )
            # the offers the assignment decides: all of the customer's, or (per kind) the kind's own
            inside = [o for o in mine if t1 <= o.offer.decided_ms < end and (control_by == "customer" or o.offer.kind == kind)]
            works = [o for o in inside if o.extra_ms is not None and o.extra_ms <= end]
            fails = 1.0
            for o in inside:
                fails *= 1.0 - o.p_works * p_in_window(effects, o.start_ms, end)
            effect = int(not y0 and bool(works))
            own = int(not y0 and any(o.offer.kind == first.offer.kind for o in works))
            groups.setdefault(key, []).append((first.offer.group, 0.0 if y0 else 1.0 - fails, effect, own, int(y0)))
    out: dict[str, dict[str, Any]] = {}
    for key, members in sorted(groups.items()):
        n = len(members)
        out[key] = {
            "customers": n,
            "treatment": sum(g == "treatment" for g, *_ in members),
            "control": sum(g == "control" for g, *_ in members),
            "true_uplift": sum(m[2] for m in members) / n,
            "expected_uplift": sum(m[1] for m in members) / n,
            "own_kind_uplift": sum(m[3] for m in members) / n,
            "y0_rate": sum(m[4] for m in members) / n,
            # the arms' Y0 rates: their difference is what the measured contrast adds to the truth
            "y0_rate_by_group": {g: sum(m[4] for m in members if m[0] == g) / k
                                 for g in ("treatment", "control") if (k := sum(m[0] == g for m in members))},
        }
    return out


def _decided_before(mine: list[OfferTruth], action_id: str, t1: int) -> bool:
    return any(o.offer.action_id == action_id and o.offer.decided_ms < t1 for o in mine)
