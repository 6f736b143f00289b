"""Retention actions as they go out on the wire, and their deterministic identities.

An action's id is derived from the decision (user, rule, episode), never from a random
number or the wall clock, so reprocessing after a crash yields the same id and the
marketing side can deduplicate on it.

>>> action_id("u1", "lapsed_after_streak", 1767225600000) == action_id("u1", "lapsed_after_streak", 1767225600000)
True
>>> experiment_group("u1", control_share=0.0)
'treatment'

The control group is drawn per customer (``control_by="customer"``: one group for all kinds)
or per customer and action kind (``control_by="kind"``: the kind is in the hash, so each
kind's group is drawn independently, a factorial design; docs/uplift.md).
"""

from __future__ import annotations

import base64
from hashlib import blake2b
from typing import Literal

import msgspec

ActionKind = Literal["coupon", "recommendation", "care_outreach"]
Group = Literal["treatment", "control"]
#: What the control group is drawn for: a customer (all kinds alike) or a customer and kind.
ControlBy = Literal["customer", "kind"]


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


class Targeting(msgspec.Struct, frozen=True, omit_defaults=True):
    """Whom the rule targets and what the uplift model predicted (``reason.uplift``, optional
    in the v1 contract): ``target`` is the rule's (``risk``: its ``when`` alone decides;
    ``uplift``: the predicted uplift too), ``predicted`` the customer's estimated change in
    purchase probability within the attribution window if treated (None while the model of
    the kind has not learned enough), ``version`` the uplift model's; for ``uplift``:
    ``explored`` (decided at random, whatever the prediction), and the ``threshold`` and
    top-share ``cutoff`` the prediction was held against."""

    target: str
    predicted: float | None
    version: str
    explored: bool = False
    threshold: float | None = None
    cutoff: float | None = None


class Reason(msgspec.Struct, frozen=True):
    """Why an action was decided. The fields after ``features`` are optional in the v1
    contract (issue 5): the trigger that looked at the rule, and the customer's lifecycle
    stage, loyalty tier and segment at that moment; absent (UNSET) in older actions.
    ``chosen``: present when a bandit chose the rule among the eligible ones; ``uplift``:
    present when the policy learns the uplift of the action's kind (issue 21)."""

    rule: str
    scores: dict[str, float]
    model_versions: dict[str, str]
    features: dict[str, float] = msgspec.field(default_factory=dict)
    trigger: str | msgspec.UnsetType = msgspec.UNSET
    lifecycle_stage: str | msgspec.UnsetType = msgspec.UNSET
    loyalty_tier: str | msgspec.UnsetType = msgspec.UNSET
    segment: int | msgspec.UnsetType = msgspec.UNSET
    chosen: Chosen | msgspec.UnsetType = msgspec.UNSET
    uplift: Targeting | msgspec.UnsetType = msgspec.UNSET


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


def experiment_group(
    user_id: str, control_share: float, salt: str = "retention-v1", kind: str | None = None, by: ControlBy = "customer"
) -> Group:
    """Stable assignment to the control group, by hashing (no state needed).

    ``by="customer"`` (the default): one group per customer, whatever ``kind`` is (the hash of
    the salt and the user id, as before the option existed, so no customer moves).
    ``by="kind"``: one group per customer and action kind, the kind in the hash, so the kinds'
    groups are independent draws, each with ``control_share``.

    >>> experiment_group("u1", 0.5, kind="coupon") == experiment_group("u1", 0.5)
    True
    >>> experiment_group("u1", 1.0, kind="coupon", by="kind")
    'control'
    """
    if by == "kind":
        if kind is None:
            raise ValueError("experiment_group(by='kind') needs the action kind")
        key = f"{salt}\x1f{kind}\x1f{user_id}"
    elif by == "customer":
        key = f"{salt}\x1f{user_id}"
    else:
        raise ValueError(f"unknown control_by {by!r}; expected customer or kind")
    digest = blake2b(key.encode(), digest_size=8).digest()
    return "control" if int.from_bytes(digest, "big") / 2**64 < control_share else "treatment"
