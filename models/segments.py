"""Behavioural segments: online k-means (River) over a customer's scaled behaviour.

The inputs are a handful of behaviour figures from the churn model's inputs
(:func:`streams.domain.features.model_inputs`): how long since the last purchase, how
often they buy and browse, how much they spend, how many carts they leave. Counts and
durations are heavy-tailed, so each is taken as ``log1p`` and then standardised by an
online :class:`river.preprocessing.StandardScaler`; :class:`river.cluster.KMeans` assigns
the result to the nearest of ``n_clusters`` centres and moves that centre a little
(``halflife``) towards it. The segment is the centre's index, an integer from 0 to
``n_clusters - 1``: the same centre keeps its index for the model's life, so an id means
the same region of behaviour from one snapshot to the next while the centres drift
slowly. The choice of KMeans over STREAMKMeans, k and halflife comes from a measurement
on the simulator's customers (docs/segments.md, ``scripts/measure-segments``).

River's KMeans draws each centre coordinate at random the first time a feature name is
looked up, in the iteration order of a set of strings, which changes with Python's hash
seed; the coordinates are drawn here up front in :data:`SEGMENT_FEATURES` order, so a
seed gives the same model in every process.

>>> m = SegmentModel(n_clusters=2, seed=1)
>>> busy = {"recency_days": 2.0, "purchases_90d": 8.0, "clicks_30d": 60.0, "days_active_30d": 20.0,
...         "gap_mean_days": 9.0, "avg_order_value": 60.0, "carts_abandoned_30d": 1.0}
>>> gone = {"recency_days": 120.0, "purchases_90d": 0.0, "clicks_30d": 0.0, "days_active_30d": 0.0,
...         "gap_mean_days": 9.0, "avg_order_value": 60.0, "carts_abandoned_30d": 0.0}
>>> for _ in range(50):
...     m.learn_one(busy)
...     m.learn_one(gone)
>>> m.predict_one(busy) != m.predict_one(gone), m.version
(True, 'segments-kmeans2+100')
"""

from __future__ import annotations

import math

from river import cluster, preprocessing

#: The behaviour a segment is made of (names of the churn model's inputs).
SEGMENT_FEATURES: tuple[str, ...] = (
    "recency_days",
    "purchases_90d",
    "clicks_30d",
    "days_active_30d",
    "gap_mean_days",
    "avg_order_value",
    "carts_abandoned_30d",
)


def behaviour(x: dict[str, float]) -> dict[str, float]:
    """The model's unscaled inputs: ``log1p`` of each segment feature (missing ones are 0).

    >>> behaviour({"recency_days": math.e - 1})["recency_days"]
    1.0
    """
    return {name: math.log1p(max(0.0, x.get(name, 0.0))) for name in SEGMENT_FEATURES}


class SegmentModel:
    """Online clustering of behaviour; ``learn_one`` returns None, ``predict_one`` a segment id."""

    name = "segments-kmeans"

    def __init__(self, n_clusters: int = 4, halflife: float = 0.05, seed: int = 42) -> None:
        self.n_clusters = n_clusters
        self.scaler = preprocessing.StandardScaler()
        self.kmeans = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, mu=0.0, sigma=1.0, seed=seed)
        for i in range(n_clusters):  # draw every coordinate now, in a fixed order (see the module doc)
            for name in SEGMENT_FEATURES:
                self.kmeans.centers[i][name]
        self.learned = 0

    @property
    def version(self) -> str:
        """Names the algorithm, k and how many snapshots it has learned (centres move with
        each), and the model snapshot it came in (:mod:`models.trainer`)."""
        base = f"{self.name}{self.n_clusters}+{self.learned}"
        return f"{base}@{self.snapshot}" if getattr(self, "snapshot", "") else base

    def learn_one(self, x: dict[str, float]) -> None:
        z = behaviour(x)
        self.scaler.learn_one(z)
        self.kmeans.learn_one(self.scaler.transform_one(z))
        self.learned += 1

    def predict_one(self, x: dict[str, float]) -> int:
        """The nearest centre to ``x``'s scaled behaviour, as River's scaler and KMeans answer
        it, from their figures read once per learned state (a snapshot's model answers every
        score row and never learns): the same distances summed in :data:`SEGMENT_FEATURES`
        order (River sums over a set of names, whose order follows the hash seed)."""
        frozen = getattr(self, "_frozen", None)
        if frozen is None or frozen[0] != self.learned:
            frozen = self._frozen = (self.learned, *self._figures())
        _, scale, centres, p = frozen
        z = [(math.log1p(max(0.0, x.get(name, 0.0))) - mean) / sd if sd else 0.0 for name, mean, sd in scale]
        best, nearest = centres[0][0], math.inf  # (River's min(): the first centre unless one is nearer)
        for i, centre in centres:
            d = sum(abs(c - v) ** p for c, v in zip(centre, z))
            if d < nearest:
                best, nearest = i, d
        return best

    def _figures(self) -> tuple[list[tuple[str, float, float]], list[tuple[int, list[float]]], int]:
        """(name, mean, standard deviation) per feature, each centre's coordinates, the power."""
        means, vars_ = self.scaler.means, self.scaler.vars
        scale = [(name, means.get(name, 0.0), vars_.get(name, 0.0) ** 0.5) for name in SEGMENT_FEATURES]
        centres = [(int(i), [centre[name] for name in SEGMENT_FEATURES]) for i, centre in self.kmeans.centers.items()]
        return scale, centres, self.kmeans.p

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_frozen", None)  # derived: not in snapshots
        return state

    def river_predict_one(self, x: dict[str, float]) -> int:
        """River's own answer (what :meth:`predict_one` reproduces)."""
        return int(self.kmeans.predict_one(self.scaler.transform_one(behaviour(x))))
