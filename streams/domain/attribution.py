"""Attribution: what became of each retention decision, in event time.

Every decision that goes out (treatment and control alike: the control group's decisions
are recorded, only not acted on; one suppressed by the guard rails is in neither group) waits in the user's state for its
**attribution window** ``(ts, ts + window]``:

- a purchase with its event time in the window is a **conversion** of every decision of
  the user waiting then (a decision converts once, however many purchases follow);
- a purchase carrying the decision's ``action_id`` or coupon code is a **redemption**;
- an outcome from a marketing system (delivered, opened, clicked, redeemed,
  unsubscribed) is counted for the kind of the decision it names.

The decision **matures** once the event-time clock is past the end of its window by the
allowed lateness (so a purchase arriving late, within the lateness, still counts, in any
arrival order); only then does it count in the rates (:mod:`streams.domain.uplift`), and
in the customer's own counts (``UserState.attributed``) for the per-customer interval.
State stays bounded: a decision leaves at maturity, and a user keeps at most
``max_awaiting`` (the oldest is evicted and counted as such, outside the rates).

A decision is tracked once per ``action_id`` and an event once per event id (the engine
drops duplicates before this module sees them), so redelivery counts nothing twice.

**Intention to treat, per customer.** A customer **enters** the experiment of a kind (and,
separately, of a rule) at its *first* decision of it, in its group (stable per customer),
and is one observation: did it buy (any purchase, as for a decision's conversion) in the
window ``(first, first + window]``? It matures like a decision (window plus lateness);
later decisions add no observation (``UserState.entered`` remembers the entry). Unlike the
per-decision counts, whose later decisions depend on what the earlier ones caused, who
enters and when is decided before the treatment could act, so the arms are comparable.

>>> from streams.domain.state import UserState
>>> cfg = AttributionConfig(window_ms=10, lateness_ms=0)
>>> s = UserState("u")
>>> step = Tally()
>>> track(s, Awaiting("a1", 100, "coupon", "r", "treatment", "RS-1"), cfg, step)
True
>>> track(s, Awaiting("a1", 100, "coupon", "r", "treatment", "RS-1"), cfg, step)
False
>>> on_purchase(s, 105, None, "RS-1", cfg); [(a.converted, a.redeemed) for a in s.awaiting]
[(True, True)]
>>> [a.action_id for a in mature(s, 110, cfg, step)], step.decisions["coupon|r|treatment"]
(['a1'], Counts(decided=1, matured=1, converted=1, redeemed=1, evicted=0))
>>> step.itt["coupon|treatment"], step.itt["coupon|r|treatment"]
(Itt(entered=1, matured=1, converted=1, excluded=0), Itt(entered=1, matured=1, converted=1, excluded=0))
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from models.bandit import CONTEXT
from streams.domain.actions import RetentionAction
from streams.domain.features import MODEL_FEATURES
from streams.domain.state import Awaiting, BanditTrace, UpliftTrace, UserState
from streams.domain.timestamps import MS_PER_DAY, MS_PER_HOUR, parse_ts
from streams.domain.uplift import SEP, Entered, Tally, count_matured

#: Decisions a user may have waiting at once (bounded state).
MAX_AWAITING = 16


@dataclass(frozen=True)
class AttributionConfig:
    #: A purchase this long after a decision is its conversion.
    window_ms: int = 14 * MS_PER_DAY
    #: The allowed lateness: a decision matures this long after its window ended.
    lateness_ms: int = MS_PER_HOUR
    max_awaiting: int = MAX_AWAITING


def awaiting_of(action: RetentionAction) -> Awaiting:
    """The attribution record of an emitted action."""
    code = action.payload.get("code") if action.kind == "coupon" else None
    chosen = action.reason.chosen
    trace = None
    if chosen is not msgspec.UNSET:  # a bandit chose the rule: what its reward needs at maturity
        trace = BanditTrace(chosen.bandit, [float(chosen.context.get(name, 0.0)) for name in CONTEXT], chosen.gain, chosen.cost)
    targeting = action.reason.uplift
    learn = None
    if targeting is not msgspec.UNSET:  # the kind's uplift is learned: its inputs, for the outcome at maturity
        learn = UpliftTrace([float(action.reason.features.get(name, 0.0)) for name in MODEL_FEATURES], targeting.explored)
    return Awaiting(action.action_id, parse_ts(action.ts), action.kind, action.reason.rule, action.group,
                    code if isinstance(code, str) else None, bandit=trace, uplift=learn)


def track(state: UserState, decision: Awaiting, cfg: AttributionConfig, tally: Tally) -> bool:
    """Start the window of ``decision`` (False: this action id is tracked already)."""
    if any(a.action_id == decision.action_id for a in state.awaiting):
        return False
    enter(state, decision, tally)
    state.awaiting.append(decision)
    state.awaiting.sort(key=lambda a: a.ts)
    tally.counts(decision.kind, decision.rule, decision.group).decided += 1
    while len(state.awaiting) > cfg.max_awaiting:
        oldest = state.awaiting.pop(0)
        tally.counts(oldest.kind, oldest.rule, oldest.group).evicted += 1
    return True


def enter(state: UserState, decision: Awaiting, tally: Tally) -> None:
    """The customer enters the intention-to-treat experiment of the decision's kind and of its
    rule, unless it did already (a decision that is not its first adds no observation).

    A state written before intention-to-treat counting may hold earlier decisions of the
    kind (waiting, or counted in ``attributed``): this one is not its first, so the entry is
    recorded as not counted (``excluded``) rather than counted late.
    """
    for rule in (None, decision.rule):
        key = decision.kind if rule is None else SEP.join((decision.kind, rule))
        if key in state.entered:
            continue
        earlier = any(a.kind == decision.kind and rule in (None, a.rule) for a in state.awaiting) or any(
            k == decision.kind and rule in (None, r) for k, r, _ in (other.split(SEP) for other in state.attributed)
        )
        state.entered[key] = Entered(decision.ts, decision.group, counted=not earlier)
        entrants = tally.entrants(decision.kind, rule, decision.group)
        if earlier:
            entrants.excluded += 1
        else:
            entrants.entered += 1


def on_purchase(state: UserState, ts: int, action_id: str | None, coupon_code: str | None, cfg: AttributionConfig) -> None:
    """A purchase at ``ts``: a conversion of the decisions it follows within their window, a
    redemption of the one it names (both are counted when the decision matures)."""
    for a in state.awaiting:
        if a.ts < ts <= a.ts + cfg.window_ms:
            a.converted = True
        if (action_id is not None and action_id == a.action_id) or (coupon_code is not None and coupon_code == a.code):
            a.redeemed = True
    for e in state.entered.values():
        if not e.matured and e.ts < ts <= e.ts + cfg.window_ms:
            e.converted = True


def on_outcome(state: UserState, action_id: str, outcome: str, tally: Tally) -> bool:
    """Count an outcome for the kind of the decision it names (False: no such decision waits)."""
    for a in state.awaiting:
        if a.action_id == action_id:
            tally.outcome(a.kind, outcome)
            return True
    tally.outcome("unknown", outcome)
    return False


def next_maturity(state: UserState, cfg: AttributionConfig) -> int | None:
    """Event time at which the oldest waiting decision or customer's entry matures (None: none waits)."""
    starts = [e.ts for e in state.entered.values() if e.counted and not e.matured]
    if state.awaiting:
        starts.append(state.awaiting[0].ts)
    return min(starts) + cfg.window_ms + cfg.lateness_ms if starts else None


def mature(state: UserState, now_ms: int, cfg: AttributionConfig, tally: Tally) -> list[Awaiting]:
    """Count the decisions whose window (and lateness) is over at ``now_ms``, and drop them
    (returned, in maturity order)."""
    matured = []
    while state.awaiting and state.awaiting[0].ts + cfg.window_ms + cfg.lateness_ms <= now_ms:
        a = state.awaiting.pop(0)
        matured.append(a)
        counts = tally.counts(a.kind, a.rule, a.group)
        counts.matured += 1
        counts.converted += a.converted
        counts.redeemed += a.redeemed
        count_matured(tally, state.attributed, a.kind, a.rule, a.group, a.converted)  # per customer
    for key, e in state.entered.items():  # intention to treat: the windows after first decisions
        if not e.matured and e.ts + cfg.window_ms + cfg.lateness_ms <= now_ms:
            e.matured = True
            if e.counted:
                kind, _, rule = key.partition(SEP)
                entrants = tally.entrants(kind, rule or None, e.group)
                entrants.matured += 1
                entrants.converted += e.converted
    return matured
