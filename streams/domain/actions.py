"""Retention actions as they go out on the wire, and their deterministic identities.

An action's id is derived from the decision (user, rule, episode), never from a random
number or the wall clock, so reprocessing after a crash yields the same id and the
marketing side can deduplicate on it.

>>> action_id("u1", "lapsed_after_streak", 1767225600000) == action_id("u1", "lapsed_after_streak", 1767225600000)
True
>>> experiment_group("u1", control_share=0.0)
'treatment'
"""

from __future__ import annotations

import base64
from hashlib import blake2b
from typing import Literal

import msgspec

ActionKind = Literal["coupon", "recommendation", "care_outreach"]
Group = Literal["treatment", "control"]


class Chosen(msgspec.Struct, frozen=True, omit_defaults=True):
    """How a bandit chose the rule (``reason.chosen``): which bandit (``trigger/action``),
    with which algorithm, among which eligible rules (``arms``), the model's estimate of
    the chosen arm's reward and the exploration bonus added to it, the bandit's version,
    the context it looked at; the reward of the decision will be ``gain`` for a conversion
    minus ``cost`` for a redemption."""

    by: str
    bandit: str
    algorithm: str
    arms: list[str]
    estimate: float
    bonus: float
    version: str
    context: dict[str, float]
    gain: float = 1.0
    cost: float = 0.0


class Reason(msgspec.Struct, frozen=True):
    """Why an action was decided. The fields after ``features`` are optional in the v1
    contract (issue 5): the trigger that looked at the rule, and the customer's lifecycle
    stage, loyalty tier and segment at that moment; absent (UNSET) in older actions.
    ``chosen``: present when a bandit chose the rule among the eligible ones."""

    rule: str
    scores: dict[str, float]
    model_versions: dict[str, str]
    features: dict[str, float] = msgspec.field(default_factory=dict)
    trigger: str | msgspec.UnsetType = msgspec.UNSET
    lifecycle_stage: str | msgspec.UnsetType = msgspec.UNSET
    loyalty_tier: str | msgspec.UnsetType = msgspec.UNSET
    segment: int | msgspec.UnsetType = msgspec.UNSET
    chosen: Chosen | msgspec.UnsetType = msgspec.UNSET


class RetentionAction(msgspec.Struct, frozen=True):
    action_id: str
    user_id: str
    ts: str
    kind: ActionKind
    payload: dict[str, object]
    reason: Reason
    group: Group
    expires_at: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RetentionAction)


def encode_action(action: RetentionAction) -> bytes:
    return _encoder.encode(action)


def decode_action(raw: bytes) -> RetentionAction:
    return _decoder.decode(raw)


def action_id(user_id: str, rule: str, episode_ms: int) -> str:
    """Stable id of the decision to act on ``user_id`` by ``rule`` for one episode."""
    digest = blake2b(f"{user_id}\x1f{rule}\x1f{episode_ms}".encode(), digest_size=16).hexdigest()
    return f"act-{digest}"


def coupon_code(action_id_: str) -> str:
    """A unique, unguessable-enough code derived from the action id (so it is stable too)."""
    digest = blake2b(action_id_.encode(), digest_size=8, person=b"coupon").digest()
    return "RS-" + base64.b32encode(digest).decode().rstrip("=")[:10]


def experiment_group(user_id: str, control_share: float, salt: str = "retention-v1") -> Group:
    """Stable assignment of a customer to the control group, by hashing (no state needed)."""
    digest = blake2b(f"{salt}\x1f{user_id}".encode(), digest_size=8).digest()
    return "control" if int.from_bytes(digest, "big") / 2**64 < control_share else "treatment"
