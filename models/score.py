"""What every model answers with."""

from __future__ import annotations

from typing import NamedTuple


class Score(NamedTuple):
    """A model's answer: the value, the version that made it, and whether it is the prior."""

    value: float
    version: str
    prior: bool = False


#: A review's sentiment score at or below this is a negative review (VADER's own cut-off for
#: "negative"). Here, not in :mod:`models.sentiment`, so that the state and the features read
#: it without loading the text model's libraries.
NEGATIVE_THRESHOLD = -0.05


def is_negative(score: float) -> bool:
    """True for a sentiment score the policy should treat as a negative review."""
    return score <= NEGATIVE_THRESHOLD
