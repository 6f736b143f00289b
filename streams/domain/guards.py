"""Guard rails every proposed retention action must pass before it is sent.

:func:`check` is a pure function of the proposed action, the user's state, the
partition's budget state and the event time: it says *allowed* or names why the action
is suppressed. :func:`admit` is the same check and, when allowed, records the action in
the user's state (cooldown) and the partition's budget. The checks, in order:

1. ``unsubscribed``: the customer sent an unsubscribe outcome; nothing more, ever.
   ``no_consent``: the customer did not allow actions of this kind (the ``consents``
   topic; without a statement, ``consent_required`` decides).
2. ``checking_out``: no coupon while the customer has touched a cart or started a
   checkout within ``checkout_window`` of event time and not bought since (other kinds
   pass: a coupon then only gives away margin on a purchase that was coming anyway).
3. ``cooldown``: per customer and kind, at most one action within ``cooldown``.
4. ``budget_count`` / ``budget_value``: the partition's share of the daily budgets, for
   all kinds together and per kind, counts and coupon value (UTC days of event time).

**Same decision, same answer.** An action's id is deterministic (user, rule, episode), so
a decision re-made after a redelivery or a restart carries the same id. Such a *repeat*
is not counted again: the budget keeps the ids it spent today and yesterday (at most the
daily count, so bounded) and the user's cooldown mark keeps the id that started it; a
repeat passes the cooldown and budget checks with ``repeat=True`` (the caller re-sends
the same action; consumers deduplicate on ``action_id``). Unsubscribe and checkout still
apply to a repeat.

**Budgets are split by partition.** The worker owning a partition cannot see the others'
spending, so partition ``p`` of ``n`` gets ``total // n``, plus one for the first
``total % n`` partitions (:func:`partition_share`): the shares add up to the total, so
the shop never exceeds it, but a partition whose customers need more stops while others
have budget left (and a total below ``n`` leaves some partitions with nothing).

>>> limits = GuardLimits(cooldown_ms={"coupon": 30 * MS_PER_DAY}, count=2)
>>> user, budget = UserState("u1"), BudgetState()
>>> admit("coupon", "act-1", 500, user, budget, 0, limits)
Verdict(allowed=True, reason=None, repeat=False)
>>> admit("coupon", "act-1", 500, user, budget, 1, limits)  # redelivered: counted once
Verdict(allowed=True, reason=None, repeat=True)
>>> admit("coupon", "act-2", 500, user, budget, MS_PER_DAY, limits)
Verdict(allowed=False, reason='cooldown', repeat=False)
>>> budget.count
1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Literal

import msgspec

from streams.domain.policy_file import Coupon, Guards
from streams.domain.state import Acted, UserState
from streams.domain.timestamps import MS_PER_DAY

SuppressReason = Literal["unsubscribed", "no_consent", "checking_out", "cooldown", "budget_count", "budget_value"]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: SuppressReason | None = None
    #: The same action_id was admitted before: allowed, and nothing is counted again.
    repeat: bool = False


@dataclass(frozen=True)
class GuardLimits:
    """One partition's guard rails (milliseconds, cents; None: no limit)."""

    cooldown_ms: dict[str, int] = field(default_factory=dict)
    checkout_window_ms: int = 30 * 60_000
    #: Actions of all kinds per UTC day (required: it also bounds the ids kept).
    count: int = 0
    count_per_kind: dict[str, int] = field(default_factory=dict)
    coupon_value_cents: int | None = None
    #: A kind the customer never stated a permission for is refused (opt-in) rather than allowed.
    consent_required: bool = False


class KindSpend(msgspec.Struct, array_like=True):
    count: int = 0
    value_cents: int = 0


class BudgetState(msgspec.Struct, array_like=True):
    """What one partition spent on its current UTC day (stored in a table keyed by partition)."""

    #: UTC day index (event time // one day) the counters belong to; -1: nothing spent yet.
    day: int = -1
    count: int = 0
    per_kind: dict[str, KindSpend] = msgspec.field(default_factory=dict)
    #: 64-bit digests of the action ids spent on ``day`` and on the day before it.
    ids: list[int] = msgspec.field(default_factory=list)
    previous_ids: list[int] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(BudgetState)


def encode_budget(budget: BudgetState) -> bytes:
    return _encoder.encode(budget)


def decode_budget(raw: bytes) -> BudgetState:
    return _decoder.decode(raw)


def partition_share(total: int, partition: int, partitions: int) -> int:
    """Partition ``partition``'s share of a whole-shop budget: the shares add up to ``total``.

    >>> [partition_share(10, p, 4) for p in range(4)]
    [3, 3, 2, 2]
    """
    if partitions < 1 or not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}")
    return total // partitions + (1 if partition < total % partitions else 0)


def partition_limits(guards: Guards, partition: int, partitions: int) -> GuardLimits:
    """The policy file's whole-shop guard rails as one partition's limits."""
    budget = guards.daily_budget
    coupon_value = budget.per_kind.get("coupon")
    value = coupon_value.value if coupon_value is not None else None
    return GuardLimits(
        cooldown_ms={kind: round(days * MS_PER_DAY) for kind, days in guards.cooldown_days.items()},
        checkout_window_ms=round(guards.checkout_window_minutes * 60_000),
        count=partition_share(budget.count, partition, partitions),
        count_per_kind={
            kind: partition_share(b.count, partition, partitions)
            for kind, b in budget.per_kind.items() if b.count is not None
        },
        coupon_value_cents=None if value is None else partition_share(round(value * 100), partition, partitions),
    )


def coupon_value_cents(coupon: Coupon, user: UserState) -> int:
    """What a coupon costs the budget: its amount; for a percent coupon, the percent of the
    customer's mean order value, capped at ``max_value`` (a first-time buyer: the cap, or 0).

    >>> coupon_value_cents(Coupon(percent=10), UserState("u", purchases=4, spend_cents=20_000))
    500
    >>> coupon_value_cents(Coupon(amount=7.5, currency="EUR"), UserState("u"))
    750
    """
    if coupon.amount is not None:
        return round(coupon.amount * 100)
    cap = None if coupon.max_value is None else round(coupon.max_value * 100)
    if user.purchases <= 0:
        return cap or 0
    value = round((coupon.percent or 0.0) / 100 * user.spend_cents / user.purchases)
    return value if cap is None else min(value, cap)


def checking_out(user: UserState, now_ms: int, window_ms: int) -> bool:
    """A cart was touched or a checkout started within ``window_ms`` before ``now_ms``
    (event time) and no purchase came at or after it."""
    touched = user.cart_touched
    if touched is None or touched < now_ms - window_ms:
        return False
    return user.last_purchase is None or user.last_purchase < touched


def consented(user: UserState, kind: str, required: bool = False) -> bool:
    """The customer allows actions of ``kind``: their latest statement, else not ``required``.

    >>> from streams.domain.state import Consent
    >>> user = UserState("u", consent={"coupon": Consent(False, 5)})
    >>> consented(user, "coupon"), consented(user, "recommendation"), consented(user, "recommendation", required=True)
    (False, True, False)
    """
    stated = user.consent.get(kind)
    return not required if stated is None else stated.allowed


def _digest(action_id: str) -> int:
    return int.from_bytes(blake2b(action_id.encode(), digest_size=8).digest(), "big")


def _today(budget: BudgetState, now_ms: int) -> tuple[int, int, dict[str, KindSpend], list[int], list[int]]:
    """The budget as seen on ``now_ms``'s UTC day: a new day starts from zero (keeping the
    previous day's ids when it is the next day); an earlier day spends from the current one
    (the partition clock never goes back, so that is only a late decision)."""
    day = now_ms // MS_PER_DAY
    if day <= budget.day:
        return budget.day, budget.count, budget.per_kind, budget.ids, budget.previous_ids
    previous = budget.ids if day == budget.day + 1 else []
    return day, 0, {}, [], previous


def remaining(budget: BudgetState, now_ms: int, limits: GuardLimits) -> dict[tuple[str, str], float]:
    """What the partition may still spend on ``now_ms``'s UTC day: ``(kind, measure)`` ->
    left, kind ``all`` for the count of every kind, measure ``count`` or ``value`` (coupon
    value in currency units); kinds without a limit of their own are absent.

    >>> limits = GuardLimits(count=5, count_per_kind={"coupon": 2}, coupon_value_cents=1000)
    >>> budget = BudgetState(day=0, count=1, per_kind={"coupon": KindSpend(1, 250)})
    >>> remaining(budget, 0, limits)
    {('all', 'count'): 4, ('coupon', 'count'): 1, ('coupon', 'value'): 7.5}
    >>> remaining(budget, MS_PER_DAY, limits)[("all", "count")]  # a new day
    5
    """
    _, count, per_kind, _, _ = _today(budget, now_ms)
    left: dict[tuple[str, str], float] = {("all", "count"): max(0, limits.count - count)}
    for kind, limit in limits.count_per_kind.items():
        spent = per_kind.get(kind, KindSpend())
        left[(kind, "count")] = max(0, limit - spent.count)
    if limits.coupon_value_cents is not None:
        spent = per_kind.get("coupon", KindSpend())
        left[("coupon", "value")] = max(0, limits.coupon_value_cents - spent.value_cents) / 100
    return left


def check(
    kind: str, action_id: str, value_cents: int, user: UserState, budget: BudgetState,
    now_ms: int, limits: GuardLimits,
) -> Verdict:
    """Allowed, or the reason the action is suppressed; changes nothing.

    ``value_cents`` is what the action costs the coupon value budget (0 for other kinds;
    see :func:`coupon_value_cents`)."""
    if user.unsubscribed:
        return Verdict(False, "unsubscribed")
    if not consented(user, kind, limits.consent_required):
        return Verdict(False, "no_consent")
    if kind == "coupon" and checking_out(user, now_ms, limits.checkout_window_ms):
        return Verdict(False, "checking_out")
    acted = user.acted.get(kind)
    cooldown = limits.cooldown_ms.get(kind, 0)
    if acted is not None and acted.action_id != action_id and now_ms - acted.ts < cooldown:
        return Verdict(False, "cooldown")
    _, count, per_kind, ids, previous = _today(budget, now_ms)
    digest = _digest(action_id)
    if digest in ids or digest in previous:
        return Verdict(True, repeat=True)
    spent = per_kind.get(kind, KindSpend())
    if count >= limits.count:
        return Verdict(False, "budget_count")
    kind_limit = limits.count_per_kind.get(kind)
    if kind_limit is not None and spent.count >= kind_limit:
        return Verdict(False, "budget_count")
    if kind == "coupon" and limits.coupon_value_cents is not None and spent.value_cents + value_cents > limits.coupon_value_cents:
        return Verdict(False, "budget_value")
    return Verdict(True)


def admit(
    kind: str, action_id: str, value_cents: int, user: UserState, budget: BudgetState,
    now_ms: int, limits: GuardLimits,
) -> Verdict:
    """:func:`check`, and if allowed, record the action: the user's cooldown mark, and
    (unless it is a repeat) the partition's spending. Both states are then stored."""
    verdict = check(kind, action_id, value_cents, user, budget, now_ms, limits)
    if not verdict.allowed:
        return verdict
    acted = user.acted.get(kind)
    if acted is None or acted.ts <= now_ms:
        user.acted[kind] = Acted(now_ms, action_id)
    day, count, per_kind, ids, previous = _today(budget, now_ms)
    budget.day, budget.count, budget.per_kind, budget.ids, budget.previous_ids = day, count, per_kind, ids, previous
    if verdict.repeat:
        return verdict
    spent = budget.per_kind.setdefault(kind, KindSpend())
    spent.count += 1
    spent.value_cents += value_cents if kind == "coupon" else 0
    budget.count += 1
    budget.ids.append(_digest(action_id))
    return verdict
