"""A user's latest features and scores, as published on ``user-scores`` and served by
``GET /users/{user_id}``.

Snapshots are throttled in event time: a user's snapshot is re-published when the state
changed and ``interval`` has passed since the last one, or when the engine scored the
user (a due check). The topic is keyed by user_id, so its latest record per key is the
user's current row (log compaction keeps just that on a real cluster).

A row also carries the customer's lifecycle stage (:mod:`streams.domain.lifecycle`) and
behavioural segment (:mod:`models.segments`; its version under ``model_versions["segment"]``).
Both are optional in the v1 contract (present in every row published now, never null):
rows published before they existed decode with ``msgspec.UNSET`` there.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import msgspec

from models.score import Score
from streams.domain.lifecycle import LifecycleConfig, Stage, lifecycle_stage
from streams.domain.state import UserState
from streams.domain.timestamps import format_ts


class Segment(NamedTuple):
    """A segment model's answer: the segment id and the version of the model that gave it."""

    id: int
    version: str


class UserScores(msgspec.Struct, frozen=True):
    user_id: str
    ts: str
    features: dict[str, float]
    scores: dict[str, float]
    model_versions: dict[str, str]
    #: Names of the scores that still come from a prior (the model has not learned enough).
    priors: list[str] = msgspec.field(default_factory=list)
    #: Lifecycle stage; absent (UNSET) only in rows published before it existed.
    lifecycle_stage: Stage | msgspec.UnsetType = msgspec.UNSET
    #: Behavioural segment id, 0 to k - 1 (models/segments.py); absent (UNSET) only in older rows.
    segment: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UserScores)


def snapshot(
    state: UserState,
    now: int,
    values: dict[str, float],
    churn: Score,
    sentiment_version: str,
    segment: Segment,
    lifecycle: LifecycleConfig = LifecycleConfig(),
) -> UserScores:
    """The user's row at ``now`` from their :func:`~streams.domain.features.features`
    ``values``; ``sentiment_version`` names the model that scored the review texts,
    ``segment`` is the segment model's answer for these values."""
    churn_value = round(churn.value, 6)  # the stage follows from the published score
    return UserScores(
        user_id=state.user_id,
        ts=format_ts(now),
        features=values,
        scores={"churn": churn_value},
        model_versions={"churn": churn.version, "sentiment": sentiment_version, "segment": segment.version},
        priors=["churn"] if churn.prior else [],
        lifecycle_stage=lifecycle_stage(state, now, values, churn_value, lifecycle),
        segment=segment.id,
    )


def snapshot_due(state: UserState, now: int, interval_ms: int, scored: bool) -> bool:
    """Publish now? After a scoring, or once ``interval_ms`` of event time has passed."""
    return scored or state.scores_at is None or now - state.scores_at >= interval_ms


def encode_scores(scores: UserScores) -> bytes:
    return _encoder.encode(scores)


def decode_scores(raw: bytes) -> UserScores:
    """A row of the ``user-scores`` topic; raises ``msgspec.ValidationError`` where the v1
    schema would refuse it (the churn score is a probability, 0 to 1)."""
    row = _decoder.decode(raw)
    churn = row.scores.get("churn")
    if churn is not None and not 0.0 <= churn <= 1.0:
        raise msgspec.ValidationError(f"scores.churn is a probability, 0 to 1, not {churn}")
    return row
