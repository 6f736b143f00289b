"""Per-user state and how one event changes it.

The state is small and bounded (it does not grow with a user's history) and is stored
as compact msgpack in a RocksDB table. Applying an event is idempotent: the digests of
the most recent event ids are kept, so a redelivered or re-sent event counts once.
"""

from __future__ import annotations

import math
from hashlib import blake2b

import msgspec

from streams.domain.events import Click, ClickKind, Outcome, OutcomeKind, Purchase, Review, UserEvent, plain_int
from streams.domain.timestamps import MS_PER_DAY

#: How many recent event-id digests a user keeps for de-duplication.
RECENT_IDS = 64


class PendingScore(msgspec.Struct, array_like=True):
    """A scoring point waiting for its churn label to mature."""

    ts: int
    features: list[float]


class UserState(msgspec.Struct, array_like=True):
    user_id: str
    first_seen: int = 0
    last_seen: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    spend: float = 0.0
    last_purchase: int | None = None
    gaps: int = 0
    gap_mean_days: float = 0.0
    gap_m2: float = 0.0
    reviews: int = 0
    rating_sum: int = 0
    last_rating: int = 0
    unsubscribed: bool = False
    recent_ids: list[int] = msgspec.field(default_factory=list)
    pending: list[PendingScore] = msgspec.field(default_factory=list)
    #: Event time of the last lapse check; a check after last_purchase belongs to this episode.
    lapse_checked: int | None = None
    #: last_purchase of the lapse episode a retention action was already emitted for.
    lapse_acted: int | None = None

    @property
    def gap_std_days(self) -> float:
        return math.sqrt(self.gap_m2 / (self.gaps - 1)) if self.gaps > 1 else 0.0


_encoder = msgspec.msgpack.Encoder(enc_hook=plain_int)
_decoder = msgspec.msgpack.Decoder(UserState)


def dump_state(state: UserState) -> bytes:
    return _encoder.encode(state)


def load_state(raw: bytes) -> UserState:
    return _decoder.decode(raw)


def event_digest(event: UserEvent) -> int:
    """64-bit digest of the event's identity (outcomes are identified by action and outcome)."""
    identity = f"{event.action_id}\x1f{event.outcome.value}" if isinstance(event, Outcome) else event.event_id
    return int.from_bytes(blake2b(identity.encode(), digest_size=8).digest(), "big")


def apply_event(state: UserState, event: UserEvent) -> bool:
    """Fold one event into the state. Returns False (and changes nothing) for a duplicate."""
    digest = event_digest(event)
    if digest in state.recent_ids:
        return False
    state.recent_ids.append(digest)
    if len(state.recent_ids) > RECENT_IDS:
        del state.recent_ids[0]
    ts = event.ts
    state.first_seen = min(state.first_seen, ts) if state.first_seen else ts
    state.last_seen = max(state.last_seen, ts)
    if isinstance(event, Click):
        state.clicks += 1
        state.carts += event.kind is ClickKind.ADD_TO_CART
    elif isinstance(event, Purchase):
        _apply_purchase(state, event)
    elif isinstance(event, Review):
        state.reviews += 1
        state.rating_sum += event.rating
        state.last_rating = event.rating
    elif isinstance(event, Outcome):
        state.unsubscribed = state.unsubscribed or event.outcome is OutcomeKind.UNSUBSCRIBED
    return True


def _apply_purchase(state: UserState, purchase: Purchase) -> None:
    state.purchases += 1
    state.spend += purchase.total
    if state.last_purchase is None:
        state.last_purchase = purchase.ts
        return
    if purchase.ts <= state.last_purchase:
        return  # late purchase: counts and spend, but the gap statistics stay in order
    gap = (purchase.ts - state.last_purchase) / MS_PER_DAY
    state.gaps += 1
    delta = gap - state.gap_mean_days
    state.gap_mean_days += delta / state.gaps
    state.gap_m2 += delta * (gap - state.gap_mean_days)
    state.last_purchase = purchase.ts
