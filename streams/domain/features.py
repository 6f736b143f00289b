"""The model's feature vector, built from the state at a given event time.

Scoring and training both call :func:`feature_vector`, so what a model learns from is
exactly what it is later asked about (no training/serving skew).
"""

from __future__ import annotations

import math

from streams.domain.state import UserState
from streams.domain.timestamps import MS_PER_DAY

FEATURE_NAMES: tuple[str, ...] = (
    "recency_days",
    "tenure_days",
    "purchases",
    "log_spend",
    "avg_order_value",
    "gap_mean_days",
    "gap_std_days",
    "recency_over_gap",
    "clicks",
    "carts",
    "reviews",
    "rating_mean",
)


def feature_vector(state: UserState, now_ms: int) -> list[float]:
    """Features at event time ``now_ms``, in :data:`FEATURE_NAMES` order.

    Recency is measured at ``now_ms`` (the event-time clock), not at the user's last
    event, so a silent customer's recency keeps growing.
    """
    anchor = state.last_purchase if state.last_purchase is not None else state.first_seen
    recency = max(0.0, (now_ms - anchor) / MS_PER_DAY)
    gap = state.gap_mean_days
    return [
        recency,
        max(0.0, (now_ms - state.first_seen) / MS_PER_DAY),
        float(state.purchases),
        math.log1p(state.spend),
        state.spend / state.purchases if state.purchases else 0.0,
        gap,
        state.gap_std_days,
        recency / gap if gap > 0 else 0.0,
        float(state.clicks),
        float(state.carts),
        float(state.reviews),
        state.rating_sum / state.reviews if state.reviews else 0.0,
    ]


def as_dict(vector: list[float]) -> dict[str, float]:
    """Name the values of a vector, as River learners and action reasons want them."""
    return dict(zip(FEATURE_NAMES, vector))
