"""Counts of attributed decisions, and the uplift of treatment over control with an interval.

A :class:`Tally` is additive: the engine returns one per step (the decisions, matured
windows and outcomes of that step), a worker adds them up per partition, and the
partitions' tallies add up to the whole shop's. :func:`report` turns a tally into
conversion rates per kind and per (kind, rule), treatment and control, and the uplift
``rate_treatment - rate_control`` with a confidence interval.

Only **matured** decisions (their attribution window is over) count in the rates: a
decision whose window is still open may yet convert, so counting it would bias the rates
down, the more so the more recent the decisions.

**The interval counts customers, not decisions.** A customer can have several decisions
of a kind (a recommendation every week), and they are correlated: one purchase converts
every decision waiting then, and a heavy buyer converts after each. The rate of an arm is
the ratio ``p = Y / N = sum_i y_i / sum_i n_i`` over its customers ``i`` (``n_i`` matured
decisions, ``y_i`` of them converted); its cluster-robust (delta-method, sandwich) variance is

    v_cluster = C / (C - 1) * sum_i (y_i - p n_i)^2 / N^2          (C customers)

where ``sum_i (y_i - p n_i)^2 = sum y_i^2 - 2 p sum n_i y_i + p^2 sum n_i^2``: every term is
a sum over customers, so :class:`Clusters` keeps them additively (per step, partition and
shop, like the counts), from each customer's running counts in its state
(:func:`count_matured`). Its ratio to the binomial variance ``p (1 - p) / (N - 1)`` is the
arm's **design effect** ``d`` (:func:`design_effect`, at least 1; exactly 1 with one decision
per customer). Following Rao and Scott (1992, "A simple method for the analysis of
clustered binary data", Biometrics 48:577-585), the arm's counts are divided by ``d``
(effective counts ``Y / d`` of ``N / d``: the same rate, the precision of ``N / d``
independent trials) and the interval is computed from them by the binomial method:
Newcombe's hybrid score interval (method 10 of Newcombe 1998, "Interval estimation for the
difference between independent proportions", Statistics in Medicine 17:873-890), built
from the two arms' Wilson score intervals. Combining separately adjusted single-arm limits
is Zou and Donner's MOVER (2008, "Construction of confidence limits about effect measures:
a general approach", Statistics in Medicine 27:1693-1702), of which Newcombe's interval is
the case of two binomial arms; the arms are independent because a customer belongs to one
arm by a hash of the user id. This keeps Newcombe's behaviour for small groups and rates
near 0 or 1, where a Wald interval on the cluster variance is too narrow (and can leave
[-1, 1]), and with one decision per customer it *is* Newcombe's interval. When an arm's
variance cannot be estimated (one customer, or no or only conversions) ``d`` is ``sum n_i^2 / N``,
as if each customer's decisions all went the same way (its customers count, not its decisions).

>>> lo, hi = wilson(81, 263)
>>> round(lo, 4), round(hi, 4)
(0.2553, 0.3662)
>>> d, lo, hi = newcombe(56, 70, 48, 80)
>>> round(d, 4), round(lo, 4), round(hi, 4)
(0.2, 0.0524, 0.3339)
>>> one_each = Clusters(customers=10, decisions=10, conversions=4, nn=10, ny=4, yy=4)
>>> design_effect(one_each)
1.0
>>> two_each_alike = Clusters(customers=5, decisions=10, conversions=4, nn=20, ny=8, yy=8)
>>> design_effect(two_each_alike)  # 5 customers of 2 decisions each, both alike: 2, and C/(C-1) over N/(N-1)
2.25
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from statistics import NormalDist

import msgspec

#: Separator of the parts of a tally key (kind, rule, group / kind, outcome).
SEP = "|"


def _add_fields(into: msgspec.Struct, other: msgspec.Struct) -> None:
    """Add every (integer) field of ``other`` to ``into``: the tallies are sums, field by field."""
    for name in into.__struct_fields__:
        setattr(into, name, getattr(into, name) + getattr(other, name))


def _entry(table: dict[str, Any], make: Callable[[], Any], kind: str, rule: str | None, group: str) -> Any:
    """The tally entry of (kind, rule, group), or of (kind, group) with ``rule`` None; made empty if new."""
    key = SEP.join((kind, group) if rule is None else (kind, rule, group))
    found = table.get(key)
    if found is None:
        found = table[key] = make()
    return found


class Counts(msgspec.Struct, array_like=True):
    """Decisions of one (kind, rule, group) and what became of them."""

    decided: int = 0
    #: Decisions whose attribution window is over (the denominators of the rates).
    matured: int = 0
    #: Matured decisions followed by a purchase within the window.
    converted: int = 0
    #: Matured decisions whose coupon code or action id a purchase carried.
    redeemed: int = 0
    #: Decisions dropped before their window ended because a user had too many open (not in the rates).
    evicted: int = 0

    def add(self, other: Counts) -> None:
        _add_fields(self, other)


class Clusters(msgspec.Struct, array_like=True):
    """Per-customer sums over the matured decisions of one arm (kind, group) or (kind, rule,
    group): the terms of the cluster-robust variance, additive over customers and partitions.

    ``decisions`` and ``conversions`` are ``N`` and ``Y`` of the decisions counted here (those
    that matured since per-customer counting began: the design effect is computed from
    them alone and applied to the arm's :class:`Counts`).
    """

    #: Customers with at least one matured decision (C).
    customers: int = 0
    decisions: int = 0
    conversions: int = 0
    #: sum n_i^2, sum n_i y_i, sum y_i^2 over the customers.
    nn: int = 0
    ny: int = 0
    yy: int = 0

    def add(self, other: Clusters) -> None:
        _add_fields(self, other)

    def count(self, n: int, y: int, converted: bool) -> None:
        """One more matured decision of a customer who had ``n`` (``y`` converted): the sums
        change by ``(n + 1)^2 - n^2`` and so on."""
        c = int(converted)
        self.customers += n == 0
        self.decisions += 1
        self.conversions += c
        self.nn += 2 * n + 1
        self.ny += (n + 1) * (y + c) - n * y
        self.yy += (y + c) ** 2 - y * y


class Mine(msgspec.Struct, array_like=True):
    """One customer's matured decisions of one (kind, rule, group) and how many converted
    (kept in the user state, ``UserState.attributed``: a few entries, one per rule fired)."""

    matured: int = 0
    converted: int = 0


class Entered(msgspec.Struct, array_like=True):
    """A customer's entry into the intention-to-treat experiment of one kind (or kind and
    rule), at its first decision of it (kept in the user state, ``UserState.entered``: one
    small entry per kind and per rule that ever fired for the customer, never more)."""

    #: Event time of the first decision: the window is (ts, ts + window].
    ts: int
    group: str
    #: A purchase in the window.
    converted: bool = False
    #: The window (and lateness) is over and the customer was counted.
    matured: bool = False
    #: False: the customer had decisions of this kind before intention-to-treat counting
    #: began (a state written before it); not its first decision, so never counted.
    counted: bool = True


class Itt(msgspec.Struct, array_like=True):
    """Customers of one arm in the intention-to-treat experiment of a kind (or kind and rule):
    one observation per customer, from its first decision (additive like :class:`Counts`)."""

    #: Customers whose first decision of the kind (rule) went out.
    entered: int = 0
    #: Of them, those whose window after the first decision is over (the denominators).
    matured: int = 0
    #: Matured customers who bought within the window after their first decision.
    converted: int = 0
    #: Customers left out: their first decision preceded intention-to-treat counting (an older state).
    excluded: int = 0

    def add(self, other: Itt) -> None:
        _add_fields(self, other)


class Tally(msgspec.Struct):
    """Counts by ``kind|rule|group``, action outcomes by ``kind|outcome``, and the per-customer
    sums by ``kind|rule|group`` and ``kind|group`` (the kind as a whole)."""

    decisions: dict[str, Counts] = msgspec.field(default_factory=dict)
    outcomes: dict[str, int] = msgspec.field(default_factory=dict)
    #: Added with the per-customer interval (issue 5); tallies written before it load without.
    clusters: dict[str, Clusters] = msgspec.field(default_factory=dict)
    #: Added with the intention-to-treat contrast (issue 5; tallies written before it load
    #: without): customers by ``kind|group`` and ``kind|rule|group``.
    itt: dict[str, Itt] = msgspec.field(default_factory=dict)

    def counts(self, kind: str, rule: str, group: str) -> Counts:
        return _entry(self.decisions, Counts, kind, rule, group)

    def cluster(self, kind: str, rule: str | None, group: str) -> Clusters:
        """The sums of (kind, rule, group), or of (kind, group) with ``rule`` None."""
        return _entry(self.clusters, Clusters, kind, rule, group)

    def entrants(self, kind: str, rule: str | None, group: str) -> Itt:
        """The intention-to-treat customers of (kind, rule, group), or of (kind, group) with ``rule`` None."""
        return _entry(self.itt, Itt, kind, rule, group)

    def outcome(self, kind: str, outcome: str, n: int = 1) -> None:
        key = f"{kind}{SEP}{outcome}"
        self.outcomes[key] = self.outcomes.get(key, 0) + n

    def add(self, other: Tally) -> None:
        for key, counts in other.decisions.items():
            self.counts(*key.split(SEP)).add(counts)
        for key, n in other.outcomes.items():
            self.outcome(*key.split(SEP), n=n)
        for key, sums in other.clusters.items():
            self.clusters.setdefault(key, Clusters()).add(sums)
        for key, customers in other.itt.items():
            self.itt.setdefault(key, Itt()).add(customers)

    def __bool__(self) -> bool:
        return bool(self.decisions or self.outcomes or self.clusters or self.itt)


def count_matured(tally: Tally, mine: dict[str, Mine], kind: str, rule: str, group: str, converted: bool) -> None:
    """A customer's decision of (kind, rule, group) matured: add the change of the
    per-customer sums to ``tally`` and count it in the customer's own counts ``mine``.

    >>> t, mine = Tally(), {}
    >>> for converted in (True, True, False):
    ...     count_matured(t, mine, "coupon", "r", "treatment", converted)
    >>> t.clusters["coupon|treatment"], mine
    (Clusters(customers=1, decisions=3, conversions=2, nn=9, ny=6, yy=4), {'coupon|r|treatment': Mine(matured=3, converted=2)})
    """
    key = SEP.join((kind, rule, group))
    n = y = 0  # the customer's counts of the kind as a whole: the sum over its rules
    for other, counts in mine.items():
        k, _, g = other.split(SEP)
        if k == kind and g == group:
            n, y = n + counts.matured, y + counts.converted
    own = mine.setdefault(key, Mine())
    tally.cluster(kind, rule, group).count(own.matured, own.converted, converted)
    tally.cluster(kind, None, group).count(n, y, converted)
    own.matured += 1
    own.converted += converted


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Tally)


def dump_tally(tally: Tally) -> bytes:
    return _encoder.encode(tally)


def load_tally(raw: bytes) -> Tally:
    return _decoder.decode(raw)


def total(tallies: list[Tally]) -> Tally:
    """The sum of ``tallies`` (e.g. of every partition)."""
    out = Tally()
    for tally in tallies:
        out.add(tally)
    return out


def z_for(confidence: float) -> float:
    """Two-sided standard normal quantile: ``z_for(0.95)`` is 1.96."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(x: float, n: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of the proportion ``x / n`` ((0, 1) when ``n`` is 0); the counts
    may be fractional (effective counts)."""
    if n == 0:
        return 0.0, 1.0
    p = x / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def newcombe(x1: float, n1: float, x2: float, n2: float, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """``p1 - p2`` and Newcombe's hybrid score interval for it (both groups need n > 0)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def design_effect(sums: Clusters) -> float:
    """The arm's cluster-robust variance of its rate over the binomial one (at least 1).

    ``C (N - 1) sum_i (y_i - p n_i)^2 / ((C - 1) N Y (1 - p))`` with ``p = Y / N``, computed in
    integers (no cancellation): exactly 1 with one decision per customer. Without an
    estimate (fewer than two customers, or ``Y`` 0 or ``N``) it is ``sum n_i^2 / N``, the
    design effect of decisions that go the same way within a customer (1: no decisions).
    """
    c, n, y = sums.customers, sums.decisions, sums.conversions
    if n == 0:
        return 1.0
    if c < 2 or y == 0 or y == n:
        return max(1.0, sums.nn / n)
    residual = n * n * sums.yy - 2 * n * y * sums.ny + y * y * sums.nn  # N^2 sum_i (y_i - p n_i)^2
    return max(1.0, c * (n - 1) * residual / ((c - 1) * n * n * y * (n - y)))


def cluster_newcombe(
    treatment: Counts, control: Counts, d1: float = 1.0, d2: float = 1.0, z: float = 1.959963984540054
) -> tuple[float, float, float]:
    """``p1 - p2`` and Newcombe's interval of the arms' counts divided by their design effects
    ``d1``, ``d2`` (Rao and Scott's effective counts; ``d = 1``: Newcombe's interval)."""
    return newcombe(treatment.converted / d1, treatment.matured / d1, control.converted / d2, control.matured / d2, z)


def _arm(c: Counts, sums: Clusters) -> dict[str, float | int | None]:
    return {
        "decisions": c.decided, "matured": c.matured, "conversions": c.converted, "redemptions": c.redeemed,
        "evicted": c.evicted,
        "conversion_rate": c.converted / c.matured if c.matured else None,
        "redemption_rate": c.redeemed / c.matured if c.matured else None,
        "customers": sums.customers,
    }


def compare(
    treatment: Counts, control: Counts, confidence: float = 0.95, clusters: tuple[Clusters, Clusters] | None = None
) -> dict[str, object]:
    """Both arms and the uplift (None until both arms have a matured decision).

    ``clusters``: the per-customer sums of treatment and control. With them (``method``
    ``cluster-newcombe``) the interval counts customers; without any (a tally from before
    per-customer counting) it is Newcombe's over independent decisions (``newcombe``).

    >>> compare(Counts(10, 10, 5, 2), Counts(10, 10, 2))["uplift"]["estimate"]
    0.3
    """
    t_sums, c_sums = clusters or (Clusters(), Clusters())
    uplift = None
    if treatment.matured and control.matured:
        d1, d2 = design_effect(t_sums), design_effect(c_sums)
        d, lo, hi = cluster_newcombe(treatment, control, d1, d2, z_for(confidence))
        method = "cluster-newcombe" if t_sums.decisions and c_sums.decisions else "newcombe"
        uplift = {"estimate": round(d, 6), "low": round(lo, 6), "high": round(hi, 6), "confidence": confidence,
                  "method": method, "design_effect": {"treatment": round(d1, 4), "control": round(d2, 4)}}
    return {"treatment": _arm(treatment, t_sums), "control": _arm(control, c_sums), "uplift": uplift}


def _itt_arm(c: Itt) -> dict[str, float | int | None]:
    return {"customers": c.entered, "matured": c.matured, "conversions": c.converted,
            "conversion_rate": c.converted / c.matured if c.matured else None, "excluded": c.excluded}


def compare_itt(treatment: Itt, control: Itt, confidence: float = 0.95) -> dict[str, object]:
    """The intention-to-treat contrast: both arms' customers (one observation each: bought
    within the window after its first decision) and the uplift with Newcombe's interval
    (None until both arms have a matured customer).

    >>> compare_itt(Itt(56, 56, 40), Itt(20, 20, 10))["uplift"]["estimate"]
    0.214286
    """
    uplift = None
    if treatment.matured and control.matured:
        d, lo, hi = newcombe(treatment.converted, treatment.matured, control.converted, control.matured, z_for(confidence))
        uplift = {"estimate": round(d, 6), "low": round(lo, 6), "high": round(hi, 6), "confidence": confidence, "method": "newcombe"}
    return {"treatment": _itt_arm(treatment), "control": _itt_arm(control), "uplift": uplift}


def report(tally: Tally, confidence: float = 0.95) -> dict[str, object]:
    """``GET /actions/stats``: per kind and per kind and rule, both arms and the uplift;
    outcomes per kind.

    >>> t = Tally(); t.counts("coupon", "r", "treatment").add(Counts(4, 4, 2)); t.counts("coupon", "r", "control").add(Counts(4, 4, 1))
    >>> r = report(t); r["by_kind"]["coupon"]["uplift"]["estimate"], r["by_rule"]["coupon"]["r"]["treatment"]["conversions"]
    (0.25, 2)
    """
    by_kind: dict[str, dict[str, Counts]] = {}
    by_rule: dict[str, dict[str, dict[str, Counts]]] = {}
    for key, counts in sorted(tally.decisions.items()):
        kind, rule, group = key.split(SEP)
        by_kind.setdefault(kind, {"treatment": Counts(), "control": Counts()})[group].add(counts)
        by_rule.setdefault(kind, {}).setdefault(rule, {"treatment": Counts(), "control": Counts()})[group].add(counts)
    outcomes: dict[str, dict[str, int]] = {}
    for key, n in sorted(tally.outcomes.items()):
        kind, outcome = key.split(SEP)
        outcomes.setdefault(kind, {})[outcome] = n
    def sums(*key: str) -> tuple[Clusters, Clusters]:
        empty = Clusters()
        return tally.clusters.get(SEP.join((*key, "treatment")), empty), tally.clusters.get(SEP.join((*key, "control")), empty)

    def both(*key: str) -> dict[str, object]:
        """The per-decision contrast of ``key`` and, beside it, the intention-to-treat one."""
        arms = by_rule[key[0]][key[1]] if len(key) == 2 else by_kind[key[0]]
        out = compare(arms["treatment"], arms["control"], confidence, sums(*key))
        empty = Itt()
        itt = [tally.itt.get(SEP.join((*key, group)), empty) for group in ("treatment", "control")]
        out["itt"] = compare_itt(itt[0], itt[1], confidence)
        return out

    return {
        "by_kind": {kind: both(kind) for kind in by_kind},
        "by_rule": {kind: {rule: both(kind, rule) for rule in rules} for kind, rules in by_rule.items()},
        "outcomes": outcomes,
    }
