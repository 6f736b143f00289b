"""A user's latest features and scores, as published on ``user-scores`` and served by
``GET /users/{user_id}``.

Snapshots are throttled in event time: a user's snapshot is re-published when the state
changed and ``interval`` has passed since the last one, or when the engine scored the
user (a due check). The topic is keyed by user_id, so its latest record per key is the
user's current row (log compaction keeps just that on a real cluster).
"""

from __future__ import annotations

import msgspec

from models.score import Score
from streams.domain.state import UserState
from streams.domain.timestamps import format_ts


class UserScores(msgspec.Struct, frozen=True):
    user_id: str
    ts: str
    features: dict[str, float]
    scores: dict[str, float]
    model_versions: dict[str, str]
    #: Names of the scores that still come from a prior (the model has not learned enough).
    priors: list[str] = msgspec.field(default_factory=list)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UserScores)


def snapshot(state: UserState, now: int, values: dict[str, float], churn: Score, sentiment_version: str) -> UserScores:
    """The user's row at ``now`` from their :func:`~streams.domain.features.features`
    ``values``; ``sentiment_version`` names the model that scored the review texts."""
    return UserScores(
        user_id=state.user_id,
        ts=format_ts(now),
        features=values,
        scores={"churn": round(churn.value, 6)},
        model_versions={"churn": churn.version, "sentiment": sentiment_version},
        priors=["churn"] if churn.prior else [],
    )


def snapshot_due(state: UserState, now: int, interval_ms: int, scored: bool) -> bool:
    """Publish now? After a scoring, or once ``interval_ms`` of event time has passed."""
    return scored or state.scores_at is None or now - state.scores_at >= interval_ms


def encode_scores(scores: UserScores) -> bytes:
    return _encoder.encode(scores)


def decode_scores(raw: bytes) -> UserScores:
    return _decoder.decode(raw)
