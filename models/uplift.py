"""Online uplift models: how much a customer's chance to buy changes if treated.

One model per action kind, learned by the one trainer (:mod:`models.trainer`) from the
attributed outcomes of matured decisions of that kind, **treatment and control alike**
(``UpliftExample``: the churn model's inputs at the decision, the group, and whether the
customer bought within the attribution window). It is a *two-model* (T-) learner: one
River classifier of ``P(buy | x)`` on the treated decisions, one on the control
decisions; the customer's predicted uplift is their difference,

    uplift(x) = P(buy within the window | x, treated) - P(buy within the window | x, control),

an estimate of the change in purchase probability if treated. It is sound because the
group of a decision is drawn by a hash of the customer, independently of ``x``: within
the decisions made at any ``x`` the two groups are comparable, whatever chose *whom* to
decide on (the policy's targeting depends on ``x`` only, and on a seeded draw).

A model answers only once both arms have learned ``min_examples`` decisions (``None``
before: the policy then decides by exploration alone, :mod:`streams.domain.rules`).

**The day's candidates.** A rule that treats the top share of its candidates by
predicted uplift needs the distribution of the predictions over the candidates. A
decision the policy *explored* (made at random, whatever the prediction) is a random
draw from its rule's candidates, so the model keeps the inputs of the latest
:data:`RANKED` explored decisions per rule and, when the trainer stamps a snapshot,
predicts them with the new model and sorts them: :meth:`UpliftModels.cutoff` is the
share's quantile of those predictions. Every worker and every replay reads the same
snapshot, so the cut-off is the same everywhere.

>>> m = UpliftModels(min_examples=2)
>>> for i in range(400):
...     hot = float(i % 2)  # customers with hot = 1 respond to the offer, the others do not
...     m.learn_one("coupon", "r", "treatment", {"hot": hot}, bool(hot), explored=True)
...     m.learn_one("coupon", "r", "control", {"hot": hot}, False, explored=True)
>>> m.stamp("2026-01-02")
>>> m.predict("coupon", {"hot": 1.0}) > 0.3 > m.predict("coupon", {"hot": 0.0})
True
>>> m.version
'uplift-2m+800@2026-01-02'
>>> m.cutoff("r", 0.5) == m.predict("coupon", {"hot": 1.0})
True
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from river import compose, linear_model, optim, preprocessing

from models.churn import log_features

#: Explored decisions kept per rule to rank a prediction among its candidates.
RANKED = 400
#: Decisions each arm of a kind learns before its model answers.
MIN_EXAMPLES = 30
GROUPS = ("treatment", "control")


def arm_model() -> Any:
    """P(buy within the window | x) for one arm: the churn model's inputs on a log scale,
    standardised, and a logistic regression (a higher step than the churn model's: a kind
    sees hundreds of decisions, not tens of thousands of labels)."""
    return compose.Pipeline(
        compose.FuncTransformer(log_features), preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-3),
    )


class UpliftModels:
    """The uplift model of every action kind in one snapshot (see the module docstring)."""

    def __init__(self, min_examples: int = MIN_EXAMPLES, ranked: int = RANKED) -> None:
        self.min_examples = min_examples
        self.ranked = ranked
        self.arms: dict[str, dict[str, Any]] = {}  #: kind -> group -> classifier
        self.counts: dict[str, dict[str, int]] = {}  #: kind -> group -> decisions learned
        self.converted: dict[str, dict[str, int]] = {}  #: kind -> group -> of them converted
        self.explored: dict[str, deque[dict[str, float]]] = {}  #: rule -> inputs of its latest explored decisions
        self.kind_of: dict[str, str] = {}  #: rule -> its action kind
        self.sorted: dict[str, list[float]] = {}  #: rule -> predictions of its explored inputs, ascending (at stamp)
        self.snapshot = "fresh"

    @property
    def learned(self) -> int:
        return sum(n for by in self.counts.values() for n in by.values())

    @property
    def version(self) -> str:
        return f"uplift-2m+{self.learned}@{self.snapshot}"

    def learn_one(self, kind: str, rule: str, group: str, x: dict[str, float], converted: bool, explored: bool = False) -> None:
        """One matured decision: its group's model learns whether the customer bought."""
        if group not in GROUPS:
            return
        arms = self.arms.setdefault(kind, {})
        model = arms.get(group)
        if model is None:
            model = arms[group] = arm_model()
        model.learn_one(x, bool(converted))
        counts = self.counts.setdefault(kind, dict.fromkeys(GROUPS, 0))
        counts[group] += 1
        conv = self.converted.setdefault(kind, dict.fromkeys(GROUPS, 0))
        conv[group] += bool(converted)
        if explored:
            self.kind_of[rule] = kind
            self.explored.setdefault(rule, deque(maxlen=self.ranked)).append(dict(x))

    def ready(self, kind: str) -> bool:
        counts = self.counts.get(kind, {})
        return all(counts.get(g, 0) >= self.min_examples for g in GROUPS)

    def predict(self, kind: str, x: dict[str, float]) -> float | None:
        """The predicted uplift of treating a customer with inputs ``x`` (None: not learned enough)."""
        if not self.ready(kind):
            return None
        arms = self.arms[kind]
        return _p(arms["treatment"], x) - _p(arms["control"], x)

    def cutoff(self, rule: str, share: float) -> float | None:
        """The prediction the top ``share`` of the rule's candidates reach (None: no
        explored candidate ranked yet)."""
        ranked = self.sorted.get(rule)
        if not ranked:
            return None
        return ranked[min(len(ranked) - 1, max(0, math.ceil(len(ranked) * (1.0 - share))))]

    def stamp(self, version: str) -> None:
        """The snapshot's version; the explored candidates ranked by the models as they are now."""
        self.snapshot = version
        self.sorted = {}
        for rule, xs in self.explored.items():
            kind = self.kind_of[rule]
            if self.ready(kind):
                self.sorted[rule] = sorted(p for x in xs if (p := self.predict(kind, x)) is not None)

    def report(self) -> dict[str, Any]:
        """What ``GET /models`` shows: per kind, the decisions learned and the conversion rate per arm."""
        return {
            "version": self.version,
            "kinds": {
                kind: {g: {"decisions": n, "conversion_rate": round(self.converted[kind][g] / n, 4) if n else None}
                       for g, n in by.items()} | {"ready": self.ready(kind)}
                for kind, by in sorted(self.counts.items())
            },
        }


def _p(model: Any, x: dict[str, float]) -> float:
    return float(model.predict_proba_one(x).get(True, 0.0))
