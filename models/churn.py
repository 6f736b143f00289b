"""Online churn learner: River logistic regression on scaled features, with a prior.

Labels arrive late (a churn label matures only when its horizon has passed), so the
learner starts with a recency prior and switches to the learned model once it has seen
``min_labels`` labels of both classes. Every score names the version that made it.

>>> m = ChurnModel(min_labels=2)
>>> m.score({"recency_days": 30.0, "gap_mean_days": 10.0}).prior
True
"""

from __future__ import annotations

import math

from river import compose, linear_model, optim, preprocessing

from models.score import Score


class ChurnModel:
    name = "churn-logreg"

    def __init__(self, min_labels: int = 50, learning_rate: float = 0.05) -> None:
        self.min_labels = min_labels
        self.pipeline = compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate)),
        )
        self.labels = 0
        self.positives = 0

    @property
    def warm(self) -> bool:
        """True once the learned model, not the prior, gives the scores."""
        return self.labels >= self.min_labels and 0 < self.positives < self.labels

    @property
    def version(self) -> str:
        return f"{self.name}+{self.labels}" if self.warm else "recency-prior"

    def score(self, x: dict[str, float]) -> Score:
        if not self.warm:
            return Score(recency_prior(x), self.version, prior=True)
        return Score(self.pipeline.predict_proba_one(x).get(True, 0.0), self.version)

    def learn(self, x: dict[str, float], churned: bool) -> None:
        self.pipeline.learn_one(x, churned)
        self.labels += 1
        self.positives += churned


def recency_prior(x: dict[str, float]) -> float:
    """P(churn) from recency relative to the customer's usual gap (two gaps: ~0.63)."""
    gap = max(x.get("gap_mean_days", 0.0), 1.0)
    return 1.0 - math.exp(-x.get("recency_days", 0.0) / (2.0 * gap))
