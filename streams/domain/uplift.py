"""Counts of attributed decisions, and the uplift of treatment over control with an interval.

A :class:`Tally` is additive: the engine returns one per step (the decisions, matured
windows and outcomes of that step), a worker adds them up per partition, and the
partitions' tallies add up to the whole shop's. :func:`report` turns a tally into
conversion rates per kind and per (kind, rule), treatment and control, and the uplift
``rate_treatment - rate_control`` with a confidence interval.

Only **matured** decisions (their attribution window is over) count in the rates: a
decision whose window is still open may yet convert, so counting it would bias the rates
down, the more so the more recent the decisions.

The interval is Newcombe's hybrid score interval (method 10 of Newcombe 1998, "Interval
estimation for the difference between independent proportions"), built from the two
Wilson score intervals. It keeps close to its nominal coverage for small groups and rates
near 0 or 1, where the Wald interval is too narrow (and can leave [-1, 1]); it needs no
continuity correction and no scipy.

>>> lo, hi = wilson(81, 263)
>>> round(lo, 4), round(hi, 4)
(0.2553, 0.3662)
>>> d, lo, hi = newcombe(56, 70, 48, 80)
>>> round(d, 4), round(lo, 4), round(hi, 4)
(0.2, 0.0524, 0.3339)
"""

from __future__ import annotations

import math
from statistics import NormalDist

import msgspec

#: Separator of the parts of a tally key (kind, rule, group / kind, outcome).
SEP = "|"


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
        self.decided += other.decided
        self.matured += other.matured
        self.converted += other.converted
        self.redeemed += other.redeemed
        self.evicted += other.evicted


class Tally(msgspec.Struct):
    """Counts by ``kind|rule|group``, and action outcomes by ``kind|outcome``."""

    decisions: dict[str, Counts] = msgspec.field(default_factory=dict)
    outcomes: dict[str, int] = msgspec.field(default_factory=dict)

    def counts(self, kind: str, rule: str, group: str) -> Counts:
        key = SEP.join((kind, rule, group))
        found = self.decisions.get(key)
        if found is None:
            found = self.decisions[key] = Counts()
        return found

    def outcome(self, kind: str, outcome: str, n: int = 1) -> None:
        key = f"{kind}{SEP}{outcome}"
        self.outcomes[key] = self.outcomes.get(key, 0) + n

    def add(self, other: Tally) -> None:
        for key, counts in other.decisions.items():
            self.counts(*key.split(SEP)).add(counts)
        for key, n in other.outcomes.items():
            self.outcome(*key.split(SEP), n=n)

    def __bool__(self) -> bool:
        return bool(self.decisions or self.outcomes)


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


def wilson(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of the proportion ``x / n`` ((0, 1) when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = x / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """``p1 - p2`` and Newcombe's hybrid score interval for it (both groups need n > 0)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _arm(c: Counts) -> dict[str, float | int | None]:
    return {
        "decisions": c.decided, "matured": c.matured, "conversions": c.converted, "redemptions": c.redeemed,
        "evicted": c.evicted,
        "conversion_rate": c.converted / c.matured if c.matured else None,
        "redemption_rate": c.redeemed / c.matured if c.matured else None,
    }


def compare(treatment: Counts, control: Counts, confidence: float = 0.95) -> dict[str, object]:
    """Both arms and the uplift (None until both arms have a matured decision).

    >>> compare(Counts(10, 10, 5, 2), Counts(10, 10, 2))["uplift"]["estimate"]
    0.3
    """
    uplift = None
    if treatment.matured and control.matured:
        d, lo, hi = newcombe(treatment.converted, treatment.matured, control.converted, control.matured, z_for(confidence))
        uplift = {"estimate": round(d, 6), "low": round(lo, 6), "high": round(hi, 6), "confidence": confidence}
    return {"treatment": _arm(treatment), "control": _arm(control), "uplift": uplift}


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
    return {
        "by_kind": {kind: compare(arms["treatment"], arms["control"], confidence) for kind, arms in by_kind.items()},
        "by_rule": {
            kind: {rule: compare(arms["treatment"], arms["control"], confidence) for rule, arms in rules.items()}
            for kind, rules in by_rule.items()
        },
        "outcomes": outcomes,
    }
