"""What every model answers with."""

from __future__ import annotations

from typing import NamedTuple


class Score(NamedTuple):
    """A model's answer: the value, the version that made it, and whether it is the prior."""

    value: float
    version: str
    prior: bool = False
