"""Churn labels that mature in event time.

Churn at scoring time ``t`` means no purchase in ``(t, t + horizon]``. Each scoring
point keeps its point-in-time features until the truth is known: a purchase inside the
horizon resolves it as 0 at once; the event-time clock passing ``t + horizon`` resolves
it as 1.

>>> s = UserState("u", pending=[PendingScore(0, [1.0]), PendingScore(5, [2.0])])
>>> resolve_on_purchase(s, purchase_ms=8, horizon_ms=4)
[([1.0], 1), ([2.0], 0)]
>>> s.pending
[]
"""

from __future__ import annotations

from streams.domain.state import PendingScore, UserState

#: At most this many scoring points wait per user (bounded state).
MAX_PENDING = 4

Example = tuple[list[float], int]


def add_scoring_point(state: UserState, ts: int, features: list[float]) -> None:
    state.pending.append(PendingScore(ts, features))
    if len(state.pending) > MAX_PENDING:
        del state.pending[0]


def resolve_on_purchase(state: UserState, purchase_ms: int, horizon_ms: int) -> list[Example]:
    """Label 0 for points whose horizon holds this purchase; points older than their
    horizon (the clock had not reached them yet) are churned, label 1."""
    examples: list[Example] = []
    keep: list[PendingScore] = []
    for point in state.pending:
        if purchase_ms <= point.ts:
            keep.append(point)
        elif purchase_ms <= point.ts + horizon_ms:
            examples.append((point.features, 0))
        else:
            examples.append((point.features, 1))
    state.pending = keep
    return examples


def mature(state: UserState, now_ms: int, horizon_ms: int) -> list[Example]:
    """Label 1 for every point whose horizon the event-time clock has passed."""
    done = [p for p in state.pending if p.ts + horizon_ms < now_ms]
    if done:
        state.pending = [p for p in state.pending if p.ts + horizon_ms >= now_ms]
    return [(p.features, 1) for p in done]


def next_maturity(state: UserState, horizon_ms: int) -> int | None:
    """The event time at which the oldest pending point matures (just past its horizon)."""
    return min((p.ts + horizon_ms + 1 for p in state.pending), default=None)
