"""The inbound topic contract as typed events, and the one function that decodes them.

The JSON Schemas in ``schemas/`` are the contract for other teams and languages; these
structs are the same contract for Python, and ``tests/unit/test_contract.py`` runs the
same valid and invalid examples through both so they cannot drift apart.

Decoding never raises: :func:`decode` returns an event or an :class:`Invalid` whose
``error`` says in words which rule failed, so the worker can dead-letter the record and
carry on.

Values framed by a Confluent Schema Registry JSON serializer (magic byte 0, then the
schema id as 4 big-endian bytes, then the JSON) are accepted: :func:`unframe` strips the
header (no JSON text starts with a zero byte, so plain JSON is never mistaken for it) and
the runtime records the schema id (``retention_schema_registry_schema_id``).

>>> decode("clicks", b'{"event_id":"e1","user_id":"u1","ts":1767225600000,"kind":"search"}').kind.value
'search'
>>> decode("reviews", b'{"event_id":"e1","user_id":"u1","ts":1767225600000,"item_id":"i","rating":7}').error
'Expected a whole number from 1 to 5, got 7 - at `$.rating`'
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, TypeAlias, Union

import msgspec

from streams.domain.timestamps import TimestampError, format_ts, parse_ts

#: Longest id of the contract (event_id, user_id, ...); also the bound of GET /users/{user_id}.
ID_MAX_LENGTH = 128
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH)]
ShortText = Annotated[str, msgspec.Meta(max_length=1_000)]
ReviewText = Annotated[str, msgspec.Meta(max_length=10_000)]


class EventTime(int):
    """Epoch milliseconds, decoded from an RFC 3339 string or an integer on the wire.

    These int subclasses select a decoding rule; :func:`decode` hands out events with plain
    ``int`` times and ratings, and encoders turn any left back into ``int`` (see :func:`plain_int`).
    """


class Quantity(int):
    """A whole number >= 1. Like JSON Schema's ``integer``, ``2.0`` is accepted as 2."""

    bounds = (1, None)


class Rating(int):
    """A whole number of stars, 1 to 5 (``4.0`` is accepted as 4)."""

    bounds = (1, 5)


class ClickKind(str, enum.Enum):
    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    WISHLIST = "wishlist"
    CHECKOUT_START = "checkout_start"


class Channel(str, enum.Enum):
    WEB = "web"
    APP = "app"
    STORE = "store"


class OutcomeKind(str, enum.Enum):
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    REDEEMED = "redeemed"
    UNSUBSCRIBED = "unsubscribed"


class Click(msgspec.Struct, frozen=True):
    event_id: Id
    user_id: Id
    ts: EventTime
    kind: ClickKind
    session_id: Id | None = None
    item_id: Id | None = None
    category: Id | None = None
    channel: Channel | None = None
    query: ShortText | None = None


class Item(msgspec.Struct, frozen=True):
    item_id: Id
    quantity: Quantity
    unit_price: Annotated[float, msgspec.Meta(ge=0)]
    category: Id | None = None


class Purchase(msgspec.Struct, frozen=True):
    event_id: Id
    user_id: Id
    ts: EventTime
    order_id: Id
    items: Annotated[list[Item], msgspec.Meta(min_length=1)]
    total: Annotated[float, msgspec.Meta(ge=0)]
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
    channel: Channel
    action_id: Id | None = None
    coupon_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class Review(msgspec.Struct, frozen=True):
    event_id: Id
    user_id: Id
    ts: EventTime
    item_id: Id
    rating: Rating
    text: ReviewText | None = None
    order_id: Id | None = None


class Outcome(msgspec.Struct, frozen=True):
    action_id: Id
    user_id: Id
    ts: EventTime
    outcome: OutcomeKind


class Heartbeat(msgspec.Struct, frozen=True):
    """Advances the event-time clock of one partition when customers are silent."""

    ts: EventTime
    source: ShortText | None = None


UserEvent: TypeAlias = Union[Click, Purchase, Review, Outcome]
Event: TypeAlias = Union[UserEvent, Heartbeat]

#: Logical topic name (the contract's default name) -> event type.
EVENT_TYPES: dict[str, type[Event]] = {
    "clicks": Click,
    "purchases": Purchase,
    "reviews": Review,
    "action-outcomes": Outcome,
    "heartbeats": Heartbeat,
}
InboundTopic = Literal["clicks", "purchases", "reviews", "action-outcomes", "heartbeats"]


class Invalid(msgspec.Struct, frozen=True):
    """A record that broke the contract, and the rule it broke, in words."""

    error: str


def plain_int(obj: object) -> int:
    """``enc_hook`` for msgspec encoders: the decoding marker types are plain ints."""
    if isinstance(obj, int):
        return int(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _whole_number(tp: type[Quantity] | type[Rating], obj: object) -> int:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not float(obj).is_integer():
        raise ValueError(f"Expected a whole number, got {obj!r}")
    low, high = tp.bounds
    if obj < low or (high is not None and obj > high):
        raise ValueError(f"Expected a whole number from {low}" + (f" to {high}" if high else " up") + f", got {obj!r}")
    return tp(int(obj))


def _dec_hook(tp: type, obj: object) -> object:
    if tp is EventTime:
        try:
            return EventTime(parse_ts(obj))  # type: ignore[arg-type]
        except (TimestampError, TypeError) as exc:
            raise ValueError(str(exc)) from None
    if tp is Quantity or tp is Rating:
        return _whole_number(tp, obj)
    raise NotImplementedError(f"no decoder for {tp}")


_DECODERS = {topic: msgspec.json.Decoder(tp, dec_hook=_dec_hook) for topic, tp in EVENT_TYPES.items()}


#: Records larger than this are refused before they are parsed (the runtime's default;
#: ``RETENTION_MAX_RECORD_BYTES``). Kafka's own default ``message.max.bytes`` is ~1 MB.
MAX_RECORD_BYTES = 1_048_576


#: First byte of a value framed by a Confluent Schema Registry serializer.
SCHEMA_REGISTRY_MAGIC = 0


def unframe(raw: bytes) -> tuple[bytes, int | None]:
    """The JSON of a value and its Schema Registry schema id (None when it is not framed).

    >>> unframe(b"\\x00\\x00\\x00\\x01\\x07{}")
    (b'{}', 263)
    >>> unframe(b'{"ts": 1}')
    (b'{"ts": 1}', None)
    """
    if len(raw) >= 5 and raw[0] == SCHEMA_REGISTRY_MAGIC:
        return raw[5:], int.from_bytes(raw[1:5], "big")
    return raw, None


def decode(
    topic: str, raw: bytes | None, *, not_after_ms: int | None = None, not_before_ms: int | None = None,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Event | Invalid:
    """Decode and validate one record of a logical inbound topic; never raises.

    ``not_after_ms`` bounds how far in the future ``ts`` may be (the runtime passes the
    earlier of the record's Kafka timestamp and its own clock, plus the allowed clock
    skew), so one bad clock cannot drag the event-time clock of a whole partition into the
    future; ``not_before_ms`` refuses implausibly old times (year 0001 is valid RFC 3339).
    Any input, however large or deeply nested, gives an event or an :class:`Invalid`;
    a Schema Registry header (:func:`unframe`) is stripped first, and named in the error.

    >>> decode("clicks", b'{"x":' + b"[" * 100_000).error
    'not valid JSON: nested too deeply'
    >>> decode("clicks", b" " * 11, max_bytes=10).error
    'record of 11 bytes is over the limit of 10 bytes'
    >>> decode("heartbeats", b"\\x00\\x00\\x00\\x00\\x2a" + b'{"ts": 1767225600000}').ts
    1767225600000
    >>> decode("heartbeats", b"\\x00\\x00\\x00\\x00\\x2a" + b'{}').error
    'Object missing required field `ts` (framed by a Schema Registry serializer, schema id 42)'
    """
    result = _decode(topic, raw, not_after_ms, not_before_ms, max_bytes)
    if isinstance(result, Invalid) and raw is not None and len(raw) <= max_bytes:
        schema_id = unframe(raw)[1]
        if schema_id is not None:
            return Invalid(f"{result.error} (framed by a Schema Registry serializer, schema id {schema_id})")
    return result


def decode_value(decoder: msgspec.json.Decoder[Any], raw: bytes | None, max_bytes: int, unframed: bytes | None = None) -> Any:
    """``raw`` decoded by ``decoder``, or an :class:`Invalid` saying why; never raises (every
    topic's decoding refuses tombstones, oversize records and undecodable bytes alike).
    ``unframed``: the bytes to decode when they differ from ``raw`` (a Schema Registry frame)."""
    if raw is None:
        return Invalid("value is empty (a tombstone): a JSON object is required")
    if len(raw) > max_bytes:
        return Invalid(f"record of {len(raw)} bytes is over the limit of {max_bytes} bytes")
    try:
        return decoder.decode(raw if unframed is None else unframed)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        return Invalid(str(exc))
    except msgspec.DecodeError as exc:
        return Invalid(f"not valid JSON: {exc}")
    except UnicodeDecodeError as exc:
        return Invalid(f"not valid UTF-8: {exc}")
    except RecursionError:
        return Invalid("not valid JSON: nested too deeply")
    except Exception as exc:  # the decoder's last word: any other failure is the record's, not ours
        return Invalid(f"not decodable: {type(exc).__name__}: {exc}"[:500])


def _decode(topic: str, raw: bytes | None, not_after_ms: int | None, not_before_ms: int | None, max_bytes: int) -> Event | Invalid:
    """:func:`decode` of an unframed value."""
    decoder = _DECODERS.get(topic)
    if decoder is None:
        return Invalid(f"no contract for topic {topic!r}")
    event = decode_value(decoder, raw, max_bytes, unframe(raw)[0] if raw is not None and len(raw) <= max_bytes else None)
    if isinstance(event, Invalid):
        return event
    ts = event.ts
    if not_after_ms is not None and ts > not_after_ms:
        return Invalid(
            f"ts {_when(ts)} is {(ts - not_after_ms) / 1000:.0f} s beyond the allowed clock skew "
            "past the record's Kafka timestamp and the worker's clock"
        )
    if not_before_ms is not None and ts < not_before_ms:
        return Invalid(f"ts {_when(ts)} is before the earliest plausible event time {_when(not_before_ms)}")
    return _plain(event)


def _plain(event: Event) -> Event:
    """``event`` with its time (and a review's rating) as plain ``int``: the subclasses only
    select a decoding rule, and a value of one copied into a user's state would cost every
    encoding of that state a Python call (:func:`plain_int`), dozens per state."""
    set_field = msgspec.structs.force_setattr
    set_field(event, "ts", int(event.ts))
    if type(event) is Review:
        set_field(event, "rating", int(event.rating))
    return event


def _when(epoch_ms: int) -> str:
    try:
        return format_ts(epoch_ms)
    except (OverflowError, ValueError):
        return str(epoch_ms)
