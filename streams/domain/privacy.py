"""Customers' privacy: pseudonyms at the edge, erasure requests, and the erased-ids set.

**Pseudonyms.** With pseudonymisation on, a worker replaces each event's ``user_id`` by a
keyed HMAC-SHA256 of it before anything is stored, learned, scored or published: states,
changelogs, actions, user-scores rows, exports and model examples carry the pseudonym only.
Producers still key records by the shop's own id, so a user's records arrive on the
partition that id hashes to. A pseudonym is made to hash to **the same partition** (a
counter is appended until it does), so a record, lookup or erasure keyed by the pseudonym
(a marketing system's outcome, ``GET /users/ps_...``) reaches the same owner as one keyed by
the shop's id.

>>> route = lambda s: sum(s.encode()) % 4          # any partitioner (the runtime: Kafka's murmur2)
>>> names = Pseudonyms(b"k" * 32, route=route)
>>> p = names.of("u42")
>>> p == names.of("u42"), p.startswith("ps_"), route(p) == route("u42"), is_pseudonym(p)
(True, True, True, True)

**Erasure.** A request names a customer by the shop's id or by the pseudonym; the owner of
the partition deletes the state, tombstones it, forgets the customer everywhere in memory,
keeps an entry in the partition's **erased-ids set** (keyed by the pseudonym; durable through
the state changelog) and confirms with what was removed. While the entry is kept
(``RETENTION_ERASED_IDS_RETENTION_DAYS``), the customer's events, including replays of the
input topics, are counted as ``erased`` and not folded.

>>> entry = ErasedEntry(request_id="r1", erased_at=0, removed={"state": 1})
>>> load_entry(dump_entry(entry)) == entry, expired(entry, now_ms=10, keep_ms=10), expired(entry, now_ms=11, keep_ms=10)
(True, False, True)
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import msgspec

from streams.domain.events import ID_MAX_LENGTH, MAX_RECORD_BYTES, Invalid, decode_value
from streams.domain.state import Consent, UserState
from streams.domain.timestamps import TimestampError, parse_ts

#: Every pseudonym starts with this; the rest is 40 hex digits (160 bits of the HMAC),
#: and ``.n`` when a counter was needed to route it like the shop's id.
PSEUDONYM_PREFIX = "ps_"
_PSEUDONYM = re.compile(r"^ps_[0-9a-f]{40}(\.[0-9]+)?$")
#: Tries before giving up routing a pseudonym (with P partitions one in P candidates fits).
_MAX_TRIES = 1_000_000


def is_pseudonym(user_id: str) -> bool:
    """Whether ``user_id`` has the form of a pseudonym this system makes.

    >>> is_pseudonym("ps_" + "0" * 40), is_pseudonym("ps_" + "0" * 40 + ".7"), is_pseudonym("alice")
    (True, True, False)
    """
    return _PSEUDONYM.match(user_id) is not None


def pseudonym(key: bytes, user_id: str, route: Callable[[str], int]) -> str:
    """The pseudonym of ``user_id`` under ``key``: stable, and routed by ``route`` (the
    producers' partitioner) to the partition ``user_id`` is routed to."""
    base = PSEUDONYM_PREFIX + hmac.digest(key, user_id.encode(), "sha256")[:20].hex()
    target = route(user_id)
    if route(base) == target:
        return base
    for n in range(1, _MAX_TRIES):
        candidate = f"{base}.{n}"
        if route(candidate) == target:
            return candidate
    raise ValueError(f"no pseudonym routed to partition {target} in {_MAX_TRIES} tries")


class Pseudonyms:
    """The current key's pseudonyms, and those of previous keys (a key being rotated).

    >>> route = lambda s: len(s) % 2
    >>> old, new = Pseudonyms(b"a" * 32, route=route), Pseudonyms(b"b" * 32, [b"a" * 32], route=route)
    >>> new.of("u1") != old.of("u1"), new.all_of("u1") == [new.of("u1"), old.of("u1")]
    (True, True)
    """

    def __init__(self, key: bytes, previous: Sequence[bytes] = (), *, route: Callable[[str], int]) -> None:
        self.key = key
        self.previous = list(previous)
        self.route = route

    def of(self, user_id: str) -> str:
        """The pseudonym under the current key."""
        return pseudonym(self.key, user_id, self.route)

    def all_of(self, user_id: str) -> list[str]:
        """The pseudonyms under the current key, then each previous key (no repeats)."""
        out = [self.of(user_id)]
        for key in self.previous:
            p = pseudonym(key, user_id, self.route)
            if p not in out:
                out.append(p)
        return out


# ---------------------------------------------------------------------------- erasure requests

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH)]


class ErasureRequest(msgspec.Struct, frozen=True):
    """A customer to forget (``erasure-requests`` v1): by the shop's ``user_id`` or by ``pseudonym``."""

    request_id: Id
    requested_at: int
    user_id: Id | None = None
    pseudonym: Id | None = None
    requested_by: Annotated[str, msgspec.Meta(max_length=1_000)] | None = None

    @property
    def subject(self) -> str:
        """The id the request names (the shop's id, else the pseudonym)."""
        return self.user_id if self.user_id is not None else self.pseudonym  # type: ignore[return-value]


class _Wire(msgspec.Struct, frozen=True):
    request_id: Id
    requested_at: str | int
    user_id: Id | None = None
    pseudonym: Id | None = None
    requested_by: Annotated[str, msgspec.Meta(max_length=1_000)] | None = None


_decoder = msgspec.json.Decoder(_Wire)


def decode_erasure(raw: bytes | None, max_bytes: int = MAX_RECORD_BYTES) -> ErasureRequest | Invalid:
    """Decode and validate an erasure request; never raises (an :class:`Invalid` says why).

    >>> decode_erasure(b'{"request_id":"r1","user_id":"u1","requested_at":"2026-01-05T00:00:00Z"}').subject
    'u1'
    >>> decode_erasure(b'{"request_id":"r1","requested_at":1767225600000}').error
    'name the customer by exactly one of `user_id` and `pseudonym`'
    >>> decode_erasure(b'{"request_id":"r1","pseudonym":"bob","requested_at":1767225600000}').error
    '`pseudonym` is not a pseudonym of this system (ps_ and 40 hex digits)'
    """
    wire = decode_value(_decoder, raw, max_bytes)
    if isinstance(wire, Invalid):
        return wire
    if (wire.user_id is None) == (wire.pseudonym is None):
        return Invalid("name the customer by exactly one of `user_id` and `pseudonym`")
    if wire.pseudonym is not None and not is_pseudonym(wire.pseudonym):
        return Invalid("`pseudonym` is not a pseudonym of this system (ps_ and 40 hex digits)")
    if isinstance(wire.requested_at, bool):
        return Invalid("`requested_at` must be RFC 3339 or epoch milliseconds - at `$.requested_at`")
    try:
        at = parse_ts(wire.requested_at)
    except (TimestampError, TypeError) as exc:
        return Invalid(f"{exc} - at `$.requested_at`")
    return ErasureRequest(wire.request_id, at, wire.user_id, wire.pseudonym, wire.requested_by)


def encode_erasure(request_id: str, requested_at: str, user_id: str | None = None, pseudonym: str | None = None,
                   requested_by: str | None = None) -> bytes:
    """An ``erasure-requests`` v1 value (what ``retention forget`` sends)."""
    value = {"request_id": request_id, "requested_at": requested_at}
    value.update({k: v for k, v in (("user_id", user_id), ("pseudonym", pseudonym), ("requested_by", requested_by)) if v is not None})
    return msgspec.json.encode(value)


# ---------------------------------------------------------------------------- the erased-ids set

class ErasedEntry(msgspec.Struct, frozen=True):
    """What the erased-ids set keeps per pseudonym: the request, when (wall clock, ms) and
    what was removed, so a repeated request is confirmed alike."""

    request_id: str
    erased_at: int
    removed: dict[str, int]


_entry_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(ErasedEntry))


def dump_entry(entry: ErasedEntry) -> bytes:
    return _entry_codec[0].encode(entry)


def load_entry(raw: bytes) -> ErasedEntry:
    return _entry_codec[1].decode(raw)


def expired(entry: ErasedEntry, now_ms: int, keep_ms: int) -> bool:
    """The entry is past its retention (then events of the id are folded again: the input
    topics no longer hold the erased customer's old records)."""
    return now_ms - entry.erased_at > keep_ms


def removed_from(state: UserState | None) -> dict[str, int]:
    """What a user's state held, as counts for the confirmation (the state itself is deleted).

    >>> removed_from(UserState("u", purchases=2, clicks=3))["events"]
    5
    >>> removed_from(None)
    {'state': 0}
    """
    if state is None:
        return {"state": 0}
    return {
        "state": 1,
        "events": state.clicks + state.purchases + state.reviews,
        "pending_labels": len(state.pending),
        "open_decisions": len(state.awaiting),
        "item_history": len(state.items) + len(state.bought),
        "outbox": len(state.outbox),
    }


#: What an erasure keeps, and why (in every confirmation).
KEPT = (
    "model weights: aggregates learned from many customers, not per customer",
    "attribution tallies: counts summed over customers",
    "records already on topics the workers do not own (input topics, retention-actions): removed by their retention",
)


class ErasureConfirmation(msgspec.Struct, frozen=True):
    """An ``erasure-confirmations`` v1 value."""

    request_id: str
    subject: str  #: the id the customer's data was kept under: the pseudonym (or the shop's id when pseudonymisation is off)
    pseudonymized: bool
    found: bool
    repeated: bool
    partition: int
    requested_at: str
    erased_at: str
    erased_until: str
    removed: dict[str, int]
    kept: list[str]


def encode_confirmation(confirmation: ErasureConfirmation) -> bytes:
    return msgspec.json.encode(confirmation)


# ---------------------------------------------------------------------------- consent

#: The kinds of retention action a customer can allow or refuse (the contract's).
ACTION_KINDS = ("coupon", "recommendation", "care_outreach")
Kind = Literal["coupon", "recommendation", "care_outreach"]


class ConsentChange(msgspec.Struct, frozen=True):
    """A customer's marketing permissions (``consents`` v1): per action kind, allowed or not,
    as of event time ``ts``; kinds not named keep what was stated before."""

    user_id: Id
    ts: int
    allow: dict[Kind, bool]
    event_id: Id | None = None
    source: Annotated[str, msgspec.Meta(max_length=1_000)] | None = None


class _ConsentWire(msgspec.Struct, frozen=True):
    user_id: Id
    ts: str | int
    allow: Annotated[dict[Kind, bool], msgspec.Meta(min_length=1)]
    event_id: Id | None = None
    source: Annotated[str, msgspec.Meta(max_length=1_000)] | None = None


_consent_decoder = msgspec.json.Decoder(_ConsentWire)


def decode_consent(raw: bytes | None, not_after_ms: int | None = None, max_bytes: int = MAX_RECORD_BYTES) -> ConsentChange | Invalid:
    """Decode and validate a consents record; never raises.

    >>> decode_consent(b'{"user_id":"u1","ts":1767225600000,"allow":{"coupon":false}}').allow
    {'coupon': False}
    >>> decode_consent(b'{"user_id":"u1","ts":1767225600000,"allow":{"sms":true}}').error
    "Invalid enum value 'sms' - at `key` in `$.allow`"
    """
    wire = decode_value(_consent_decoder, raw, max_bytes)
    if isinstance(wire, Invalid):
        return wire
    if isinstance(wire.ts, bool):
        return Invalid("`ts` must be RFC 3339 or epoch milliseconds - at `$.ts`")
    try:
        ts = parse_ts(wire.ts)
    except (TimestampError, TypeError) as exc:
        return Invalid(f"{exc} - at `$.ts`")
    if not_after_ms is not None and ts > not_after_ms:
        return Invalid("ts is beyond the allowed clock skew past the record's Kafka timestamp and the worker's clock")
    return ConsentChange(wire.user_id, ts, dict(wire.allow), wire.event_id, wire.source)


def apply_consent(state: UserState, change: ConsentChange) -> bool:
    """Record the permissions in the customer's state, the latest by event time winning per
    kind (any arrival order gives the same); True if something changed.

    >>> state = UserState("u")
    >>> apply_consent(state, ConsentChange("u", 10, {"coupon": False})), state.consent["coupon"].allowed
    (True, False)
    >>> apply_consent(state, ConsentChange("u", 5, {"coupon": True}))  # older: the later statement stands
    False
    """
    changed = False
    for kind, allowed in change.allow.items():
        before = state.consent.get(kind)
        if before is None or change.ts >= before.ts:
            if before is None or before.allowed != allowed or before.ts != change.ts:
                state.consent[kind] = Consent(allowed, change.ts)
                changed = True
    return changed
